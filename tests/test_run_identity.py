"""A run folder's identity covers every input that changes results (the resolved configuration minus run control,
plus the contents of the files a run reads) and nothing else: a rerun never returns another configuration's
results, and a larger ``limit`` continues the same folder."""

from __future__ import annotations

import json

import pytest
from test_config import compose_config
from test_runner import FAST, run_py

from qpruning.identity import RUN_CONTROL_KEYS, run_hash

BASE = ["model=tiny_llama"]


def folder(*overrides: str) -> str:
    """The run folder name (``run_name``: model/benchmark/readable-name-hash), without the output root."""
    return compose_config([*BASE, *overrides]).run_name


# Each changes a result; each must give a new folder.
RESULT_AFFECTING = [
    ["bits=8"],
    ["group_size=32"],
    ["budget=0.125"],
    ["budget=null", "tokens=256"],
    ["budget_mode=exact"],
    ["full_cache_tokens=4096"],
    ['layers=[{layers: "0-1", bits: 16}]'],
    ["layer_config=mine"],
    ["storage_dtype=bfloat16"],
    ["kernel=off"],
    ["seed=1"],
    ["model=tiny_mistral"],
    ["model.dtype=bfloat16"],
    ["pruner=pyramidkv"],
    ["pruner.window=16"],
    ["pruner.kernel_size=5"],
    ["quant=flexgen"],
    ["quant.residual_length=32"],
    ["quant.tiers=[[0.5,8],[0.5,2]]"],
    ["quant.tiers=[[0.5,8],[0.5,4]]"],
    ["benchmark=ruler_small"],
    ["benchmark.lengths=[500]"],
    ["benchmark.max_new_tokens=20"],
    ["benchmark.chat_template=false"],
]


@pytest.mark.parametrize("overrides", RESULT_AFFECTING, ids=lambda o: " ".join(o))
def test_every_result_affecting_key_gives_a_new_folder(overrides):
    assert folder(*overrides) != folder()


@pytest.mark.parametrize(
    "overrides",
    [["limit=3"], ["logger=wandb"], ["logger=wandb", "logger.project=other"], ["output_root=/elsewhere"],
     ["experiment_name=mysweep"], ["+model.local_path=/models/copy"]],
    ids=lambda o: " ".join(o),
)
def test_run_control_keys_keep_the_folder(overrides):
    assert folder(*overrides) == folder()


def test_the_run_control_keys_are_listed_in_one_place():
    assert {"limit", "logger", "output_root", "hydra", "run_name", "experiment_name"} <= set(RUN_CONTROL_KEYS)


def test_the_contents_of_an_allocation_file_are_identity_not_its_path(tmp_path):
    allocation = tmp_path / "allocation.yaml"
    allocation.write_text("name: a\nsettings: [{layers: '0-1', bits: 4, tokens: 128}]\n")
    first = folder(f"allocation={allocation}")
    allocation.write_text("name: a\nsettings: [{layers: '0-1', bits: 8, tokens: 128}]\n")  # edited in place
    edited = folder(f"allocation={allocation}")
    assert first != edited != folder()
    copy = tmp_path / "elsewhere" / "copy.yaml"
    copy.parent.mkdir()
    copy.write_text(allocation.read_text())
    assert folder(f"allocation={copy}") == edited


def test_head_scores_and_data_folders_are_hashed_by_content(tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"scores": [[1.0, 2.0]]}))
    with_scores = folder("pruner=headkv", f"pruner.head_scores={scores}")
    scores.write_text(json.dumps({"scores": [[2.0, 1.0]]}))
    assert folder("pruner=headkv", f"pruner.head_scores={scores}") != with_scores
    data = tmp_path / "longbench"
    data.mkdir()
    (data / "qasper.jsonl").write_text('{"a": 1}\n')
    before = folder("benchmark=longbench_small", f"benchmark.data_dir={data}")
    (data / "qasper.jsonl").write_text('{"a": 2}\n')
    assert folder("benchmark=longbench_small", f"benchmark.data_dir={data}") != before


def test_the_folder_name_stays_readable():
    assert folder().startswith("tiny_llama/niah_small/snapkv-kivi-4bit-g64-b1_16-")


