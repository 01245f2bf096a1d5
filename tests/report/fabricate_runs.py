"""Fabricated run folders for the report's tests: the files a run leaves (docs/results-format.md), plausible numbers.

:func:`write_run` writes one run folder (``predictions.jsonl``, ``metrics.json`` when complete, and Hydra's
``.hydra/config.yaml`` / ``overrides.yaml``). :func:`fabricate_sweep` writes many of them nested like Hydra
multiruns (``multirun/DATE/TIME/N/``), covering every table and figure of the report, and optionally a partial
run and a configuration run twice (on "another machine").

Scores follow a simple model of the paper's findings (more kept tokens help more than precision, 2-bit
collapses), so that figures look like results and tests can check orderings.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FULL_CACHE = {"llama3_8b_instruct": 8192, "mistral_7b_instruct_v02": 16384, "smollm2_135m": 8192}
PRUNER_QUALITY = {
    "none": 1.0,
    "streamingllm": 0.55,
    "h2o": 0.75,
    "snapkv": 0.85,
    "pyramidkv": 0.9,
    "adakv": 0.92,
    "headkv": 0.95,
}
CATEGORIES = ("single_doc_qa", "multi_doc_qa", "summarization", "few_shot", "synthetic", "code")
TASKS = {
    "single_doc_qa": ("narrativeqa", "qasper"),
    "multi_doc_qa": ("hotpotqa", "2wikimqa"),
    "summarization": ("gov_report", "qmsum"),
    "few_shot": ("trec", "triviaqa"),
    "synthetic": ("passage_count", "passage_retrieval_en"),
    "code": ("lcc", "repobench-p"),
}


def model_base(model: str, family: str) -> float:
    """The uncompressed score of a model on a benchmark family."""
    size = {"llama32_1b": 0.6, "llama32_3b": 0.8, "llama3_8b": 0.97, "llama3_70b": 1.08, "smollm2": 0.45}
    factor = next((v for k, v in size.items() if model.startswith(k)), 0.96)
    if model.endswith("_base"):
        factor *= 0.8
    full = {"longbench": 44.0, "longbench_e": 42.0, "niah": 100.0, "ruler": 88.0}.get(family, 50.0)
    return min(100.0, full * factor)


def plausible_score(
    family: str,
    model: str,
    pruner: str,
    tokens: float,
    bits: int,
    window: int = 8192,
    quant: str = "kivi",
    group_size: int = 64,
    length: int | None = None,
    layer_config: str | None = None,
) -> float:
    """Score of a compressed run: falls with fewer tokens (log), slightly with precision, collapses at 2 bits."""
    base = model_base(model, family)
    retrieval = family in ("niah", "ruler")
    if pruner == "none":
        kept = 1.0
    else:
        ratio = min(1.0, tokens / window)
        quality = PRUNER_QUALITY.get(pruner, 0.8)
        loss = (1 - quality) * (0.7 if retrieval else 0.25) + (0.07 if retrieval else 0.02) * -math.log2(
            ratio
        )
        kept = max(0.05, 1 - loss)
    precision = {16: 1.0, 8: 0.998, 4: 0.975, 2: 0.45}.get(bits, 1.0)
    if quant.endswith("_rot"):  # a rotation spreads outliers: half of the precision loss is recovered
        precision = 1 - (1 - precision) / 2
        quant = quant[: -len("_rot")]
    precision *= {"kivi": 1.0, "kivi_outlier": 1.002, "flexgen": 0.985, "flexgen_outlier": 0.995}.get(
        quant, 1.0
    )
    precision *= {32: 1.005, 64: 1.0, 128: 0.985}.get(group_size, 1.0) if bits < 16 else 1.0
    if family == "ruler" and length:
        precision *= 1 - 0.06 * math.log2(length / 4096)
    if layer_config:
        # Switching layers to higher precision and fewer tokens hurts, most in the middle layers.
        layer_bits, layers = layer_config.split("bit@")
        first, last = (int(x) for x in layers.split("-"))
        middle = 1 - abs((first + last) / 2 - 15.5) / 15.5
        drop = (0.01 if layer_bits == "8" else 0.04) * (1 + 3 * middle) * (2.5 if retrieval else 1.0)
        precision *= 1 - drop
    return round(base * kept * precision, 4)


def crossentropy(tokens: float, bits: int, pruner: str, window: int = 8192) -> float:
    """Mean cross-entropy (nats): 1.9 uncompressed, growing faster as compression increases."""
    kept = 1.0 if pruner == "none" else min(1.0, tokens / window)
    ce = (
        1.9
        + 0.9 * (1 - kept) ** 3 * (1 if pruner == "none" else 1.2)
        + 0.5 * max(0.0, -math.log2(kept)) ** 1.5 / 8
    )
    ce += {16: 0.0, 8: 0.005, 4: 0.05, 3: 0.25, 2: 1.1}.get(bits, 0.0)
    return round(ce, 4)


@dataclass
class RunSpec:
    """One fabricated run's configuration (the key fields of metrics.json) and how to fabricate it."""

    benchmark: str
    model: str = "llama3_8b_instruct"
    pruner: str = "snapkv"
    quant: str = "kivi"
    bits: int = 16
    group_size: int = 64
    tokens: int | None = None
    budget: float | None = None
    budget_mode: str = "nominal"
    benchmark_length: int | None = None
    layer_config: str | None = None
    tiers: str | None = None
    compat: str = "methods"
    score_from_samples: bool = False
    """True: metrics' score is the mean of the per-task mean sample scores, as the runner computes it."""
    experiment: str | None = None
    samples: int = 12
    score: float | None = None
    complete: bool = True
    failed: int = 0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        for family in ("longbench_e", "longbench", "niah", "ruler", "crossentropy"):
            if self.benchmark.startswith(family):
                return family
        return self.benchmark

    @property
    def window(self) -> int:
        if self.family == "ruler" and self.benchmark_length:
            return self.benchmark_length
        return FULL_CACHE.get(self.model, 8192)

    @property
    def tokens_effective(self) -> float:
        if self.tokens is not None:
            return float(self.tokens)
        if self.budget is not None:
            return self.budget * self.window * 16 / self.bits
        return float(self.window)


