"""Results of runs and sweeps: tables (mean ± std over seeds) and plots.

``orthosparse report PATH`` reads a run directory, a sweep directory (its ``sweep.json``) or any
directory holding run directories, and writes into ``PATH/report/``:

- ``report.md``: the results table (mean ± std over seeds, best of each column in bold), the
  Jacobian singular values at initialization when recorded, the settings every run shares, and
  every run with its varying values, state, metric, config hash and directory;
- ``results.csv`` (one row per table cell) and ``runs.csv`` (one row per run);
- ``accuracy_vs_density.png`` (one line per init, dense runs as dashed lines; ticks at the
  grid's densities), ``loss_curves.png`` (training loss per epoch, mean ± std band per init) and
  ``jacobian.png`` (singular values at init: mean, std and range; per epoch when recorded).
  Each init keeps one colour, marker and linestyle in every plot and is shifted a few points
  sideways, so inits with equal results (stuck at chance) stay visible; each page has one legend
  under its panels, as wide as the page allows.

Rows of the table are the varying "method" keys (mask, init, their options, ...), columns the
varying "setting" keys (:data:`SETTING_KEYS`: density, activation, model, ...); runs that differ
only in ``seed`` form one cell.

Example:
    >>> result = report("sweeps/digits-grid")
    >>> print(result.table.to_markdown())
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._checks import density_off_target
from .._figures import (
    density_ticks,
    dodge,
    drop_overlapping_ticklabels,
    legend_below,
    new_figure,
    save_figure,
    series_style,
    unique_handles,
)
from .config import NOT_HASHED, config_fields, config_from_dict, config_hash
from .runs import FAILED, HAS_RESULT, RunState, read_history, run_state

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "RunRecord",
    "Cell",
    "ResultsTable",
    "ReportResult",
    "SETTING_KEYS",
    "METRICS",
    "collect_runs",
    "varying_fields",
    "results_table",
    "plot_accuracy_vs_density",
    "plot_loss_curves",
    "plot_jacobian",
    "report",
]

# Keys that describe the experiment's setting (table columns); other varying keys are methods.
SETTING_KEYS: tuple[str, ...] = ("dataset", "model", "depth", "width", "activation", "density",
                                 "epochs", "batch_size")
# Metrics read from final.json, and whether higher is better.
METRICS: dict[str, bool] = {"test_acc": True, "val_acc": True, "train_acc": True,
                            "best_test_acc": True, "test_loss": False, "val_loss": False,
                            "train_loss": False}
_IGNORED = NOT_HASHED | {"seed"}
_MAX_PANELS = 20


@dataclass
class RunRecord:
    """One run as found on disk.

    Attributes:
        run_dir: its directory.
        config: its ``config.json`` (a dict).
        config_hash: the hash naming its directory.
        state: where the run stands (:data:`~orthosparse.lab.runs.RunState`).
        final: its ``final.json`` (``{}`` without one).
        history: its ``metrics.jsonl`` records.
        error: the error of a failed run.
    """

    run_dir: Path
    config: dict[str, Any]
    config_hash: str
    state: RunState
    final: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def metric(self, name: str) -> float | None:
        value = self.final.get(name)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _record(run_dir: Path) -> RunRecord:
    config = _read_json(run_dir / "config.json")
    try:
        h = config_hash(config_from_dict(config))
    except (TypeError, ValueError):
        h = run_dir.name.rsplit("-", 1)[-1]
    state = run_state(run_dir)
    final = _read_json(run_dir / "final.json") if state in HAS_RESULT else {}
    error = _read_json(run_dir / FAILED).get("error") if state == "failed" else None
    return RunRecord(run_dir, config, h, state, final, read_history(run_dir), error)


def collect_runs(path: str | Path) -> list[RunRecord]:
    """Return the runs under ``path``: a run directory, a sweep directory (the runs its
    ``sweep.json`` lists, in grid order) or a directory with run directories up to 3 levels down.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no run directory.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a directory")
    if (path / "config.json").is_file():
        return [_record(path)]
    sweep = _read_json(path / "sweep.json")
    if sweep.get("runs"):
        dirs = [path / entry["run_dir"] for entry in sweep["runs"]]
        dirs = [d for d in dirs if (d / "config.json").is_file()]
    else:
        dirs = sorted({p.parent for depth in ("*", "*/*", "*/*/*")
                       for p in path.glob(f"{depth}/config.json")})
    if not dirs:
        raise FileNotFoundError(f"no run directories (with a config.json) under {str(path)!r}")
    return [_record(d) for d in dirs]


