"""Helpers for tests that measure drawn figures (legends inside, labels apart): not a test file."""

from __future__ import annotations


def drawn(fig):
    """Lay ``fig`` out on an Agg canvas (text extents measurable) and return it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    return fig


def inside(box, outer) -> bool:
    """``box`` lies within ``outer`` (display boxes, half a pixel of slack)."""
    return (box.x0 >= outer.x0 - 0.5 and box.x1 <= outer.x1 + 0.5 and box.y0 >= outer.y0 - 0.5
            and box.y1 <= outer.y1 + 0.5)
