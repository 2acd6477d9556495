"""Competitor initializations: approximate isometry (AI) and sparsity-aware orthogonal (SAO)."""

from .ai import AIStart, approximate_isometry_, isometry_loss
from .sao import (
    SAO_BLOCKS,
    SAO_NON_SQUARE,
    SaoActivation,
    SaoBlocks,
    SaoNonSquare,
    sao_,
    sao_degrees,
    sao_densities,
    sao_layers_,
    sao_matrix,
)

__all__ = [
    "AIStart",
    "SAO_BLOCKS",
    "SAO_NON_SQUARE",
    "SaoActivation",
    "SaoBlocks",
    "SaoNonSquare",
    "approximate_isometry_",
    "isometry_loss",
    "sao_",
    "sao_degrees",
    "sao_densities",
    "sao_layers_",
    "sao_matrix",
]
