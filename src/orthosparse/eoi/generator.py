"""Exact Orthogonal Initialization (EOI): sparse orthogonal matrices from random Givens rotations.

`Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
Initialization` - Nowak et al. (2024), arXiv 2406.01755.

Semantics (SPEC §2). Let ``r = min(rows, cols)``, ``c = max(rows, cols)``. Start from the wide
``A = [I_r | 0]`` (r x c) and repeatedly rotate a uniformly drawn column pair ``i != j`` by
``theta ~ U[0, 2 pi)``::

    A[:, i], A[:, j] = cos*A[:, i] + sin*A[:, j], -sin*A[:, i] + cos*A[:, j]

Both columns' supports become the union of the two (tracked symbolically, never by testing values
against zero). Stop at the first rotation after which ``nnz(A) >= d*r*c`` and keep that matrix or
the one before it, whichever has density closer to ``d`` (a tie keeps the later one). The weight
is ``gain * A`` (transposed when ``rows > cols``) and the mask is the support. A product of Givens
rotations is orthogonal, so ``W W^T = gain^2 I`` (wide) or ``W^T W = gain^2 I`` (tall) up to
rounding.

Two implementations share one random stream (:class:`orthosparse.eoi.stream.Draws`) and therefore
give the same matrix:

* :func:`reference_sparse_orthogonal`: one rotation at a time, recounting the support after every
  step. Plain and slow; it is the test oracle.
* :func:`sparse_orthogonal`: the fast path. Steps 1-4 (array passes, no numba) are in
  :mod:`orthosparse.eoi.arrays`, step 5 in :mod:`orthosparse.eoi.compiled`.

  1. *Scheduling.* Rotations on disjoint column pairs commute, so the sequence is cut into layers:
     each rotation goes one layer after the latest earlier rotation that shares a column (the
     longest path in the dependency DAG, computed by vectorized relaxation). Inside a layer every
     column appears at most once, so a whole layer is one gather-rotate-scatter. Every entry still
     sees the rotations that touch its column in sequence order, hence the same matrix.
  2. *Stop rule without recounting.* Support is tracked as packed 64-bit row bitsets per column.
     The support growth of rotation ``s`` is ``2|S_i u S_j| - |S_i| - |S_j|`` evaluated on the
     column states just before ``s``; the schedule applies exactly the earlier rotations touching
     ``i`` and ``j`` before ``s``, so a layer-by-layer pass yields every rotation's growth, and a
     cumulative sum in sequence order gives ``nnz`` after every prefix.
  3. *Application.* Only the chosen prefix is applied to the values; rotations of two still-empty
     columns are no-ops and are dropped.
  Many same-shape matrices (``batch``) are stacked along the column axis and scheduled together.
  4. *Small problems* (up to ``_DENSE_ROWS_UP_TO`` rows, see ``_eoi_arrays.dense_path``) skip 1-2:
     one sequential scan per matrix with Python integers as bitsets finds the stop, each kept
     rotation's layer and the final support, and each layer is one stacked 2x2 matmul on the
     dense values; every array call costs microseconds, and this path makes the fewest.
  5. *Compiled* (optional, the default when numba is installed): :mod:`orthosparse.eoi.compiled`
     walks each matrix's stream in order with bitset supports, stops by the same rule and, on the
     CPU, rotates the values as it goes (only the 64-row blocks where the pair is nonzero): no
     schedule and no array call per layer, 2.2x-3.7x faster than the steps above on every size
     (``benchmarks/eoi_backends.py``). On other devices it hands the kept rotations and their
     layers to the layered passes of step 3. ``ORTHOSPARSE_NUMBA=0`` turns it off; both give the
     same masks, and values equal up to rounding.

Density growth (used to size the random draws). Each row's support size ``K`` is a Markov chain:
start at 1; a rotation grows it by one iff exactly one of its columns is in the row's support,
probability ``2K(c-K)/(c(c-1))``. The mean-field ODE ``dK/dt = 2K(c-K)/(c(c-1))`` with ``K(0)=1``
gives ``t(d) = ((c-1)/2) ln(d(c-1)/(1-d))`` rotations to reach density ``d``.
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import numpy as np
import torch

from .._checks import check_density, check_float_dtype, check_generator, check_positive_int
from . import arrays as _eoi_arrays
from .stream import Draws, expected_rotations, keep_later

__all__ = ["sparse_orthogonal", "reference_sparse_orthogonal", "expected_rotations", "backend"]


def _validate(rows, cols, density, gain, dtype, generator, batch, stacklevel):
    rows = check_positive_int(rows, "rows")
    cols = check_positive_int(cols, "cols")
    density = check_density(density)
    dtype = check_float_dtype(dtype)
    generator = check_generator(generator)
    if batch is not None:
        batch = check_positive_int(batch, "batch")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain):
        raise ValueError(f"gain={gain!r} must be a finite real number")
    c = max(rows, cols)
    if density < 1.0 / c:
        warnings.warn(
            f"density={density:.6g} is below the sparsest exact orthogonal {rows}x{cols} matrix; "
            f"returning density 1/{c}={1.0 / c:.6g} instead",
            stacklevel=stacklevel + 1,
        )
    return rows, cols, density, float(gain), dtype, generator, batch


def reference_sparse_orthogonal(
    rows: int,
    cols: int,
    density: float,
    *,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    batch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build EOI matrices one rotation at a time, recounting the support each step (the oracle).

    Same arguments and random stream as :func:`sparse_orthogonal`; slow, for tests and benchmarks.
    """
    rows, cols, density, gain, dtype, generator, batch = _validate(
        rows, cols, density, gain, dtype, generator, batch, stacklevel=2
    )
    r, c = min(rows, cols), max(rows, cols)
    need = density * r * c
    draws = Draws(batch or 1, c, density, generator)
    weights, masks = [], []
    for b in range(batch or 1):
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
        if rows > cols:
            a, support = a.T, support.T
        weights.append((gain * a).to(dtype))
        masks.append(support.clone())
    if batch is None:
        return weights[0].contiguous(), masks[0].contiguous()
    return torch.stack(weights), torch.stack(masks)


