"""The mask-method registry and ``compute_masks``, the one entry point over it."""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from .._checks import check_density, check_generator, keep_count
from .._layers import PrunableLayer, prunable_layers
from .._registry import Registry

__all__ = [
    "MASK_METHODS",
    "MaskMethodName",
    "compute_masks",
    "keep_count",
    "layer_densities",
    "list_mask_methods",
    "masks_warn",
    "warn_empty",
]

MaskMethodName = Literal[
    "dense", "uniform", "er", "erk", "uniform-skip", "snip", "grasp", "synflow"
]

# A mask method is ``fn(model, layers, density, *, data, generator, loss_fn, **options)`` returning
# ``{param name: bool mask}`` in layer order. Its own keyword-only arguments are its options.
MaskFn = Callable[..., dict[str, torch.Tensor]]
MASK_METHODS: Registry[MaskFn] = Registry("mask method")

_COMMON_KWARGS = ("data", "generator", "loss_fn")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def list_mask_methods() -> list[str]:
    """Return the registered mask-method names, sorted."""
    return MASK_METHODS.names()


def layer_densities(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Return ``{name: kept fraction}`` for each mask (``mask.sum() / mask.numel()``).

    Example:
        >>> layer_densities({"fc.weight": torch.tensor([True, False, False, False])})
        {'fc.weight': 0.25}
    """
    out = {}
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask {name!r} must be a torch.Tensor, got {type(mask).__name__}")
        if mask.numel() == 0:
            raise ValueError(f"mask {name!r} is empty (shape {tuple(mask.shape)})")
        out[name] = int(torch.count_nonzero(mask)) / mask.numel()
    return out


def _check_layers(model: nn.Module, layers: Iterable[PrunableLayer] | None) -> list[PrunableLayer]:
    if layers is None:
        layers = prunable_layers(model)
    elif isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
        raise TypeError(f"layers must be a list of PrunableLayer, got {type(layers).__name__}")
    layers = list(layers)
    if not layers:
        raise ValueError("no prunable layers: the model has no Linear/Conv weights to mask "
                         "(or all of them were excluded)")
    params = dict(model.named_parameters(remove_duplicate=False))
    seen = set()
    for layer in layers:
        if not isinstance(layer, PrunableLayer):
            raise TypeError(f"layers must hold PrunableLayer entries (from prunable_layers), got "
                            f"{type(layer).__name__}: {layer!r}")
        if layer.name in seen:
            raise ValueError(f"layer {layer.name!r} is listed twice in layers")
        seen.add(layer.name)
        if params.get(layer.name) is not layer.weight:
            raise ValueError(f"layer {layer.name!r} is not a parameter of the given model "
                             f"(layers must come from prunable_layers(model))")
    return layers


def _check_options(name: str, fn: MaskFn, options: dict[str, Any]) -> None:
    allowed = [p.name for p in inspect.signature(fn).parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON_KWARGS]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for mask method "
                        f"{name!r}; its options are: {', '.join(allowed) or '(none)'}")


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


def compute_masks(
    method: MaskMethodName | str | Mapping[str, float],
    model: nn.Module,
    density: float | None,
    *,
    layers: list[PrunableLayer] | None = None,
    data: Iterable | None = None,
    generator: torch.Generator | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Compute a fixed boolean mask for every prunable weight of ``model``.

    ``method`` is a registered name (:func:`list_mask_methods`) or a per-layer density map
    ``{param name or glob pattern: density}`` covering every layer. The model is left as it was
    (weights, buffers, train/eval modes, ``requires_grad``).

    Args:
        method: mask method name, or a mapping of per-layer densities.
        model: the network; its weights are read, never written.
        density: overall fraction of the prunable weights to keep, in (0, 1]. With a map it may be
            ``None``; a float that disagrees with the map's overall density gives a warning.
        layers: the prunable layers (default ``prunable_layers(model)``); the budget is over them.
        data: iterable of ``(inputs, targets)`` batches (e.g. a DataLoader); required by ``snip``
            and ``grasp``; ``synflow`` reads the input shape from it; other methods ignore it.
        generator: CPU generator for random positions (``uniform``, ``er``, ``erk``,
            ``uniform-skip``, maps); saliency methods are deterministic.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` for ``snip``/``grasp``
            (default cross-entropy).
        **options: method options, e.g. ``erk_power_scale``, ``batches``, ``rounds``.

    Returns:
        ``{param name: bool mask}`` in layer order, each mask shaped like its weight and on its
        device.

    Raises:
        ValueError: unknown method, bad density, infeasible target, missing data.
        TypeError: bad argument types or an unknown option.

    Example:
        >>> masks = compute_masks("erk", model, 0.1, generator=torch.Generator().manual_seed(0))
        >>> layer_densities(masks)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    generator = check_generator(generator)
    layers = _check_layers(model, layers)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if isinstance(method, Mapping):
        from .density import density_map_masks  # density.py registers into MASK_METHODS

        if options:
            raise TypeError(f"unknown option(s) {', '.join(map(repr, sorted(options)))} for a "
                            f"per-layer density map; it takes none")
        if density is not None:
            density = check_density(density)
        masks = density_map_masks(method, layers, density, generator=generator)
    else:
        if not isinstance(method, str):
            raise TypeError(f"method must be a mask method name or a mapping of per-layer "
                            f"densities, got {type(method).__name__}: {method!r}")
        fn = MASK_METHODS.get(method)
        density = check_density(density)
        _check_options(method, fn, options)
        masks = fn(model, layers, density, data=data, generator=generator, loss_fn=loss_fn,
                   **options)
    assert list(masks) == [layer.name for layer in layers], "masks must follow the layers"
    return masks
