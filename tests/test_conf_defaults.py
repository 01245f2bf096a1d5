"""The conf files and the code's defaults say the same thing.

Benchmark presets live in :data:`qpruning.benchmarks.BENCHMARKS` and pruner / quantizer defaults in their
dataclasses; ``conf/`` spells them out too (so that ``--cfg job`` shows them and run hashes stay what they were).
Here every conf file of those groups is composed with Hydra and built, and the result must equal what the code
builds from the name alone: a conf value that drifts from the code's default fails here.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from qpruning.app import build, register_resolvers
from qpruning.benchmarks import BENCHMARKS, get_benchmark
from qpruning.cache.quantizers import QUANTIZERS, get_quantizer
from qpruning.pruners import PRUNERS, get_pruner
from qpruning.report import labels

CONF = Path(__file__).resolve().parents[1] / "conf"
BUILDERS = {"benchmark": get_benchmark, "pruner": get_pruner, "quant": get_quantizer}
register_resolvers()


def compose_group(group: str, option: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"{group}={option}"])


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def from_the_code(cfg, group: str):
    """What the code builds from the option's name alone, given only the values the conf file takes from the rest
    of the configuration (``bits: ${bits}``, ``model_name: ${model.name}``)."""
    node = cfg[group]
    interpolated = {key: node[key] for key in node if key != "name" and OmegaConf.is_interpolation(node, key)}
    return BUILDERS[group](node.name, **interpolated)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in BUILDERS for o in options(g)])
def test_every_conf_file_builds_what_the_code_builds_from_its_name(group, option):
    cfg = compose_group(group, option)
    assert cfg[group].name == option, f"conf/{group}/{option}.yaml names itself {cfg[group].name!r}"
    assert build(cfg, group) == from_the_code(cfg, group)


def test_a_changed_conf_value_is_caught():
    cfg = compose_group("pruner", "snapkv")
    cfg.pruner.window = cfg.pruner.window + 1
    assert build(cfg, "pruner") != from_the_code(cfg, "pruner")


def test_every_benchmark_preset_has_its_conf_file_and_back():
    assert set(options("benchmark")) == set(BENCHMARKS)


@pytest.mark.parametrize(("group", "registry"), [("pruner", PRUNERS), ("quant", QUANTIZERS)])
def test_every_registered_pruner_and_quantizer_has_its_conf_file_and_back(group, registry):
    """The registries are the list of what exists; ``conf/<group>/`` holds one Hydra option per entry."""
    assert set(options(group)) == set(registry), f"conf/{group}/*.yaml and the registry differ"


def test_the_reports_names_are_registered_ones():
    """The report shows a registered pruner or quantizer by its label, in its order; a name without a label shows
    as it is (so a new pruner needs none), but a label of a name no longer registered is a leftover."""
    assert set(labels.PRUNER_ORDER) == set(labels.PRUNER_LABELS) <= set(PRUNERS)
    assert set(labels.QUANT_ORDER) <= set(QUANTIZERS) and set(labels.QUANT_LABELS) - {"none"} <= set(QUANTIZERS)
    assert labels.label("pruner", "a_new_pruner") == "a_new_pruner"
