"""Figures: each one is written from the fabricated sweep, holds the right points, and is never drawn empty."""

from __future__ import annotations

import pandas as pd
import pytest
from fabricate_runs import RunSpec, write_run

from qpruning.report import collect_runs
from qpruning.report.figures import (
    build_figures,
    figure1_crossentropy,
    figure2_budget,
    figure3_lengths,
    figure4_scale,
    figure9_layers,
    figure10_quant,
    niah_heatmaps,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == PNG and path.stat().st_size > 10_000


@pytest.fixture(scope="module")
def figures(runs, paper, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return build_figures(runs, out, paper), out


@pytest.mark.parametrize("name", ["fig1", "fig2", "fig3", "fig4", "fig9", "fig10"])
def test_each_figure_is_written_as_png_with_its_data(figures, name):
    results, out = figures
    result = results[name]
    assert result is not None and result.panels >= 1
    assert result.path.parent == out and _is_png(result.path)
    data = pd.read_csv(result.data_path)
    assert len(data) and {"value", "samples", "run_path"} <= set(data.columns)
    assert data["value"].notna().all()


def test_niah_heatmaps_one_per_model_pruner_and_mode(figures):
    results, _ = figures
    heatmaps = results["niah"]
    names = {r.name for r in heatmaps}
    assert (
        "niah_llama3_8b_instruct_snapkv_tokens" in names
        and "niah_mistral_7b_instruct_v02_pyramidkv_budget" in names
    )
    for result in heatmaps:
        assert _is_png(result.path)
        data = pd.read_csv(result.data_path)
        assert data["value"].between(0, 100).all()
        assert {"context_length", "depth"} <= set(data.columns)


def test_figure2_draws_a_line_per_setting_and_the_papers_points(figures):
    result = figures[0]["fig2"]
    assert set(result.data["setting"]) == {"1x16", "2x8", "4x4"}
    assert result.panels == 8  # 2 models x 2 pruners x (LongBench, NIAH); single-budget panels left out
    assert any("single budget" in n for n in result.notes)
    assert "Hollow markers" in result.caption


def test_figure2_with_a_single_budget_everywhere_still_draws(tmp_path):
    for bits in (16, 8, 4):
        write_run(
            tmp_path / "runs" / f"r{bits}",
            RunSpec("niah", model="smollm2_135m", pruner="snapkv", budget=1 / 64, bits=bits, samples=6),
        )
    result = figure2_budget(collect_runs([tmp_path / "runs"]).runs, tmp_path / "out")
    assert result is not None and result.panels == 1 and len(result.data) == 3 and _is_png(result.path)


def test_figure9_relative_change_is_against_the_4x4_baseline(figures):
    data = figures[0]["fig9"].data
    assert set(data["layer_bits"]) == {8, 16}
    expected = 100 * (data["score"] - data["baseline"]) / data["baseline"]
    assert (data["value"] - expected).abs().max() < 1e-9
    # the fabricated middle layers hurt more, and 16-bit more than 8-bit
    lb = data[data["benchmark"] == "longbench"].set_index(["layer_bits", "first"])["value"]
    assert lb[(16, 4)] < lb[(16, 0)] < 0 and lb[(16, 0)] < lb[(8, 0)]


def test_figure9_lists_layer_runs_without_a_baseline(tmp_path):
    write_run(
        tmp_path / "runs" / "a",
        RunSpec("longbench", pruner="snapkv", budget=1 / 64, bits=4, layer_config="8bit@0-3", samples=4),
    )
    assert figure9_layers(collect_runs([tmp_path / "runs"]).runs, tmp_path / "out") is None
    write_run(
        tmp_path / "runs" / "base", RunSpec("longbench", pruner="snapkv", budget=1 / 64, bits=4, samples=4)
    )
    write_run(
        tmp_path / "runs" / "b",
        RunSpec("longbench", pruner="snapkv", budget=1 / 32, bits=4, layer_config="16bit@0-3", samples=4),
    )
    result = figure9_layers(collect_runs([tmp_path / "runs"]).runs, tmp_path / "out")
    assert result is not None and len(result.data) == 1
    assert any("no 4x4 baseline" in n for n in result.notes)


def test_figure10_needs_two_strategies_and_draws_the_16bit_reference(figures, tmp_path):
    result = figures[0]["fig10"]
    assert set(result.data["quant"]) == {"flexgen", "flexgen_outlier", "kivi", "kivi_outlier"}
    assert "Grey" in result.caption
    write_run(tmp_path / "runs" / "a", RunSpec("longbench", pruner="snapkv", tokens=512, bits=4, samples=4))
    assert figure10_quant(collect_runs([tmp_path / "runs"]).runs, tmp_path / "out") is None
    # Table 1's Ada-KV runs use FlexGen where SnapKV uses KIVI: two strategies, but not for the same pruner
    write_run(
        tmp_path / "runs" / "b",
        RunSpec("longbench", pruner="adakv", quant="flexgen", tokens=512, bits=4, samples=4),
    )
    assert figure10_quant(collect_runs([tmp_path / "runs"]).runs, tmp_path / "out") is None


def test_figure1_separates_the_three_method_families(figures):
    data = figures[0]["fig1"].data
    assert {"pruning", "quantization", "quantized pruning", "full"} <= set(data["method"])
    assert data["compression"].between(0, 1.01).all()


def test_figure3_and_figure4_points(figures):
    fig3 = figures[0]["fig3"].data
    assert set(fig3["source"]) == {"LongBench-E", "RULER"}
    assert set(fig3[fig3["source"] == "RULER"]["bucket"]) == {"4k", "8k", "16k"}
    assert set(fig3[fig3["source"] == "LongBench-E"]["bucket"]) == {"0-4k", "4-8k", "8k+"}
    fig4 = figures[0]["fig4"].data
    assert set(fig4["model"]) == {
        "llama32_1b_instruct",
        "llama32_3b_instruct",
        "llama3_8b_instruct",
        "llama3_70b_instruct",
    }
    assert set(fig4["budget"]) == {1 / 64}


def test_no_figure_is_drawn_without_data(tmp_path):
    empty = collect_runs([tmp_path / "nothing"]).runs
    out = tmp_path / "out"
    for function in (figure1_crossentropy, figure3_lengths, figure4_scale, figure9_layers, figure10_quant):
        assert function(empty, out) is None
    assert figure2_budget(empty, out) is None and niah_heatmaps(empty, out) == []
    assert not out.exists() or not list(out.glob("*.png"))


def test_niah_heatmap_averages_samples_per_length_and_depth(tmp_path):
    spec = RunSpec(
        "niah",
        model="smollm2_135m",
        pruner="snapkv",
        tokens=128,
        bits=4,
        samples=8,
        extra={"lengths": [1000, 2000], "depths": [0, 100]},
    )
    folder = write_run(tmp_path / "runs" / "r", spec)
    [result] = niah_heatmaps(collect_runs([tmp_path / "runs"]).runs, tmp_path / "out")
    data = result.data
    assert len(data) == 4  # 2 lengths x 2 depths
    from qpruning.report import read_predictions

    records = read_predictions(folder)
    cell = [r["score"] for r in records if r["extra"] == {"context_length": 1000, "depth": 0}]
    assert data[(data["context_length"] == 1000) & (data["depth"] == 0)]["value"].iloc[0] == sum(cell) / len(
        cell
    )


def test_niah_heatmaps_skip_an_uncompressed_run_that_has_neither_budget_nor_tokens(tmp_path):
    """pruner=none keeps every token: no budget or token row to lay out, so no heatmap (it used to crash)."""
    extra = {"lengths": [1000, 2000], "depths": [0, 100]}
    write_run(tmp_path / "runs" / "none", RunSpec("niah", model="smollm2_135m", pruner="none", bits=16, samples=4,
                                                   extra=extra))
    write_run(tmp_path / "runs" / "snap", RunSpec("niah", model="smollm2_135m", pruner="snapkv", tokens=128, bits=4,
                                                   samples=4, extra=extra))
    results = niah_heatmaps(collect_runs([tmp_path / "runs"]).runs, tmp_path / "out")
    assert [set(r.data["pruner"]) for r in results] == [{"snapkv"}]


def test_a_figure_declared_as_a_spec_draws_its_panels_with_its_texts(runs, tmp_path):
    """A new figure is a declaration: what it selects, how a panel draws, its texts; render writes PNG and CSV."""
    from qpruning.report.figures import FigureSpec, Layout, Selection, render

    drawn_keys = []

    def select(runs, paper):
        picked = runs[runs["family"] == "niah"]
        panels = sorted({(m,) for m in picked["model"]})
        return Selection(picked, ["model"], panels) if panels else None

    def draw_panel(panel):
        drawn_keys.append(panel.key)
        assert set(panel.rows["model"]) == {panel.key[0]}
        panel.ax.bar(range(len(panel.rows)), panel.rows["score"])
        panel.drawn.bits.update(int(b) for b in panel.rows["bits"])

    spec = FigureSpec(
        name="scores",
        title="Scores",
        heading="NIAH scores per model",
        caption=lambda selection, drawn: f"{len(selection.panels)} models, bits {sorted(drawn.bits)}.",
        select=select,
        draw_panel=draw_panel,
        layout=Layout(ncols=2),
        columns=["model", "bits", "tokens"],
    )
    [result] = render(spec, runs, tmp_path)
    models = sorted({m for m in runs[runs["family"] == "niah"]["model"]})
    assert drawn_keys == [(m,) for m in models] and result.panels == len(models)
    assert result.name == "scores" and result.title == "Scores" and result.caption.startswith(f"{len(models)} models")
    assert _is_png(result.path) and result.path == tmp_path / "scores.png"
    written = pd.read_csv(result.data_path)
    assert list(written.columns) == ["model", "bits", "tokens", "value", "samples", "n_runs", "run_path"]
    assert len(written) == int((runs["family"] == "niah").sum())
    assert render(spec, runs[runs["family"] == "ruler"], tmp_path / "none") == []
