"""Collection: walking nested folders, the complete / partial / duplicate rules, keys from Hydra configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fabricate_runs import RunSpec, Sweep, write_run

from qpruning.report import KEY_FIELDS, collect_runs
from qpruning.report.collect import config_id, find_run_dirs, key_from_config


def test_collect_finds_every_run_folder_nested_like_hydra_multiruns(sweep, collection):
    written = {str(p.parent.resolve()) for p in sweep["root"].rglob("predictions.jsonl")}
    assert set(collection.all_runs["run_dir"]) == written
    assert all(len(Path(p).parts) > 4 and "multirun" in Path(p).parts for p in collection.all_runs["run_dir"])


def test_partial_run_is_listed_with_samples_done_and_never_used(sweep, collection):
    partial = collection.partial
    assert len(partial) == 1
    row = partial.iloc[0]
    assert row["run_dir"] == str(sweep["partial"].resolve())
    assert row["status"] == "partial"
    assert row["samples_done"] == 3  # a third of 10 samples
    # its configuration was read from .hydra/config.yaml
    assert row["benchmark"] == "ruler" and row["model"] == "mistral_7b_instruct_v02" and row["bits"] == 4
    assert row["benchmark_length"] == 8192 and row["budget"] == pytest.approx(1 / 128)
    assert "quant.bits=4" in row["overrides"]
    assert row["run_dir"] not in set(collection.runs["run_dir"])


def test_duplicate_configuration_keeps_the_most_recent_complete_run(sweep, collection):
    old = str(sweep["duplicate_old"].resolve())
    dups = collection.duplicates
    assert old in set(dups["run_dir"])
    row = dups[dups["run_dir"] == old].iloc[0]
    kept = collection.runs[collection.runs["config_id"] == row["config_id"]]
    assert len(kept) == 1  # one run per configuration key, never an average
    assert kept.iloc[0]["score"] != pytest.approx(12.345)
    assert kept.iloc[0]["mtime"] > row["mtime"]
    assert row["duplicate_of"] == kept.iloc[0]["run_path"]
    assert kept.iloc[0]["n_runs"] == row["n_runs"] >= 2


def test_runs_have_one_row_per_configuration_key(runs):
    assert runs["config_id"].is_unique
    assert (runs["status"] == "complete").all()


def test_overlapping_inputs_do_not_create_duplicates(sweep):
    root = sweep["root"]
    both = collect_runs([root, root / "machine_a", root / "machine_a" / "multirun"])
    once = collect_runs([root])
    assert len(both.all_runs) == len(once.all_runs)
    assert len(both.duplicates) == len(once.duplicates)


def test_two_machines_with_the_same_configuration_make_a_duplicate_not_an_average(tmp_path):
    spec = RunSpec(
        "niah", model="smollm2_135m", pruner="snapkv", budget=1 / 64, bits=4, score=70.0, samples=5
    )
    write_run(tmp_path / "a" / "run", spec, mtime=1_700_000_000)
    write_run(tmp_path / "b" / "run", RunSpec(**{**spec.__dict__, "score": 90.0}), mtime=1_700_000_100)
    c = collect_runs([tmp_path / "a", tmp_path / "b"])
    assert len(c.runs) == 1 and c.runs.iloc[0]["score"] == 90.0
    assert len(c.duplicates) == 1 and c.duplicates.iloc[0]["score"] == 70.0
    assert c.runs.iloc[0]["n_runs"] == 2


def test_a_partial_with_a_complete_twin_is_marked_superseded(tmp_path):
    spec = RunSpec("niah", model="smollm2_135m", pruner="snapkv", budget=1 / 64, bits=4, samples=6)
    write_run(tmp_path / "done", spec)
    write_run(tmp_path / "crashed", RunSpec(**{**spec.__dict__, "complete": False}))
    c = collect_runs([tmp_path])
    assert len(c.runs) == 1 and len(c.partial) == 1
    assert bool(c.partial.iloc[0]["superseded"])


def test_unreadable_metrics_makes_a_partial_run_and_a_problem(tmp_path):
    folder = write_run(tmp_path / "run", RunSpec("longbench", tokens=512, bits=4))
    (folder / "metrics.json").write_text("{not json", encoding="utf-8")
    c = collect_runs([tmp_path])
    assert len(c.runs) == 0 and len(c.partial) == 1
    assert c.problems and "unreadable" in c.problems[0]


def test_a_cut_last_line_of_predictions_is_skipped(tmp_path):
    folder = write_run(tmp_path / "run", RunSpec("niah", tokens=128, bits=16, samples=4, complete=False))
    with (folder / "predictions.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"id": "cut", "sco')
    c = collect_runs([tmp_path])
    assert c.partial.iloc[0]["samples_done"] == 1


def test_partial_run_counts_failed_samples_apart(tmp_path):
    write_run(tmp_path / "run", RunSpec("niah", tokens=128, bits=16, samples=9, failed=2, complete=False))
    row = collect_runs([tmp_path]).partial.iloc[0]
    assert (row["samples_done"], row["failed_done"]) == (1, 2)


def test_missing_fields_of_metrics_come_from_its_config(tmp_path):
    folder = write_run(tmp_path / "run", RunSpec("longbench", pruner="h2o", tokens=512, bits=8))
    metrics = json.loads((folder / "metrics.json").read_text())
    for name in ("pruner", "bits", "tokens"):
        del metrics[name]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    row = collect_runs([tmp_path]).runs.iloc[0]
    assert (row["pruner"], row["bits"], row["tokens"]) == ("h2o", 8, 512.0)


def test_key_from_config_reads_groups_and_nested_fields():
    config = {
        "model": {"name": "llama3_8b_instruct"},
        "pruner": {"name": "snapkv", "window": 32},
        "quant": {"name": "kivi", "bits": 4, "group_size": 64},
        "benchmark": {"name": "ruler", "length": 8192},
        "compress": {"budget": 0.015625, "tokens": None},
    }
    key = key_from_config(config)
    assert key == {
        "benchmark": "ruler",
        "benchmark_length": 8192,
        "model": "llama3_8b_instruct",
        "pruner": "snapkv",
        "quant": "kivi",
        "bits": 4,
        "group_size": 64,
        "budget": 0.015625,
    }
    assert key_from_config(None) == {}
    assert key_from_config({"bits": 8, "tokens": 128})["bits"] == 8


def test_config_id_treats_none_and_nan_alike():
    a = dict.fromkeys(KEY_FIELDS)
    b = {**a, "tokens": float("nan")}
    assert config_id(a) == config_id(b)


def test_find_run_dirs_skips_hidden_folders_and_warns_on_missing_paths(tmp_path, caplog):
    sweep = Sweep(tmp_path)
    sweep.add(RunSpec("niah", tokens=128, bits=16, samples=2))
    hidden = tmp_path / ".cache" / "run"
    write_run(hidden, RunSpec("niah", tokens=128, bits=8, samples=2))
    found = find_run_dirs([tmp_path, tmp_path / "nope"])
    assert len(found) == 1
    assert "does not exist" in caplog.text


def test_a_result_file_can_be_given_instead_of_a_folder(tmp_path):
    folder = write_run(tmp_path / "run", RunSpec("niah", tokens=128, bits=16, samples=2))
    c = collect_runs([folder / "metrics.json"])
    assert len(c.runs) == 1


def test_empty_input_gives_an_empty_collection(tmp_path):
    c = collect_runs([tmp_path])
    assert c.all_runs.empty and c.runs.empty and c.partial.empty and c.duplicates.empty


def test_the_configured_benchmark_variant_refines_the_recorded_family(tmp_path):
    # the runner writes benchmark="niah" in metrics.json and the variant in config.benchmark.name
    spec = RunSpec("niah_small", model="smollm2_135m", pruner="snapkv", budget=1 / 16, bits=4, samples=6)
    folder = write_run(tmp_path / "done", spec)
    assert json.loads((folder / "metrics.json").read_text())["benchmark"] == "niah"
    write_run(tmp_path / "crashed", RunSpec(**{**spec.__dict__, "complete": False}))
    c = collect_runs([tmp_path])
    assert c.runs.iloc[0]["benchmark"] == "niah_small" and c.runs.iloc[0]["family"] == "niah"
    assert c.partial.iloc[0]["benchmark"] == "niah_small" and bool(c.partial.iloc[0]["superseded"])
