"""EOI, the public generator: sparse orthogonal matrices from random Givens rotations.

`Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
Initialization` - Nowak et al. (2024), arXiv 2406.01755.

Semantics (docs/design.md §1 (EOI semantics)). Let ``r = min(rows, cols)``,
``c = max(rows, cols)``. Start from the wide ``A = [I_r | 0]`` (r x c) and repeatedly rotate a
uniformly drawn column pair ``i != j`` by ``theta ~ U[0, 2 pi)``::

    A[:, i], A[:, j] = cos*A[:, i] + sin*A[:, j], -sin*A[:, i] + cos*A[:, j]

Both columns' supports become the union of the two (tracked symbolically, never by testing values
against zero). Stop at the first rotation after which ``nnz(A) >= d*r*c`` and keep that matrix or
the one before it, whichever has density closer to ``d`` (a tie keeps the later one). The weight
is ``gain * A`` (transposed when ``rows > cols``) and the mask is the support. A product of Givens
rotations is orthogonal, so ``W W^T = gain^2 I`` (wide) or ``W^T W = gain^2 I`` (tall) up to
rounding.

Every backend builds this same matrix from the same random stream
(:class:`orthosparse.eoi.stream.Draws`); they differ only in how (docs/design.md §5 (EOI
backends)). :func:`sparse_orthogonal` validates its arguments once into a
:class:`orthosparse.eoi.problem.Problem`, picks a backend from the table in
:mod:`orthosparse.eoi.backends` (``backend="auto"``: the compiled numba kernel when it loads,
else the array passes) and copies the result into the requested dtype. The oracle, one rotation
at a time, is :func:`orthosparse.eoi.reference.reference_sparse_orthogonal` (and
``backend="reference"``).

N:M structured EOI (``nm=(N, M)``, docs/nm.md) is the same rule on a different stream,
:class:`orthosparse.eoi.nm.NMDraws`: pairs drawn only among columns of one class, so that every
output row keeps at most ``N`` nonzeros in each group of ``M`` consecutive inputs. Every backend
runs it unchanged.
"""

from __future__ import annotations

import torch

from .._checks import check_generator
from .backends import Backend, select
from .nm import NMDraws
from .problem import Problem, make_problem
from .stream import Draws

__all__ = ["draws_for", "generate", "sparse_orthogonal"]


def sparse_orthogonal(
    rows: int,
    cols: int,
    density: float,
    *,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    batch: int | None = None,
    backend: str = "auto",
    nm: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return an exactly orthogonal ``rows x cols`` matrix of the given density and its mask.

    `Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
    Initialization` - Nowak et al. (2024), arXiv 2406.01755. ``W W^T = gain^2 I`` when
    ``rows <= cols``, ``W^T W = gain^2 I`` otherwise; see the module docstring for the exact rule.

    Args:
        rows: output features (``>= 1``).
        cols: input features (``>= 1``).
        density: target fraction of nonzeros in (0, 1]. Below ``1/max(rows, cols)`` the sparsest
            exact matrix (density ``1/max(rows, cols)``) is returned with a warning.
        gain: scale of the orthogonal matrix.
        generator: CPU generator for every random draw (same seed: same mask on CPU and GPU).
        dtype: floating output dtype; half types are computed in float32 and cast.
        device: where the matrices are built and returned.
        batch: build this many independent matrices at once; outputs get a leading batch dim.
        backend: ``"auto"`` or a name from :func:`orthosparse.eoi.list_backends`; every backend
            gives the same mask and values equal up to rounding.
        nm: ``(N, M)``: keep at most ``N`` nonzeros in every group of ``M`` consecutive inputs
            (columns) of every row, e.g. ``(2, 4)`` for sparse tensor cores (docs/nm.md).
            ``cols`` must be a multiple of ``M`` and ``density`` at most
            :func:`orthosparse.eoi.nm.reachable_density` (``N/M`` when ``N`` divides ``M``).

    Returns:
        ``(weight, mask)``: ``weight`` of shape ``(rows, cols)`` (or ``(batch, rows, cols)``) and
        the bool support ``mask`` of the same shape.

    Raises:
        ValueError: density outside (0, 1] or NaN, non-positive sizes, non-finite gain, a
            generator that is not on the CPU, an unknown backend; with ``nm``: ``M < 2``, ``N``
            outside ``[1, M)``, ``cols`` not a multiple of ``M``, an unreachable density.
        TypeError: non-integer sizes, non-float dtype, generator of the wrong type, ``nm`` not
            a pair of integers.
        RuntimeError: a backend named that cannot run here (``"compiled"`` without numba).

    Example:
        >>> w, m = sparse_orthogonal(256, 128, 0.1, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(w.T @ w, torch.eye(128), atol=1e-5)
        True
        >>> w, m = sparse_orthogonal(64, 64, 0.5, nm=(2, 4))  # 2 of every 4 inputs per row
        >>> bool((m.reshape(64, 16, 4).sum(-1) <= 2).all())
        True
    """
    problem = make_problem(rows, cols, density, gain=gain, dtype=dtype, device=device,
                           batch=batch, nm=nm, stacklevel=2)
    generator = check_generator(generator)
    _, chosen = select(backend, problem.device)
    with torch.no_grad():
        weight, mask = generate(problem, generator, chosen)
        weight = torch.empty(weight.shape, dtype=problem.dtype, device=weight.device).copy_(weight)
    return (weight, mask) if batch is not None else (weight[0], mask[0])


def generate(problem: Problem, generator: torch.Generator | None, backend: Backend
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backend`` on a validated ``problem`` with the stream of ``generator`` (package API).

    Returns ``(weight, mask)`` with a leading batch dim; ``weight`` is in
    ``problem.compute_dtype`` and may be a (transposed) view of a working buffer: copy it into
    its destination (:func:`orthosparse.init.eoi_group_` copies it into the caller's weights).
    """
    return backend.build(problem, draws_for(problem, generator))


def draws_for(problem: Problem, generator: torch.Generator | None) -> Draws:
    """The random stream of ``problem``: EOI's :class:`Draws`, or :class:`NMDraws` with ``nm``."""
    if problem.nm is not None:
        return NMDraws(problem.n_mat, problem.rows, problem.cols, problem.density, problem.nm,
                       generator)
    return Draws(problem.n_mat, problem.c, problem.density, generator)
