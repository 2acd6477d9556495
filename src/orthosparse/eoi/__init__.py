"""Exact Orthogonal Initialization (EOI): the sparse orthogonal generator and its backends.

:func:`sparse_orthogonal` is the generator (docs/design.md §1 (EOI semantics));
:func:`reference_sparse_orthogonal` the one-rotation-at-a-time oracle; ``backend=`` picks an
implementation from the table of :mod:`orthosparse.eoi.backends` (docs/design.md §5 (EOI
backends)): :func:`list_backends` names them, :func:`default_backend` says which one
``backend="auto"`` uses.
"""

from .backends import default_backend, list_backends
from .generator import sparse_orthogonal
from .reference import reference_sparse_orthogonal

__all__ = ["default_backend", "list_backends", "reference_sparse_orthogonal", "sparse_orthogonal"]
