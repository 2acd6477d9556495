"""Run a mask method: ``compute_masks`` (positions) and ``compute_densities`` (no positions).

The two public entry points validate their arguments once; ``masks_for`` and ``densities_for``
are the same computations on checked arguments, for ``sparsify``, which validates at its own
boundary (docs/design.md §3, the sparsify pipeline). A random method (``uniform``, ``erk``, ...)
gives kept counts; ``compute_masks`` then draws positions, ``compute_densities`` does not, so an
init scheme that builds its own masks (EOI) consumes no random draw for positions it would throw
away. A data-driven method (``snip``, ``grasp``, ``synflow``) computes masks either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .._checks import check_density, check_generator
from .._layers import PrunableLayer, prunable_layers
from . import nm, saliency  # noqa: F401  (register nm; snip, grasp, synflow)
from .density import check_counts, density_map_counts, draw_positions
from .registry import MASK_METHODS, MaskMethod, MaskMethodName, warn_empty

__all__ = ["compute_densities", "compute_masks", "get_mask_method", "layer_densities"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_DENSITY_MAP = "per-layer density map"


def get_mask_method(method: MaskMethodName | str | Mapping[str, float], *,
                    name: str = "method") -> MaskMethod:
    """Return the registered method ``method``, or a random method for a per-layer density map.

    ``name`` is the argument's name in the caller's signature, for the error message.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
        TypeError: ``method`` is neither a string nor a mapping.
    """
    if isinstance(method, Mapping):
        return MaskMethod(_DENSITY_MAP, functools.partial(density_map_counts, method), False)
    if not isinstance(method, str):
        raise TypeError(f"{name} must be a mask method name or a mapping of per-layer "
                        f"densities, got {type(method).__name__}: {method!r}")
    return MASK_METHODS.get(method)


def check_method_density(method: MaskMethod, density: object) -> float | None:
    """Validate the overall ``density`` for ``method`` (a density map may go without one)."""
    if density is None and (method.name == _DENSITY_MAP or method.positions is not None):
        return None  # a map's own densities; a structured method's default (nm: N/M)
    return check_density(density)


def check_method_options(method: MaskMethod, options: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming the options ``method`` does not take."""
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        shown = ", ".join(map(repr, unknown))
        if method.name == _DENSITY_MAP:
            raise TypeError(f"unknown option(s) {shown} for a per-layer density map; it takes "
                            f"none")
        raise TypeError(f"unknown option(s) {shown} for mask method {method.name!r}; its "
                        f"options are: {', '.join(method.options) or '(none)'}")


