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

Two implementations share one random stream (:class:`_Draws`) and therefore give the same matrix:

* :func:`reference_sparse_orthogonal`: one rotation at a time, recounting the support after every
  step. Plain and slow; it is the test oracle.
* :func:`sparse_orthogonal`: the fast path.

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
  4. *Small problems* (up to ``_DENSE_ROWS_UP_TO`` rows, see :func:`_dense_path`) skip steps 1-2:
     one sequential scan per matrix with Python integers as bitsets finds the stop, each kept
     rotation's layer and the final support, and each layer is one stacked 2x2 matmul on the
     dense values; every array call costs microseconds, and this path makes the fewest.
  5. *Compiled* (optional, the default when numba is installed): :mod:`orthosparse._eoi_numba`
     walks each matrix's stream in order with bitset supports, stops by the same rule and, on the
     CPU, rotates the values as it goes (only the 64-row blocks where the pair is nonzero): no
     schedule and no array call per layer, 2-3.5x faster than the steps above on every size
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

from ._checks import check_density, check_float_dtype, check_generator, check_positive_int

__all__ = ["sparse_orthogonal", "reference_sparse_orthogonal", "expected_rotations", "backend"]


def expected_rotations(c: int, density: float) -> float:
    """Mean-field number of rotations to reach ``density`` on ``c`` columns (module docstring)."""
    if density * c <= 1.0 or c < 2:
        return 0.0
    d = min(density, 1.0 - 0.5 / c)  # d = 1 is reached in finite time; the ODE needs d < 1
    return (c - 1) / 2.0 * math.log(d * (c - 1) / (1.0 - d))


class _Draws:
    """Random rotations for ``batch`` matrices on ``c`` columns, drawn lazily in fixed chunks.

    Chunk sizes depend only on ``(c, density)``, so every consumer that stops at the same rotation
    draws the same chunks and leaves ``generator`` in the same state. Chunk ``k`` holds, per matrix,
    ``n_k`` rotations ``(i, j, theta)``: ``i ~ U{0..c-1}``, ``j ~ U({0..c-1} minus {i})``,
    ``theta ~ U[0, 2 pi)`` (float64). All draws are made on the CPU.
    """

    def __init__(self, batch: int, c: int, density: float, generator: torch.Generator | None):
        self.batch, self.c, self.generator = batch, c, generator
        t = expected_rotations(c, density)
        self.first = int(1.2 * t + 4.0 * math.sqrt(t)) + 16
        self.rest = max(16, c)
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


def _keep_later(nnz_before, nnz_after, need: float):
    """Stop rule: keep the matrix after the crossing rotation unless the one before is closer.

    Elementwise: numbers give a bool, arrays of nonzero counts a bool array."""
    return nnz_after - need <= need - nnz_before


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
    draws = _Draws(batch or 1, c, density, generator)
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
                    if not _keep_later(before, nnz, need):  # undo the last rotation
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


def _schedule(i: np.ndarray, j: np.ndarray, c: int) -> np.ndarray:
    """Layer of each rotation: one after the latest earlier rotation sharing a column.

    ``i``/``j`` (batch, n) are the column pairs of ``batch`` independent matrices on ``c``
    columns, in sequence order. Returns ``level`` (batch, n) with
    ``level[s] = 1 + max(level[p_i(s)], level[p_j(s)])`` (``-1`` for a missing predecessor):
    the longest dependency chain ending at ``s``, i.e. the shallowest order-respecting schedule.
    """
    batch, n = i.shape
    if n == 0:
        return np.zeros((batch, 0), dtype=np.int64)
    small = np.int16 if c <= np.iinfo(np.int16).max else np.int32  # int16 sorts by radix
    cols = np.stack([i, j], axis=2).reshape(batch, 2 * n).astype(small)  # events 2s, 2s+1
    order = np.argsort(cols, axis=1, kind="stable")  # per matrix: by column, then by time
    sc = np.take_along_axis(cols, order, axis=1)
    rot = order >> 1
    total = batch * n  # "no predecessor" sentinel
    pred_sorted = np.full((batch, 2 * n), total, dtype=np.int64)
    same = sc[:, 1:] == sc[:, :-1]
    pred_sorted[:, 1:][same] = (rot[:, :-1] + n * np.arange(batch)[:, None])[same]
    pred = np.empty_like(pred_sorted)
    np.put_along_axis(pred, order, pred_sorted, axis=1)
    p_i, p_j = pred[:, 0::2].ravel(), pred[:, 1::2].ravel()
    # Relaxation converges after (depth + 1) rounds; every predecessor is an earlier rotation.
    level = np.full(total + 1, -1, dtype=np.int64)
    level[:total] = 0
    while True:
        new = np.maximum(level[p_i], level[p_j]) + 1
        if np.array_equal(new, level[:total]):
            return new.reshape(batch, n)
        level[:total] = new


