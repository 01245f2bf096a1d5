"""The schema (``qpruning/schema.py``, the annotations of the group classes, ``errors.check_type``) and what it
refuses from plain Python as well as from the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from qpruning import schema
from qpruning.app import register_resolvers
from qpruning.benchmarks import BenchmarkConfigError, LongBench, NeedleInAHaystack, Ruler
from qpruning.benchmarks.longbench.data import read_jsonl
from qpruning.entry import CONF_DIR
from qpruning.errors import (
    ConfigError,
    DataError,
    MissingFileError,
    UserError,
    check_name,
    check_type,
    check_writable_folder,
    nearest,
)
from qpruning.models import ModelSpec
from qpruning.pruners import SnapKV

SLIDING = Literal["keep", "quantize"]


def composed(config_name: str, overrides=()):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def refused(match: str, function, *args, error=ConfigError, **kwargs):
    with pytest.raises(error, match=match) as info:
        function(*args, **kwargs)
    assert "; " in str(info.value)  # what was wrong; what is allowed
    return info.value


# -- types by annotation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "annotation"), [
    (4, int), (None, int | None), (0.5, float), (1, float), (True, bool), ("x", str), ([1, 2], list[int]),
        (600, list[int] | int | None), ({"a": 1}, dict[str, int]), ([], list[str]), ("keep", SLIDING),
])
def test_a_value_of_an_admitted_type_passes(value, annotation):
    check_type("key", value, annotation)


@pytest.mark.parametrize(("value", "annotation", "match"), [
    (4.0, int, r"key=4.0 is a float, not a whole number"),
    ("4", int, r"key='4' is not a number"),
    (True, int, r"key=True is not a number"),
    (float("nan"), float, r"key=nan is not a number"),
    (1, bool, r"key=1 is not a boolean"),
    (5, str, r"key=5 is a whole number; allowed: a string \(quote it"),
    ([1000.7], list[int] | None, r"key\[0\]=1000.7 is a float"),
    (["400"], list[int] | None, r"key\[0\]='400' is not a number"),
    ([[1]], list[int], r"key\[0\]=\[1\] is not a number"),
    (5, list[int] | None, r"key=5 is a whole number; allowed: a list of whole numbers or null"),
    ({"a": "x"}, dict[str, int], r"key.a='x' is not a number"),
    ("drop", SLIDING, r"key='drop' is not allowed; allowed: keep or quantize"),
])
def test_a_value_of_another_type_is_refused_with_the_key_and_what_is_allowed(value, annotation, match):
    refused(match, check_type, "key", value, annotation)


def test_the_nearest_name_is_offered_only_when_one_is_close():
    assert nearest("limt", ["limit", "seed"]) == " (did you mean limit?)"
    assert nearest("windw", ["window"], "pruner.") == " (did you mean pruner.window?)"
    assert nearest("zzz", ["limit", "seed"]) == ""


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "a\\b", "", "x" * 200, "a\nb"])
def test_a_name_that_would_not_name_one_folder_is_refused(name):
    refused("model.name", check_name, "model.name", name)


@pytest.mark.parametrize("name", ["tiny_llama", "16bit@8-15", "fig2", "a.b", "llama3_8b-instruct+x=1"])
def test_a_plain_name_names_a_folder(name):
    check_name("model.name", name)


# -- the schema covers conf/ ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("config_name", "overrides"), [
    ("config", []), ("config", ["compat=paper"]), ("config", ["experiment=fig2", "model=tiny_llama"]),
    ("config", ["+layerwise=16bit_8-15", "logger=wandb", "benchmark=ruler_small", "pruner=headkv"]),
    ("config", ["quant=kivi_outlier", "benchmark=longbench_e_small", "pruner=pyramidkv", "model=tiny_qwen3"]),
    ("optimize", []), ("optimize", ["model=tiny_llama", "quant=hqq"]),
])
def test_every_key_of_the_shipped_configurations_is_in_the_schema_with_its_type(config_name, overrides, tmp_path):
    cfg = composed(config_name, [*overrides, f"output_root={tmp_path}"])
    schema.check_keys(config_name, list(cfg.keys()))
    schema.check_values(config_name, OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg))


def test_every_top_level_key_is_owned_by_an_object_or_checked_here():
    for top, _ in schema.SCHEMAS.values():
        for spec in dataclasses.fields(top):
            assert ("owner" in spec.metadata) != ("check" in spec.metadata), spec.name


def test_the_sliding_key_validates_keep_and_quantize(tmp_path):
    for value in ("keep", "quantize"):
        cfg = composed("config", [f"++sliding={value}", f"output_root={tmp_path}"])
        schema.check_keys("config", list(cfg.keys()))
        schema.check_values("config", OmegaConf.to_container(cfg, resolve=True))
    cfg = composed("config", ["++sliding=drop", f"output_root={tmp_path}"])
    refused("sliding='drop'", schema.check_values, "config", OmegaConf.to_container(cfg, resolve=True))


def test_a_key_nothing_reads_is_refused_with_the_nearest_name():
    refused(r"limt is not a key .* \(did you mean limit\?\)", schema.check_keys, "config",
            [*(f.name for f in dataclasses.fields(schema.RunConfig)), "model", "pruner", "quant", "benchmark",
             "logger", "limt"])


def test_a_group_target_other_than_qpruning_s_own_is_refused(tmp_path):
    cfg = OmegaConf.to_container(composed("config", [f"output_root={tmp_path}"]), resolve=True)
    cfg["model"]["_target_"] = "os.system"
    refused(r"model._target_='os.system'", schema.check_values, "config", cfg)


def test_the_output_root_is_written_to_be_checked(tmp_path):
    check_writable_folder("output_root", str(tmp_path / "new" / "root"))
    assert (tmp_path / "new" / "root").is_dir()
    (tmp_path / "file").write_text("x")
    refused(r"output_root=.* cannot be written", check_writable_folder, "output_root", str(tmp_path / "file" / "x"))


# -- from plain Python --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lengths": [1000.7]}, r"benchmark.lengths\[0\]=1000.7"),
    ({"lengths": ["400"]}, r"benchmark.lengths\[0\]='400'"),
    ({"length_step": 100.5}, r"benchmark.length_step=100.5"),
    ({"depth_intervals": 1.5}, r"benchmark.depth_intervals=1.5"),
    ({"max_new_tokens": 0}, r"benchmark.max_new_tokens=0 is below 1"),
    ({"template": "{context} {question} {page}"}, r"benchmark.template"),
])
def test_the_niah_benchmark_refuses_from_python_what_the_command_line_refuses(kwargs, match):
    refused(match, NeedleInAHaystack, error=BenchmarkConfigError, **kwargs)


def test_a_single_length_and_a_single_task_are_still_taken():
    assert NeedleInAHaystack(lengths=600).grid_lengths() == [600]
    assert Ruler(tasks="niah_single_1").tasks == ["niah_single_1"]
    refused(r"benchmark.limit=2.5", LongBench, limit=2.5, error=BenchmarkConfigError)


def test_pruner_and_model_fields_are_checked_by_type_from_python():
    refused(r"pruner.kernel_size=3.5", SnapKV, kernel_size=3.5)
    refused(r"model.seed=99999999999999999999 is above", ModelSpec, name="m", name_or_path="tiny:llama",
            seed=99999999999999999999)
    refused(r"model.tiny.num_hidden_layers=0", ModelSpec, name="m", name_or_path="tiny:llama",
            tiny={"num_hidden_layers": 0})


def test_a_model_the_machine_cannot_run_is_refused_before_loading(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = ModelSpec(name="m", name_or_path="tiny:llama", device="cuda")
    refused(r"model.device=cuda, but this machine has no CUDA device", spec.load_model)
    spec = ModelSpec(name="m", name_or_path="tiny:llama", device="cpu", attn_implementation="flash_attention_2")
    refused(r"flash_attention_2", spec.check_machine)


def test_a_folder_without_a_model_names_what_it_lacks(tmp_path):
    spec = ModelSpec(name="m", name_or_path=str(tmp_path))
    refused(r"holds no model: no config.json", spec.load_config, error=MissingFileError)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    refused(r"holds no weights", spec.load_config, error=MissingFileError)
    (tmp_path / "model.safetensors").write_text("")
    refused(r"holds no tokenizer", spec.load_config, error=MissingFileError)
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "config.json").write_text("{not json")
    refused(r"its config cannot be read.*; allowed: a folder as save_pretrained writes it", spec.load_config,
            error=UserError)


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("answers", 5, "a whole number"), ("context", ["c"], "a list"), ("_id", None, "null"),
    ("length", "ten", "a string"), ("all_classes", 3, "a whole number"),
])
def test_a_longbench_record_with_a_field_of_the_wrong_type_names_the_file_line_and_type(tmp_path, field, value, kind):
    record = {"input": "q", "context": "c", "answers": ["a"], "_id": "1", "length": 10, "all_classes": None}
    record[field] = value
    path = Path(tmp_path / "qasper.jsonl")
    path.write_text(json.dumps(record) + "\n")
    error = refused(rf"qasper.jsonl line 1: field '{field}' is {kind}, not ", read_jsonl, path, error=DataError)
    assert str(path) in error.what