# ----------------------------------------------------------------------------------------------
# Fast path


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

    Returns:
        ``(weight, mask)``: ``weight`` of shape ``(rows, cols)`` (or ``(batch, rows, cols)``) and
        the bool support ``mask`` of the same shape.

    Raises:
        ValueError: density outside (0, 1] or NaN, non-positive sizes, non-finite gain, a
            generator that is not on the CPU.
        TypeError: non-integer sizes, non-float dtype, generator of the wrong type.

    Example:
        >>> w, m = sparse_orthogonal(256, 128, 0.1, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(w.T @ w, torch.eye(128), atol=1e-5)
        True
    """
    rows, cols, density, gain, dtype, generator, batch = _validate(
        rows, cols, density, gain, dtype, generator, batch, stacklevel=2
    )
    with torch.no_grad():
        weight, mask = _build(rows, cols, density, gain, dtype, generator, device, batch)
        weight = torch.empty(weight.shape, dtype=dtype, device=weight.device).copy_(weight)
    return (weight, mask) if batch is not None else (weight[0], mask[0])


def _build(rows, cols, density, gain, dtype, generator, device, batch):
    """The fast path on validated arguments (callers validate with ``_validate``).

    Returns ``(weight, mask)`` with a leading batch dim; ``weight`` is a (possibly transposed)
    view of the working buffer in the compute dtype, ready to be copied into its destination.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    n_mat = batch or 1
    r, c = min(rows, cols), max(rows, cols)
    need = density * r * c
    draws = Draws(n_mat, c, density, generator)
    kernels = compiled_kernels()
    if kernels is None:
        return _eoi_arrays.build(rows, cols, gain, dtype, device, n_mat, need, draws)
    if device.type == "cpu" and not _eoi_arrays.FORCE_TORCH_PASSES:
        return _build_compiled(kernels, rows, cols, gain, dtype, n_mat, need, draws)
    gi, gj, theta, level = _scan_compiled(kernels, n_mat, r, c, need, draws)
    return _eoi_arrays.apply_layers(rows, cols, gain, dtype, device, n_mat, gi, gj, theta, level)


# ----------------------------------------------------------------------------------------------
# Compiled path (optional numba kernel, ``_eoi_numba.scan``)

NUMBA_ENV = "ORTHOSPARSE_NUMBA"


def compiled_kernels():
    """The numba kernels (the module :mod:`orthosparse.eoi.compiled`), or None: numba is not
    installed or the environment variable ``ORTHOSPARSE_NUMBA`` is ``0`` (read on every call)."""
    text = os.environ.get(NUMBA_ENV, "1").strip()
    if text not in ("0", "1"):
        raise ValueError(f"environment variable {NUMBA_ENV}={text!r} must be 0 (pure-Python EOI) "
                         f"or 1 (compiled EOI when numba is installed)")
    return _import_kernel() if text == "1" else None


@functools.cache
def _import_kernel():
    try:
        from . import compiled as _eoi_numba
    except Exception as err:
        if isinstance(err, ModuleNotFoundError) and err.name == "numba":
            return None  # not installed (the optional [fast] extra): the pure-Python path
        # installed but unusable: e.g. an unsupported numpy, a missing llvmlite, no writable
        # cache directory (set NUMBA_CACHE_DIR); the pure-Python path gives the same matrices
        warnings.warn(f"numba is installed but the compiled EOI kernel cannot be loaded "
                      f"({type(err).__name__}: {err}); EOI uses its pure-Python path",
                      stacklevel=4)
        return None
    return _eoi_numba


def backend() -> str:
    """Which EOI implementation builds matrices: ``"numba"`` (compiled scan; on the CPU also the
    rotations) or ``"python"`` (numpy and torch array passes). Same masks, values equal up to
    rounding; see :mod:`orthosparse.eoi.compiled` and ``ORTHOSPARSE_NUMBA``."""
    return "python" if compiled_kernels() is None else "numba"


def _compiled_pass(kernels, n_mat, r, c, need, draws, values, gain=1.0):
    """Run the compiled kernel chunk by chunk until every matrix stops.

    ``values`` (n_mat, c, r), zeros on entry, receives ``gain * A^T``; with ``r = 0`` rows only
    the kept rotations are found. Returns the supports (n_mat, c, ceil(r/64)) uint64 and, per
    chunk, the layer of every rotation (n_mat, n), ``-1`` where it is not kept.
    """
    bits = np.empty((n_mat, c, (r + 63) // 64), dtype=np.uint64)
    count, layer = np.empty((n_mat, c), dtype=np.int64), np.empty((n_mat, c), dtype=np.int64)
    nnz, stopped = np.empty(n_mat, dtype=np.int64), np.empty(n_mat, dtype=bool)
    need = float(need)
    kernels.start(r, need, gain, bits, count, nnz, layer, stopped, values)
    levels = []
    while not stopped.all():  # no draw at all when [I | 0] is already dense enough
        i, j, theta = draws.chunk(len(levels))
        level = np.full(i.shape, -1, dtype=np.int64)
        if values.shape[2] > 0:
            cos = np.cos(theta).astype(values.dtype, copy=False)
            sin = np.sin(theta).astype(values.dtype, copy=False)
        else:  # nothing to rotate
            cos = sin = theta
        kernels.scan(i, j, cos, sin, need, bits, count, nnz, layer, stopped, level, values)
        levels.append(level)
    return bits, levels


def _build_compiled(kernels, rows, cols, gain, dtype, n_mat, need, draws):
    """:func:`_build` on the CPU with the compiled kernel: one in-order pass per matrix."""
    r, c = min(rows, cols), max(rows, cols)
    values = np.zeros((n_mat, c, r), dtype=np.float64 if dtype == torch.float64 else np.float32)
    bits, _ = _compiled_pass(kernels, n_mat, r, c, need, draws, values, gain)
    wide = rows <= cols  # W = A: the transpose of the working layout
    mask = np.empty((n_mat, r, c) if wide else (n_mat, c, r), dtype=bool)
    kernels.unpack(bits, mask, wide)
    values, mask = torch.from_numpy(values), torch.from_numpy(mask)
    return (values.transpose(1, 2) if wide else values), mask


def _scan_compiled(kernels, n_mat, r, c, need, draws):
    """The kept rotations, as ``_eoi_arrays.collect`` gives them, found by the compiled kernel
    (for the layered passes on a device)."""
    _, levels = _compiled_pass(kernels, n_mat, r, c, need, draws, np.zeros((n_mat, c, 0)))
    return _eoi_arrays.collect(draws, c, [(level >= 0, level) for level in levels])
