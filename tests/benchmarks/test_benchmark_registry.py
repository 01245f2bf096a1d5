"""The benchmark registry: names, presets, config fields, and errors that list what is valid."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from qpruning.benchmarks import (
    BENCHMARKS,
    BenchmarkConfigError,
    LongBench,
    NeedleInAHaystack,
    Ruler,
    benchmark_fields,
    get_benchmark,
)
from qpruning.benchmarks.base import Sample, encode_prompt, truncate_middle


def test_the_config_names_of_the_conventions_are_registered():
    assert set(BENCHMARKS) == {
        "niah", "ruler", "longbench", "longbench_e", "crossentropy",
        "niah_small", "ruler_8k", "ruler_16k", "ruler_small", "longbench_small", "longbench_e_small",
        "crossentropy_small",
    }  # fmt: skip


def test_unknown_benchmark_names_list_the_valid_ones():
    with pytest.raises(BenchmarkConfigError) as info:
        get_benchmark("needle")
    assert "'needle'" in str(info.value) and "niah, ruler, longbench, longbench_e, crossentropy" in str(
        info.value
    )


def test_unknown_fields_list_the_valid_ones():
    with pytest.raises(BenchmarkConfigError) as info:
        get_benchmark("ruler", length=4096, task=["vt"])
    assert "task" in str(info.value) and "tasks" in str(info.value) and "num_samples" in str(info.value)


def test_presets_apply_and_config_overrides_them():
    small = get_benchmark("ruler_small")
    assert isinstance(small, Ruler) and small.num_samples == 2 and small.length == 4096
    assert get_benchmark(name="ruler_small", num_samples=5).num_samples == 5
    assert get_benchmark("ruler_8k").length == 8192 and get_benchmark("ruler_16k").length == 16384
    niah = get_benchmark("niah_small")
    assert isinstance(niah, NeedleInAHaystack) and niah.grid_lengths() == [1000, 2000, 3500]
    assert isinstance(get_benchmark("longbench_small"), LongBench)


def test_hydra_containers_become_plain_lists_where_the_app_builds_the_benchmark():
    from qpruning.app import build

    cfg = OmegaConf.create(
        {"benchmark": {
            "_target_": "qpruning.benchmarks.get_benchmark",
            "name": "ruler",
            "length": 8192,
            "tasks": ["vt", "cwe"],
        }}
    )
    bench = build(cfg, "benchmark")
    assert bench.tasks == ["vt", "cwe"] and type(bench.tasks) is list and bench.benchmark_length == 8192


def test_every_benchmark_is_a_dataclass_whose_fields_have_defaults():
    for name in BENCHMARKS:
        cls, _ = BENCHMARKS[name]
        assert dataclasses.is_dataclass(cls)
        fields = benchmark_fields(name)
        assert fields and all(not key.startswith("_") for key in fields)
        get_benchmark(name, **fields)  # the defaults themselves are a valid config


def test_truncate_middle_keeps_both_ends():
    assert truncate_middle(list(range(10)), 4) == [0, 1, 8, 9]
    assert truncate_middle(list(range(10)), 5) == [0, 1, 7, 8, 9]
    assert truncate_middle([1, 2], 5) == [1, 2]


def test_encode_prompt_without_room_for_the_template_is_a_sample_error(tokenizer):
    from qpruning.benchmarks import SampleError

    with pytest.raises(SampleError, match="does not fit"):
        encode_prompt(tokenizer, "word " * 500, max_input_tokens=20, chat_template=True)


def test_sample_schema_round_trips_to_a_dict():
    sample = Sample(id="x", task="t", context="c", input="i", answers=["a"], max_new_tokens=4, length=10)
    assert sample.to_dict()["extra"] == {} and sample.to_dict()["answers"] == ["a"]


def test_chat_prompts_do_not_depend_on_the_date(tokenizer, monkeypatch):
    from qpruning.benchmarks.base import render_prompt

    # The Llama-3.1/3.2 pattern: today's date unless the caller passes date_string.
    template = (
        '{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}'
        "Today Date: {{ date_string }}\n{{ messages[0]['content'] }}"
    )
    monkeypatch.setattr(tokenizer, "chat_template", template)
    assert render_prompt(tokenizer, "hello", True, " A:") == "Today Date: 26 Jul 2024\nhello A:"
