"""EOI by array passes (numpy and torch): the backend without numba, and on devices other than
the CPU the layered application of the kept rotations.

Rotations are found by one of two scans and applied by one of two rotation passes; ``route``
picks the pair (``"auto"``: by size, see :func:`route_for`; the three routes are also registered
as backends of their own so that tests reach each one by name):

* ``"dense"``: the sequential scan (Python integers as bitsets, one matrix after another) finds
  the stop, each kept rotation's layer and the final support; each layer is one stacked 2x2
  matmul on the dense values (numpy). Fewest array calls: the route for small problems.
* ``"segments"``: the same sequential scan; the kept rotations are applied layer by layer with
  the 8-row segment passes (torch, on ``problem.device``).
* ``"bitset"``: the stop comes from the bitset support pass, a layer at a time over the whole
  stream (steps 1-2 below), then the segment passes. Nothing per rotation in Python: the route
  for large problems, and the one that runs entirely on a device.

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
   columns are no-ops and are dropped. Same-shape matrices (``batch``) are stacked along the
   column axis and scheduled together.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .problem import Problem
from .stream import Draws, keep_later

__all__ = ["Route", "apply_layers", "build", "collect", "route_for"]

Route = Literal["auto", "dense", "segments", "bitset"]


def build(problem: Problem, draws: Draws, route: Route = "auto"
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend interface (:mod:`orthosparse.eoi.backends`) by array passes.

    Returns ``(weight, mask)`` with a leading batch dim on ``problem.device``; ``weight`` is a
    (possibly transposed) view in ``problem.compute_dtype``.
    """
    n_mat, r, c, need = problem.n_mat, problem.r, problem.c, problem.need
    if route == "auto":
        route = route_for(n_mat, r, c)
    if route == "dense":
        gi, gj, theta, level, support = _scan_sequential(n_mat, r, c, need, draws)
        return _rotate_dense(problem, gi, gj, theta, level, support)
    if route == "segments":
        gi, gj, theta, level, _ = _scan_sequential(n_mat, r, c, need, draws, support=False)
    elif route == "bitset":
        gi, gj, theta, level = _kept_rotations(n_mat, r, c, need, draws, problem.device)
    else:
        raise AssertionError(f"unknown route {route!r}")
    return apply_layers(problem, gi, gj, theta, level)


def apply_layers(problem: Problem, gi, gj, theta, level) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the kept rotations (flat global column ids, angles, layers, as :func:`collect`
    gives them) layer by layer on ``problem.device`` with the segment passes; return
    ``(weight, mask)`` as :func:`build` does."""
    n_mat, r, c, device = problem.n_mat, problem.r, problem.c, problem.device
    order, bounds = _layer_order(level)

    compute = problem.compute_dtype
    dgi = torch.from_numpy(gi[order]).to(device)
    dgj = torch.from_numpy(gj[order]).to(device)
    cos = torch.from_numpy(np.cos(theta[order])).to(device=device, dtype=compute).unsqueeze(1)
    sin = torch.from_numpy(np.sin(theta[order])).to(device=device, dtype=compute).unsqueeze(1)

    # One pass over the kept prefix: unions for the final support, rotations for the values.
    segments = (r + 7) // 8
    values = torch.zeros(n_mat, c, segments * 8, dtype=compute, device=device)  # rows of A^T
    diag = torch.arange(r, device=device)
    values[:, diag, diag] = problem.gain
    bits, _ = _initial_bits(n_mat, r, c, device)
    _rotate(bits, values.view(n_mat * c, -1), dgi, dgj, cos, sin, bounds)
    values = values[:, :, :r]  # (batch, c, r): A^T, a view
    bits = bits.view(n_mat, c, -1)
    if problem.wide:  # W = A: the transpose of the working layout
        return values.transpose(1, 2), _unpack_bits(bits, r, transpose=True)
    return values, _unpack_bits(bits, r, transpose=False)


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
        growth_l, empty_l = _support_pass(
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
        kept[stops] = done_before + first + keep_later(before, at, need)
        nnz = after[:, -1]
        done_before += n
        k += 1
    return kept, chunks


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
    return collect(draws, c, picks)


def collect(draws, c, picks):
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


# Route choice (internal tuning, not an interface: name a route as a backend to force it),
# measured with benchmarks/init_cost.py (one thread) and eoi_speed.py (two):
# - up to 1024 rows the sequential scan with dense layer-wise rotations (numpy, one thread) beats
#   the bitset and segment passes (128x128 2x, 1024x1024 1.6x, 1000 x 128x128 1.2x on one
#   thread), except for large batches when torch has several threads for the segment passes;
# - above that the segment passes win, after the sequential scan up to 4096 columns in all.
_DENSE_ROWS_UP_TO = 1024  # r
_DENSE_MULTITHREAD_UP_TO = 1 << 22  # batch * r * c: above it, several threads favour segments
_SEQUENTIAL_UP_TO = 4096  # batch * c


def route_for(n_mat: int, r: int, c: int) -> Route:
    """The route :func:`build` takes for ``n_mat`` matrices ``r x c`` with ``route="auto"``."""
    if r <= _DENSE_ROWS_UP_TO and (n_mat * r * c <= _DENSE_MULTITHREAD_UP_TO
                                   or torch.get_num_threads() == 1):
        return "dense"
    return "segments" if n_mat * c <= _SEQUENTIAL_UP_TO else "bitset"


def _rotate_dense(problem: Problem, gi, gj, theta, level, support):
    """The ``"dense"`` route's rotations: dense layer-wise 2x2 matmuls.

    Every array call costs microseconds whatever its size, so small matrices are built with as
    few of them as possible: each layer of the kept rotations (from :func:`_scan_sequential`,
    which also gives the final ``support`` bytes) is applied to the dense values with one
    gather, one batched 2x2 matmul and one scatter.
    """
    n_mat, r, c = problem.n_mat, problem.r, problem.c
    order, bounds = _layer_order(level)
    np_dtype = np.float64 if problem.compute_dtype == torch.float64 else np.float32
    pairs = np.stack([gi[order], gj[order]], axis=1)  # (T, 2): the two columns of each rotation
    cos, sin = np.cos(theta[order]), np.sin(theta[order])
    rot = np.stack([cos, sin, -sin, cos], axis=1).astype(np_dtype).reshape(-1, 2, 2)
    values = np.zeros((n_mat * c, r), dtype=np_dtype)  # rows of A^T, matrix after matrix
    diag = np.arange(r)
    values.reshape(n_mat, c, r)[:, diag, diag] = problem.gain
    for lo, hi in bounds:  # [x; y] <- [[cos, sin], [-sin, cos]] @ [x; y] for every pair
        p = pairs[lo:hi]
        values[p] = np.matmul(rot[lo:hi], values[p])  # (k, 2, 2) @ (k, 2, r)
    mask = np.unpackbits(support, axis=1, count=r, bitorder="little").view(bool)
    values = torch.from_numpy(values).view(n_mat, c, r).to(problem.device)
    mask = torch.from_numpy(mask).view(n_mat, c, r).to(problem.device)
    if problem.wide:  # W = A: the transpose of the working layout
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
                    if not keep_later(nnz, after, need):
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
