"""The EOI oracle: one Givens rotation at a time, recounting the support after every step.

Plain and slow, it states docs/design.md §1 (EOI semantics) in code; every other backend is
tested against it (same seed: identical masks, values within rounding, generator left in the
same state). Registered as the ``"reference"`` backend.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_generator
from .nm import NMDraws
from .problem import Problem, make_problem
from .stream import Draws, keep_later

__all__ = ["build", "reference_sparse_orthogonal"]


def build(problem: Problem, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend interface (:mod:`orthosparse.eoi.backends`): float64 weights and bool masks,
    ``(n_mat, rows, cols)``, computed on the CPU and moved to ``problem.device``."""
    r, c, need = problem.r, problem.c, problem.need
    weights, masks = [], []
    for b in range(problem.n_mat):
        a = torch.zeros(r, c, dtype=torch.float64)  # (r, c)
        support = torch.zeros(r, c, dtype=torch.bool)
        a[:, :r] = torch.eye(r, dtype=torch.float64)
        support[:, :r] = torch.eye(r, dtype=torch.bool)
        nnz, k = r, 0
        while nnz < need:
            i_s, j_s, th_s = (x[b] for x in draws.chunk(k))
            for i, j, theta in zip(i_s.tolist(), j_s.tolist(), th_s.tolist(), strict=True):
                old = a[:, [i, j]].clone(), support[:, [i, j]].clone()
                cos, sin = math.cos(theta), math.sin(theta)
                ai, aj = a[:, i].clone(), a[:, j].clone()
                a[:, i] = cos * ai + sin * aj
                a[:, j] = -sin * ai + cos * aj
                union = support[:, i] | support[:, j]
                support[:, i] = union
                support[:, j] = union
                before, nnz = nnz, int(support.sum())
                if nnz >= need:
                    if not keep_later(before, nnz, need):  # undo the last rotation
                        a[:, [i, j]], support[:, [i, j]] = old
                    break
            k += 1
        if not problem.wide:
            a, support = a.T, support.T
        weights.append(problem.gain * a)
        masks.append(support)
    device = problem.device
    return torch.stack(weights).to(device), torch.stack(masks).to(device)


def reference_sparse_orthogonal(
    rows: int,
    cols: int,
    density: float,
    *,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    batch: int | None = None,
    nm: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build EOI matrices one rotation at a time, recounting the support each step (the oracle).

    Same arguments and random stream as :func:`orthosparse.eoi.sparse_orthogonal` (which gives
    the same result with ``backend="reference"``); float64 by default, for tests and benchmarks.
    ``nm=(N, M)``: N:M structured EOI on :class:`orthosparse.eoi.nm.NMDraws` (docs/nm.md).
    """
    problem = make_problem(rows, cols, density, gain=gain, dtype=dtype, batch=batch, nm=nm,
                           stacklevel=2)
    generator = check_generator(generator)
    draws = Draws(problem.n_mat, problem.c, problem.density, generator) if problem.nm is None \
        else NMDraws(problem.n_mat, problem.rows, problem.cols, problem.density, problem.nm,
                     generator)
    weight, mask = build(problem, draws)
    weight = weight.to(problem.dtype)
    if batch is None:
        return weight[0].contiguous(), mask[0].contiguous()
    return weight, mask
