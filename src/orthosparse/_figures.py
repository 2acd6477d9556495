"""Figure plumbing shared by the diagnostics plots (``plotting.py``) and the lab's reports
(``lab/report.py``): figures with a measurable canvas, one style per series, a sideways dodge,
density ticks, legends that fit, saving.

Every figure is a ``matplotlib.figure.Figure`` with an Agg canvas (no GUI backend, no global
figure list), so text extents can be measured before saving: a legend is given as many columns as
fit the figure's width, and tick labels that would overlap are left blank. Several series that
hold the same numbers (inits stuck at chance accuracy, spectra that all collapsed to 0) must stay
visible, so each series gets its own (marker, linestyle) pair (:func:`series_style`) and, where
the x values are shared by construction (a grid's densities, epochs), a small sideways shift in
points (:func:`dodge`): the data stay exact, only the drawing moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._atomic import write_atomic
from ._optional import import_optional

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend

__all__ = ["MARKERS", "LINESTYLES", "new_figure", "series_style", "dodge", "density_ticks",
           "drop_overlapping_ticklabels", "legend_below", "legend_fits", "unique_handles",
           "save_figure"]

MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES: tuple[str, ...] = ("-", "--", "-.", ":")
_DODGE_POINTS = 5.0  # sideways distance between neighbouring series, in points
_DODGE_SPAN = 30.0  # the widest spread of all series around an x value, in points


def _matplotlib(module: str, attr: str) -> Any:
    return import_optional(module, attr, user="plotting", package="matplotlib", extra="plot",
                           pip_name="matplotlib")


def new_figure(figsize: tuple[float, float] = (6.0, 4.0)) -> Figure:
    """A constrained-layout ``Figure`` with an Agg canvas attached (text can be measured).

    Raises:
        ImportError: matplotlib is missing or broken (names the ``plot`` extra).
    """
    figure_cls = _matplotlib("matplotlib.figure", "Figure")
    canvas_cls = _matplotlib("matplotlib.backends.backend_agg", "FigureCanvasAgg")
    fig = figure_cls(figsize=figsize, layout="constrained")
    canvas_cls(fig)
    return fig


def series_style(index: int) -> dict[str, str]:
    """Marker and linestyle of the ``index``-th series: distinct pairs for the first 32.

    Marker ``index % 8`` and linestyle ``(index + index // 8) % 4``: two indices with the same
    marker differ by ``8k`` (``k`` in 1..3 below 32), so their linestyles differ by ``k % 4``.
    """
    return {"marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[(index + index // len(MARKERS)) % len(LINESTYLES)]}


def dodge(artists: Iterable[Any], index: int, count: int, fig: Figure) -> float:
    """Shift ``artists`` sideways by the ``index``-th of ``count`` offsets centred on 0.

    Neighbouring series are ``_DODGE_POINTS`` apart (less when ``count`` would spread them over
    more than ``_DODGE_SPAN``); the shift is added to each artist's transform after it was drawn
    into the axes, so the data (``get_xdata``) and the autoscaled limits stay those of the data.
    Returns the shift in points.
    """
    if count <= 1:
        return 0.0
    translation = _matplotlib("matplotlib.transforms", "ScaledTranslation")
    step = min(_DODGE_POINTS, _DODGE_SPAN / (count - 1))
    points = (index - (count - 1) / 2) * step
    offset = translation(points / 72.0, 0.0, fig.dpi_scale_trans)
    for artist in artists:
        artist.set_transform(artist.get_transform() + offset)
    return points


def density_ticks(ax: Axes, densities: Iterable[float]) -> None:
    """Log x axis with the given densities as its only ticks, labelled compactly (``0.05``)."""
    null_locator = _matplotlib("matplotlib.ticker", "NullLocator")
    ticks = sorted({float(d) for d in densities})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{d:g}" for d in ticks])
    ax.xaxis.set_minor_locator(null_locator())


def drop_overlapping_ticklabels(fig: Figure, gap: float = 2.0) -> None:
    """Blank the x tick labels that would overlap a label kept before them, on every visible
    axes of ``fig``: major labels first, then minor ones (a log axis labels some minor ticks),
    each in the order of its ticks. The ticks shown are then fixed (limits kept); ticks stay."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        kept: list[Any] = []
        frozen: dict[bool, tuple[list[float], list[str]]] = {}
        changed = False
        for minor in (False, True):
            labels = [t for t in ax.get_xticklabels(minor=minor)]  # the ticks in view
            locs = [float(t.get_position()[0]) for t in labels]
            texts = [t.get_text() if t.get_visible() else "" for t in labels]
            for i in sorted(range(len(labels)), key=lambda i: locs[i]):
                if not texts[i]:
                    continue
                box = labels[i].get_window_extent(renderer)
                if any(box.x0 < k.x1 + gap and k.x0 < box.x1 + gap for k in kept):
                    texts[i], changed = "", True
                else:
                    kept.append(box)
            frozen[minor] = (locs, texts)
        if changed:
            lo, hi = ax.get_xlim()
            for minor, (locs, texts) in frozen.items():
                ax.set_xticks(locs, texts, minor=minor)
            ax.set_xlim(lo, hi)


def legend_fits(fig: Figure, legend: Legend) -> bool:
    """Whether ``legend`` lies inside the figure's area (after a layout pass)."""
    fig.draw_without_rendering()
    box = legend.get_window_extent(fig.canvas.get_renderer())
    return (box.x0 >= fig.bbox.x0 - 0.5 and box.x1 <= fig.bbox.x1 + 0.5
            and box.y0 >= fig.bbox.y0 - 0.5 and box.y1 <= fig.bbox.y1 + 0.5)


def legend_below(fig: Figure, handles: Sequence[Any], labels: Sequence[str], *,
                 max_cols: int = 4) -> Legend | None:
    """One figure legend under the axes, with as many columns (at most ``max_cols``) as fit the
    figure's width; ``None`` without entries."""
    if not handles:
        return None
    ncols = max(1, min(len(labels), max_cols))
    while True:
        legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols,
                            fontsize="small")
        if ncols == 1 or legend_fits(fig, legend):
            return legend
        legend.remove()
        ncols -= 1


def unique_handles(axes: Iterable[Axes]) -> tuple[list[Any], list[str]]:
    """The legend entries of all ``axes``, each label once, in the order first seen."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen)


def save_figure(fig: Figure, path: str | Path | None, dpi: int = 150) -> Figure:
    """Save ``fig`` to ``path`` atomically (format from the suffix; folders created), the
    bounding box tight around everything drawn; ``None`` saves nothing."""
    if path is not None:
        path = Path(path)
        fmt = path.suffix.lstrip(".").lower() or None
        write_atomic(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi, bbox_inches="tight",
                                                  pad_inches=0.05))
    return fig
