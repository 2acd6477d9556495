"""Compiled EOI (numba, optional): the sequential scan and the rotations in one pass.

The array passes (:mod:`orthosparse.eoi.arrays`) pay about half a microsecond of interpreter time
per Givens rotation and a few microseconds per array call, which dominates small layers (about
190 rotations for 128 x 128 at density 0.125). Compiled, the same rule costs nanoseconds per
rotation, so the kernel simply walks the random stream in order, one matrix after another:

* support: one ``uint64`` bitset per column (bit ``k`` of word ``m``: row ``64m + k``); a rotation's
  growth is ``2|S_i u S_j| - |S_i| - |S_j|`` on the states just before it, as in the scan;
* stop: at the first rotation with ``nnz >= need``, which is applied only if
  ``nnz_after - need <= need - nnz_before`` (the shared rule, ``stream.keep_later``);
* values: each kept rotation rotates rows ``i`` and ``j`` of ``A^T`` in place, touching only the
  64-row blocks where the union of the two supports is nonzero (elsewhere both rows are zero);
* no-ops (two empty columns) change nothing and are not recorded.

It also records each kept rotation's layer (one more than the latest layer on its two columns) so
that devices other than the CPU can apply the kept rotations with the layered torch passes.

Two backends (:mod:`orthosparse.eoi.backends`) use it: ``"compiled"`` (:func:`build`: on the CPU
the kernel rotates as it scans, 2.2x-3.7x faster than the array passes on single layers,
``benchmarks/eoi_backends.py``; on other devices it is ``"compiled-layered"``) and
``"compiled-layered"`` (:func:`build_layered`: the kernel only scans, the layered torch passes
of :func:`orthosparse.eoi.arrays.apply_layers` rotate on ``problem.device``, as on a GPU).

Importing this module needs numba; :mod:`orthosparse.eoi.backends` imports it on first use only
(``compiled_kernels``). Each kernel is compiled on first call and cached on disk by numba
(``cache=True``): the first call in a fresh environment takes about 1.5 s, and the first call of a
later process about 0.5 s (importing numba and loading the cache).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from . import arrays
from .problem import Problem
from .stream import Draws

__all__ = ["build", "build_layered", "scan", "start", "unpack"]

_M1, _M2 = np.uint64(0x5555555555555555), np.uint64(0x3333333333333333)
_M4, _H01 = np.uint64(0x0F0F0F0F0F0F0F0F), np.uint64(0x0101010101010101)
_S1, _S2, _S4, _S56, _ZERO, _ONE = (np.uint64(k) for k in (1, 2, 4, 56, 0, 1))


@numba.njit(cache=True, inline="always")
def _popcount(x):  # SWAR bit count of one uint64 (LLVM emits popcnt where it can)
    x = x - ((x >> _S1) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    x = (x + (x >> _S4)) & _M4
    return np.int64((x * _H01) >> _S56)


@numba.njit(cache=True)
def start(r, need, gain, bits, count, nnz, layer, stopped, values):
    """Set every matrix to ``A = [I_r | 0]`` (``gain`` on the diagonal of ``values``, which is
    all zeros on entry; skipped when it has no rows), with no kept rotation yet."""
    batch, c, words = bits.shape
    rotate = values.shape[2] > 0
    for b in range(batch):
        nnz[b] = r
        stopped[b] = r >= need
        for col in range(c):
            count[b, col] = 1 if col < r else 0
            layer[b, col] = -1
            for w in range(words):
                bits[b, col, w] = _ZERO
            if col < r:
                bits[b, col, col // 64] = _ONE << np.uint64(col % 64)
                if rotate:
                    values[b, col, col] = gain


@numba.njit(cache=True)
def unpack(bits, out, transpose):
    """Supports (batch, c, words) -> bool ``out``: (batch, r, c) when ``transpose``, else
    (batch, c, r)."""
    batch, c = bits.shape[:2]
    r = out.shape[1] if transpose else out.shape[2]
    for b in range(batch):  # loops ordered so that ``out`` is written contiguously
        if transpose:
            for k in range(r):
                word, shift = k // 64, np.uint64(k % 64)
                for col in range(c):
                    out[b, k, col] = (bits[b, col, word] >> shift) & _ONE != _ZERO
        else:
            for col in range(c):
                for k in range(r):
                    out[b, col, k] = (bits[b, col, k // 64] >> np.uint64(k % 64)) & _ONE != _ZERO


@numba.njit(cache=True)
def scan(cols_i, cols_j, cos, sin, need, bits, count, nnz, layer, stopped, level, values):
    """Advance every unstopped matrix through one chunk of its stream, in place.

    cols_i, cols_j, cos, sin: (batch, n) rotations, ``cos``/``sin`` in the dtype of ``values``
    (float32 coefficients keep float32 arithmetic vectorized); need: nnz target (float); bits:
    (batch, c, words) uint64 supports; count: (batch, c) support sizes; nnz: (batch,); layer:
    (batch, c) latest layer per column (-1: none); stopped: (batch,) bool; level: (batch, n)
    output, the layer of each kept rotation (untouched for the others); values: (batch, c, r)
    rows of A^T, rotated in place (``r = 0``: only the supports and layers are tracked).
    """
    batch, n = cols_i.shape
    words = bits.shape[2]
    r = values.shape[2]
    rotate = r > 0
    for b in range(batch):
        if stopped[b]:
            continue
        for s in range(n):
            i, j = cols_i[b, s], cols_j[b, s]
            ci, cj = count[b, i], count[b, j]
            cu = 0
            for w in range(words):
                cu += _popcount(bits[b, i, w] | bits[b, j, w])
            before = nnz[b]
            after = before + 2 * cu - ci - cj
            done = after >= need
            if done and not (after - need <= need - before):
                stopped[b] = True  # the matrix before the crossing rotation is closer
                break
            if ci == 0 and cj == 0:  # no-op: both columns empty (never the crossing one)
                continue
            count[b, i] = cu
            count[b, j] = cu
            nnz[b] = after
            lv = max(layer[b, i], layer[b, j]) + 1
            layer[b, i] = lv
            layer[b, j] = lv
            level[b, s] = lv
            cs, sn = cos[b, s], sin[b, s]
            vi, vj = values[b, i], values[b, j]
            run = -1  # first word of the current run of nonzero union words
            for w in range(words + 1):
                active = False
                if w < words:
                    u = bits[b, i, w] | bits[b, j, w]
                    bits[b, i, w] = u
                    bits[b, j, w] = u
                    active = u != _ZERO
                if active and run < 0:
                    run = w
                elif not active and run >= 0:
                    if rotate:  # rows 64*run .. 64*w - 1 in one vectorizable loop
                        for k in range(64 * run, min(64 * w, r)):
                            x, y = vi[k], vj[k]
                            vi[k] = cs * x + sn * y
                            vj[k] = cs * y - sn * x
                    run = -1
            if done:
                stopped[b] = True
                break


# ----------------------------------------------------------------------------------------------
# Drivers: the backend interface around the kernels


def build(problem: Problem, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"compiled"`` backend: on the CPU one in-order pass per matrix that scans and rotates;
    elsewhere :func:`build_layered`. Returns ``(weight, mask)`` as
    :func:`orthosparse.eoi.arrays.build` does."""
    if problem.device.type != "cpu":
        return build_layered(problem, draws)
    n_mat, r, c = problem.n_mat, problem.r, problem.c
    np_dtype = np.float64 if problem.compute_dtype == torch.float64 else np.float32
    values = np.zeros((n_mat, c, r), dtype=np_dtype)
    bits, _ = _run(problem, draws, values, problem.gain)
    mask = np.empty((n_mat, r, c) if problem.wide else (n_mat, c, r), dtype=bool)
    unpack(bits, mask, problem.wide)
    values, mask = torch.from_numpy(values), torch.from_numpy(mask)
    return (values.transpose(1, 2) if problem.wide else values), mask  # W = A or A^T


