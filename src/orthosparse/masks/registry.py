"""The mask-method registry: what a mask method is, and the warnings every method shares.

A mask method is one of two kinds (docs/design.md §3, the sparsify pipeline):

* **random** (``data_driven=False``: ``dense``, ``uniform``, ``er``, ``erk``, ``uniform-skip``):
  ``fn(layers, density, **options) -> [kept count per layer]``. It decides only how many weights
  each layer keeps; the positions are a uniformly random subset of that size, drawn afterwards
  and only when they are used (``orthosparse.masks.density.random_masks``). An init scheme that
  builds its own masks (EOI) takes the counts and no position is drawn.
* **data-driven** (``data_driven=True``: ``snip``, ``grasp``, ``synflow``):
  ``fn(model, layers, density, *, data, loss_fn, **options) -> {name: bool mask}``. Positions come
  from scores of the weights, so the counts are read from the masks.

A random method may place its counts itself (``positions``: ``nm``, whose masks keep at most
``N`` of every ``M`` consecutive inputs, docs/nm.md §9):
``positions(layers, counts, generator, **options) -> {name: bool mask}`` replaces the uniform
draw. Its ``density`` may be ``None`` (the method's default).

The method's own keyword-only parameters are its options. This module imports no other mask
module: the methods register themselves here, and ``orthosparse.masks.compute`` runs them.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from .._registry import Registry

__all__ = [
    "MASK_METHODS",
    "MaskMethod",
    "MaskMethodName",
    "list_mask_methods",
    "masks_warn",
    "register_mask_method",
    "warn_empty",
]

MaskMethodName = Literal[
    "dense", "uniform", "er", "erk", "uniform-skip", "snip", "grasp", "synflow", "nm"
]
MaskFn = Callable[..., object]

_COMMON = ("data", "loss_fn")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class MaskMethod:
    """A registered mask method: per-layer counts (random) or masks (data-driven)."""

    name: str
    fn: MaskFn
    data_driven: bool
    positions: MaskFn | None = None
    """A random method's own placement of its counts (``nm``), or None: uniform positions."""

    @property
    def options(self) -> list[str]:
        """The method's own keyword-only parameters."""
        return [p.name for p in inspect.signature(self.fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON]


MASK_METHODS: Registry[MaskMethod] = Registry("mask method")


def register_mask_method(name: str, fn: MaskFn | None = None, *, data_driven: bool = False,
                         positions: MaskFn | None = None
                         ) -> Callable[[MaskFn], MaskFn] | MaskFn:
    """Register ``fn`` as mask method ``name``; usable as a decorator when ``fn`` is omitted.

    Args:
        name: the string users pass as ``mask=``.
        fn: ``fn(layers, density, **options) -> list[int]`` (kept count per layer), or with
            ``data_driven=True`` ``fn(model, layers, density, *, data, loss_fn, **options) ->
            {name: bool mask}``.
        data_driven: ``fn`` returns masks computed from the model (and data), not counts.
        positions: a random method's placement of the counts,
            ``positions(layers, counts, generator, **options) -> {name: bool mask}`` (the
            method's options, every one); None: uniformly random positions.

    Raises:
        ValueError: ``name`` is already registered.
        TypeError: ``fn`` is not callable.

    Example:
        >>> @register_mask_method("half")
        ... def half(layers, density):
        ...     return [layer.weight.numel() // 2 for layer in layers]
    """

    def add(item: MaskFn) -> MaskFn:
        if not callable(item):
            raise TypeError(f"mask method {name!r} must be callable, got {type(item).__name__}")
        MASK_METHODS.register(name, MaskMethod(name, item, bool(data_driven), positions))
        return item

    return add if fn is None else add(fn)


def list_mask_methods() -> list[str]:
    """Return the registered mask-method names, sorted."""
    return MASK_METHODS.names()


def masks_warn(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside this package (the user's line)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def warn_empty(names: Iterable[str], counts: Iterable[int], numels: Iterable[int]) -> None:
    """Warn once about the layers that keep no weight (legal, but the network is cut there)."""
    empty = [f"{name!r} (of {n})" for name, k, n in zip(names, counts, numels, strict=True)
             if k == 0]
    if empty:
        shown = ", ".join(empty[:10]) + (f", ... ({len(empty) - 10} more)" if len(empty) > 10
                                         else "")
        masks_warn(f"{len(empty)} layer{'s keep' if len(empty) > 1 else ' keeps'} 0 weights: "
                   f"{shown}; the network is disconnected there (layer collapse)")