def test_a_larger_limit_continues_the_same_folder_and_a_rerun_returns_at_once(tmp_path):
    overrides = [*FAST, f"output_root={tmp_path}"]
    run_py(*overrides, "limit=1")
    (metrics_path,) = tmp_path.rglob("metrics.json")
    predictions = metrics_path.parent / "predictions.jsonl"
    first_line = predictions.read_text().splitlines()[0]
    assert json.loads(metrics_path.read_text())["limit"] == 1
    run_py(*overrides, "limit=2")
    assert list(tmp_path.rglob("metrics.json")) == [metrics_path]  # the same folder
    lines = predictions.read_text().splitlines()
    assert len(lines) == 2 and lines[0] == first_line  # the first sample was not run again
    metrics = json.loads(metrics_path.read_text())
    assert metrics["limit"] == 2 and metrics["samples"] == 2
    assert metrics_path.parent.name.endswith(metrics["run_hash"]) and metrics["run_hash"] == run_hash(metrics["config"])
    stamp = metrics_path.stat().st_mtime_ns
    smaller = run_py(*overrides, "limit=1")
    assert "complete already" in smaller.stdout + smaller.stderr
    assert metrics_path.stat().st_mtime_ns == stamp and len(predictions.read_text().splitlines()) == 2


def test_a_bad_line_in_the_middle_keeps_every_good_record_and_only_the_bad_sample_reruns(tmp_path):
    overrides = [*FAST, "benchmark.depths=[0,50,100]", f"output_root={tmp_path}", "limit=3"]
    run_py(*overrides)
    (metrics_path,) = tmp_path.rglob("metrics.json")
    predictions = metrics_path.parent / "predictions.jsonl"
    good = predictions.read_text().splitlines()
    metrics_path.unlink()
    predictions.write_text(good[0] + "\n" + good[1][:40] + "\n" + good[2] + "\n")
    proc = run_py(*overrides)
    assert "line 2" in proc.stderr + proc.stdout
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["id"] for r in records] == [json.loads(good[i])["id"] for i in (0, 2, 1)]
    assert records[0] == json.loads(good[0]) and records[1] == json.loads(good[2])
    assert (metrics_path.parent / "predictions.jsonl.rejected").read_text() == good[1][:40] + "\n"


def optimize_folder(*overrides: str) -> str:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from test_config import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("optimize", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.run.dir


def test_an_optimize_search_with_other_settings_never_shares_its_evaluation_cache():
    base = optimize_folder()
    for overrides in (["groups=3"], ["bits_choices=[4,8]"], ["calibration=[]"], ["transfer_fraction=0.5"]):
        assert optimize_folder(*overrides) != base, overrides
    assert optimize_folder("max_evaluations=100") == base  # a longer search continues the same folder
    assert optimize_folder("output_root=/elsewhere").endswith(base.split("outputs/", 1)[1])


def test_a_paper_run_names_the_revision_of_the_port_that_computed_it():
    """compat=paper's selection changed with issue 27 (the paper's topk call, scores in the model's dtype): a paper
    run folder made before is not resumed by the new code, while methods runs keep their folders."""
    from qpruning.identity import PAPER_REVISION, run_hash, run_identity

    base = {"model": {"name": "m"}, "pruner": {"name": "snapkv"}, "bits": 4}
    paper = {**base, "compat": "paper"}
    assert run_identity(paper)["paper_revision"] == PAPER_REVISION
    assert "paper_revision" not in run_identity({**base, "compat": "methods"})
    assert run_hash({**base, "compat": "methods"}) == run_hash(base)
    identity = {k: v for k, v in run_identity(paper).items() if k != "paper_revision"}
    import hashlib
    import json

    before = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[: len(run_hash(paper))]
    assert run_hash(paper) != before


def test_a_key_added_at_the_value_earlier_runs_had_leaves_their_folders_alone():
    """quant.tiers (precision per token) came after runs existed: at null it is not part of the identity."""
    base = {"model": {"name": "m"}, "quant": {"name": "kivi", "bits": 4}}
    assert run_hash({**base, "quant": {"name": "kivi", "bits": 4, "tiers": None}}) == run_hash(base)
    assert run_hash({**base, "quant": {"name": "kivi", "bits": 4, "tiers": [[0.5, 8], [0.5, 2]]}}) != run_hash(base)
