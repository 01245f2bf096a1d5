"""RULER makes only the samples a run uses and caches them one by one: the work done scales with ``limit``, and a
generation continued from the cache gives exactly the samples a generation from the start gives."""

from __future__ import annotations

import itertools
import json

from qpruning.benchmarks import Ruler
from qpruning.benchmarks.ruler import benchmark as ruler_benchmark

ALL_13 = None  # tasks=None: all 13 (the qa ones are skipped without data)


def count_generated(monkeypatch) -> list[str]:
    """Record the id of every sample RULER generates (not read from the cache)."""
    made: list[str] = []
    original = ruler_benchmark.Ruler._generate

    def counting(self, *args, **kwargs):
        for sample, fit in original(self, *args, **kwargs):
            made.append(sample.id)
            yield sample, fit

    monkeypatch.setattr(ruler_benchmark.Ruler, "_generate", counting)
    return made


def take(bench: Ruler, tokenizer, limit: int):
    return list(itertools.islice(bench.samples(tokenizer), limit))


def test_limit_3_at_a_new_length_generates_3_samples_not_500_of_13_tasks(tokenizer, isolated_cache, monkeypatch):
    made = count_generated(monkeypatch)
    samples = take(Ruler(length=1024, tasks=ALL_13, num_samples=500), tokenizer, 3)
    assert len(samples) == 3 and made == [s.id for s in samples]
    (cache_file,) = (isolated_cache / "ruler_samples").glob("*.jsonl")  # one task's file, 3 lines
    assert len(cache_file.read_text().splitlines()) == 3

    made.clear()
    more = take(Ruler(length=1024, tasks=ALL_13, num_samples=500), tokenizer, 5)
    assert more[:3] == samples
    assert made == [s.id for s in more[3:]]  # only the 2 not cached yet
    assert len(cache_file.read_text().splitlines()) == 5

    made.clear()
    assert take(Ruler(length=1024, tasks=ALL_13, num_samples=500), tokenizer, 5) == more and made == []


def test_a_continued_generation_makes_the_samples_a_fresh_one_makes(tokenizer, isolated_cache, monkeypatch):
    tasks = ["niah_single_1", "vt"]  # vt fits its in-context example once per task: on the first sample's seed
    fresh = list(Ruler(length=1024, tasks=tasks, num_samples=4, cache_samples=False).samples(tokenizer))
    take(Ruler(length=1024, tasks=["vt"], num_samples=4), tokenizer, 1)  # vt: 1 cached, 3 to continue
    take(Ruler(length=1024, tasks=tasks, num_samples=4), tokenizer, 2)  # niah: 2 cached
    continued = list(Ruler(length=1024, tasks=tasks, num_samples=4).samples(tokenizer))
    assert continued == fresh


def test_a_damaged_cache_line_cuts_the_cache_there_and_the_rest_is_generated_again(
    tokenizer, isolated_cache, monkeypatch, caplog
):
    bench = Ruler(length=1024, tasks=["niah_single_1"], num_samples=4)
    first = list(bench.samples(tokenizer))
    (cache_file,) = (isolated_cache / "ruler_samples").glob("*.jsonl")
    lines = cache_file.read_text().splitlines(keepends=True)
    cache_file.write_text(lines[0] + lines[1][: len(lines[1]) // 2] + "\n" + lines[2] + lines[3])
    made = count_generated(monkeypatch)
    again = list(Ruler(length=1024, tasks=["niah_single_1"], num_samples=4).samples(tokenizer))
    assert again == first and made == [s.id for s in first[1:]]
    assert "line 2 is damaged" in caplog.text
    assert [json.loads(line)["sample"]["id"] for line in cache_file.read_text().splitlines()] == [
        s.id for s in first
    ]
