"""Plots for the diagnostics: Jacobian singular-value histograms, norms versus depth, spectra
versus density.

matplotlib is imported inside the functions (``pip install orthosparse[plot]``). Figures are built
with ``matplotlib.figure.Figure`` directly, not ``pyplot``: no GUI backend, no global figure list
to leak, safe in scripts and worker processes. Pass ``path`` to save (format from the suffix).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ._checks import check_positive_int
from .diagnostics import PropagationRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_jacobian_vs_density", "plot_signal_propagation", "plot_singular_values"]

RecordKind = Literal["layer", "activation", "all"]


def _new_figure(ncols: int = 1, figsize: tuple[float, float] = (6.0, 4.0)) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'orthosparse[plot]'") from err
    fig = Figure(figsize=figsize, layout="constrained")
    fig.subplots(1, ncols)
    return fig


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig


def plot_singular_values(spectra: Mapping[str, torch.Tensor | np.ndarray | Sequence[float]], *,
                         bins: int = 60, log_x: bool = False, ax: Axes | None = None,
                         title: str | None = None, path: str | Path | None = None) -> Figure:
    """Overlay histograms of Jacobian singular values, one per label (an init, a density).

    All series share the same bins (linear, or geometric with ``log_x``) and are normalized to
    unit area, so spectra of different sizes compare directly. A dynamically isometric network
    shows a spike at 1; a Gaussian init at depth shows a spread over orders of magnitude (use
    ``log_x``).

    Args:
        spectra: ``{"eoi": values, "kaiming": values}``; any shape, flattened; NaNs raise.
        bins: number of bins.
        log_x: logarithmic x axis; values <= 0 cannot be shown and are left out with a warning.
        ax: draw into this axes instead of a new figure.
        title: axes title.
        path: save the figure there.

    Raises:
        ValueError: no series, an empty or NaN series, nothing positive to show with ``log_x``.

    Example:
        >>> sv = {"eoi": jacobian_singular_values(a, x), "kaiming": jacobian_singular_values(b, x)}
        >>> plot_singular_values(sv, log_x=True, path="spectra.png")
    """
    if not isinstance(spectra, Mapping) or not spectra:
        raise ValueError("spectra must be a non-empty mapping {label: singular values}")
    bins = check_positive_int(bins, "bins")
    series = {}
    for label, values in spectra.items():
        v = np.asarray(values.detach().cpu().double() if isinstance(values, torch.Tensor)
                       else values, dtype=np.float64).ravel()
        if v.size == 0 or np.isnan(v).any():
            raise ValueError(f"spectra[{label!r}] is empty or contains NaN")
        if log_x and (v <= 0).any():
            warnings.warn(f"spectra[{label!r}]: {int((v <= 0).sum())} of {v.size} values <= 0 "
                          f"cannot be shown on a log axis and are left out", stacklevel=2)
            v = v[v > 0]
        series[label] = v
    pooled = np.concatenate(list(series.values()))
    if pooled.size == 0:
        raise ValueError("no positive singular values to show on a log axis")
    lo, hi = pooled.min(), pooled.max()
    if log_x:
        edges = np.geomspace(lo, hi if hi > lo else lo * 1.01, bins + 1)
    else:
        edges = np.histogram_bin_edges(pooled, bins=bins, range=(lo, hi) if hi > lo else
                                       (lo - 0.5, hi + 0.5))
    fig = _new_figure() if ax is None else ax.figure
    ax = fig.axes[0] if ax is None else ax
    for label, v in series.items():
        ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.5, label=str(label))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("singular value of the input-output Jacobian")
    ax.set_ylabel("density")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_signal_propagation(runs: Mapping[str, Sequence[PropagationRecord]]
                            | Sequence[PropagationRecord], *, kind: RecordKind = "layer",
                            log_y: bool = True, title: str | None = None,
                            path: str | Path | None = None) -> Figure:
    """Plot forward activation norm and backward gradient norm versus depth, one line per run.

    Two panels side by side; depth is the index among the records of ``kind`` (``"layer"``:
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
    for label, records in runs.items():
        recs = [r for r in records if kind == "all" or r.kind == kind]
        if not recs:
            raise ValueError(f"run {label!r} has no records of kind={kind!r}")
        depth = np.arange(1, len(recs) + 1)
        ax_act.plot(depth, [r.activation_norm for r in recs], label=label or None)
        ax_grad.plot(depth, [r.gradient_norm for r in recs], label=label or None)
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
    for each init, density on a log x axis, singular value on a log y axis, and a dashed line at
    ``sigma = 1`` (dynamical isometry). Minima of 0 are drawn at the bottom edge of the log axis.
    Cells with an ``error`` (the init cannot build that density) are left out and named in the
    legend (``"sao (n/a at 0.1)"``); other cells whose mean is not finite and positive are left
    out with a warning.

    Args:
        sweep: ``inspect(..., densities=...)["density_sweep"]``: ``densities``, optional
            ``inits`` (order of the curves; default: the keys of ``summary``) and ``summary``
            ``{init: [{"density", "mean", "std", "min", "max", ...} or {"density", "error"}]}``.
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
    fig = _new_figure() if ax is None else ax.figure
    ax = fig.axes[0] if ax is None else ax
    plotted = 0
    for name in inits:
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
            points.append((float(c["density"]), mean, _number(c.get("min")),
                           _number(c.get("max"))))
        label = str(name) + (f" (n/a at {', '.join(failed)})" if failed else "")
        if not points:
            ax.plot([], [], marker="o", label=label)  # keeps the init in the legend
            continue
        x, mean, lo, hi = np.array(points, dtype=np.float64).T  # 4 x (points,)
        (line,) = ax.plot(x, mean, marker="o", label=label)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        plotted += 1
    if not plotted:
        raise ValueError("no init has a finite positive mean singular value at any density: "
                         "nothing to plot")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="isometry")
    ax.set_xscale("log")
    ax.set_yscale("log", nonpositive="clip")
    densities = sorted({float(d) for d in sweep["densities"]})
    ax.set_xticks(densities, [f"{d:g}" for d in densities])  # the measured densities only
    from matplotlib.ticker import NullLocator  # matplotlib is importable: a figure exists

    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("density")
    ax.set_ylabel("Jacobian singular value at init\n(mean; band: min-max)")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)