def _config(spec: RunSpec) -> dict[str, Any]:
    """A resolved config shaped like a Hydra one (groups with ``name``; compression knobs nested)."""
    return {
        "model": {
            "name": spec.model,
            "dtype": "bfloat16",
            "context_window": FULL_CACHE.get(spec.model, 8192),
        },
        "full_cache_tokens": spec.window,
        "pruner": {"name": spec.pruner, "window": 32},
        "quant": {"name": spec.quant, "bits": spec.bits, "group_size": spec.group_size},
        "benchmark": {"name": spec.benchmark, "length": spec.benchmark_length, "num_samples": spec.samples},
        "compress": {
            "tokens": spec.tokens,
            "budget": spec.budget,
            "budget_mode": spec.budget_mode,
            "layer_config": spec.layer_config,
        },
        "experiment": spec.experiment,
        "compat": spec.compat,
        "seed": 0,
    }


def _overrides(spec: RunSpec) -> list[str]:
    out = [
        f"benchmark={spec.benchmark}",
        f"model={spec.model}",
        f"pruner={spec.pruner}",
        f"quant={spec.quant}",
        f"quant.bits={spec.bits}",
    ]
    if spec.tokens is not None:
        out.append(f"compress.tokens={spec.tokens}")
    if spec.budget is not None:
        out.append(f"compress.budget={spec.budget}")
    if spec.compat != "methods":
        out.append(f"compat={spec.compat}")
    return out


def _sample_records(spec: RunSpec, score: float, rng: random.Random) -> list[dict[str, Any]]:
    records = []
    kv_full = 131072 * min(spec.window, 6000)
    kv = (
        kv_full
        * min(1.0, spec.tokens_effective / min(spec.window, 6000))
        * spec.bits
        / 16
        * (1.06 if spec.bits < 16 else 1.0)
    )
    if spec.family == "niah":
        lengths = spec.extra.get("lengths") or [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]
        depths = spec.extra.get("depths") or [0, 25, 50, 75, 100]
        grid = [(n, d) for n in lengths for d in depths]
        for i in range(spec.samples):
            n, d = grid[i % len(grid)]
            # Retrieval fails more for long contexts and middle depths when the cache is small.
            difficulty = (n / max(lengths)) * (1 - abs(d - 50) / 60)
            p = min(1.0, max(0.0, score / 100 + 0.35 - 0.7 * difficulty))
            records.append(
                {
                    "id": f"niah-{n}-{d}-{i}",
                    "task": "niah",
                    "extra": {"context_length": n, "depth": d},
                    "length": n,
                    "score": 100.0 if rng.random() < p else 0.0,
                }
            )
    else:
        tasks = spec.extra.get("tasks") or (
            [t for c in CATEGORIES for t in TASKS[c]]
            if spec.family.startswith("longbench")
            else [spec.family]
        )
        for i in range(spec.samples):
            length = rng.choice([2500, 6000, 11000])
            records.append(
                {
                    "id": f"{spec.family}-{i}",
                    "task": tasks[i % len(tasks)],
                    "extra": {},
                    "length": length,
                    "score": round(min(100.0, max(0.0, rng.gauss(score, 8))), 2),
                }
            )
    for i, record in enumerate(records):
        failed = i < spec.failed
        record.update(
            status="failed" if failed else "ok",
            error="CUDA out of memory" if failed else None,
            prediction="" if failed else "The best thing to do in San Francisco is eat a sandwich.",
            answers=["eat a sandwich and sit in Dolores Park on a sunny day"],
            input_tokens=record["length"],
            kept_tokens=min(record["length"], spec.tokens_effective),
            kv_bytes=int(kv),
            kv_bytes_full=int(kv_full),
            seconds=round(rng.uniform(0.5, 2.0), 3),
        )
        if failed:
            record["score"] = None
    return records