def varying_fields(records: Sequence[RunRecord]) -> list[str]:
    """Config keys whose values differ across ``records`` (display-only keys left out), in
    config order; ``seed`` included."""
    out = []
    for f in config_fields():
        if f.name in NOT_HASHED and f.name != "seed":
            continue
        if len({json.dumps(r.config.get(f.name), sort_keys=True) for r in records}) > 1:
            out.append(f.name)
    return out


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]" if value else "[]"
    if value is None:
        return "none"
    return str(value)


def _key(record: RunRecord, fields: Sequence[str]) -> tuple[str, ...]:
    return tuple(_show(record.config.get(f)) for f in fields)


# --------------------------------------------------------------------------- the table


@dataclass
class Cell:
    """The runs of one table cell (same row and column values, any seed)."""

    runs: list[RunRecord]
    metric: str

    @property
    def values(self) -> list[float]:
        return [v for r in self.runs if r.state == "finished"
                and (v := r.metric(self.metric)) is not None]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def diverged(self) -> int:
        return sum(r.state == "diverged" for r in self.runs)

    @property
    def missing(self) -> int:
        return sum(r.state not in ("finished", "diverged") for r in self.runs)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def off_density(self) -> float | None:
        """The mean achieved mask density (``final.json`` ``density_nonzero``) when it differs
        from the configured density by more than 10% (e.g. SAO's dense fallback layers), else
        None."""
        pairs = [(r.final["density_nonzero"], r.config["density"]) for r in self.runs
                 if r.final.get("density_nonzero") is not None
                 and isinstance(r.config.get("density"), (int, float))]
        if not pairs:
            return None
        achieved = statistics.fmean(a for a, _ in pairs)
        wanted = statistics.fmean(w for _, w in pairs)
        return achieved if density_off_target(achieved, wanted) else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (``None`` below two runs)."""
        return statistics.stdev(self.values) if self.n >= 2 else None


@dataclass
class ResultsTable:
    """Mean ± std of ``metric`` over seeds: rows x columns of varying keys.

    Attributes:
        metric: the ``final.json`` key shown.
        row_fields / col_fields: the keys that index rows / columns.
        rows / cols: their value tuples, in the order first seen.
        cells: ``{(row, col): Cell}``.
    """

    metric: str
    row_fields: list[str]
    col_fields: list[str]
    rows: list[tuple[str, ...]]
    cols: list[tuple[str, ...]]
    cells: dict[tuple[tuple[str, ...], tuple[str, ...]], Cell]

    @property
    def higher_is_better(self) -> bool:
        return METRICS.get(self.metric, True)

    def best(self, col: tuple[str, ...]) -> float | None:
        """The best mean of column ``col`` among the cells at their configured density."""
        means = [c.mean for (_, k), c in self.cells.items()
                 if k == col and c.mean is not None and c.off_density is None]
        if not means:
            return None
        return max(means) if self.higher_is_better else min(means)

    def _fmt(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.2f}" if self.metric.endswith("acc") else f"{value:.4f}"

    def cell_text(self, row: tuple[str, ...], col: tuple[str, ...], bold: bool = True) -> str:
        cell = self.cells.get((row, col))
        if cell is None:
            return ""
        if cell.mean is None:
            text = "diverged" if cell.diverged else "-"
        else:
            text = self._fmt(cell.mean)
            if cell.std is not None:
                text += f" ± {self._fmt(cell.std)}"
            if bold and cell.mean == self.best(col):
                text = f"**{text}**"
        notes = []
        full = max((c.n + c.diverged for c in self.cells.values()), default=0)
        if cell.n and cell.n < full:
            notes.append(f"n={cell.n}")
        if cell.diverged and cell.mean is not None:
            notes.append(f"{cell.diverged} diverged")
        if cell.missing:
            notes.append(f"{cell.missing} without result")
        if cell.off_density is not None:
            notes.append(f"density {cell.off_density:.3g}")
        return text + (f" ({', '.join(notes)})" if notes else "")

    def col_label(self, col: tuple[str, ...]) -> str:
        if not self.col_fields:
            return self.metric
        return " / ".join(f"{f}={v}" for f, v in zip(self.col_fields, col, strict=True))

    def to_markdown(self) -> str:
        """The table in Markdown (best mean of each column in bold)."""
        head = [*(self.row_fields or ["runs"]), *(self.col_label(c) for c in self.cols)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            label = list(row) if self.row_fields else ["all"]
            lines.append("| " + " | ".join(
                [*label, *(self.cell_text(row, c) for c in self.cols)]) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """One line per cell: keys, n, diverged, mean, std, min, max, config hashes, run dirs."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([*self.row_fields, *self.col_fields, "metric", "n", "diverged",
                         "without_result", "mean", "std", "min", "max", "config_hashes",
                         "run_dirs"])
        for row in self.rows:
            for col in self.cols:
                cell = self.cells.get((row, col))
                if cell is None:
                    continue
                vals = cell.values
                writer.writerow([*row, *col, self.metric, cell.n, cell.diverged, cell.missing,
                                 _csv(cell.mean), _csv(cell.std),
                                 _csv(min(vals) if vals else None),
                                 _csv(max(vals) if vals else None),
                                 " ".join(r.config_hash for r in cell.runs),
                                 " ".join(str(r.run_dir) for r in cell.runs)])
        return buf.getvalue()


