"""Read what an offline W&B run wrote (``run-*.wandb``), for tests: no network, no W&B server.

The file is a LevelDB-style log (W&B's own format): a 7-byte header, then 32 KiB blocks of chunks, each with a
CRC, a length and a type (full / first / middle / last); the records are ``wandb_internal_pb2.Record`` protos.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending, payloads = HEADER, b"", []
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += room
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            payloads.append(pending + chunk)
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def summarize(path: Path) -> dict:
    """``{"config": {...}, "history": {...}, "summary": {...}, "group": str}`` of an offline run file."""
    out = {"config": {}, "history": {}, "summary": {}, "group": None}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"] = record.run.run_group
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            for item in record.history.item:
                out["history"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                if item.key:
                    out["summary"][item.key] = json.loads(item.value_json)
    return out