def build_layered(problem: Problem, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"compiled-layered"`` backend: the kernel finds the kept rotations and their layers,
    the layered torch passes apply them on ``problem.device``."""
    n_mat, c = problem.n_mat, problem.c
    _, levels = _run(problem, draws, np.zeros((n_mat, c, 0)))
    gi, gj, theta, level = arrays.collect(draws, c, [(lv >= 0, lv) for lv in levels])
    return arrays.apply_layers(problem, gi, gj, theta, level)


def _run(problem: Problem, draws: Draws, values: np.ndarray, gain: float = 1.0):
    """Run the kernel chunk by chunk until every matrix stops.

    ``values`` (n_mat, c, r), zeros on entry, receives ``gain * A^T``; with 0 rows only the kept
    rotations are found. Returns the supports (n_mat, c, ceil(r/64)) uint64 and, per chunk, the
    layer of every rotation (n_mat, n), ``-1`` where it is not kept.
    """
    n_mat, r, c = problem.n_mat, problem.r, problem.c
    bits = np.empty((n_mat, c, (r + 63) // 64), dtype=np.uint64)
    count, layer = np.empty((n_mat, c), dtype=np.int64), np.empty((n_mat, c), dtype=np.int64)
    nnz, stopped = np.empty(n_mat, dtype=np.int64), np.empty(n_mat, dtype=bool)
    need = float(problem.need)
    start(r, need, gain, bits, count, nnz, layer, stopped, values)
    levels = []
    while not stopped.all():  # no draw at all when [I | 0] is already dense enough
        i, j, theta = draws.chunk(len(levels))
        level = np.full(i.shape, -1, dtype=np.int64)
        if values.shape[2] > 0:
            cos = np.cos(theta).astype(values.dtype, copy=False)
            sin = np.sin(theta).astype(values.dtype, copy=False)
        else:  # nothing to rotate
            cos = sin = theta
        scan(i, j, cos, sin, need, bits, count, nnz, layer, stopped, level, values)
        levels.append(level)
    return bits, levels