def _csv(value: float | None) -> str:
    return "" if value is None else repr(value)


def _split_fields(records: Sequence[RunRecord], rows: Sequence[str] | None,
                  cols: Sequence[str] | None) -> tuple[list[str], list[str]]:
    varying = [f for f in varying_fields(records) if f not in _IGNORED]
    names = {f.name for f in config_fields()}
    for given in (rows or []), (cols or []):
        for f in given:
            if f not in names:
                raise ValueError(f"unknown config key {f!r} for the table; choose among: "
                                 f"{', '.join(sorted(names))}")
    if cols is None:
        cols = [f for f in varying if f in SETTING_KEYS and f not in (rows or [])]
    if rows is None:
        rows = [f for f in varying if f not in cols]
    return list(rows), list(cols)


def results_table(records: Sequence[RunRecord], *, metric: str = "test_acc",
                  rows: Sequence[str] | None = None,
                  cols: Sequence[str] | None = None) -> ResultsTable:
    """Group ``records`` into a table of ``metric`` (mean ± std over the runs of each cell).

    Args:
        records: from :func:`collect_runs`.
        metric: a ``final.json`` key (:data:`METRICS`); accuracies are shown in percent.
        rows / cols: keys indexing rows and columns (default: varying method keys / varying
            :data:`SETTING_KEYS`); a varying key in neither is pooled like seeds.

    Raises:
        ValueError: an unknown metric or key, no records.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} must be one of: {', '.join(METRICS)}")
    if not records:
        raise ValueError("no runs to tabulate")
    row_fields, col_fields = _split_fields(records, rows, cols)
    row_keys: list[tuple[str, ...]] = []
    col_keys: list[tuple[str, ...]] = []
    cells: dict[tuple[tuple[str, ...], tuple[str, ...]], Cell] = {}
    for record in records:
        r, c = _key(record, row_fields), _key(record, col_fields)
        if r not in row_keys:
            row_keys.append(r)
        if c not in col_keys:
            col_keys.append(c)
        cells.setdefault((r, c), Cell([], metric)).runs.append(record)
    col_keys = _sorted_keys(col_keys)
    return ResultsTable(metric, row_fields, col_fields, row_keys, col_keys, cells)


def _sorted_keys(keys: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Sort keys position by position: numbers ascending (0.05 before 0.1), text in the order
    first seen (the grid's order)."""
    first: list[dict[str, int]] = [{} for _ in range(len(keys[0]) if keys else 0)]
    for k in keys:
        for i, v in enumerate(k):
            first[i].setdefault(v, len(first[i]))

    def sort_key(k: tuple[str, ...]) -> list[tuple[int, float, int]]:
        out = []
        for i, v in enumerate(k):
            try:
                out.append((0, float(v), 0))
            except ValueError:
                out.append((1, 0.0, first[i][v]))
        return out

    return sorted(keys, key=sort_key)


