"""Exact Orthogonal Initialization (EOI): the sparse orthogonal generator and its backends.

:func:`sparse_orthogonal` is the generator (docs/design.md §1 (EOI semantics));
:func:`reference_sparse_orthogonal` the one-rotation-at-a-time oracle; ``backend=`` picks an
implementation from the table of :mod:`orthosparse.eoi.backends` (docs/design.md §5 (EOI
backends)): :func:`list_backends` names them, :func:`default_backend` says which one
``backend="auto"`` uses. ``nm=(N, M)`` builds N:M structured EOI (docs/nm.md);
:func:`reachable_density` says how dense it can get and :func:`satisfies_nm` checks a mask.
"""

from .backends import default_backend, list_backends
from .generator import sparse_orthogonal
from .nm import reachable_density, satisfies_nm
from .reference import reference_sparse_orthogonal

__all__ = ["default_backend", "list_backends", "reachable_density", "reference_sparse_orthogonal",
           "satisfies_nm", "sparse_orthogonal"]
