"""The ``nm`` mask method: random N:M structured masks (docs/nm.md §9).

``mask="nm"`` with the option ``nm=(N, M)`` keeps at most ``N`` of every ``M`` consecutive inputs
of each output row (Linear, Hugging Face ``Conv1D`` in its ``(out, in)`` orientation) or of
every ``M`` consecutive input channels at each tap of each output channel (convs), the layout of
the sparse tensor cores (docs/nm.md §7). Every layer gets the same density, ``N/M`` by default;
a larger one is an error. Layers whose input size is not a multiple of ``M`` cannot hold the
structure: ``nm_indivisible="error"`` (default) lists them all, ``"dense"`` keeps them dense with
a warning naming them.

A scheme that keeps masks (``orthogonal``, ``sparse-kaiming``, ...) gets random N:M masks
(:func:`nm_masks`: the kept positions per group from :func:`orthosparse.eoi.nm.add_capped`); a
scheme that builds its own masks must build N:M ones itself: ``eoi`` takes the same ``nm``
option (``sparsify`` hands it to both) and calls ``eoi_(..., nm=)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .._checks import keep_count
from .._layers import PrunableLayer
from ..eoi.nm import add_capped, check_nm
from .registry import masks_warn, register_mask_method

__all__ = ["NM_INDIVISIBLE", "check_nm_option", "indivisible_layers", "nm_counts", "nm_masks"]

NM_INDIVISIBLE: tuple[str, ...] = ("error", "dense")
"""Values of the ``nm_indivisible`` option: what becomes of a layer whose input size is not a
multiple of ``M``."""


def check_nm_option(value: object) -> tuple[int, int]:
    """Return the ``nm`` option as ``(N, M)``: a pair of integers, or the text ``"N,M"`` or
    ``"N:M"`` (``--sparsify-options nm=2,4`` reaches ``sparsify`` as text).

    Raises:
        TypeError: neither a pair of integers nor such text (naming the value).
        ValueError: a bad ``(N, M)`` (:func:`orthosparse.eoi.nm.check_nm`).
    """
    if isinstance(value, str):
        parts = value.replace(":", ",").split(",")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise TypeError(f"nm={value!r} must be a pair of integers (N, M) or the text 'N,M' "
                            f"or 'N:M', e.g. nm=2,4")
        value = (int(parts[0]), int(parts[1]))
    return check_nm(value)


def _check_indivisible(value: object) -> str:
    if not isinstance(value, str) or value not in NM_INDIVISIBLE:
        raise ValueError(f"nm_indivisible={value!r} must be one of: "
                         f"{', '.join(map(repr, NM_INDIVISIBLE))}")
    return value


def _inputs(layer: PrunableLayer) -> int:
    """The input size the N:M groups run along: ``in`` or ``c_in/groups``."""
    return int(layer.oriented().weight.shape[1])


def indivisible_layers(layers: Sequence[PrunableLayer], m: int) -> list[tuple[str, int]]:
    """``(name, input size)`` of every layer whose input size is not a multiple of ``m``."""
    return [(layer.name, _inputs(layer)) for layer in layers if _inputs(layer) % m]


def _shown(bad: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name!r} (input size {size})" for name, size in bad)


def _resolve(layers: Sequence[PrunableLayer], density: float | None, nm: object,
             nm_indivisible: object) -> tuple[tuple[int, int], float, set[str]]:
    """Validate the options; return ``(N, M)``, the density and the names of the dense layers."""
    if nm is None:
        raise ValueError("mask method 'nm' needs the option nm=(N, M), e.g. nm=(2, 4) "
                         "(--sparsify-options nm=2,4)")
    n, m = check_nm_option(nm)
    policy = _check_indivisible(nm_indivisible)
    if density is None:
        density = n / m
    if isinstance(density, bool) or not isinstance(density, numbers.Real) \
            or not 0.0 < density <= n / m:
        raise ValueError(f"mask method 'nm' with nm={(n, m)}: density={density!r} must be in "
                         f"(0, N/M = {n}/{m} = {n / m:.6g}]")
    bad = indivisible_layers(layers, m)
    if bad and policy == "error":
        raise ValueError(f"nm={(n, m)} needs every layer's input size to be a multiple of "
                         f"M={m}; {len(bad)} layer{'s are' if len(bad) > 1 else ' is'} not: "
                         f"{_shown(bad)}. Exclude them, or pass nm_indivisible='dense' to keep "
                         f"them dense")
    if bad:
        masks_warn(f"nm={(n, m)}: {len(bad)} layer{'s' if len(bad) > 1 else ''} whose input "
                   f"size is not a multiple of M={m} left dense (nm_indivisible='dense'): "
                   f"{_shown(bad)}")
    return (n, m), float(density), {name for name, _ in bad}


def nm_masks(layers: Sequence[PrunableLayer], counts: Sequence[int],
             generator: torch.Generator | None, *, nm: object = None,
             nm_indivisible: str = "error") -> dict[str, torch.Tensor]:
    """Random N:M masks holding ``counts`` (from :func:`nm_counts`): per layer the positions of
    :func:`orthosparse.eoi.nm.add_capped` on empty groups, drawn from one ``numpy`` stream seeded
    by a single draw from ``generator`` (made only when some layer has positions to choose).

    At ``N/M`` every group keeps exactly ``N`` positions, uniform within the group.
    """
    n, m = check_nm_option(nm)
    rng = None
    masks = {}
    for layer, count in zip(layers, counts, strict=True):
        weight = layer.oriented().weight  # (out, in, *kernel)
        numel = weight.numel()
        if count in (0, numel):
            mask = torch.full(weight.shape, count > 0, dtype=torch.bool)
        else:
            if rng is None:
                rng = np.random.Generator(np.random.PCG64(
                    int(torch.randint(0, 2**62, (1,), generator=generator))))
            order = (0, *range(2, weight.dim()), 1)  # (out, *kernel, in): inputs innermost
            shape = [weight.shape[i] for i in order]
            groups = np.zeros((numel // m, m), dtype=bool)
            add_capped(groups, int(count), n, rng)
            mask = torch.from_numpy(groups).reshape(shape).permute(
                tuple(order.index(i) for i in range(weight.dim())))
        masks[layer.name] = layer.orient(mask).contiguous().to(layer.weight.device)
    return masks


@register_mask_method("nm", positions=nm_masks)
def nm_counts(layers: list[PrunableLayer], density: float | None, *, nm: object = None,
              nm_indivisible: str = "error") -> list[int]:
    """Every layer keeps ``keep_count(density, numel)`` weights (``density`` defaults to
    ``N/M``, at most ``N/M``); a layer left dense by ``nm_indivisible="dense"`` keeps all.

    Raises:
        ValueError: ``nm`` missing or bad, a density above ``N/M`` (naming both), an unknown
            ``nm_indivisible``, with ``"error"`` layers whose input size is not a multiple of
            ``M`` (listing every one with its input size).
        TypeError: ``nm`` neither a pair of integers nor ``"N,M"`` text.
    """
    _, density, dense = _resolve(layers, density, nm, nm_indivisible)
    return [layer.weight.numel() if layer.name in dense
            else keep_count(density, layer.weight.numel()) for layer in layers]