# --------------------------------------------------------------------------- plots


def _layout(records: Sequence[RunRecord], drop: Sequence[str] = ()) -> tuple[list[str],
                                                                                list[str]]:
    """``(facet keys, series keys)``: settings (and the mask) make panels, methods make lines."""
    varying = [f for f in varying_fields(records) if f not in _IGNORED and f not in drop]
    facets = [f for f in varying if f in SETTING_KEYS or f == "mask"]
    return facets, [f for f in varying if f not in facets]


def _label(fields: Sequence[str], key: tuple[str, ...], default: str = "all") -> str:
    return ", ".join(f"{f}={v}" for f, v in zip(fields, key, strict=True)) or default


def _groups(records: Sequence[RunRecord], fields: Sequence[str]
            ) -> list[tuple[tuple[str, ...], list[RunRecord]]]:
    out: dict[tuple[str, ...], list[RunRecord]] = {}
    for r in records:
        out.setdefault(_key(r, fields), []).append(r)
    return [(k, out[k]) for k in _sorted_keys(list(out))]


def _panels(n: int, title: str, path: str | Path | None) -> list[tuple[Figure, list, Path | None]]:
    """Figures of at most ``_MAX_PANELS`` panels each (``name.png``, ``name_2.png``, ...).

    Raises:
        ImportError: matplotlib is missing or broken (names the ``plot`` extra).
    """
    pages = []
    for page, start in enumerate(range(0, n, _MAX_PANELS)):
        count = min(_MAX_PANELS, n - start)
        ncols = min(count, 4)
        nrows = -(-count // ncols)
        fig = new_figure((4.2 * ncols, 3.2 * nrows + 0.4))
        axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
        for ax in axes[count:]:
            ax.set_visible(False)
        fig.suptitle(title + (f" ({page + 1}/{-(-n // _MAX_PANELS)})" if n > _MAX_PANELS
                              else ""))
        target = None
        if path is not None:
            target = Path(path)
            if page:
                target = target.with_name(f"{target.stem}_{page + 1}{target.suffix}")
        pages.append((fig, axes[:count], target))
    return pages


def _save(pages: list[tuple[Figure, list, Path | None]]) -> list[Figure]:
    """Give each page one legend under its panels (every series of every panel, once, dense
    lines last, in as many columns as fit the page), blank overlapping tick labels, write the
    page atomically."""
    for fig, axes, target in pages:
        handles, labels = unique_handles(axes)
        order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("dense "))
        legend_below(fig, [handles[i] for i in order], [labels[i] for i in order])
        drop_overlapping_ticklabels(fig)
        save_figure(fig, target, dpi=120)
    return [fig for fig, _, _ in pages]


def _styles(records: Sequence[RunRecord], series: Sequence[str]
            ) -> dict[tuple[str, ...], dict[str, Any]]:
    """One style per series across all panels: colour (matplotlib's cycle ``C0``, ``C1``, ...),
    marker and linestyle (distinct pairs, ``orthosparse._figures.series_style``), and its
    ``index`` among ``count`` series for :func:`~orthosparse._figures.dodge`."""
    keys = [key for key, _ in _groups(records, series)]
    return {key: {"color": f"C{i % 10}", **series_style(i), "index": i, "count": len(keys)}
            for i, key in enumerate(keys)}


