"""orthosparse: static sparse training in PyTorch with Exact Orthogonal Initialization (EOI).

`Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
Initialization` - Nowak et al. (2024), arXiv 2406.01755.

The short public API lives here; the modules hold the rest (``orthosparse.diagnostics``,
``orthosparse.models``, ``orthosparse.data``, ``orthosparse.lab.train``, ``orthosparse.baselines``).
"""

from .eoi import sparse_orthogonal
from .init import eoi_, eoi_group_, orthogonal_
from .masks import compute_masks, list_mask_methods
from .schemes import list_inits
from .sparse import (
    apply_masks,
    attach_optimizer,
    density_report,
    get_masks,
    load_sparse_state_dict,
    remove_masks,
)
from .sparsify import sparsify

__version__ = "0.2.0"

__all__ = [
    "apply_masks",
    "attach_optimizer",
    "compute_masks",
    "density_report",
    "eoi_",
    "eoi_group_",
    "get_masks",
    "list_inits",
    "list_mask_methods",
    "load_sparse_state_dict",
    "orthogonal_",
    "remove_masks",
    "sparse_orthogonal",
    "sparsify",
]
