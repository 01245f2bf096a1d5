"""The evaluator (:mod:`qpruning.evaluator`): one sample loop and one generation for one run or many; the groups
(:mod:`qpruning.grouped`) reach into no run's internals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from qpruning.errors import ConfigError
from qpruning.evaluator import Evaluator, until_eos

PACKAGE = Path(__file__).resolve().parents[1] / "qpruning"


def test_a_rows_new_tokens_end_at_its_first_end_of_sequence_token():
    assert until_eos([5, 7, 2, 0, 0], {2}) == [5, 7, 2]  # the padding after a row's end is dropped
    assert until_eos([5, 9, 7, 2], {9, 2}) == [5, 9]  # any of several end tokens
    assert until_eos([5, 7, 8], {2}) == [5, 7, 8]  # stopped by length: every token
    assert until_eos([5, 7], set()) == [5, 7]


def test_an_unknown_decode_strategy_is_refused():
    with pytest.raises(ConfigError, match="decode"):
        Evaluator(model=None, tokenizer=None, decode="beam")


def test_the_groups_call_only_the_public_parts_of_a_run():
    tree = ast.parse((PACKAGE / "grouped.py").read_text())
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not {a for a in attributes if a.startswith("_") and not a.startswith("__")}
    assert not attributes & {"begin", "prepare", "finish", "evaluate", "preloaded", "shared", "todo", "samples"}


def generate_calls_and_eos_reads(path: Path) -> tuple[int, int]:
    nodes = list(ast.walk(ast.parse(path.read_text())))
    calls = sum(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "generate"
                and not (isinstance(n.func.value, ast.Name) and n.func.value.id == "self")  # a model's, not ours
                for n in nodes)
    return calls, sum(isinstance(n, ast.Constant) and n.value == "eos_token_id" for n in nodes)


def test_generation_and_its_end_of_sequence_trimming_are_written_once():
    found = {name: generate_calls_and_eos_reads(PACKAGE / name) for name in ("runner.py", "grouped.py", "evaluator.py")}
    assert found == {"runner.py": (0, 0), "grouped.py": (0, 0), "evaluator.py": (1, 1)}