def _layer_order(level: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    if level.size == 0:
        return np.zeros(0, dtype=np.int64), []
    small = level.astype(np.int16) if level.max() < np.iinfo(np.int16).max else level
    order = np.argsort(small, kind="stable")  # radix sort for int16 levels
    ends = np.cumsum(np.bincount(level))
    bounds = zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)
    return order, [(lo, hi) for lo, hi in bounds if hi > lo]


_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F


def _popcount_rows(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits in each row of an int64 tensor (k, w) -> (k,)."""
    if words.device.type == "cpu":
        counts = np.bitwise_count(words.numpy().view(np.uint64)).sum(axis=1, dtype=np.int64)
        return torch.from_numpy(counts)
    return _popcount_rows_swar(words)


def _popcount_rows_swar(words: torch.Tensor) -> torch.Tensor:
    """Device-agnostic popcount (SWAR). ``>>`` is arithmetic on int64; each mask clears the
    sign-extended top bits, so the result equals the logical-shift version."""
    x = words - ((words >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4  # each byte now holds its own popcount (0..8)
    return x.view(torch.uint8).reshape(words.shape[0], -1).sum(dim=1, dtype=torch.int64)


def _initial_bits(batch: int, r: int, c: int, device: torch.device):
    """Support bitsets of [I_r | 0] per column (batch*c, ceil(r/64)) and their counts."""
    words = (r + 63) // 64
    bits = np.zeros((batch, c, words), dtype=np.uint64)
    k = np.arange(r)
    bits[:, k, k >> 6] = np.left_shift(np.uint64(1), (k & 63).astype(np.uint64))
    count = np.zeros((batch, c), dtype=np.int64)
    count[:, :r] = 1
    return (
        torch.from_numpy(bits.reshape(batch * c, words).view(np.int64)).to(device),
        torch.from_numpy(count.reshape(-1)).to(device),
    )


def _support_pass(bits, count, gi, gj, bounds):
    """Apply the unions layer by layer; return each rotation's support growth and emptiness.

    ``gi``/``gj`` are device tensors in layer order; results are in the same order.
    """
    growth = torch.empty(gi.shape[0], dtype=torch.int64, device=gi.device)
    empty = torch.empty(gi.shape[0], dtype=torch.bool, device=gi.device)
    for lo, hi in bounds:
        ii, jj = gi[lo:hi], gj[lo:hi]
        union = bits.index_select(0, ii) | bits.index_select(0, jj)  # (k, words)
        cu = _popcount_rows(union).to(gi.device)
        ca, cb = count.index_select(0, ii), count.index_select(0, jj)
        growth[lo:hi] = 2 * cu - ca - cb
        empty[lo:hi] = (ca + cb) == 0
        bits.index_copy_(0, ii, union)
        bits.index_copy_(0, jj, union)
        count.index_copy_(0, ii, cu)
        count.index_copy_(0, jj, cu)
    return growth, empty


def _support_pass_numpy(bits, count, gi, gj, bounds):
    """:func:`_support_pass` on the CPU with numpy (a tenth of torch's per-call overhead)."""
    bits, count, gi, gj = (x.numpy() for x in (bits, count, gi, gj))
    bits = bits.view(np.uint64)
    growth = np.empty(gi.shape[0], dtype=np.int64)
    empty = np.empty(gi.shape[0], dtype=bool)
    for lo, hi in bounds:
        ii, jj = gi[lo:hi], gj[lo:hi]
        union = bits[ii] | bits[jj]  # (k, words)
        cu = np.bitwise_count(union).sum(axis=1, dtype=np.int64)
        ca, cb = count[ii], count[jj]
        growth[lo:hi] = 2 * cu - ca - cb
        empty[lo:hi] = (ca + cb) == 0
        bits[ii] = union
        bits[jj] = union
        count[ii] = cu
        count[jj] = cu
    return torch.from_numpy(growth), torch.from_numpy(empty)


def _passes(device: torch.device, elements: int):
    """The (support pass, rotation pass) pair for ``elements`` output entries on ``device``.

    Small CPU problems use numpy (about a tenth of torch's per-call overhead); large ones use
    torch, whose gathers and arithmetic run on every core; other devices always use torch. Both
    pairs apply the same operations in the same order; the torch pair is tested on the CPU too.
    """
    if device.type == "cpu" and elements < _NUMPY_BELOW and not _FORCE_TORCH_PASSES:
        return _support_pass_numpy, _rotate_numpy
    return _support_pass, _rotate


_NUMPY_BELOW = 1 << 20  # output entries; measured crossover on 2 cores is between 2^18 and 2^22
_FORCE_TORCH_PASSES = False  # tests flip this to run the device (torch) passes on the CPU


def _unpack_bits(bits: torch.Tensor, r: int, transpose: bool) -> torch.Tensor:
    """Bitsets (batch, n, words) -> bool (batch, n, r), or (batch, r, n) when ``transpose``.

    Bit k of word m is row 64m + k. The transposed form moves bytes (8x fewer than bools)
    before unpacking, so it costs about as much as the plain one.
    """
    u8 = bits.view(torch.uint8)  # (batch, n, 8*words), little-endian: byte m holds 8m..8m+7
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    batch, n = u8.shape[:2]
    if transpose:
        u8 = u8.transpose(1, 2).contiguous()  # (b, 8w, n): small, and keeps ``out`` contiguous
        out = (u8.unsqueeze(2) >> shifts.view(1, 1, 8, 1)) & 1  # (b, 8w, 8, n)
        return out.view(torch.bool).reshape(batch, -1, n)[:, :r].contiguous()
    out = (u8.unsqueeze(-1) >> shifts) & 1  # (batch, n, 8*words, 8)
    return out.view(torch.bool).reshape(batch, n, -1)[:, :, :r].contiguous()


def _stop_points(batch, r, c, need, draws, device):
    """Run the support pass chunk by chunk to find where every matrix stops.

    Returns ``kept`` (batch,): how many rotations of the stream each matrix keeps, and per chunk
    ``(noop, level)`` (batch, n): rotations of two empty columns, and the layer of every rotation
    (chunks offset so that they follow each other). Any subset of the rotations keeps a valid
    layering under these levels, so the final pass reuses them.
    """
    kept = np.full(batch, -1, dtype=np.int64)
    if need <= r:  # [I | 0] already dense enough: no rotation, no draw
        return np.zeros(batch, dtype=np.int64), []
    bits, count = _initial_bits(batch, r, c, device)
    nnz = np.full(batch, r, dtype=np.int64)
    offset = np.arange(batch)[:, None] * c  # global column ids: matrix b owns b*c .. b*c+c-1
    chunks = []
    done_before = level_offset = 0
    k = 0
    while (kept < 0).any():
        i, j, _ = draws.chunk(k)
        n = i.shape[1]
        gi, gj = (i + offset).ravel(), (j + offset).ravel()
        level = _schedule(i, j, c).ravel()
        order, bounds = _layer_order(level)
        dev_order = torch.from_numpy(order).to(device)
        growth_l, empty_l = _passes(device, batch * r * c)[0](
            bits, count, torch.from_numpy(gi).to(device)[dev_order],
            torch.from_numpy(gj).to(device)[dev_order], bounds,
        )
        growth = np.empty(batch * n, dtype=np.int64)
        growth[order] = growth_l.cpu().numpy()
        empty = np.empty(batch * n, dtype=bool)
        empty[order] = empty_l.cpu().numpy()
        chunks.append((empty.reshape(batch, n), (level + level_offset).reshape(batch, n)))
        level_offset += int(level.max()) + 1
        after = nnz[:, None] + np.cumsum(growth.reshape(batch, n), axis=1)  # (batch, n)
        reached = after >= need
        stops = (kept < 0) & reached.any(axis=1)
        first = reached.argmax(axis=1)[stops]  # the crossing rotation of each stopping matrix
        at = after[stops, first]
        before = np.where(first > 0, after[stops, first - 1], nnz[stops])
        kept[stops] = done_before + first + _keep_later(before, at, need)
        nnz = after[:, -1]
        done_before += n
        k += 1
    return kept, chunks


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
    draws = _Draws(n_mat, c, density, generator)
    kernels = compiled_kernels()
    if kernels is not None:
        if device.type == "cpu" and not _FORCE_TORCH_PASSES:
            return _build_compiled(kernels, rows, cols, gain, dtype, n_mat, need, draws)
        gi, gj, theta, level = _scan_compiled(kernels, n_mat, r, c, need, draws)
    elif _dense_path(n_mat, r, c):
        gi, gj, theta, level, support = _scan_sequential(n_mat, r, c, need, draws)
        return _rotate_dense(rows, cols, gain, dtype, device, n_mat, gi, gj, theta, level,
                             support)
    elif n_mat * c <= _SEQUENTIAL_UP_TO:
        gi, gj, theta, level, _ = _scan_sequential(n_mat, r, c, need, draws, support=False)
    else:
        gi, gj, theta, level = _kept_rotations(n_mat, r, c, need, draws, device)
    order, bounds = _layer_order(level)

    compute = torch.float64 if dtype == torch.float64 else torch.float32
    dgi = torch.from_numpy(gi[order]).to(device)
    dgj = torch.from_numpy(gj[order]).to(device)
    cos = torch.from_numpy(np.cos(theta[order])).to(device=device, dtype=compute).unsqueeze(1)
    sin = torch.from_numpy(np.sin(theta[order])).to(device=device, dtype=compute).unsqueeze(1)

    # One pass over the kept prefix: unions for the final support, rotations for the values.
    segments = (r + 7) // 8
    values = torch.zeros(n_mat, c, segments * 8, dtype=compute, device=device)  # rows of A^T
    diag = torch.arange(r, device=device)
    values[:, diag, diag] = gain
    bits, _ = _initial_bits(n_mat, r, c, device)
    _passes(device, n_mat * r * c)[1](bits, values.view(n_mat * c, -1), dgi, dgj, cos, sin, bounds)
    values = values[:, :, :r]  # (batch, c, r): A^T, a view
    bits = bits.view(n_mat, c, -1)
    if rows <= cols:  # W = A: the transpose of the working layout
        return values.transpose(1, 2), _unpack_bits(bits, r, transpose=True)
    return values, _unpack_bits(bits, r, transpose=False)


def _kept_rotations(n_mat, r, c, need, draws, device):
    """The kept rotations of every matrix minus no-ops (two empty columns), found by the
    bitset support pass: global column ids ``gi``/``gj`` (matrix b owns ``b*c .. b*c+c-1``),
    angles and layers, each a flat array."""
    kept, chunks = _stop_points(n_mat, r, c, need, draws, device)
    picks, start = [], 0
    for noop, level in chunks:
        n = level.shape[1]
        picks.append((((start + np.arange(n))[None, :] < kept[:, None]) & ~noop, level))
        start += n
    return _collect(draws, c, picks)


# ----------------------------------------------------------------------------------------------
# Compiled path (optional numba kernel, ``_eoi_numba.scan``)

NUMBA_ENV = "ORTHOSPARSE_NUMBA"


def compiled_kernels():
    """The numba kernels (the module :mod:`orthosparse._eoi_numba`), or None: numba is not
    installed or the environment variable ``ORTHOSPARSE_NUMBA`` is ``0`` (read on every call)."""
    text = os.environ.get(NUMBA_ENV, "1").strip()
    if text not in ("0", "1"):
        raise ValueError(f"environment variable {NUMBA_ENV}={text!r} must be 0 (pure-Python EOI) "
                         f"or 1 (compiled EOI when numba is installed)")
    return _import_kernel() if text == "1" else None


@functools.cache
def _import_kernel():
    try:
        from . import _eoi_numba
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
    rounding; see :mod:`orthosparse._eoi_numba` and ``ORTHOSPARSE_NUMBA``."""
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
            cos, sin = np.cos(theta).astype(values.dtype), np.sin(theta).astype(values.dtype)
        else:  # nothing to rotate
            cos = sin = theta
        kernels.scan(i, j, cos, sin, need, bits, count, nnz, layer, stopped, level, values,
                     values.shape[2] > 0)
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
    """:func:`_kept_rotations` by the compiled kernel (for the layered passes on a device)."""
    _, levels = _compiled_pass(kernels, n_mat, r, c, need, draws, np.zeros((n_mat, c, 0)))
    return _collect(draws, c, [(level >= 0, level) for level in levels])


def _collect(draws, c, picks):
    """Flat ``gi, gj, theta, level`` of the picked rotations: ``picks[k]`` is ``(take, level)``
    for chunk ``k`` of ``draws``, both (n_mat, n). Global column ids: matrix b owns
    ``b*c .. b*c+c-1``."""
    parts = []
    for k, (take, level) in enumerate(picks):
        i, j, theta = draws.chunk(k)
        offset = np.arange(i.shape[0])[:, None] * c
        parts.append(((i + offset)[take], (j + offset)[take], theta[take], level[take]))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0), empty
    gi, gj, theta, level = (np.concatenate(x) for x in zip(*parts, strict=True))
    return gi, gj, theta, level


# Path choice, measured with benchmarks/init_cost.py (one thread) and eoi_speed.py (two):
# - up to 1024 rows the sequential scan with dense layer-wise rotations (numpy, one thread) beats
#   the bitset and segment passes (128x128 2x, 1024x1024 1.6x, 1000 x 128x128 1.2x on one
#   thread), except for large batches when torch has several threads for the segment passes;
# - above that the segment passes win, after the sequential scan up to 4096 columns in all.
_DENSE_ROWS_UP_TO = 1024  # r
_DENSE_MULTITHREAD_UP_TO = 1 << 22  # batch * r * c: above it, several threads favour segments
_SEQUENTIAL_UP_TO = 4096  # batch * c


def _dense_path(n_mat: int, r: int, c: int) -> bool:
    """Whether :func:`_build` takes the sequential scan and dense rotations."""
    if r > _DENSE_ROWS_UP_TO:
        return False
    return n_mat * r * c <= _DENSE_MULTITHREAD_UP_TO or torch.get_num_threads() == 1


def _rotate_dense(rows, cols, gain, dtype, device, n_mat, gi, gj, theta, level, support):
    """:func:`_build` for up to ``_DENSE_ROWS_UP_TO`` rows: dense layer-wise rotations.

    Every array call costs microseconds whatever its size, so small matrices are built with as
    few of them as possible: each layer of the kept rotations (from :func:`_scan_sequential`,
    which also gives the final ``support`` bytes) is applied to the dense values with one
    gather, one batched 2x2 matmul and one scatter.
    """
    r, c = min(rows, cols), max(rows, cols)
    order, bounds = _layer_order(level)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    pairs = np.stack([gi[order], gj[order]], axis=1)  # (T, 2): the two columns of each rotation
    cos, sin = np.cos(theta[order]), np.sin(theta[order])
    rot = np.stack([cos, sin, -sin, cos], axis=1).astype(np_dtype).reshape(-1, 2, 2)
    values = np.zeros((n_mat * c, r), dtype=np_dtype)  # rows of A^T, matrix after matrix
    diag = np.arange(r)
    values.reshape(n_mat, c, r)[:, diag, diag] = gain
    for lo, hi in bounds:  # [x; y] <- [[cos, sin], [-sin, cos]] @ [x; y] for every pair
        p = pairs[lo:hi]
        values[p] = np.matmul(rot[lo:hi], values[p])  # (k, 2, 2) @ (k, 2, r)
    mask = np.unpackbits(support, axis=1, count=r, bitorder="little").view(bool)
    values = torch.from_numpy(values).view(n_mat, c, r).to(device)
    mask = torch.from_numpy(mask).view(n_mat, c, r).to(device)
    if rows <= cols:  # W = A: the transpose of the working layout
        return values.transpose(1, 2), mask.transpose(1, 2).contiguous()
    return values, mask


def _scan_sequential(n_mat, r, c, need, draws, support: bool = True):
    """:func:`_kept_rotations` by one sequential scan per matrix, plus the final supports.

    Column supports are Python ints used as bitsets (bit k: row k), so each rotation costs a
    few interpreter operations and no array call: the scan stops exactly at the crossing
    rotation and needs no schedule; each kept rotation's layer is one more than the latest layer
    among its two columns. Same draws, same stop rule, same kept set as the bitset pass.
    The supports come back as little-endian bytes, ``(n_mat * c, ceil(r / 8))`` uint8, or None
    when ``support`` is False (the segment passes rebuild them).
    """
    out_i, out_j, out_theta, out_level, out_support = [], [], [], [], []
    nbytes = (r + 7) // 8
    for b in range(n_mat):
        bits = [1 << k for k in range(r)] + [0] * (c - r)
        count = [1] * r + [0] * (c - r)
        layer = [-1] * c  # layer of the latest kept rotation on each column
        nnz = r
        kept_at, kept_level = [], []  # stream position and layer of each kept rotation
        keep, keep_level = kept_at.append, kept_level.append
        streams = []
        start, k = 0, 0
        done = need <= r  # [I | 0] already dense enough: no rotation, no draw
        while not done:
            chunk = [x[b] for x in draws.chunk(k)]
            streams.append(chunk)
            stream_i, stream_j = chunk[0].tolist(), chunk[1].tolist()
            for s, i, j in zip(range(start, start + len(stream_i)), stream_i, stream_j,
                               strict=True):
                ci, cj = count[i], count[j]
                union = bits[i] | bits[j]
                cu = union.bit_count()
                after = nnz + cu + cu - ci - cj
                if after >= need:
                    done = True
                    if not _keep_later(nnz, after, need):
                        break
                if not (ci or cj):  # no-op: both columns empty (never the crossing one)
                    continue
                bits[i] = bits[j] = union
                count[i] = count[j] = cu
                nnz = after
                li, lj = layer[i], layer[j]
                lv = (li if li > lj else lj) + 1
                layer[i] = layer[j] = lv
                keep(s)
                keep_level(lv)
                if done:
                    break
            start += len(stream_i)
            k += 1
        at = np.asarray(kept_at, dtype=np.int64)
        if streams:
            i_all, j_all, theta_all = (np.concatenate(x) for x in zip(*streams, strict=True))
        else:
            i_all = j_all = np.zeros(0, dtype=np.int64)
            theta_all = np.zeros(0)
        out_i.append(i_all[at] + b * c)
        out_j.append(j_all[at] + b * c)
        out_theta.append(theta_all[at])
        out_level.append(np.asarray(kept_level, dtype=np.int64))
        if support:
            out_support.append(b"".join(x.to_bytes(nbytes, "little") for x in bits))
    supports = (np.frombuffer(b"".join(out_support), dtype=np.uint8).reshape(n_mat * c, nbytes)
                if support else None)
    gi, gj, theta, level = (np.concatenate(x) for x in (out_i, out_j, out_theta, out_level))
    return gi, gj, theta, level, supports


def _rotate(bits, values, gi, gj, cos, sin, bounds, max_pairs: int | None = None):
    """Apply the kept rotations layer by layer to the support ``bits`` and to ``values``.

    ``values`` (n_cols, 8*segments) is handled as 8-row segments: a rotation touches only the
    segments where the union of its two columns' supports is nonzero (one byte of the bitset per
    segment). Early rotations act on very sparse columns, so this skips most of the dense work.
    """
    segments = values.shape[1] // 8
    flat = values.view(-1, 8)  # (n_cols * segments, 8)
    if max_pairs is None:  # bound the temporaries to ~1/2 of ``values``
        max_pairs = max(256, values.shape[0] // 8)
    for lo, hi in bounds:
        for a0 in range(lo, hi, max_pairs):
            a1 = min(hi, a0 + max_pairs)
            ii, jj = gi[a0:a1], gj[a0:a1]
            union = bits.index_select(0, ii) | bits.index_select(0, jj)  # (k, words)
            bits.index_copy_(0, ii, union)
            bits.index_copy_(0, jj, union)
            active = union.view(torch.uint8)[:, :segments] != 0  # (k, segments)
            pair, seg = active.nonzero(as_tuple=True)
            fi = ii[pair] * segments + seg
            fj = jj[pair] * segments + seg
            cs, sn = cos[a0:a1][pair], sin[a0:a1][pair]  # (n, 1)
            idx = torch.cat([fi, fj])
            xy = flat.index_select(0, idx)  # (2n, 8): the x then the y segments
            x, y = xy.chunk(2)
            out = torch.empty_like(xy)
            torch.mul(x, cs, out=out[: x.shape[0]]).addcmul_(y, sn)  # cos*x + sin*y
            torch.mul(y, cs, out=out[x.shape[0] :]).addcmul_(x, sn, value=-1.0)  # -sin*x + cos*y
            flat.index_copy_(0, idx, out)


def _rotate_numpy(bits, values, gi, gj, cos, sin, bounds, max_pairs: int | None = None):
    """:func:`_rotate` on the CPU with numpy (a tenth of torch's per-call overhead)."""
    segments = values.shape[1] // 8
    if max_pairs is None:  # bound the temporaries to ~1/2 of ``values``
        max_pairs = max(256, values.shape[0] // 8)
    flat = values.numpy().reshape(-1, 8)  # (n_cols * segments, 8), shares memory
    bits = bits.numpy().view(np.uint64)
    gi, gj, cos, sin = gi.numpy(), gj.numpy(), cos.numpy(), sin.numpy()
    for lo, hi in bounds:
        for a0 in range(lo, hi, max_pairs):
            a1 = min(hi, a0 + max_pairs)
            ii, jj = gi[a0:a1], gj[a0:a1]
            union = bits[ii] | bits[jj]  # (k, words)
            bits[ii] = union
            bits[jj] = union
            pair, seg = np.nonzero(union.view(np.uint8)[:, :segments])
            fi = ii[pair] * segments + seg
            fj = jj[pair] * segments + seg
            cs, sn = cos[a0:a1][pair], sin[a0:a1][pair]  # (n, 1)
            x, y = flat[fi], flat[fj]  # (n, 8)
            new_x = x * cs
            new_x += y * sn  # cos*x + sin*y
            y *= cs
            y -= x * sn  # -sin*x + cos*y
            flat[fi] = new_x
            flat[fj] = y
