"""The Hydra application (:mod:`qpruning.app`) and the library below it: run folders keep their names, an
allocation reaches the runner as a plain per-layer configuration, the run's identity is spelled once, and only the
application reads Hydra."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_config import compose_config

from qpruning.app import runner_from_config
from qpruning.errors import ConfigError
from qpruning.identity import KEY_FIELDS, RunLabels
from qpruning.optimize.allocation import Allocation, GroupSetting

PACKAGE = Path(__file__).resolve().parents[1] / "qpruning"

# Folder names (with their identity hash) of the default run and of `make demo`'s jobs, as computed on commit
# 14a4a4f, before the Hydra glue moved out of runner.py: moving code must not move anyone's results.
FOLDERS = {
    (): "smollm2_135m/niah_small/snapkv-kivi-4bit-g64-b1_16-8779a136",
    ("experiment=demo", "benchmark=niah_small", "bits=16"): "smollm2_135m/niah_small/snapkv-kivi-16bit-g64-b1_32-6b6317f5",
    ("experiment=demo", "benchmark=niah_small", "bits=8"): "smollm2_135m/niah_small/snapkv-kivi-8bit-g64-b1_32-f722757f",
    ("experiment=demo", "benchmark=niah_small", "bits=4"): "smollm2_135m/niah_small/snapkv-kivi-4bit-g64-b1_32-2f9beb7f",
    ("experiment=demo", "benchmark=ruler_small", "bits=16"):
        "smollm2_135m/ruler_small/snapkv-kivi-16bit-g64-b1_32-d88369a6",
    ("experiment=demo", "benchmark=ruler_small", "bits=8"): "smollm2_135m/ruler_small/snapkv-kivi-8bit-g64-b1_32-c2b3ebe1",
    ("experiment=demo", "benchmark=ruler_small", "bits=4"): "smollm2_135m/ruler_small/snapkv-kivi-4bit-g64-b1_32-20a29e73",
}


@pytest.mark.parametrize(("overrides", "folder"), FOLDERS.items())
def test_run_folders_are_named_as_before_the_application_moved(overrides, folder):
    assert compose_config(list(overrides)).run_name == folder


def test_an_allocation_reaches_the_runner_as_a_plain_layer_configuration(tmp_path):
    allocation = Allocation([GroupSetting(0, 14, 4, 96), GroupSetting(15, 29, 8, 48)], name="found",
                            meta={"budget": 0.03125})
    allocation.to_yaml(tmp_path / "allocation.yaml")
    configuration = Allocation.from_yaml(tmp_path / "allocation.yaml").configuration()
    assert (configuration.name, configuration.budget) == ("found", 0.03125)
    assert [(o.layers, o.bits, o.tokens) for o in configuration.layers] == [("0-14", 4, 96), ("15-29", 8, 48)]

    runner = runner_from_config(compose_config([f"allocation={tmp_path / 'allocation.yaml'}"]), tmp_path / "run")
    assert runner.compressor.layers == configuration.layers
    assert runner.compressor.budget == 0.03125 and runner.labels.layer_config == "found"


def test_an_allocation_with_rotated_groups_rotates_those_layers_in_the_run(tmp_path):
    allocation = Allocation([GroupSetting(0, 1, 2, 96, rotate=True), GroupSetting(2, 3, 8, 48)], name="rot",
                            meta={"budget": 0.03125})
    allocation.to_yaml(tmp_path / "allocation.yaml")
    runner = runner_from_config(
        compose_config(["model=tiny_llama", f"allocation={tmp_path / 'allocation.yaml'}"]), tmp_path / "run"
    )
    assert [o.rotate for o in runner.compressor.layers] == [True, None]
    plans = runner.compressor.plan(runner.model.load_config())
    assert [(p.bits, p.rotate) for p in plans] == [(2, True), (2, True), (8, False), (8, False)]


def test_metrics_carry_every_key_field_of_the_report(tmp_path):
    runner = runner_from_config(compose_config(), tmp_path)
    metrics = runner._metrics([], 0.0)
    assert set(KEY_FIELDS) <= set(metrics)
    assert list(metrics)[: len(vars(runner.labels))] == list(vars(runner.labels))


def test_the_report_key_is_the_labels_less_where_runs_come_from_plus_the_benchmark_length():
    labels = RunLabels("niah", "m", "snapkv", "kivi", 4, 64, experiment="demo", benchmark_variant="niah_small")
    assert "experiment" not in KEY_FIELDS and "benchmark_variant" not in KEY_FIELDS
    assert set(KEY_FIELDS) == {*vars(labels), "benchmark_length"} - {"experiment", "benchmark_variant"}


def test_run_labels_of_a_compressor_read_every_label_from_it():
    from qpruning import KIVI, KVCompressor, SnapKV
    from qpruning.benchmarks.niah import NeedleInAHaystack
    from qpruning.models import ModelSpec

    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=0.25, budget_mode="exact")
    labels = RunLabels.of(NeedleInAHaystack(), ModelSpec(name="m", name_or_path="tiny:llama"), compressor,
                          layer_config="found", experiment="optimize", benchmark_variant="niah")
    assert labels == RunLabels(benchmark="niah", model="m", pruner="snapkv", quant="kivi", bits=4, group_size=64,
                               budget=0.25, budget_mode="exact", layer_config="found", experiment="optimize",
                               benchmark_variant="niah")


def test_a_benchmark_with_an_unknown_evaluation_mode_is_refused(tmp_path):
    runner = runner_from_config(compose_config(), tmp_path)
    runner.benchmark.evaluation = "beam_search"  # a benchmark that declares a mode the runner does not have
    with pytest.raises(ConfigError, match="benchmark.evaluation"):
        type(runner)(model=runner.model, compressor=runner.compressor, benchmark=runner.benchmark,
                     labels=runner.labels, output_dir=tmp_path)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_only_the_application_and_its_front_door_import_hydra():
    allowed = {"app.py", "entry.py", "launcher.py"}  # the application, its front door, its launcher
    offenders = [
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if path.name not in allowed and any(m.split(".")[0] == "hydra" for m in imported_modules(path))
    ]
    assert offenders == []


def test_the_runner_does_not_reach_up_into_the_application_or_optimize():
    imported = imported_modules(PACKAGE / "runner.py")
    assert not {m for m in imported if m.startswith(("qpruning.app", "qpruning.optimize", "omegaconf", "hydra"))}


def test_the_held_out_comparison_does_not_import_the_driver():
    assert "qpruning.optimize.driver" not in imported_modules(PACKAGE / "optimize" / "heldout.py")
