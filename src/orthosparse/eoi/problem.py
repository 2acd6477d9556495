"""One EOI request, validated once at the public boundary and handed to a backend as is.

Every backend (:mod:`orthosparse.eoi.backends`) receives a :class:`Problem` and the random stream
(:class:`orthosparse.eoi.stream.Draws`, or :class:`orthosparse.eoi.nm.NMDraws` for an N:M
problem); it never validates again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .._checks import (
    check_density,
    check_device,
    check_float_dtype,
    check_gain,
    check_positive_int,
)
from .nm import check_nm_problem

__all__ = ["Problem", "make_problem"]


@dataclass(frozen=True)
class Problem:
    """``batch`` EOI matrices of shape ``rows x cols`` (docs/design.md §1 (EOI semantics)).

    ``dtype`` is the dtype the caller gets; backends compute in :attr:`compute_dtype` and the
    generator casts. ``batch`` is None for a single matrix (no leading batch dim in the output).
    ``nm`` is ``(N, M)`` for N:M structured EOI (docs/nm.md), None for plain EOI; backends do
    not read it (the stream carries it).
    """

    rows: int
    cols: int
    density: float
    gain: float
    dtype: torch.dtype
    device: torch.device
    batch: int | None
    nm: tuple[int, int] | None = None

    @property
    def r(self) -> int:
        """The smaller side: ``A`` is ``r x c``."""
        return min(self.rows, self.cols)

    @property
    def c(self) -> int:
        """The larger side: the number of columns the rotations act on."""
        return max(self.rows, self.cols)

    @property
    def n_mat(self) -> int:
        """How many matrices are built (1 when ``batch`` is None)."""
        return self.batch or 1

    @property
    def need(self) -> float:
        """The stop threshold on ``nnz(A)``: ``density * r * c``."""
        return self.density * self.r * self.c

    @property
    def wide(self) -> bool:
        """``W = gain * A`` (``rows <= cols``), else ``W = gain * A^T``."""
        return self.rows <= self.cols

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 for float64 outputs, float32 for every other dtype (half types are cast)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32


def make_problem(
    rows: object,
    cols: object,
    density: object,
    *,
    gain: object = 1.0,
    dtype: object = torch.float32,
    device: torch.device | str | None = None,
    batch: object = None,
    nm: object = None,
    stacklevel: int = 2,
) -> Problem:
    """Validate an EOI request and return it as a :class:`Problem`.

    A density below ``1/max(rows, cols)`` (the sparsest exact orthogonal matrix) is legal: it
    warns, with ``stacklevel`` counted from the caller of this function, and builds that matrix.

    ``nm=(N, M)`` asks for N:M structured EOI (docs/nm.md), validated by
    :func:`orthosparse.eoi.nm.check_nm_problem`.

    Raises:
        ValueError: density outside (0, 1] or NaN, non-positive sizes or batch, non-finite gain;
            with ``nm``: ``M < 2``, ``N`` outside ``[1, M)``, ``cols`` not a multiple of ``M``,
            a density above the reachable one.
        TypeError: non-integer sizes, non-float dtype, ``nm`` not a pair of integers.
    """
    rows = check_positive_int(rows, "rows")
    cols = check_positive_int(cols, "cols")
    density = check_density(density)
    dtype = check_float_dtype(dtype)
    if batch is not None:
        batch = check_positive_int(batch, "batch")
    gain = check_gain(gain)  # the one gain rule: a finite real > 0 (numpy scalars too)
    device = check_device(device)  # None: the CPU; refuses cuda without CUDA, and meta
    if nm is not None:
        nm = check_nm_problem(rows, cols, density, nm)
    c = max(rows, cols)
    if density < 1.0 / c:
        warnings.warn(
            f"density={density:.6g} is below the sparsest exact orthogonal {rows}x{cols} matrix; "
            f"returning density 1/{c}={1.0 / c:.6g} instead",
            stacklevel=stacklevel + 1,
        )
    return Problem(rows, cols, density, float(gain), dtype, device, batch, nm)
