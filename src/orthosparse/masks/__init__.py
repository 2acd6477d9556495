"""Mask methods: which weights of a sparse network are kept (docs/design.md §3, the pipeline).

``compute_masks(method, model, density, ...)`` returns ``{param name: bool mask}``;
``compute_densities`` returns the per-layer densities alone, drawing no random position.
``method`` is one of :func:`list_mask_methods` (``dense``, ``uniform``, ``er``, ``erk``,
``uniform-skip``, ``snip``, ``grasp``, ``synflow``, ``nm``: N:M masks, docs/nm.md §9) or a
per-layer density map.

Example:
    >>> from orthosparse.masks import compute_masks, layer_densities
    >>> masks = compute_masks("erk", model, 0.1, generator=torch.Generator().manual_seed(0))
"""

from .._checks import keep_count
from .compute import compute_densities, compute_masks, get_mask_method, layer_densities
from .density import apportion, density_map_counts, erk_densities, random_masks, resolve_density_map
from .registry import (
    MASK_METHODS,
    MaskMethod,
    MaskMethodName,
    list_mask_methods,
    register_mask_method,
)
from .saliency import (
    GRASP_VARIANTS,
    SNIP_LOSSES,
    GraspVariant,
    SnipLoss,
    grasp_scores,
    keep_top,
    snip_scores,
    synflow_scores,
)

__all__ = [
    "GRASP_VARIANTS",
    "MASK_METHODS",
    "MaskMethod",
    "GraspVariant",
    "MaskMethodName",
    "SNIP_LOSSES",
    "SnipLoss",
    "apportion",
    "compute_densities",
    "compute_masks",
    "density_map_counts",
    "erk_densities",
    "get_mask_method",
    "grasp_scores",
    "keep_count",
    "keep_top",
    "layer_densities",
    "list_mask_methods",
    "random_masks",
    "register_mask_method",
    "resolve_density_map",
    "snip_scores",
    "synflow_scores",
]