def layer_densities(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Return ``{name: kept fraction}`` for each mask (``mask.sum() / mask.numel()``).

    Example:
        >>> layer_densities({"fc.weight": torch.tensor([True, False, False, False])})
        {'fc.weight': 0.25}
    """
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask {name!r} must be a torch.Tensor, got {type(mask).__name__}")
        if mask.numel() == 0:
            raise ValueError(f"mask {name!r} is empty (shape {tuple(mask.shape)})")
    return _kept_fractions(masks)


def _kept_fractions(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: int(torch.count_nonzero(mask)) / mask.numel() for name, mask in masks.items()}


# ----------------------------------------------------------------------------- checked arguments
def _run_data_driven(method: MaskMethod, model: nn.Module, layers: list[PrunableLayer],
                     density: float, data: Iterable | None, loss_fn: LossFn | None,
                     options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    masks = method.fn(model, layers, density, data=data, loss_fn=loss_fn, **options)
    assert list(masks) == [layer.name for layer in layers], "masks must follow the layers"
    warn_empty(list(masks), [int(torch.count_nonzero(m)) for m in masks.values()],
               [m.numel() for m in masks.values()])
    return masks


def _counts(method: MaskMethod, layers: list[PrunableLayer], density: float | None,
            options: Mapping[str, Any]) -> list[int]:
    counts = check_counts(layers, method.fn(layers, density, **options))
    warn_empty([layer.name for layer in layers], counts,
               [layer.weight.numel() for layer in layers])
    return counts


def masks_for(method: MaskMethod, model: nn.Module, layers: list[PrunableLayer],
              density: float | None, *, data: Iterable | None, generator: torch.Generator | None,
              loss_fn: LossFn | None, options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """:func:`compute_masks` on checked arguments."""
    if method.data_driven:
        return _run_data_driven(method, model, layers, density, data, loss_fn, options)
    counts = _counts(method, layers, density, options)
    if method.positions is not None:  # a structure of its own (nm)
        return method.positions(layers, counts, generator, **options)
    return draw_positions(layers, counts, generator)


def densities_for(method: MaskMethod, model: nn.Module, layers: list[PrunableLayer],
                  density: float | None, *, data: Iterable | None, loss_fn: LossFn | None,
                  options: Mapping[str, Any]) -> dict[str, float]:
    """:func:`compute_densities` on checked arguments: random methods draw no position."""
    if method.data_driven:
        return _kept_fractions(_run_data_driven(method, model, layers, density, data, loss_fn,
                                                options))
    counts = _counts(method, layers, density, options)
    return {layer.name: k / layer.weight.numel() for layer, k in zip(layers, counts, strict=True)}


# ----------------------------------------------------------------------------- public boundary
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


def _check_arguments(method: object, model: object, density: object, layers: object,
                     loss_fn: object, options: Mapping[str, Any]
                     ) -> tuple[MaskMethod, list[PrunableLayer], float | None]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = _check_layers(model, layers)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    entry = get_mask_method(method)
    density = check_method_density(entry, density)
    check_method_options(entry, options)
    return entry, layers, density


def compute_masks(
    method: MaskMethodName | str | Mapping[str, float],
    model: nn.Module,
    density: float | None,
    *,
    layers: list[PrunableLayer] | None = None,
    data: Iterable | None = None,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Compute a fixed boolean mask for every prunable weight of ``model``.

    ``method`` is a registered name (:func:`~orthosparse.masks.list_mask_methods`) or a per-layer
    density map ``{param name or glob pattern: density}`` covering every layer. The model is left
    as it was (weights, buffers, train/eval modes, ``requires_grad``).

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
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` for ``snip``/``grasp`` (default: for
            ``snip`` its ``loss`` option, ``"nll-logits"``; for ``grasp`` cross-entropy).
        **options: method options, e.g. ``erk_power_scale``; ``snip``: ``loss``, ``batches``;
            ``grasp``: ``variant``, ``batches``, ``temperature``; ``synflow``: ``rounds``,
            ``input_shape``, ``double_precision``; ``nm``: ``nm=(N, M)``, ``nm_indivisible``
            (docs/nm.md §9). The saliency defaults are the paper's
            official code (:mod:`orthosparse.masks.saliency`, docs/protocol.md): with no option,
            ``compute_masks("grasp", model, d, data=loader)`` scores every batch of ``loader``
            at temperature 200 and keeps the official end of the score.

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
    generator = check_generator(generator)
    entry, layers, density = _check_arguments(method, model, density, layers, loss_fn, options)
    return masks_for(entry, model, layers, density, data=data, generator=generator,
                     loss_fn=loss_fn, options=options)


def compute_densities(
    method: MaskMethodName | str | Mapping[str, float],
    model: nn.Module,
    density: float | None,
    *,
    layers: list[PrunableLayer] | None = None,
    data: Iterable | None = None,
    loss_fn: LossFn | None = None,
    **options: Any,
) -> dict[str, float]:
    """Return the per-layer densities ``method`` gives ``model``, drawing no random position.

    Equals ``layer_densities(compute_masks(method, model, density, ...))`` for the same
    arguments: random methods (``dense``, ``uniform``, ``er``, ``erk``, ``uniform-skip``, maps)
    decide kept counts without positions, data-driven ones (``snip``, ``grasp``, ``synflow``)
    compute their masks and count them. Each density is ``count / numel`` exactly. This is what
    an init scheme that builds its own masks (EOI, SAO) takes (`rigl`'s ``get_sparsities``).
    Arguments as :func:`compute_masks`, without ``generator``.

    Raises:
        ValueError: unknown method, bad density, infeasible target, missing data.
        TypeError: bad argument types or an unknown option.

    Example:
        >>> compute_densities("erk", nn.Sequential(nn.Linear(50, 2), nn.Linear(2, 50)), 0.5)
        {'0.weight': 0.5, '1.weight': 0.5}
    """
    entry, layers, density = _check_arguments(method, model, density, layers, loss_fn, options)
    return densities_for(entry, model, layers, density, data=data, loss_fn=loss_fn,
                         options=options)
