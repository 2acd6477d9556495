"""Plots for the diagnostics: Jacobian singular-value histograms, norms versus depth, spectra
versus density.

matplotlib is imported inside the functions (``pip install orthosparse[plot]``) through
``orthosparse._optional.import_optional``. Figures are built with ``matplotlib.figure.Figure``
directly, not ``pyplot``: no GUI backend, no global figure list to leak, safe in scripts and worker
processes. Pass ``path`` to save (format from the suffix, written atomically). Several series that
hold the same numbers never hide one another: spectra get one panel each, curves get their own
(marker, linestyle) pair and, versus density, a sideways shift of a few points
(``orthosparse._figures``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ._checks import check_positive_int, density_off_target
from ._figures import (
    density_ticks,
    dodge,
    drop_overlapping_ticklabels,
    legend_below,
    new_figure,
    save_figure,
    series_style,
)
from .diagnostics import PropagationRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_jacobian_vs_density", "plot_signal_propagation", "plot_singular_values"]

RecordKind = Literal["layer", "activation", "all"]
SpectraLayout = Literal["panels", "overlay"]


def _new_figure(ncols: int = 1, figsize: tuple[float, float] = (6.0, 4.0)) -> Figure:
    fig = new_figure(figsize)
    fig.subplots(1, ncols)
    return fig


def _save(fig: Figure, path: str | Path | None) -> Figure:
    return save_figure(fig, path, dpi=150)


def _spectrum_note(total: int, zeros: int, hidden: int) -> str:
    """What a panel says about values it cannot show: all 0, or some left off a log axis."""
    if zeros == total:
        return f"all {total} singular values are 0" + (
            " (not shown on a log axis)" if hidden else "")
    if hidden:
        return f"{hidden} of {total} values <= 0 not shown (log axis)"
    return ""


def plot_singular_values(spectra: Mapping[str, torch.Tensor | np.ndarray | Sequence[float]], *,
                         bins: int = 60, log_x: bool = False,
                         layout: SpectraLayout = "panels", ax: Axes | None = None,
                         title: str | None = None, path: str | Path | None = None) -> Figure:
    """Histograms of Jacobian singular values, one per label (an init, a density).

    ``layout="panels"`` (default) gives every label its own panel, stacked, sharing the x axis,
    so no histogram hides another however tall or narrow it is; ``"overlay"`` (or an ``ax``)
    draws step outlines in one axes, each label with its own linestyle. All series share the
    same bins (linear, or geometric with ``log_x``) and show the fraction of their values per
    bin. A dynamically isometric network shows a spike at 1; a Gaussian init at depth shows a
    spread over orders of magnitude (use ``log_x``). A spectrum that is all 0 (a collapsed
    network) says so in its panel (in its legend label when overlaid).

    Args:
        spectra: ``{"eoi": values, "kaiming": values}``; any shape, flattened; NaNs raise.
        bins: number of bins.
        log_x: logarithmic x axis; values <= 0 cannot be shown and are left out with a warning.
        layout: ``"panels"`` (one panel per label) or ``"overlay"`` (one axes).
        ax: overlay into this axes instead of a new figure.
        title: figure title (axes title when overlaid).
        path: save the figure there.

    Raises:
        ValueError: no series, an empty or NaN series, nothing positive to show with ``log_x``,
            an unknown layout.

    Example:
        >>> sv = {"eoi": jacobian_singular_values(a, x), "kaiming": jacobian_singular_values(b, x)}
        >>> plot_singular_values(sv, log_x=True, path="spectra.png")
    """
    if not isinstance(spectra, Mapping) or not spectra:
        raise ValueError("spectra must be a non-empty mapping {label: singular values}")
    if layout not in ("panels", "overlay"):
        raise ValueError(f"layout={layout!r} must be one of 'panels', 'overlay'")
    bins = check_positive_int(bins, "bins")
    series: dict[str, tuple[np.ndarray, int, str]] = {}  # label: (shown values, count, note)
    for label, values in spectra.items():
        v = np.asarray(values.detach().cpu().double() if isinstance(values, torch.Tensor)
                       else values, dtype=np.float64).ravel()
        if v.size == 0 or np.isnan(v).any():
            raise ValueError(f"spectra[{label!r}] is empty or contains NaN")
        total, zeros, hidden = v.size, int((v == 0).sum()), 0
        if log_x and (v <= 0).any():
            hidden = int((v <= 0).sum())
            warnings.warn(f"spectra[{label!r}]: {hidden} of {v.size} values <= 0 "
                          f"cannot be shown on a log axis and are left out", stacklevel=2)
            v = v[v > 0]
        series[str(label)] = (v, total, _spectrum_note(total, zeros, hidden))
    pooled = np.concatenate([v for v, _, _ in series.values()])
    if pooled.size == 0:
        raise ValueError("no positive singular values to show on a log axis")
    lo, hi = pooled.min(), pooled.max()
    if log_x:
        edges = np.geomspace(lo, hi if hi > lo else lo * 1.01, bins + 1)
    else:
        edges = np.histogram_bin_edges(pooled, bins=bins, range=(lo, hi) if hi > lo else
                                       (lo - 0.5, hi + 0.5))
    ylabel = "fraction of values"
    if ax is not None or layout == "overlay":
        fig = _new_figure() if ax is None else ax.figure
        ax = fig.axes[0] if ax is None else ax
        for i, (label, (v, total, note)) in enumerate(series.items()):
            ax.hist(v, bins=edges, weights=np.full(v.size, 1.0 / total), histtype="step",
                    linewidth=1.5, linestyle=series_style(i)["linestyle"], color=f"C{i % 10}",
                    label=label + (f" ({note})" if note else ""))
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel("singular value of the input-output Jacobian")
        ax.set_ylabel(ylabel)
        ax.legend()
        if title:
            ax.set_title(title)
        drop_overlapping_ticklabels(fig)
        return _save(fig, path)
    fig = new_figure((6.0, 0.9 + 1.5 * len(series)))
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for i, (panel, (label, (v, total, note))) in enumerate(zip(axes, series.items(),
                                                               strict=True)):
        color = f"C{i % 10}"
        panel.hist(v, bins=edges, weights=np.full(v.size, 1.0 / total), histtype="stepfilled",
                   facecolor=color, edgecolor=color, alpha=0.45, linewidth=1.2, label=label)
        panel.text(0.99, 0.92, label, transform=panel.transAxes, ha="right", va="top",
                   fontweight="bold", color=color)
        if note:
            panel.text(0.5, 0.5, note, transform=panel.transAxes, ha="center", va="center",
                       fontsize="small", bbox={"facecolor": "white", "edgecolor": color,
                                               "boxstyle": "round"})
        panel.set_ylabel(ylabel, fontsize="small")
        panel.set_ylim(bottom=0)
    if log_x:
        axes[-1].set_xscale("log")
    axes[-1].set_xlabel("singular value of the input-output Jacobian")
    if title:
        fig.suptitle(title)
    drop_overlapping_ticklabels(fig)
    return _save(fig, path)


def plot_signal_propagation(runs: Mapping[str, Sequence[PropagationRecord]]
                            | Sequence[PropagationRecord], *, kind: RecordKind = "layer",
                            log_y: bool = True, title: str | None = None,
                            path: str | Path | None = None) -> Figure:
    """Plot forward activation norm and backward gradient norm versus depth, one line per run.

    Two panels side by side, each run with its own colour and linestyle (equal runs stay
    visible); depth is the index among the records of ``kind`` (``"layer"``:
    Linear/Conv outputs, ``"activation"``, or ``"all"``) in forward order, from
    ``signal_propagation``.

    Args:
        runs: ``{"eoi": records, ...}``, or one list of records.
        kind: which records to plot.
        log_y: logarithmic y axes (norms explode or vanish geometrically with depth).
        title: figure title.
        path: save the figure there.

    Raises:
        ValueError: no runs, unknown kind, or a run with no records of ``kind``.

    Example:
        >>> recs = {"eoi": signal_propagation(a, x), "kaiming": signal_propagation(b, x)}
        >>> plot_signal_propagation(recs, path="norms.png")
    """
    if kind not in ("layer", "activation", "all"):
        raise ValueError(f"kind={kind!r} must be one of 'layer', 'activation', 'all'")
    if not isinstance(runs, Mapping):
        runs = {"": runs}
    if not runs:
        raise ValueError("runs must hold at least one run of records")
    fig = _new_figure(ncols=2, figsize=(11.0, 4.0))
    ax_act, ax_grad = fig.axes
    for i, (label, records) in enumerate(runs.items()):
        recs = [r for r in records if kind == "all" or r.kind == kind]
        if not recs:
            raise ValueError(f"run {label!r} has no records of kind={kind!r}")
        depth = np.arange(1, len(recs) + 1)
        style = {"linestyle": series_style(i)["linestyle"], "color": f"C{i % 10}"}
        ax_act.plot(depth, [r.activation_norm for r in recs], label=label or None, **style)
        ax_grad.plot(depth, [r.gradient_norm for r in recs], label=label or None, **style)
    for ax, what in ((ax_act, "activation norm (forward)"), (ax_grad, "gradient norm (backward)")):
        ax.set_xlabel(f"depth ({kind} outputs)")
        ax.set_ylabel(f"mean per-example {what}")
        if log_y:
            ax.set_yscale("log")
        if any(runs):
            ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _number(value: Any) -> float:
    """A summary number as a float; None (a non-finite number after JSON) becomes NaN."""
    return math.nan if value is None else float(value)


def plot_jacobian_vs_density(sweep: Mapping[str, Any], path: str | Path | None = None, *,
                             title: str | None = None, ax: Axes | None = None) -> Figure:
    """Plot the Jacobian singular-value summary at init versus density, one curve per init.

    The signal-propagation figure of `Sparser, Better, Deeper, Stronger: Improving Static Sparse
    Training with Exact Orthogonal Initialization` - Nowak et al. (2024), arXiv 2406.01755: the
    mean singular value of the input-output Jacobian (line) with its min-max range (shaded band)
    for each init, density on a log x axis (ticks at the measured densities only), singular value
    on a log y axis, and a dashed line at ``sigma = 1`` (dynamical isometry). Each init has its
    own marker and linestyle and is shifted a few points sideways (``orthosparse._figures.dodge``;
    the data stay at their densities), so inits with equal numbers stay visible. A cell whose
    ``achieved_density`` misses its density by more than 10% (layers the init could not build
    were left dense, e.g. SAO with ``fallback=True``) is drawn hollow and labelled with the
    achieved density; the legend says "fell back to dense". Minima of 0 are drawn at the bottom
    edge of the log axis. Cells with an ``error`` (the init cannot build that density) are left
    out and named in the legend (``"sao (n/a at 0.1)"``); other cells whose mean is not finite
    and positive are left out with a warning. The legend goes under the axes (to their right
    when drawing into a given ``ax``).

    Args:
        sweep: ``inspect(..., densities=...)["density_sweep"]``: ``densities``, optional
            ``inits`` (order of the curves; default: the keys of ``summary``) and ``summary``
            ``{init: [{"density", "mean", "std", "min", "max", "achieved_density"?, ...} or
            {"density", "error"}]}``.
        path: save the figure there.
        title: axes title.
        ax: draw into this axes instead of a new figure.

    Raises:
        ValueError: no densities or no inits, a cell without a density, nothing plottable.

    Example:
        >>> result = inspect(cfg, ["eoi", "orthogonal"], densities=[0.05, 0.1, 0.5, 1.0])
        >>> plot_jacobian_vs_density(result["density_sweep"], "jacobian_vs_density.png")
    """
    if not isinstance(sweep, Mapping) or not isinstance(sweep.get("summary"), Mapping):
        raise ValueError("sweep must be a mapping with a 'summary' {init: [cells]} (the "
                         "'density_sweep' entry of inspect(..., densities=...))")
    summary = sweep["summary"]
    inits = list(sweep.get("inits") or summary)
    if not inits or not sweep.get("densities"):
        raise ValueError("sweep has no inits or no densities: nothing to plot")
    own_figure = ax is None
    fig = _new_figure() if ax is None else ax.figure
    ax = fig.axes[0] if ax is None else ax
    plotted = 0
    fell_back = False
    for index, name in enumerate(inits):
        if name not in summary:
            raise ValueError(f"sweep['summary'] has no entry for init {name!r}")
        cells = list(summary[name])
        if any(not isinstance(c, Mapping) or c.get("density") is None for c in cells):
            raise ValueError(f"sweep['summary'][{name!r}]: every cell needs a 'density'")
        cells.sort(key=lambda c: float(c["density"]))
        failed = [f"{float(c['density']):g}" for c in cells if c.get("error")]
        points = []
        for c in cells:
            if c.get("error"):
                continue
            mean = _number(c.get("mean"))
            if not (math.isfinite(mean) and mean > 0):
                warnings.warn(f"init {name!r} at density {float(c['density']):g}: mean singular "
                              f"value {mean} is not finite and positive; left out of the plot",
                              stacklevel=2)
                continue
            achieved = _number(c.get("achieved_density"))
            off = math.isfinite(achieved) and density_off_target(achieved, float(c["density"]))
            points.append((float(c["density"]), mean, _number(c.get("min")),
                           _number(c.get("max")), achieved if off else math.nan))
        label = str(name) + (f" (n/a at {', '.join(failed)})" if failed else "")
        style = {**series_style(index), "color": f"C{index % 10}"}
        if not points:
            ax.plot([], [], label=label, **style)  # keeps the init in the legend
            continue
        x, mean, lo, hi, achieved = np.array(points, dtype=np.float64).T  # 5 x (points,)
        off = np.flatnonzero(np.isfinite(achieved))
        on = [i for i in range(len(x)) if i not in set(off.tolist())]
        (line,) = ax.plot(x, mean, markevery=on, label=label, **style)
        band = ax.fill_between(x, lo, hi, color=style["color"], alpha=0.2, linewidth=0)
        artists = [line, band]
        if off.size:  # hollow markers: the achieved density is not the column's
            fell_back = True
            (hollow,) = ax.plot(x[off], mean[off], linestyle="none", marker=style["marker"],
                                markersize=8, markerfacecolor="white", markeredgewidth=1.8,
                                color=style["color"], zorder=3, label=f"_{name} fell back")
            artists.append(hollow)
        dodge(artists, index, len(inits), fig)
        for i in off:
            ax.annotate(f"d={achieved[i]:.2g}", (x[i], mean[i]), xycoords=line.get_transform(),
                        xytext=(0, 8), textcoords="offset points", ha="center",
                        fontsize="x-small", color=style["color"])
        plotted += 1
    if not plotted:
        raise ValueError("no init has a finite positive mean singular value at any density: "
                         "nothing to plot")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="isometry")
    ax.set_yscale("log", nonpositive="clip")
    density_ticks(ax, sweep["densities"])  # the measured densities only, no minor labels
    ax.set_xlabel("density (curves shifted a few points sideways to stay apart)")
    ax.set_ylabel("Jacobian singular value at init\n(mean; band: min-max)")
    handles, labels = ax.get_legend_handles_labels()
    if fell_back:
        from matplotlib.lines import Line2D  # matplotlib is importable: a figure exists

        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=8,
                              markerfacecolor="white", markeredgecolor="0.3",
                              markeredgewidth=1.8))
        labels.append("fell back to dense: layers left dense, d = achieved density")
    if own_figure:
        legend_below(fig, handles, labels, max_cols=2)
    else:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, fontsize="small")
    if title:
        ax.set_title(title)
    drop_overlapping_ticklabels(fig)
    return _save(fig, path)
