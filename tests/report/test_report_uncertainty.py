"""Bootstrap intervals of a run's score (uncertainty.py) and Figure 2's ordering check (ordering.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from fabricate_runs import RunSpec, write_run

from qpruning.report import collect_runs
from qpruning.report.ordering import precision_ordering
from qpruning.report.uncertainty import bootstrap_interval, run_interval, sample_scores


def _scores(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(50, 20, size=n)


def test_the_interval_contains_the_mean_and_shrinks_with_more_samples():
    widths = []
    for n in (20, 200, 2000):
        scores = _scores(n)
        interval = bootstrap_interval(scores)
        assert interval.n == n and interval.estimate == pytest.approx(scores.mean())
        assert interval.low < scores.mean() < interval.high
        widths.append(interval.high - interval.low)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]  # about 1 / sqrt(n)


def test_the_interval_is_deterministic_with_its_seed():
    scores = _scores(30)
    assert bootstrap_interval(scores, seed=3) == bootstrap_interval(scores, seed=3)
    assert bootstrap_interval(scores, seed=3) != bootstrap_interval(scores, seed=4)
    wider = bootstrap_interval(scores, level=0.99)
    narrower = bootstrap_interval(scores, level=0.5)
    assert wider.low < narrower.low and narrower.high < wider.high


def test_tasks_are_resampled_separately_and_averaged_like_the_headline_score():
    # two tasks of unequal size: the headline is the mean of the task means, not of the samples
    scores = [100.0] * 2 + [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    tasks = ["a"] * 2 + ["b"] * 6
    interval = bootstrap_interval(scores, tasks)
    assert interval.estimate == pytest.approx((100 + 25) / 2)
    assert interval.low <= interval.estimate <= interval.high
    # task a never varies: the interval is task b's, halved (up to the resampling noise)
    b = bootstrap_interval(scores[2:])
    assert interval.high - interval.low == pytest.approx((b.high - b.low) / 2, rel=0.15)
    assert bootstrap_interval(scores).estimate == pytest.approx(350 / 8)  # without tasks: the plain mean


def test_no_samples_give_no_interval_and_wrong_arguments_say_what_is_allowed():
    empty = bootstrap_interval([])
    assert empty.n == 0 and math.isnan(empty.low) and math.isnan(empty.high)
    with pytest.raises(ValueError, match="at least 1"):
        bootstrap_interval([1.0], resamples=0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        bootstrap_interval([1.0], level=95)
    with pytest.raises(ValueError, match="one task per score"):
        bootstrap_interval([1.0, 2.0], ["a"])


def test_sample_scores_skip_failed_samples_and_count_a_repeated_id_once(tmp_path):
    lines = [
        {"id": "a", "task": "t", "status": "ok", "score": 10.0},
        {"id": "b", "task": "t", "status": "failed", "score": None},
        {"id": "c", "task": "t", "status": "ok", "score": None},
        {"id": "a", "task": "t", "status": "ok", "score": 30.0},
        {"id": "d", "task": "u", "status": "ok", "score": 50},
    ]
    (tmp_path / "predictions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{cut", "utf-8")
    scores, tasks = sample_scores(tmp_path)
    assert sorted(scores.tolist()) == [30.0, 50.0] and sorted(tasks.tolist()) == ["t", "u"]


def test_a_runs_interval_brackets_the_score_it_reports(tmp_path):
    spec = RunSpec(
        "ruler_small",
        model="smollm2_135m",
        budget=1 / 32,
        bits=4,
        benchmark_length=4096,
        samples=16,
        score_from_samples=True,
        extra={"tasks": ["a", "b", "c", "d"]},
    )
    folder = write_run(tmp_path / "run", spec)
    [run] = collect_runs([tmp_path]).runs.to_dict("records")
    interval = run_interval(folder)
    assert interval.n == 16 and interval.estimate == pytest.approx(run["score"])
    assert interval.low <= run["score"] <= interval.high
    assert run_interval(tmp_path / "nothing").n == 0


# ----------------------------------------------------------------------------------------------- ordering
def _points(rows: list[tuple[float, int, float]], width: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"benchmark": "niah", "pruner": "snapkv", "budget": b, "bits": bits, "value": v}
            | {"ci_low": v - width, "ci_high": v + width}
            for b, bits, v in rows
        ]
    )


def test_the_ordering_holds_fails_and_says_where():
    rows = [(1 / 64, 4, 30.0), (1 / 64, 8, 20.0), (1 / 64, 16, 10.0)]  # holds
    rows += [
        (1 / 16, 4, 30.0),
        (1 / 16, 8, 31.0),
        (1 / 16, 16, 10.0),
    ]  # 2x8 above 4x4: fails, within intervals
    rows += [(1 / 4, 4, 0.0), (1 / 4, 8, 50.0), (1 / 4, 16, 90.0)]  # above 1/16: not checked
    check = precision_ordering(_points(rows), ["benchmark", "pruner"])
    assert check.claim == "4x4 >= 2x8 >= 1x16 at budgets <= 1/16"
    assert list(check.detail["budget"]) == [1 / 64, 1 / 16]
    assert list(check.detail["holds"]) == [True, False]
    assert list(check.detail["clear_reversal"]) == [False, False]
    [summary] = check.summary.to_dict("records")
    assert summary["holds"] is False and summary["fails_at"] == "1/16" and summary["budgets"] == "1/64, 1/16"
    assert "no reversal beyond the bootstrap intervals" in summary["verdict"]


def test_a_reversal_beyond_the_intervals_is_clear_and_a_budget_without_all_settings_is_not_checked():
    rows = [(1 / 32, 4, 10.0), (1 / 32, 8, 20.0), (1 / 32, 16, 5.0), (1 / 16, 4, 40.0), (1 / 16, 16, 30.0)]
    check = precision_ordering(_points(rows, width=2.0), ["benchmark", "pruner"])
    detail = check.detail.set_index("budget")
    assert bool(detail.loc[1 / 32, "clear_reversal"]) and not bool(detail.loc[1 / 32, "holds"])
    assert detail.loc[1 / 16, "holds"] is None and math.isnan(detail.loc[1 / 16, "2x8"])
    [summary] = check.summary.to_dict("records")
    assert summary["clear_at"] == "1/32" and summary["budgets"] == "1/32"
    wide = precision_ordering(_points(rows, width=10.0), ["benchmark", "pruner"])
    assert wide.summary["clear_at"].iloc[0] == ""
    with pytest.raises(ValueError, match="at least two bit widths"):
        precision_ordering(_points(rows), ["benchmark"], order=(4,))
