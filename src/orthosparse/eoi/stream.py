"""The random rotation stream and the stop rule that every EOI backend shares.

Same generator seed, same stream, same stop: every backend of :mod:`orthosparse.eoi.backends`
(the oracle :mod:`orthosparse.eoi.reference`, the array passes :mod:`orthosparse.eoi.arrays`, the
compiled kernel :mod:`orthosparse.eoi.compiled`) builds the same matrix.

Density growth (used to size the draws). Each row's support size ``K`` is a Markov chain: start
at 1; a rotation grows it by one iff exactly one of its columns is in the row's support,
probability ``2K(c-K)/(c(c-1))``. The mean-field ODE ``dK/dt = 2K(c-K)/(c(c-1))`` with ``K(0)=1``
gives ``t(d) = ((c-1)/2) ln(d(c-1)/(1-d))`` rotations to reach density ``d``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Draws", "expected_rotations", "keep_later"]


def expected_rotations(c: int, density: float) -> float:
    """Mean-field number of rotations to reach ``density`` on ``c`` columns (module docstring)."""
    if density * c <= 1.0 or c < 2:
        return 0.0
    d = min(density, 1.0 - 0.5 / c)  # d = 1 is reached in finite time; the ODE needs d < 1
    return (c - 1) / 2.0 * math.log(d * (c - 1) / (1.0 - d))


class Draws:
    """Random rotations for ``batch`` matrices on ``c`` columns, drawn lazily in fixed chunks.

    Chunk sizes depend only on ``(c, density)``, so every consumer that stops at the same rotation
    draws the same chunks and leaves ``generator`` in the same state. Chunk ``k`` holds, per matrix,
    ``n_k`` rotations ``(i, j, theta)``: ``i ~ U{0..c-1}``, ``j ~ U({0..c-1} minus {i})``,
    ``theta ~ U[0, 2 pi)`` (float64). All draws are made on the CPU.

    ``first``/``rest`` override the sizes of the first and later chunks (tests draw the stream in
    many small chunks to check that every backend carries its state across them).
    """

    def __init__(self, batch: int, c: int, density: float, generator: torch.Generator | None,
                 *, first: int | None = None, rest: int | None = None):
        self.batch, self.c, self.generator = batch, c, generator
        t = expected_rotations(c, density)
        self.first = first or int(1.2 * t + 4.0 * math.sqrt(t)) + 16
        self.rest = rest or max(16, c)
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def chunk(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        while len(self.chunks) <= k:
            n = self.first if not self.chunks else self.rest
            shape, g = (self.batch, n), self.generator
            i = torch.randint(0, self.c, shape, generator=g).numpy()
            j = torch.randint(0, self.c - 1, shape, generator=g).numpy()
            j += j >= i  # skip i: j is uniform over the other c-1 columns
            theta = torch.rand(shape, generator=g, dtype=torch.float64).numpy()
            theta *= 2.0 * math.pi
            self.chunks.append((i, j, theta))
        return self.chunks[k]


def keep_later(nnz_before, nnz_after, need: float):
    """Stop rule: keep the matrix after the crossing rotation unless the one before is closer.

    Elementwise: numbers give a bool, arrays of nonzero counts a bool array."""
    return nnz_after - need <= need - nnz_before
