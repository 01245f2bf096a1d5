"""Prefill once, decode many (:mod:`qpruning.grouped`, :mod:`qpruning.prefill`): a group of runs sharing each
sample's prefill writes the same folders as the same runs one by one."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch
from slurm_cluster import SlurmCluster, run_bounded, slurm_cluster_fixture  # noqa: F401  (the fixture)
from test_config import compose_config

from qpruning.app import runner_from_config
from qpruning.grouped import GroupRunner, group_runners, run_grouped
from qpruning.prefill import SharedPrefill
from qpruning.runner import read_predictions
from qpruning.transformers_api import cache_kwargs

FAST = ["model=tiny_llama", "benchmark=niah_small", "benchmark.lengths=[600]", "benchmark.depths=[0,100]",
        "budget=null", "tokens=128", "limit=2", "benchmark.max_new_tokens=12"]
GRID = [[f"pruner={p}", f"bits={b}", f"compat={c}"]
        for p, b, c in itertools.product(("snapkv", "pyramidkv", "h2o", "streamingllm"), (16, 4),
                                         ("methods", "paper"))]
TIMINGS = {"seconds"}


def runners(root: Path, grid=GRID, extra=()):
    return [runner_from_config(compose_config([*FAST, *extra, *job]), root / "-".join(j.split("=")[1] for j in job))
            for job in grid]


def records(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_predictions(folder / "predictions.jsonl")]


def metrics(folder: Path) -> dict:
    return {k: v for k, v in json.loads((folder / "metrics.json").read_text()).items() if k not in TIMINGS}


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_by_one")
    loaded = None
    for runner in runners(root):
        loaded = loaded or runner.model.load()
        runner.preloaded = loaded  # the same weights as a fresh load (tiny models are built from a seed), faster
        runner.run()
    return root


def test_a_group_writes_the_same_predictions_and_metrics_as_runs_one_by_one(one_by_one, tmp_path, caplog):
    group = runners(tmp_path)
    assert len(group_runners(group)) == 1
    with caplog.at_level("DEBUG", logger="qpruning.evaluator"):
        GroupRunner(group).run()
    messages = [r.getMessage() for r in caplog.records]
    assert any("one prefill of" in m for m in messages)
    assert not any("decoded as one batch" in m or "decoded alone" in m for m in messages)  # batch_decode is off
    for runner in group:
        reference = one_by_one / runner.output_dir.name
        assert records(runner.output_dir) == records(reference), runner.output_dir.name
        assert len(records(reference)) == 2
        assert metrics(runner.output_dir) == metrics(reference)
    kv_bytes = {tuple(r["kv_bytes"] for r in records(runner.output_dir)) for runner in group}
    assert len(kv_bytes) > 1  # each run compressed its own cache


def test_batched_decoding_keeps_each_runs_compression_and_here_its_tokens(one_by_one, tmp_path, caplog):
    group = runners(tmp_path)
    with caplog.at_level("DEBUG", logger="qpruning.evaluator"):
        GroupRunner(group, batch_decode=True).run()
    batched = [r.getMessage() for r in caplog.records if "decoded as one batch" in r.getMessage()]
    assert batched and all(" runs decoded" in m for m in batched)
    for runner in group:
        reference = records(one_by_one / runner.output_dir.name)
        found = records(runner.output_dir)
        assert [(r["kept_tokens"], r["kv_bytes"]) for r in found] == [(r["kept_tokens"], r["kv_bytes"]) for r in reference]
        # float32 on this grid: every token as one by one (a batch may differ in the last bits elsewhere)
        assert found == reference, runner.output_dir.name


def batched_and_alone(tmp_path, grid, caplog) -> tuple[list, list, list[str]]:
    """``grid`` run one by one and as one group with batched decoding: (group, alone, the group's debug lines)."""
    alone = runners(tmp_path / "alone", grid)
    loaded = alone[0].model.load()
    for runner in alone:
        runner.preloaded = loaded
        runner.run()
    group = runners(tmp_path / "batched", grid)
    with caplog.at_level("DEBUG", logger="qpruning.evaluator"):
        GroupRunner(group, batch_decode=True).run()
    return group, alone, [r.getMessage() for r in caplog.records]


def test_rotated_runs_decoded_as_one_batch_give_the_tokens_of_runs_one_by_one(tmp_path, caplog):
    grid = [[f"pruner={p}", f"tokens={t}", "quant=kivi_rot", "bits=4"]
            for p, t in itertools.product(("snapkv", "streamingllm"), (64, 128))]
    group, alone, messages = batched_and_alone(tmp_path, grid, caplog)
    assert any("4 runs decoded as one batch" in m for m in messages)
    for runner, reference in zip(group, alone):
        assert records(runner.output_dir) == records(reference.output_dir), runner.output_dir.name
    assert len({tuple(r["kv_bytes"] for r in records(runner.output_dir)) for runner in group}) > 1


def test_a_batch_of_mixed_layouts_decodes_the_runs_that_stack_together(tmp_path, caplog, monkeypatch):
    # PyramidKV's per-layer counts are not multiples of KIVI's 64-token key groups: its layers keep 16-bit tails,
    # and its caches do not stack with SnapKV's; the SnapKV runs still decode as one batch, each PyramidKV run alone
    # from the cache filled to try the stack (not compressed a second time).
    fills = []
    original = SharedPrefill.fill

    def counting(self, compressor, cache):
        fills.append(compressor.describe())
        return original(self, compressor, cache)

    monkeypatch.setattr(SharedPrefill, "fill", counting)
    grid = [[f"pruner={p}", f"tokens={t}", "bits=4"] for p, t in itertools.product(("snapkv", "pyramidkv"), (64, 128))]
    group, alone, messages = batched_and_alone(tmp_path, grid, caplog)
    assert any("2 runs decoded as one batch" in m for m in messages)
    assert not any("4 runs decoded as one batch" in m for m in messages)
    assert any("decoded alone" in m for m in messages)
    samples = len(records(group[0].output_dir))
    assert len(fills) == len(grid) * samples and len(set(fills)) == len(grid)  # each run's cache filled once a sample
    for runner, reference in zip(group, alone):
        assert records(runner.output_dir) == records(reference.output_dir), runner.output_dir.name


@pytest.fixture
def recorded_prefills(monkeypatch) -> list[SharedPrefill]:
    """Every :class:`SharedPrefill` recorded during the test, in order."""
    recorded = []
    original = SharedPrefill.record.__func__

    def recording(cls, *args, **kwargs):
        recorded.append(original(cls, *args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(SharedPrefill, "record", classmethod(recording))
    return recorded


def test_a_group_does_only_what_each_run_still_lacks(one_by_one, tmp_path, recorded_prefills):
    group = runners(tmp_path, GRID[:3])
    half = group[1].predictions_path
    half.parent.mkdir(parents=True)
    half.write_text((one_by_one / group[1].output_dir.name / "predictions.jsonl").read_text().splitlines()[0] + "\n")
    group[2].run()
    done_at = group[2].metrics_path.stat().st_mtime_ns
    GroupRunner(group).run()
    recorded = recorded_prefills
    # sample 1: only the first run lacks it (no prefill to share); sample 2: the first two runs share one prefill
    assert [prefill.sharers for prefill in recorded] == [2]
    assert group[2].metrics_path.stat().st_mtime_ns == done_at
    for runner in group:
        assert records(runner.output_dir) == records(one_by_one / runner.output_dir.name)


def test_a_group_without_h2o_keeps_only_the_window_queries_and_writes_the_same_files(one_by_one, tmp_path,
                                                                                      recorded_prefills):
    grid = [job for job in GRID if job[0] != "pruner=h2o"]  # SnapKV, PyramidKV, StreamingLLM; both modes
    group = runners(tmp_path, grid)
    GroupRunner(group).run()
    kept = [{(tuple(layer.query_tail.shape), tuple(layer.key.shape)) for layer in prefill.layers}
            for prefill in recorded_prefills]
    windows = {runner.compressor.pruner.queries_read for runner in group}
    assert len(kept) == 2 and max(windows) < 600
    for shapes in kept:  # one shape per layer kind; queries cut to the largest window of the group
        assert {query[2] for query, _ in shapes} == {max(windows)}
        assert all(key[2] > max(windows) for _, key in shapes)
    for runner in group:
        assert records(runner.output_dir) == records(one_by_one / runner.output_dir.name), runner.output_dir.name


def test_runs_of_other_models_or_samples_make_their_own_groups(tmp_path):
    base = runners(tmp_path / "a", GRID[:2])
    other_limit = runners(tmp_path / "b", GRID[:1], extra=["limit=1"])
    other_model = runners(tmp_path / "c", GRID[:1], extra=["model=tiny_mistral"])
    groups = group_runners([base[0], other_limit[0], base[1], other_model[0]])
    assert [[r.output_dir for r in g] for g in groups] == [
        [base[0].output_dir, base[1].output_dir], [other_limit[0].output_dir], [other_model[0].output_dir]]
    with pytest.raises(ValueError, match="different limit"):
        GroupRunner([base[0], other_limit[0]])


def test_run_grouped_returns_each_runs_metrics_in_order(one_by_one, tmp_path):
    group = runners(tmp_path, GRID[:2])
    results = run_grouped([group[1], group[0]])
    assert [r["compat"] for r in results] == ["paper", "methods"]


def test_a_replayed_prefill_builds_the_cache_the_model_builds_in_line(tiny_models):
    model, tokenizer = tiny_models("llama")
    runner = runner_from_config(compose_config([*FAST, "pruner=h2o", "bits=4"]), Path("unused"))
    ids = torch.randint(0, 1000, (1, 300), generator=torch.Generator().manual_seed(0))
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        prefill = SharedPrefill.record(model, runner.compressor, ids, kwargs)
        caches, outputs = [], []
        for shared in (None, prefill):
            cache = runner.compressor.new_cache(model)
            with runner.compressor.attach(model), (shared.replayed(model, runner.compressor, cache) if shared
                                                   else torch.inference_mode()):
                outputs.append(model.generate(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(model, cache),
                                              **kwargs))
            caches.append(cache)
    assert torch.equal(outputs[0], outputs[1])
    assert caches[0].prefill_summary == caches[1].prefill_summary
    for inline, replayed in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(inline.kept_positions(), replayed.kept_positions())
    assert "forward" not in vars(model)  # the model is left as it was


@pytest.mark.parametrize("sliding", ["keep", "quantize"])
def test_a_group_of_runs_on_a_hybrid_model_writes_what_its_runs_write_one_by_one(tmp_path, sliding):
    grid = [[f"pruner={p}", f"bits={b}"] for p, b in (("snapkv", 4), ("pyramidkv", 4), ("snapkv", 16))]
    extra = ["model=tiny_gemma3", f"sliding={sliding}", "limit=1"]
    alone = runners(tmp_path / "alone", grid, extra)
    loaded = alone[0].model.load()
    for runner in alone:
        runner.preloaded = loaded
        runner.run()
    group = runners(tmp_path / "group", grid, extra)
    GroupRunner(group).run()
    for runner, reference in zip(group, alone):
        assert records(runner.output_dir) == records(reference.output_dir), runner.output_dir.name
        assert metrics(runner.output_dir)["kv_ratio_global"] < 1


def run_py(*overrides):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "run.py", *overrides], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_a_sweep_runs_grouped_by_default_and_writes_what_the_basic_launcher_writes(tmp_path):
    sweep = ["-m", "pruner=snapkv,h2o", "bits=4,16", *FAST]
    grouped = run_py(*sweep, f"output_root={tmp_path / 'grouped'}")
    basic = run_py(*sweep, "hydra/launcher=basic", f"output_root={tmp_path / 'basic'}")
    assert "grouped: one prefill per sample" in grouped.stdout + grouped.stderr
    assert "one prefill per sample" not in basic.stdout + basic.stderr
    assert grouped.stdout.count("[qpruning]") == basic.stdout.count("[qpruning]") == 4
    runs = sorted(p.parent.relative_to(tmp_path / "basic") for p in (tmp_path / "basic").rglob("metrics.json"))
    assert len(runs) == 4
    for run in runs:
        one, other = tmp_path / "basic" / run, tmp_path / "grouped" / run
        assert sorted(p.name for p in one.rglob("*")) == sorted(p.name for p in other.rglob("*"))
        assert records(other) == records(one)
        config = (other / ".hydra" / "config.yaml").read_text()
        assert config.replace(str(tmp_path / "grouped"), str(tmp_path / "basic")) == (one / ".hydra" / "config.yaml").read_text()
        log = (other / "run.log").read_text()
        assert f"Run {other}:" in log and log.count("Run ") == 1  # its own run's lines, not its group's others
        assert "one prefill per sample" in log and "score" in log


def test_the_qpruning_command_runs_a_sweep_grouped_from_any_folder(tmp_path):
    import os
    import subprocess

    # this checkout's package alone on the path (a link, as an installed package sees it), not its folder
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "qpruning").symlink_to(Path(__file__).resolve().parents[1] / "qpruning")
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(tmp_path / "path")}
    proc = subprocess.run([sys.executable, "-m", "qpruning.cli", "run", "-m", "pruner=snapkv,streamingllm", *FAST,
                           "limit=1", f"output_root={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "grouped: one prefill per sample" in proc.stdout + proc.stderr
    assert len(list((tmp_path / "out").rglob("metrics.json"))) == 2


def test_a_grouped_slurm_sweep_submits_one_slurm_job_per_group(slurm_cluster: SlurmCluster, tmp_path):
    sweep = tmp_path / "sweep"
    grouped = "hydra_plugins.qpruning_grouped_launcher.grouped_slurm_launcher.GroupedSlurmLauncher"
    cmd = [sys.executable, "run.py", "-m", *[o for o in FAST if not o.startswith("model=")], "bits=4,16",
           "model=tiny_llama,tiny_mistral",
           f"output_root={tmp_path}", *slurm_cluster.launcher_overrides(sweep), f"hydra.launcher._target_={grouped}"]
    proc = run_bounded(cmd, timeout_s=420, env=slurm_cluster.env(WANDB_MODE="offline"),
                       cwd=Path(__file__).resolve().parents[1])
    logs = slurm_cluster.job_logs(sweep / ".submitit")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:] + logs
    assert "as 2 Slurm jobs" in proc.stdout + proc.stderr
    assert len(list((sweep / ".submitit").glob("*_*/"))) == 2  # one Slurm array task per model
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert sorted((json.loads((r / "metrics.json").read_text())["model"], json.loads((r / "metrics.json").read_text())[
        "bits"]) for r in runs) == [("tiny_llama", 4), ("tiny_llama", 16), ("tiny_mistral", 4), ("tiny_mistral", 16)]
    assert all(len(records(r)) == 2 for r in runs)
    assert "one prefill per sample" in logs


def test_runs_of_a_group_that_log_to_wandb_each_get_their_own_run_at_the_end(tmp_path, monkeypatch):
    from wandb_records import summarize

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    group = runners(tmp_path, GRID[:2], extra=["logger=wandb", "logger.project=qpruning-test",
                                             "experiment_name=groupcheck"])
    GroupRunner(group).run()
    for runner in group:
        (run_file,) = list((runner.output_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        written = summarize(run_file)
        metrics = json.loads(runner.metrics_path.read_text())
        assert written["group"] == "groupcheck" and written["config"]["compat"] == metrics["compat"]
        assert written["summary"]["kv_bytes"] == metrics["kv_bytes"]
        assert written["history"]["samples_table/nrows"] == 2