def _draw_style(style: dict[str, Any]) -> dict[str, Any]:
    return {k: style[k] for k in ("color", "marker", "linestyle")}


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _markevery(points: int) -> int:
    """Every how many points a marker goes on a curve: at most about 12 markers."""
    return max(1, -(-points // 12))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_accuracy_vs_density(records: Sequence[RunRecord], path: str | Path | None = None, *,
                             metric: str = "test_acc") -> list[Figure]:
    """Plot ``metric`` (mean ± std over seeds) against density, one line per init (method).

    One panel per value of the other varying settings and mask method; dense runs
    (``mask="dense"``) appear as dashed horizontal lines in the panels of their setting. The x
    axis is logarithmic with the grid's densities as its only ticks. Series never hide one
    another: each has its own colour, marker and linestyle and is shifted a few points sideways
    (the same shift in every panel; the data stay at their densities), and the dashes of equal
    dense lines interleave. Returns ``[]`` when the density does not vary.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} must be one of: {', '.join(METRICS)}")
    if "density" not in varying_fields(records):
        return []
    facets, series = _layout(records, drop=("density",))
    scored = [r for r in records if r.state == "finished" and r.metric(metric) is not None]
    sparse = [r for r in scored if r.config.get("mask") != "dense"]
    dense = [r for r in scored if r.config.get("mask") == "dense"]
    groups = _groups(sparse, facets)
    styles = _styles(scored, series)
    scale = 100.0 if metric.endswith("acc") else 1.0
    pages = _panels(len(groups), f"{metric} vs density", path)
    flat = [(fig, ax) for fig, axes, _ in pages for ax in axes]
    densities = {float(r.config["density"]) for r in sparse}
    for (fig, ax), (facet, runs) in zip(flat, groups, strict=True):
        for name, members in _groups(runs, series):
            xs, ys, es = [], [], []
            for density, cell in _groups(members, ["density"]):
                vals = [v for r in cell if r.state == "finished"
                        and (v := r.metric(metric)) is not None]
                if vals:
                    m, s = _mean_std(vals)
                    xs.append(float(density[0]))
                    ys.append(scale * m)
                    es.append(scale * s)
            if xs:
                style = styles[name]
                bars = ax.errorbar(xs, ys, yerr=es, capsize=3, label=_label(series, name, "runs"),
                                   **_draw_style(style))
                dodge(bars.get_children(), style["index"], style["count"], fig)
        other = [f for f in facets if f != "mask"]
        match = [r for r in dense if _key(r, other) == tuple(
            v for f, v in zip(facets, facet, strict=True) if f != "mask")]
        dense_groups = _groups(match, series)
        for j, (name, members) in enumerate(dense_groups):
            vals = [v for r in members if r.state == "finished"
                    and (v := r.metric(metric)) is not None]
            if vals:  # m equal dashed lines: dashes 4 on, 4(m-1) off, shifted by 4j: interleaved
                m = len(dense_groups)
                dashes = (4.0 * j, (4.0, 4.0 * (m - 1))) if m > 1 else (0.0, (4.0, 3.0))
                ax.axhline(scale * statistics.fmean(vals), linestyle=dashes,
                           color=styles[name]["color"],
                           label=f"dense {_label(series, name, '')}".strip())
        density_ticks(ax, densities)
        ax.set_xlabel("density (series shifted a few points sideways)")
        ax.set_ylabel(metric + (" (%)" if scale == 100.0 else ""))
        ax.set_title(_label(facets, facet), fontsize="small")
        ax.grid(alpha=0.3)
    return _save(pages)


def _by_epoch(runs: Sequence[RunRecord], get: Any) -> tuple[list[int], list[list[float]]]:
    table: dict[int, list[float]] = {}
    for r in runs:
        for rec in r.history:
            value = get(rec)
            if isinstance(value, (int, float)) and math.isfinite(value):
                table.setdefault(int(rec["epoch"]), []).append(float(value))
    epochs = sorted(table)
    return epochs, [table[e] for e in epochs]


def plot_loss_curves(records: Sequence[RunRecord], path: str | Path | None = None, *,
                     key: str = "train_loss") -> list[Figure]:
    """Plot ``key`` per epoch (from ``metrics.jsonl``): mean over seeds with a ± std band, one
    line per init (method), one panel per setting and mask method; each line with its own
    colour, marker and linestyle, shifted a few points sideways so equal curves stay visible.
    ``[]`` without history."""
    if not any(r.history for r in records):
        return []
    facets, series = _layout(records)
    with_history = [r for r in records if r.history]
    groups = _groups(with_history, facets)
    styles = _styles(with_history, series)
    pages = _panels(len(groups), f"{key} per epoch", path)
    flat = [(fig, ax) for fig, axes, _ in pages for ax in axes]
    for (fig, ax), (facet, runs) in zip(flat, groups, strict=True):
        for name, members in _groups(runs, series):
            epochs, values = _by_epoch(members, lambda rec: rec.get(key))
            if not epochs:
                continue
            stats = [_mean_std(v) for v in values]
            mean = [m for m, _ in stats]
            style = styles[name]
            (line,) = ax.plot(epochs, mean, label=_label(series, name, "runs"),
                              markevery=_markevery(len(epochs)), **_draw_style(style))
            band = ax.fill_between(epochs, [m - s for m, s in stats],
                                   [m + s for m, s in stats], color=style["color"], alpha=0.2,
                                   linewidth=0)
            dodge([line, band], style["index"], style["count"], fig)
        _integer_epochs(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(_label(facets, facet), fontsize="small")
        ax.grid(alpha=0.3)
    return _save(pages)


def _jac(record: RunRecord, stat: str) -> float | None:
    value = (record.final.get("jacobian_init") or {}).get(stat)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def plot_jacobian(records: Sequence[RunRecord], path: str | Path | None = None) -> list[Figure]:
    """Plot Jacobian singular-value summaries: per epoch (mean, band from min to max; epoch 0 is
    the initialization) when recorded every epoch, else at init per init (method): mean (dot),
    ± std (thick bar) and min..max (thin bar). Averages over seeds; log scale. ``[]`` when no
    run recorded a Jacobian."""
    per_epoch = any(isinstance(rec.get("jacobian"), dict) for r in records for rec in r.history)
    if not per_epoch and not any(_jac(r, "mean") is not None for r in records):
        return []
    facets, series = _layout(records)
    recorded = [r for r in records if _jac(r, "mean") is not None or any(
        isinstance(rec.get("jacobian"), dict) for rec in r.history)]
    groups = _groups(recorded, facets)
    styles = _styles(recorded, series)
    pages = _panels(len(groups), "Jacobian singular values" + (
        " per epoch" if per_epoch else " at initialization"), path)
    flat = [(fig, ax) for fig, axes, _ in pages for ax in axes]
    for (fig, ax), (facet, runs) in zip(flat, groups, strict=True):
        names = _groups(runs, series)
        for i, (name, members) in enumerate(names):
            label = _label(series, name, "runs")
            init = {s: [v for r in members if (v := _jac(r, s)) is not None]
                    for s in ("mean", "std", "min", "max")}
            if per_epoch:
                stats = {}
                for s in ("mean", "min", "max"):
                    epochs, vals = _by_epoch(members, lambda rec, s=s: (rec.get("jacobian")
                                                                        or {}).get(s))
                    if init[s]:
                        epochs, vals = [0, *epochs], [init[s], *vals]
                    stats[s] = (epochs, [statistics.fmean(v) for v in vals])
                if not stats["mean"][0]:
                    continue
                style = styles[name]
                (line,) = ax.plot(*stats["mean"], label=label,
                                  markevery=_markevery(len(stats["mean"][0])),
                                  **_draw_style(style))
                artists = [line]
                if stats["min"][0] == stats["mean"][0] == stats["max"][0]:
                    artists.append(ax.fill_between(
                        stats["mean"][0], stats["min"][1], stats["max"][1],
                        color=style["color"], alpha=0.15, linewidth=0))
                dodge(artists, style["index"], style["count"], fig)
            elif init["mean"]:
                m, s = statistics.fmean(init["mean"]), statistics.fmean(init["std"] or [0.0])
                lo = statistics.fmean(init["min"] or [m])
                hi = statistics.fmean(init["max"] or [m])
                ax.errorbar([i], [m], yerr=[[m - lo], [hi - m]], fmt="none", capsize=4,
                            color=styles[name]["color"])
                ax.errorbar([i], [m], yerr=[[min(s, m * 0.999)], [s]], fmt="none",
                            linewidth=5, alpha=0.5, color=styles[name]["color"])
                ax.plot([i], [m], linestyle="none", marker=styles[name]["marker"],
                        color=styles[name]["color"], label=label)
        if per_epoch:
            _integer_epochs(ax)
            ax.set_xlabel("epoch (0 = init)")
        else:
            ax.set_xticks(range(len(names)), [_label(series, n, "runs") for n, _ in names],
                          rotation=30, ha="right", fontsize="small")
        ax.set_yscale("log")
        ax.set_ylabel("singular value")
        ax.set_title(_label(facets, facet), fontsize="small")
        ax.grid(alpha=0.3)
    return _save(pages)


# --------------------------------------------------------------------------- the report


@dataclass
class ReportResult:
    """What :func:`report` wrote.

    Attributes:
        out_dir: the report directory.
        table: the results table.
        records: the runs found.
        files: ``{kind: path}`` of every file written (``markdown``, ``results_csv``,
            ``runs_csv``, ``accuracy_vs_density``, ``loss_curves``, ``jacobian``, ...).
        markdown: the text of ``report.md``.
    """

    out_dir: Path
    table: ResultsTable
    records: list[RunRecord]
    files: dict[str, Path]
    markdown: str


def _jacobian_table(table: ResultsTable) -> str | None:
    """Same layout as ``table``: mean singular value at init [mean min, mean max] over seeds."""
    if not any(_jac(r, "mean") is not None for c in table.cells.values() for r in c.runs):
        return None
    head = [*(table.row_fields or ["runs"]),
            *(table.col_label(c) if table.col_fields else "singular values at init"
              for c in table.cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        texts = []
        for col in table.cols:
            cell = table.cells.get((row, col))
            vals = {s: [v for r in (cell.runs if cell else []) if (v := _jac(r, s)) is not None]
                    for s in ("mean", "min", "max")}
            if not vals["mean"]:
                texts.append("" if cell is None else "-")
                continue
            lo, hi = (statistics.fmean(vals[s]) if vals[s] else float("nan")
                      for s in ("min", "max"))
            texts.append(f"{statistics.fmean(vals['mean']):.3g} [{lo:.3g}, {hi:.3g}]")
        lines.append("| " + " | ".join([*(row if table.row_fields else ["all"]), *texts])
                     + " |")
    return "\n".join(lines) + "\n"


_RUN_METRICS = ("test_acc", "val_acc", "best_test_acc", "train_loss", "test_loss",
                "epochs_completed", "wall_time")


def _runs_csv(records: Sequence[RunRecord], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run_dir", "config_hash", "state", *fields, *_RUN_METRICS, "error"])
    for r in records:
        writer.writerow([str(r.run_dir), r.config_hash, r.state,
                         *(_show(r.config.get(f)) for f in fields),
                         *(_csv(v) if isinstance(v := r.final.get(m), float) else (
                             "" if v is None else v) for m in _RUN_METRICS), r.error or ""])
    return buf.getvalue()


def _markdown(path: Path, out_dir: Path, records: Sequence[RunRecord], table: ResultsTable,
              plots: dict[str, Path], unstarted: int = 0) -> str:
    states: dict[str, int] = {}
    for r in records:
        states[r.state] = states.get(r.state, 0) + 1
    varying = varying_fields(records)
    what = "accuracy (%)" if table.metric.endswith("acc") else "value"
    lines = [
        f"# Results: {path.resolve().name}", "",
        f"Source: `{path}`: {len(records)} runs ("
        + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"
        + (f"; {unstarted} more runs of the sweep have not started" if unstarted else "")
        + ".",
        f"Metric: `{table.metric}` from each run's `final.json` (final epoch), {what}, mean ± "
        f"sample std over the runs of a cell (seeds); best mean per column in **bold**; "
        f"n is noted where a cell has fewer runs than the others.",
        f"Rows: {', '.join(table.row_fields) or '-'}; columns: "
        f"{' / '.join(table.col_fields) or '-'}"
        + (f"; pooled in a cell: {', '.join(f for f in varying if f not in table.row_fields + table.col_fields)}"  # noqa: E501
           if any(f not in table.row_fields + table.col_fields for f in varying) else "")
        + ".", "", table.to_markdown(),
    ]
    if any(c.off_density is not None for c in table.cells.values()):
        lines += ["(density x): the runs' achieved mask density (`density_nonzero`) differs from "
                  "the configured one by more than 10%, e.g. layers SAO cannot build left dense "
                  "by `fallback=true`; such cells are never bold.", ""]
    jac = _jacobian_table(table)
    if jac is not None:
        lines += ["## Jacobian singular values at initialization", "",
                  "Mean singular value of the input-output Jacobian [mean of the minimum, mean of "
                  "the maximum] over the runs of a cell.", "", jac]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{kind}]({os.path.relpath(p, out_dir)})" for kind, p in plots.items()]
        lines.append("")
    fixed = {f.name: records[0].config.get(f.name) for f in config_fields()
             if f.name not in varying and f.name not in NOT_HASHED}
    lines += ["## Settings shared by every run", "", "```",
              *(f"{k} = {json.dumps(v)}" for k, v in fixed.items()), "```", "",
              "## Runs", ""]
    keys = [f for f in varying if f not in NOT_HASHED or f == "seed"]
    head = [*keys, "state", table.metric, "config hash", "run directory"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        value = r.metric(table.metric)
        shown = "-" if value is None else table._fmt(value)
        link = f"[{r.run_dir.name}]({os.path.relpath(r.run_dir, out_dir)})"
        state = r.state + (f": {r.error}" if r.error else "")
        lines.append("| " + " | ".join([*(_show(r.config.get(f)) for f in keys), state, shown,
                                        f"`{r.config_hash}`", link]) + " |")
    return "\n".join(lines) + "\n"


def report(path: str | Path, *, out: str | Path | None = None, metric: str = "test_acc",
           rows: Sequence[str] | None = None, cols: Sequence[str] | None = None,
           plots: bool = True) -> ReportResult:
    """Write the results table (Markdown, CSV) and plots (PNG) of the runs under ``path``.

    Args:
        path: a run directory, a sweep directory or a directory of run directories.
        out: report directory (default ``<path>/report``).
        metric: the ``final.json`` key tabulated (:data:`METRICS`).
        rows / cols: keys indexing the table (see :func:`results_table`).
        plots: also draw the PNG plots (needs matplotlib).

    Raises:
        FileNotFoundError: no run under ``path``.
        ValueError: an unknown metric or key.

    Example:
        >>> report("sweeps/digits-grid").files["markdown"]
        PosixPath('sweeps/digits-grid/report/report.md')
    """
    path = Path(path)
    records = collect_runs(path)
    table = results_table(records, metric=metric, rows=rows, cols=cols)
    out_dir = Path(out) if out is not None else path / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    drawn: dict[str, Path] = {}
    if plots:
        for kind, figs in (
                ("accuracy_vs_density", plot_accuracy_vs_density(
                    records, out_dir / "accuracy_vs_density.png",
                    metric=metric if metric.endswith("acc") else "test_acc")),
                ("loss_curves", plot_loss_curves(records, out_dir / "loss_curves.png")),
                ("jacobian", plot_jacobian(records, out_dir / "jacobian.png"))):
            for page in range(len(figs)):
                name = f"{kind}.png" if page == 0 else f"{kind}_{page + 1}.png"
                label = kind if page == 0 else f"{kind}_{page + 1}"
                drawn[label] = files[label] = out_dir / name
    fields = [f for f in varying_fields(records) if f not in NOT_HASHED or f == "seed"]
    for kind, name, text in (("results_csv", "results.csv", table.to_csv()),
                             ("runs_csv", "runs.csv", _runs_csv(records, fields))):
        (out_dir / name).write_text(text, encoding="utf-8")
        files[kind] = out_dir / name
    listed = len(_read_json(path / "sweep.json").get("runs", []))
    markdown = _markdown(path, out_dir, records, table, drawn,
                         unstarted=max(0, listed - len(records)))
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    files["markdown"] = out_dir / "report.md"
    return ReportResult(out_dir, table, records, files, markdown)
