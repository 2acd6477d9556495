"""Reports: mean ± std tables over seeds, best per column, run listing, CSV, plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from figure_checks import drawn, inside  # tests/figure_checks.py
from orthosparse.lab.cli import main
from orthosparse.lab.config import TrainConfig, config_from_dict, config_hash, config_to_dict
from orthosparse.lab.report import (
    collect_runs,
    plot_accuracy_vs_density,
    plot_jacobian,
    plot_loss_curves,
    report,
    results_table,
)
from orthosparse.lab.train import train

# test accuracy per (init, density): three seeds each, values chosen so mean/std are round
ACC = {("eoi", 0.05): [0.90, 0.92, 0.94], ("eoi", 0.1): [0.95, 0.96, 0.97],
       ("orthogonal", 0.05): [0.80, 0.90, 1.00], ("orthogonal", 0.1): [0.97, 0.98, 0.99]}
JAC = {"eoi": {"mean": 1.0, "std": 0.01, "min": 0.99, "max": 1.01},
       "orthogonal": {"mean": 0.3, "std": 0.1, "min": 0.05, "max": 0.6}}


def make_run(root: Path, init: str, density: float, seed: int, state: str = "finished",
             acc: float | None = None, achieved: float | None = None,
             mask: str = "erk") -> Path:
    cfg = TrainConfig(init=init, density=density, seed=seed, mask=mask, out=str(root / "runs"),
                      name="r")
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    if state == "failed":
        (run_dir / "failed.json").write_text(json.dumps({"error": "ValueError: boom"}))
        return run_dir
    losses = [1.0 + seed, 0.5 + seed]  # per epoch
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e + 1, "train_loss": loss}) + "\n" for e, loss in enumerate(losses)))
    (run_dir / "final.json").write_text(json.dumps({
        "status": state, "test_acc": acc, "config_hash": config_hash(cfg),
        "jacobian_init": JAC.get(init),
        "density_nonzero": density if achieved is None else achieved}))
    return run_dir


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    dirs = []
    for (init, density), accs in ACC.items():
        for seed, acc in enumerate(accs):
            dirs.append(make_run(tmp_path, init, density, seed, acc=acc))
    dirs.append(make_run(tmp_path, "orthogonal", 0.1, 3, state="diverged", acc=0.1))
    dirs.append(make_run(tmp_path, "eoi", 0.05, 3, state="failed"))
    never_started = {"run_dir": "runs/r-0123456789"}  # listed in the grid, no directory yet
    (tmp_path / "sweep.json").write_text(json.dumps(
        {"runs": [{"run_dir": str(d.relative_to(tmp_path))} for d in dirs] + [never_started]}))
    return tmp_path


def sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_table_is_mean_and_std_over_seeds_with_the_best_in_bold(sweep_dir):
    records = collect_runs(sweep_dir)
    assert len(records) == 14 and [r.state for r in records[-2:]] == ["diverged", "failed"]
    table = results_table(records)
    assert table.row_fields == ["init"] and table.col_fields == ["density"]
    for (init, density), accs in ACC.items():
        cell = table.cells[((init,), (str(density),))]
        assert cell.n == 3
        assert cell.mean == pytest.approx(sum(accs) / 3, abs=1e-12)
        assert cell.std == pytest.approx(sample_std(accs), abs=1e-12)
    assert table.to_markdown() == (
        "| init | density=0.05 | density=0.1 |\n"
        "|---|---|---|\n"
        "| eoi | **92.00 ± 2.00** (n=3, 1 without result) | 96.00 ± 1.00 (n=3) |\n"
        "| orthogonal | 90.00 ± 10.00 (n=3) | **98.00 ± 1.00** (n=3, 1 diverged) |\n")
    loss = results_table(records, metric="test_loss")  # lower is better; none recorded here
    assert "**" not in loss.to_markdown()


def test_report_writes_markdown_csv_and_plots(sweep_dir):
    result = report(sweep_dir)
    out = sweep_dir / "report"
    assert result.out_dir == out
    assert {p.name for p in out.iterdir()} == {
        "report.md", "results.csv", "runs.csv", "accuracy_vs_density.png", "loss_curves.png",
        "jacobian.png"}
    for name in ("accuracy_vs_density.png", "loss_curves.png", "jacobian.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| eoi | **92.00 ± 2.00** (n=3, 1 without result) |" in md
    assert "pooled in a cell: seed" in md
    assert "14 runs (1 diverged, 1 failed, 12 finished); 1 more runs of the sweep have not " \
           "started." in md
    for record in result.records:  # every run named with its hash and a link to its directory
        assert f"`{record.config_hash}`" in md
        assert f"[{record.run_dir.name}](../runs/{record.run_dir.name})" in md
    assert "failed: ValueError: boom" in md
    assert "epochs = 20" in md and "density = " not in md.split("## Settings")[1].split("##")[0]
    # Jacobian at init: mean [mean min, mean max] per cell
    assert "| eoi | 1 [0.99, 1.01] | 1 [0.99, 1.01] |" in md
    assert "| orthogonal | 0.3 [0.05, 0.6] | 0.3 [0.05, 0.6] |" in md
    assert "![accuracy_vs_density](accuracy_vs_density.png)" in md

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4
    first = rows[0]
    assert (first["init"], first["density"], first["n"], first["without_result"]) == (
        "eoi", "0.05", "3", "1")
    assert float(first["mean"]) == pytest.approx(0.92, abs=1e-12)
    assert float(first["std"]) == pytest.approx(0.02, abs=1e-12)
    assert (float(first["min"]), float(first["max"])) == (0.90, 0.94)
    assert len(first["config_hashes"].split()) == 4
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs) == 14 and runs[-1]["state"] == "failed" and runs[-1]["error"] == (
        "ValueError: boom")
    assert [r["seed"] for r in runs[:3]] == ["0", "1", "2"]


def test_plots_show_the_means(sweep_dir):
    records = collect_runs(sweep_dir)
    (fig,) = plot_accuracy_vs_density(records)
    (ax,) = [a for a in fig.axes if a.get_visible() and a.containers]
    lines = {c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()))
             for c in ax.containers}
    assert set(lines) == {"init=eoi", "init=orthogonal"}
    xs, ys = lines["init=orthogonal"]
    assert xs == [0.05, 0.1] and ys == pytest.approx([90.0, 98.0], abs=1e-9)
    (loss_fig,) = plot_loss_curves(records)
    panels = [a for a in loss_fig.axes if a.get_visible() and a.lines]
    assert len(panels) == 2  # one per density
    eoi = next(line for line in panels[0].lines if line.get_label() == "init=eoi")
    # seeds 0, 1, 2 (the failed seed 3 has no history): losses 1+s and 0.5+s per epoch
    assert list(eoi.get_ydata()) == pytest.approx([2.0, 1.5], abs=1e-12)
    assert len(plot_jacobian(records)) == 1
    no_density = [r for r in records if r.config["density"] == 0.1]
    assert plot_accuracy_vs_density(no_density) == []


def test_a_real_run_directory_reports_its_curves_and_jacobian(tmp_path, capsys):
    cfg = config_from_dict(dict(
        dataset="synthetic", data_options=["input_shape=[1,4,4]", "train_size=64",
                                           "test_size=16", "num_classes=3"],
        model="mlp", depth=3, width=8, density=0.5, mask="uniform", batch_size=16, epochs=2,
        device="cpu", progress="none", tensorboard=False, jacobian="epoch",
        jacobian_examples=4, out=str(tmp_path)))
    result = train(cfg)
    assert main(["report", str(result.run_dir)]) == 0
    out = capsys.readouterr().out
    acc = 100 * result.final["test_acc"]
    assert out.startswith(f"| runs | test_acc |\n|---|---|\n| all | **{acc:.2f}** |\n")
    md = (result.run_dir / "report" / "report.md").read_text()
    assert "## Jacobian singular values at initialization" in md
    jac = result.final["jacobian_init"]
    assert (f"| runs | singular values at init |\n|---|---|\n| all | {jac['mean']:.3g} "
            f"[{jac['min']:.3g}, {jac['max']:.3g}] |") in md
    assert (result.run_dir / "report" / "jacobian.png").is_file()
    figs = plot_jacobian(collect_runs(result.run_dir))
    (line,) = [ln for a in figs[0].axes for ln in a.lines]
    expected = [result.final["jacobian_init"]["mean"]] + [
        r["jacobian"]["mean"] for r in result.history]
    assert list(line.get_xdata()) == [0, 1, 2]
    assert list(line.get_ydata()) == pytest.approx(expected, rel=1e-12)


def test_runs_are_found_in_nested_directories(tmp_path):
    make_run(tmp_path / "a", "eoi", 0.1, 0, acc=0.5)
    make_run(tmp_path / "b", "eoi", 0.1, 1, acc=0.7)  # b/runs/r-<hash>: 3 levels
    records = collect_runs(tmp_path)
    assert sorted(r.metric("test_acc") for r in records) == [0.5, 0.7]
    table = results_table(records, rows=["seed"], cols=[])
    assert table.rows == [("0",), ("1",)] or table.rows == [("1",), ("0",)]


def test_bad_input_is_named(tmp_path, sweep_dir):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        collect_runs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run directories"):
        collect_runs(tmp_path / "empty")
    records = collect_runs(sweep_dir)
    with pytest.raises(ValueError, match="metric='accuracy' must be one of: test_acc"):
        results_table(records, metric="accuracy")
    with pytest.raises(ValueError, match="unknown config key 'inits' for the table"):
        results_table(records, rows=["inits"])
    with pytest.raises(ValueError, match="no runs to tabulate"):
        results_table([])


def test_cells_off_their_density_are_flagged_and_never_bold(tmp_path):
    # SAO with dense fallback layers reaches 0.63 instead of 0.05: its accuracy must not be
    # presented as a density-0.05 result.
    for seed, acc in enumerate([0.90, 0.92]):
        make_run(tmp_path, "eoi", 0.05, seed, acc=acc)
        make_run(tmp_path, "sao", 0.05, seed, acc=acc + 0.04, achieved=0.633)
        make_run(tmp_path, "ai", 0.05, seed, acc=acc - 0.01, achieved=0.052)  # rounding only
    table = results_table(collect_runs(tmp_path), rows=["init"], cols=["density"])
    col = table.cols[0]
    assert table.cell_text(("sao",), col) == "95.00 ± 1.41 (density 0.633)"
    assert table.cell_text(("eoi",), col) == "**91.00 ± 1.41**"
    assert table.cell_text(("ai",), col) == "90.00 ± 1.41"
    assert table.best(col) == pytest.approx(0.91)
    md = report(tmp_path, plots=False).markdown
    assert "(density x): the runs' achieved mask density" in md


# --------------------------------------------------------------------------- readable plots

# test accuracy per (mask, init, density), two seeds: orthogonal and kaiming stuck at chance
# (equal series), dense orthogonal and dense kaiming equal too, as in a 2-epoch digits sweep.
STUCK = {("erk", "eoi", 0.05): [0.72, 0.74], ("erk", "eoi", 0.1): [0.83, 0.85],
         ("erk", "orthogonal", 0.05): [0.10, 0.08], ("erk", "orthogonal", 0.1): [0.10, 0.08],
         ("erk", "ai", 0.05): [0.60, 0.64], ("erk", "ai", 0.1): [0.81, 0.83],
         ("erk", "kaiming", 0.05): [0.10, 0.08], ("erk", "kaiming", 0.1): [0.10, 0.08],
         ("dense", "orthogonal", 1.0): [0.95, 0.95], ("dense", "kaiming", 1.0): [0.95, 0.95]}


@pytest.fixture
def stuck_grid(tmp_path) -> Path:
    for (mask, init, density), accs in STUCK.items():
        for seed, acc in enumerate(accs):
            make_run(tmp_path, init, density, seed, acc=acc, mask=mask)
    return tmp_path


def overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def shown_xticklabels(fig, ax):
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer))
            for t in [*ax.get_xticklabels(), *ax.get_xticklabels(minor=True)]
            if t.get_visible() and t.get_text()]


def pixels_of(fig, ax, color, y, tol=30) -> int:
    """How many pixels of ``ax`` within 6 pixels of the height of data value ``y`` are drawn in
    ``color`` (each channel within ``tol``): the part of a curve at ``y`` that shows."""
    from matplotlib.colors import to_rgb

    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].astype(int)  # (h, w, 3), top row first
    box = ax.get_window_extent()
    row = img.shape[0] - ax.transData.transform((1.0, y))[1]
    part = img[int(row) - 6:int(row) + 7, int(box.x0) + 2:int(box.x1) - 2]
    want = np.array([round(255 * c) for c in to_rgb(color)])
    return int((np.abs(part - want).max(axis=2) <= tol).sum())


def test_accuracy_plot_legend_fits_ticks_are_the_densities_and_equal_series_show(stuck_grid):
    (fig,) = plot_accuracy_vs_density(collect_runs(stuck_grid), stuck_grid / "acc.png")
    assert (stuck_grid / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn(fig)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    (legend,) = fig.legends  # one legend for the page, inside the figure
    assert inside(legend.get_window_extent(fig.canvas.get_renderer()), fig.bbox)
    labels = [t.get_text() for t in legend.get_texts()]
    assert sorted(labels[:4]) == ["init=ai", "init=eoi", "init=kaiming", "init=orthogonal"]
    assert sorted(labels[4:]) == ["dense init=kaiming", "dense init=orthogonal"]
    # the grid's densities are the only tick labels, and none overlaps another
    ticks = shown_xticklabels(fig, ax)
    assert [text for text, _ in ticks] == ["0.05", "0.1"]
    assert not any(overlap(a, b) for i, (_, a) in enumerate(ticks) for _, b in ticks[i + 1:])
    # every series its own (marker, linestyle); data exact, drawing shifted sideways
    series = {c.get_label(): c.lines[0] for c in ax.containers}
    styles = {(line.get_marker(), line.get_linestyle()) for line in series.values()}
    assert len(series) == 4 and len(styles) == 4
    orth, kaim = series["init=orthogonal"], series["init=kaiming"]
    for line in (orth, kaim):
        assert list(line.get_xdata()) == [0.05, 0.1]
        assert list(line.get_ydata()) == pytest.approx([9.0, 9.0], abs=1e-9)
    xy = np.column_stack([orth.get_xdata(), orth.get_ydata()]).astype(float)
    gap = orth.get_transform().transform(xy)[:, 0] - kaim.get_transform().transform(xy)[:, 0]
    assert np.abs(gap).min() >= 5 / 72 * fig.dpi - 1e-6  # at least 5 points apart
    # both equal curves and both equal dense lines are visible in the drawing
    dense = [line for line in ax.lines if line.get_label().startswith("dense")]
    assert len(dense) == 2 and dense[0].get_ydata()[0] == dense[1].get_ydata()[0]
    for line in [orth, kaim, *dense]:
        y = float(line.get_ydata()[0])
        assert pixels_of(fig, ax, line.get_color(), y) > 30, line.get_label()


def test_tick_labels_that_would_overlap_are_left_blank(tmp_path):
    for density, acc in ((0.1, 0.5), (0.102, 0.6), (0.5, 0.7)):
        make_run(tmp_path, "eoi", density, 0, acc=acc)
    fig = drawn(*plot_accuracy_vs_density(collect_runs(tmp_path)))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "", "0.5"]
    assert list(ax.get_xticks()) == [0.1, 0.102, 0.5]


def test_loss_curves_legend_names_series_of_every_panel(tmp_path):
    make_run(tmp_path, "eoi", 0.05, 0, acc=0.5)
    make_run(tmp_path, "eoi", 0.1, 0, acc=0.6)
    make_run(tmp_path, "sao", 0.1, 0, acc=0.6)  # only in the second panel
    fig = drawn(*plot_loss_curves(collect_runs(tmp_path)))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["init=eoi", "init=sao"]
    eoi, sao = (next(ln for ln in fig.axes[1].lines if ln.get_label() == name)
                for name in ("init=eoi", "init=sao"))
    assert list(eoi.get_ydata()) == list(sao.get_ydata())  # equal curves, both drawn
    assert (eoi.get_marker(), eoi.get_linestyle()) != (sao.get_marker(), sao.get_linestyle())
    for line in (eoi, sao):
        y = float(line.get_ydata()[0])
        assert pixels_of(fig, fig.axes[1], line.get_color(), y) > 30, line.get_label()
