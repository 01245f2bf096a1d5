"""The Hydra configuration: every group composes and instantiates, experiments are well-formed, bad input fails early."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import open_dict

from qpruning.app import register_resolvers, runner_from_config

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()


def compose_config(overrides=(), return_hydra_config=False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_the_default_is_the_embedded_smollm2_with_snapkv_4bit():
    cfg = compose_config()
    assert cfg.model.name == "smollm2_135m" and cfg.pruner.name == "snapkv" and cfg.quant.name == "kivi"
    assert cfg.bits == 4 and cfg.group_size == 64 and cfg.tokens is None and cfg.budget is not None


@pytest.mark.parametrize("group", ["model", "pruner", "quant", "benchmark", "logger"])
def test_every_option_of_every_group_instantiates(group):
    for option in options(group):
        cfg = compose_config([f"{group}={option}"])
        obj = instantiate(cfg[group], _convert_="all")
        if group in ("pruner", "quant"):
            assert obj.name == cfg[group].name


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_sweeps_over_existing_options(experiment):
    cfg = compose_config([f"experiment={experiment}"], return_hydra_config=True)
    # The experiment's values win over config.yaml's (its name names the sweep folder).
    # (fig1_quant adds runs to fig1's sweep folder.)
    assert experiment.startswith(cfg.experiment_name) and cfg.experiment_name != "adhoc"
    assert cfg.hydra.sweep.dir.endswith(f"sweeps/{cfg.experiment_name}")
    for key, values in cfg.hydra.sweeper.params.items():
        group = key.lstrip("+")
        if (CONF / group).is_dir():
            for value in str(values).split(","):
                assert value in options(group), f"{experiment}: {group}={value} does not exist"
        else:
            assert key in cfg, f"{experiment} sweeps over {key}, which the config does not have"


def test_an_experiment_overrides_the_top_level_defaults():
    default = compose_config([])
    demo = compose_config(["experiment=demo"])
    assert default.budget == 0.0625 and demo.budget == 0.03125
    # ... and the command line overrides the experiment.
    assert compose_config(["experiment=demo", "budget=0.125"]).budget == 0.125


def test_run_names_are_deterministic_and_differ_between_configurations():
    a = compose_config(["model=tiny_llama"], return_hydra_config=True).hydra.run.dir
    b = compose_config(["model=tiny_llama"], return_hydra_config=True).hydra.run.dir
    c = compose_config(["model=tiny_llama", "pruner.window=16"], return_hydra_config=True).hydra.run.dir
    assert a == b and a != c
    assert "tiny_llama/niah_small/snapkv-kivi-4bit-g64-b1_16" in a


def test_storage_dtype_names_its_own_folder_and_null_is_the_default():
    default = compose_config(["model.dtype=float32"], return_hydra_config=True).hydra.run.dir
    explicit_null = compose_config(["model.dtype=float32", "storage_dtype=null"], return_hydra_config=True).hydra.run.dir
    bf16 = compose_config(["model.dtype=float32", "storage_dtype=bfloat16"], return_hydra_config=True).hydra.run.dir
    assert default == explicit_null and bf16 != default


def test_a_valid_configuration_validates_without_loading_weights(tmp_path):
    runner = runner_from_config(compose_config(["model=tiny_llama"]), tmp_path)
    runner.validate()
    assert runner.compressor.full_cache_tokens == 8192


def test_unknown_names_list_the_available_options():
    with pytest.raises(MissingConfigException, match="snapkv"):
        compose_config(["pruner=oracle"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["bits=3"], "allowed: 2, 4, 8, 16"),
        (["group_size=48"], "allowed: 32, 64, 128"),
        (["tokens=512", "budget=0.0625"], "exactly one of tokens"),  # both typed (tokens alone wins, issue 13)
        (["budget=null", "tokens=16"], "fewer than snapkv's window"),
        (["+model.tiny.head_dim=64", "group_size=128"], "does not divide head_dim=64"),
        (["benchmark=ruler", "benchmark.length=16384"], "16384"),
        (["benchmark=longbench", "benchmark.data_dir=/nonexistent"], "download_longbench"),
    ],
)
def test_bad_configurations_fail_before_any_model_loads(overrides, message, tmp_path):
    with pytest.raises(Exception, match=message):
        runner = runner_from_config(compose_config(["model=tiny_llama", *overrides]), tmp_path)
        runner.prepare()  # validation, tokenizer and samples: everything before the weights


def test_tokens_typed_alone_wins_over_the_default_budget(tmp_path):
    cfg = compose_config(["model=tiny_llama", "tokens=512"], return_hydra_config=True)
    assert "-t512-" in cfg.hydra.run.dir
    with open_dict(cfg):
        del cfg["hydra"]
    runner = runner_from_config(cfg, tmp_path)
    assert runner.compressor.tokens == 512 and runner.compressor.budget is None
    assert runner.config["tokens"] == 512 and runner.config["budget"] is None  # what metrics.json records
    # The default still applies when neither is typed, and a typed budget is kept.
    default = runner_from_config(compose_config(["model=tiny_llama"]), tmp_path)
    assert default.compressor.budget == 0.0625 and default.compressor.tokens is None
    typed = runner_from_config(compose_config(["model=tiny_llama", "budget=0.125"]), tmp_path)
    assert typed.compressor.budget == 0.125
    assert runner_from_config(compose_config(["model=tiny_llama", "default_budget=0.25"]), tmp_path).compressor.budget == 0.25


@pytest.mark.parametrize("overrides", [["tokens=512", "budget=0.0625"], ["experiment=demo", "tokens=512"]])
def test_tokens_and_a_typed_budget_together_are_refused(overrides, tmp_path):
    # experiment=demo types budget=0.03125 in its file: an explicit value, like one on the command line.
    with pytest.raises(ValueError, match="exactly one of tokens or budget"):
        runner_from_config(compose_config(["model=tiny_llama", *overrides]), tmp_path)