def write_run(
    folder: str | os.PathLike[str], spec: RunSpec, mtime: float | None = None, hydra: bool = True
) -> Path:
    """Write one run folder; returns it. ``mtime`` sets the modification time of metrics.json (for duplicates)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed * 7919 + hash((spec.benchmark, spec.model, spec.pruner, spec.bits)) % 1000)
    family = spec.family
    if spec.score is not None:
        score = spec.score
    elif family == "crossentropy":
        score = crossentropy(spec.tokens_effective, spec.bits, spec.pruner, spec.window)
    else:
        score = plausible_score(
            family,
            spec.model,
            spec.pruner,
            spec.tokens_effective,
            spec.bits,
            spec.window,
            spec.quant,
            spec.group_size,
            spec.benchmark_length,
            spec.layer_config,
        )
        if spec.compat == "paper":  # the paper's code computes slightly different windows: a small shift
            score = round(score * 0.97, 4)
    records = _sample_records(spec, score if family != "crossentropy" else 50.0, rng)
    n_done = len(records) if spec.complete else max(1, len(records) // 3)
    with (folder / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for record in records[:n_done]:
            handle.write(json.dumps(record) + "\n")
    if hydra:
        (folder / ".hydra").mkdir(exist_ok=True)
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(_config(spec)), encoding="utf-8")
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(_overrides(spec)), encoding="utf-8")
    if not spec.complete:
        return folder
    ok = [r for r in records if r["status"] == "ok"]
    by_task: dict[str, list[float]] = {}
    for r in ok:
        by_task.setdefault(r["task"], []).append(r["score"])
    task_scores = {t: sum(v) / len(v) for t, v in by_task.items()}
    if spec.score_from_samples and task_scores:
        score = sum(task_scores.values()) / len(task_scores)
    metrics: dict[str, Any] = {
        "benchmark": family,  # as the runner does: the family; the variant is in config.benchmark.name
        "benchmark_length": spec.benchmark_length,
        "model": spec.model,
        "pruner": spec.pruner,
        "quant": spec.quant,
        "bits": spec.bits,
        "group_size": spec.group_size,
        "tokens": spec.tokens,
        "budget": spec.budget,
        "budget_mode": spec.budget_mode,
        "tokens_effective": spec.tokens_effective,
        "layer_config": spec.layer_config,
        "tiers": spec.tiers,
        "compat": spec.compat,
        "experiment": spec.experiment,
        "score": score,
        "task_scores": task_scores,
        "category_scores": {},
        "length_scores": {},
        "kv_bytes": sum(r["kv_bytes"] for r in records) / len(records),
        "kv_bytes_full": sum(r["kv_bytes_full"] for r in records) / len(records),
        "samples": len(ok),
        "failed": spec.failed,
        "seconds": round(sum(r["seconds"] for r in records), 2),
        "config": _config(spec),
    }
    if family.startswith("longbench"):
        offsets = {
            "single_doc_qa": -8,
            "multi_doc_qa": -6,
            "summarization": -15,
            "few_shot": 26,
            "synthetic": -3,
            "code": 15,
        }
        metrics["category_scores"] = {
            c: round(score + o + rng.uniform(-0.5, 0.5), 3) for c, o in offsets.items()
        }
    if family == "longbench_e":
        metrics["length_scores"] = {
            "0-4k": round(score + 3, 3),
            "4-8k": round(score, 3),
            "8k+": round(score - 4, 3),
        }
    path = folder / "metrics.json"
    path.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return folder


class Sweep:
    """Writes runs as Hydra multirun jobs: ``ROOT/multirun/DATE/TIME/N``."""

    def __init__(
        self, root: str | os.PathLike[str], date: str = "2025-05-01", time: str = "10-00-00"
    ) -> None:
        self.root = Path(root)
        self.date, self.time = date, time
        self.count = 0
        self.folders: list[Path] = []

    def add(self, spec: RunSpec, **kwargs: Any) -> Path:
        folder = self.root / "multirun" / self.date / self.time / str(self.count)
        self.count += 1
        self.folders.append(write_run(folder, spec, **kwargs))
        return folder


BUDGETS = (1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)
SETTINGS = (16, 8, 4)


def fabricate_sweep(
    root: str | os.PathLike[str], *, full: bool = False, partial: bool = True, duplicate: bool = True
) -> dict[str, Any]:
    """Write a sweep covering every table and figure; returns what it wrote (paths of special folders).

    ``full=False`` writes a compact sweep (seconds, for tests); ``full=True`` the paper's grids (for looking at
    the figures). Both include Table 1 cells that match the paper, a partial run (``partial``) and a configuration
    run twice on a second "machine" (``duplicate``), whose older copy has a different score.
    """
    root = Path(root)
    samples = 40 if full else 10
    info: dict[str, Any] = {}
    main = Sweep(root / "machine_a", time="10-00-00")
    # Table 1 (tokens x bits x pruner), Llama-3-8B-Instruct, LongBench and NIAH.
    pruners = (
        ("streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv") if full else ("snapkv", "pyramidkv")
    )
    tokens_list = (128, 512, 2048) if full else (128, 512)
    for bench in ("longbench", "niah"):
        for pruner in pruners:
            quant = "flexgen" if pruner in ("adakv", "headkv") else "kivi"
            for tokens in tokens_list:
                for bits in (16, 8, 4, 2):
                    if not full and bench == "niah" and tokens == 512 and bits == 2 and pruner == "pyramidkv":
                        continue  # a hole: Table 1 must show it as missing
                    main.add(
                        RunSpec(
                            bench,
                            pruner=pruner,
                            quant=quant,
                            tokens=tokens,
                            bits=bits,
                            experiment="table1",
                            samples=samples,
                        )
                    )
    # Figure 2 (budget x setting), both models, SnapKV and PyramidKV; LongBench runs give Table 2's categories.
    models = ("llama3_8b_instruct", "mistral_7b_instruct_v02")
    budgets = BUDGETS if full else (1 / 64, 1 / 16)
    fig2 = Sweep(root / "machine_a", time="11-00-00")
    for model in models:
        for pruner in ("snapkv", "pyramidkv"):
            for bench in ("longbench", "niah"):
                for budget in budgets:
                    for bits in SETTINGS:
                        fig2.add(
                            RunSpec(
                                bench,
                                model=model,
                                pruner=pruner,
                                budget=budget,
                                bits=bits,
                                experiment="fig2",
                                samples=samples,
                            )
                        )
    # Table 2's RULER-8k and Figure 3 (RULER 4k/8k/16k, LongBench-E), PyramidKV at 1/16.
    fig3 = Sweep(root / "machine_b", date="2025-05-02", time="09-00-00")
    for model in models:
        for bits in SETTINGS:
            for length in (4096, 8192, 16384):
                name = (
                    "ruler" if length == 4096 else f"ruler_{length // 1024}k"
                )  # as conf/benchmark names them
                fig3.add(
                    RunSpec(
                        name,
                        model=model,
                        pruner="pyramidkv",
                        budget=1 / 16,
                        bits=bits,
                        benchmark_length=length,
                        experiment="fig3",
                        samples=samples,
                    )
                )
            fig3.add(
                RunSpec(
                    "longbench_e",
                    model=model,
                    pruner="pyramidkv",
                    budget=1 / 16,
                    bits=bits,
                    experiment="fig3",
                    samples=samples,
                )
            )
    # Table 3: group sizes, 512 tokens 4-bit KIVI.
    for model in models:
        for pruner in ("snapkv", "pyramidkv"):
            for group in (32, 64, 128):
                fig3.add(
                    RunSpec(
                        "longbench",
                        model=model,
                        pruner=pruner,
                        tokens=512,
                        bits=4,
                        group_size=group,
                        experiment="table3",
                        samples=samples,
                    )
                )
    # Figure 10: quantization strategies, 512 tokens 4-bit (KIVI g64 comes from Table 3's runs).
    for model in models:
        for pruner in ("snapkv", "pyramidkv"):
            for quant in ("flexgen", "flexgen_outlier", "kivi_outlier"):
                fig3.add(
                    RunSpec(
                        "longbench",
                        model=model,
                        pruner=pruner,
                        quant=quant,
                        tokens=512,
                        bits=4,
                        experiment="fig10",
                        samples=samples,
                    )
                )
            fig3.add(
                RunSpec(
                    "longbench",
                    model=model,
                    pruner=pruner,
                    tokens=512,
                    bits=16,
                    experiment="fig10",
                    samples=samples,
                )
            )
    # Figure 4: model scale, base and instruct, PyramidKV at 1/64.
    scale_models = ("llama32_1b", "llama32_3b", "llama3_8b", "llama3_70b")
    for name in scale_models:
        for variant in ("_base", "_instruct") if full else ("_instruct",):
            for bits in SETTINGS:
                fig3.add(
                    RunSpec(
                        "longbench",
                        model=name + variant,
                        pruner="pyramidkv",
                        budget=1 / 64,
                        bits=bits,
                        experiment="fig4",
                        samples=samples,
                    )
                )
    # Figure 9: layer-wise configurations against the 4x4 baseline (SnapKV, 1/64), LongBench and RULER-4k.
    ranges = ("0-3", "4-11", "12-19", "20-27", "28-31") if full else ("0-3", "4-11", "28-31")
    for bench, length in (("longbench", None), ("ruler", 4096)):
        fig3.add(
            RunSpec(
                bench,
                pruner="snapkv",
                budget=1 / 64,
                bits=4,
                benchmark_length=length,
                experiment="fig9",
                samples=samples,
            )
        )
        for bits in (8, 16):
            for layers in ranges:
                fig3.add(
                    RunSpec(
                        bench,
                        pruner="snapkv",
                        budget=1 / 64,
                        bits=4,
                        benchmark_length=length,
                        layer_config=f"{bits}bit@{layers}",
                        experiment="fig9",
                        samples=samples,
                    )
                )
    # Figure 1: cross-entropy against compression ratio.
    for tokens in (256, 512, 1024, 2048, 4096):
        fig3.add(
            RunSpec(
                "crossentropy",
                pruner="snapkv",
                tokens=tokens,
                bits=16,
                benchmark_length=8192,
                experiment="fig1",
                samples=4,
            )
        )
    for bits in (8, 4, 2):
        fig3.add(
            RunSpec(
                "crossentropy",
                pruner="none",
                tokens=None,
                bits=bits,
                benchmark_length=8192,
                experiment="fig1",
                samples=4,
            )
        )
        for tokens in (512, 1024, 2048, 4096):
            fig3.add(
                RunSpec(
                    "crossentropy",
                    pruner="snapkv",
                    tokens=tokens,
                    bits=bits,
                    benchmark_length=8192,
                    experiment="fig1",
                    samples=4,
                )
            )
    fig3.add(
        RunSpec(
            "crossentropy",
            pruner="none",
            tokens=None,
            bits=16,
            benchmark_length=8192,
            experiment="fig1",
            samples=4,
        )
    )
    # Compat modes side by side (a benchmark no other artefact reads, kept tokens) and rotated quantization
    # against its unrotated quantizer (one budget: Figure 2 leaves a single-budget panel out).
    side = Sweep(root / "machine_b", date="2025-05-02", time="12-00-00")
    for mode in ("methods", "paper"):
        for bits in (16, 4):
            side.add(
                RunSpec("passkey", model="smollm2_135m", tokens=256, bits=bits, compat=mode, samples=samples)
            )
    for quant, bits in (("kivi", 16), ("kivi", 4), ("kivi", 2), ("kivi_rot", 4), ("kivi_rot", 2)):
        side.add(
            RunSpec("passkey", model="smollm2_135m", quant=quant, budget=1 / 32, bits=bits, samples=samples)
        )
    # precision per token (quant.tiers) beside one precision at the same budget
    side.add(RunSpec("passkey", model="smollm2_135m", budget=1 / 32, bits=4, tiers="0.2x8+0.4x4+0.4x2",
                     samples=samples))
    # a quantizer beyond the paper's (the quantizers table) at the budget of KIVI's runs above
    side.add(RunSpec("passkey", model="smollm2_135m", quant="kvquant", budget=1 / 32, bits=2, samples=samples))
    if partial:
        extra = Sweep(root / "machine_b", date="2025-05-03", time="08-00-00")
        info["partial"] = extra.add(
            RunSpec(
                "ruler",
                model="mistral_7b_instruct_v02",
                pruner="snapkv",
                budget=1 / 128,
                bits=4,
                benchmark_length=8192,
                samples=samples,
                complete=False,
            )
        )
    if duplicate:
        # The same Table 1 configuration run on machine B one day earlier with another score: older, not kept.
        other = Sweep(root / "machine_b", date="2025-04-30", time="23-00-00")
        spec = RunSpec(
            "longbench",
            pruner="snapkv",
            tokens=512,
            bits=4,
            experiment="table1",
            samples=samples,
            score=12.345,
        )
        info["duplicate_old"] = other.add(spec, mtime=1_700_000_000.0)
        info["duplicate_spec"] = spec
    info["root"] = root
    return info


SMOLLM2_NIAH = {"lengths": [1000, 2500, 4000, 5500, 7000], "depths": [0, 25, 50, 75, 100]}
RULER_SMALL_TASKS = ["niah_single_2", "niah_single_3", "niah_multivalue", "niah_multiquery"]


def smollm2_sweep(
    root: str | os.PathLike[str],
    *,
    compat: tuple[str, ...] = ("methods", "paper"),
    budgets: tuple[float, ...] = BUDGETS,
    rotation: bool = True,
    niah: str = "niah",
) -> Path:
    """The SmolLM2-135M sweeps of the lead's GPU session, fabricated: Figure 2 (NIAH, 25 samples, and the RULER
    subset ``ruler_small``, 4 per task; SnapKV and PyramidKV; ``budgets``; 1x16 / 2x8 / 4x4; KIVI) in each mode of
    ``compat``, and with ``rotation`` KIVI against ``kivi_rot`` (SnapKV, 1/32 and 1/16, 1x16 to 8x2, methods)."""
    sweep = Sweep(root, time="12-00-00")
    benches = ((niah, None, {**SMOLLM2_NIAH}, 25), ("ruler_small", 4096, {"tasks": RULER_SMALL_TASKS}, 16))
    grids = [
        ("fig2_smollm2", "kivi", mode, pruner, budgets, SETTINGS)
        for mode in compat
        for pruner in ("snapkv", "pyramidkv")
    ]
    if rotation:
        grids += [
            ("rotation", quant, "methods", "snapkv", (1 / 32, 1 / 16), (16, 8, 4, 2))
            for quant in ("kivi", "kivi_rot")
        ]
    for experiment, quant, mode, pruner, grid_budgets, grid_bits in grids:
        for bench, length, extra, samples in benches:
            for budget in grid_budgets:
                for bits in grid_bits:
                    sweep.add(
                        RunSpec(
                            bench,
                            model="smollm2_135m",
                            pruner=pruner,
                            quant=quant,
                            budget=budget,
                            bits=bits,
                            benchmark_length=length,
                            compat=mode,
                            experiment=experiment,
                            samples=samples,
                            extra=extra,
                            score_from_samples=True,
                        )
                    )
    return Path(root)


def throughput_csv(path: str | os.PathLike[str], *, repeat: bool = True) -> Path:
    """A throughput benchmark CSV in the format of docs/report.md (Mistral, SnapKV + KIVI, like Table 4)."""
    path = Path(path)
    rows = ["model,tokens,bits,batch,tokens_per_s,kv_bytes_per_item,device,command,date"]
    for tokens, bits, tps, kv in (
        (128, 16, (640.0, 1450.0, 1650.0), 18.1e6),
        (256, 8, (570.0, 1260.0, 1400.0), 19.0e6),
        (512, 4, (550.0, 1300.0, 1490.0), 20.3e6),
    ):
        for batch, value in zip((64, 96, 128), tps):
            rows.append(
                f"mistral_7b_instruct_v02,{tokens},{bits},{batch},{value},{kv},NVIDIA H100,"
                f"python scripts/throughput.py tokens={tokens} bits={bits} batch={batch},2025-05-04"
            )
    if repeat:  # an earlier, slower measurement of one cell: the later date wins
        rows.append(
            "mistral_7b_instruct_v02,128,16,64,100.0,18.1e6,NVIDIA H100,python scripts/throughput.py,"
            "2025-05-01"
        )
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
