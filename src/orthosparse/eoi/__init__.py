"""Exact Orthogonal Initialization (EOI): the sparse orthogonal generator and its backends.

See ``docs/design.md`` for the exact semantics.
"""

from .generator import sparse_orthogonal

__all__ = ["sparse_orthogonal"]
