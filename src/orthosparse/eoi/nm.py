"""N:M structured EOI: Givens rotations restricted to column classes that never break the cap.

docs/nm.md states the semantics in full; in short (``W`` is ``(out, in)``, groups are ``M``
consecutive inputs, the cap is ``N`` nonzeros per group in every output row):

* **Layout.** In every group the ``M`` input positions are split into ``K = ceil(M/N)`` classes
  of sizes ``s_k = N`` (``k < K-1``) and ``s_{K-1} = M - (K-1) N`` by a uniformly random labelled
  partition, drawn independently per group (and per matrix) from the caller's generator. An input
  ``x`` has the class of its position in its group.
* **Classes of A's columns.** EOI works on the wide ``A`` (``r x c``, ``A = [I_r | 0]`` at the
  start, :mod:`orthosparse.eoi.generator`). Wide (``out <= in``, ``A = W``): column ``x`` is input
  ``x`` and has its class. Tall (``out > in``, ``A = W^T``): column ``o < r`` has the class of
  input ``o`` (its one nonzero sits in row ``o`` of ``A``, i.e. at input ``o``); the ``c - r``
  empty columns get classes so that class ``k`` holds ``c_k`` columns, ``c_k`` apportioned to
  ``c`` in proportion to ``s_k`` (largest remainder, ties to the lower class), in a uniformly
  random order.
* **Pairs.** Each rotation's pair is uniform among all unordered same-class pairs of columns,
  ``theta ~ U[0, 2 pi)``. The stop rule is EOI's (:func:`orthosparse.eoi.stream.keep_later`).

Why the cap holds: a rotation makes both columns' supports their union, so a support that lies
inside one class's rows (tall) or a row whose support lies inside one class's columns (wide) stays
there; each class has at most ``N`` positions per group. At most ``sum_k r_k c_k`` nonzeros are
reachable (``r_k`` rows, ``c_k`` columns of class ``k``): density ``N/M`` when ``N`` divides
``M`` (:func:`reachable_density`). A product of Givens rotations is orthogonal, as in EOI.

:class:`NMDraws` is a :class:`orthosparse.eoi.stream.Draws` whose pairs follow these rules, so
every EOI backend (the oracle included) builds N:M matrices unchanged; :func:`check_nm` and
:func:`check_nm_problem` validate once at the public boundary (:mod:`orthosparse.eoi.problem`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .stream import Draws, expected_rotations

__all__ = ["NMDraws", "add_capped", "check_nm", "check_nm_problem", "class_sizes", "max_nnz",
           "reachable_density", "satisfies_nm"]


def check_nm(nm: object) -> tuple[int, int]:
    """Return ``nm`` as ``(N, M)`` with ``1 <= N < M``; raise ``TypeError``/``ValueError``.

    Raises:
        TypeError: not a pair of integers.
        ValueError: ``M < 2``, ``N < 1`` or ``N >= M``.
    """
    if (not isinstance(nm, (tuple, list)) or len(nm) != 2
            or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in nm)):
        raise TypeError(f"nm must be a pair of integers (N, M), e.g. (2, 4); got {nm!r}")
    n, m = int(nm[0]), int(nm[1])
    if m < 2:
        raise ValueError(f"nm={(n, m)}: M={m} must be >= 2 (groups of M consecutive inputs)")
    if not 1 <= n < m:
        raise ValueError(f"nm={(n, m)}: N={n} must satisfy 1 <= N < M={m} "
                         f"(N = M is no constraint: use nm=None)")
    return n, m


def class_sizes(n: int, m: int) -> tuple[int, ...]:
    """Sizes ``s_k`` of the ``K = ceil(M/N)`` classes of a group: ``N, ..., N, M - (K-1) N``."""
    k = -(-m // n)
    return (n,) * (k - 1) + (m - (k - 1) * n,)


def _apportion(total: int, sizes: tuple[int, ...]) -> np.ndarray:
    """Split ``total`` in proportion to ``sizes`` (largest remainder, ties to the lower index)."""
    whole = sum(sizes)
    out = np.array([total * s // whole for s in sizes], dtype=np.int64)  # exact integers
    order = sorted(range(len(sizes)), key=lambda k: (-(total * sizes[k] % whole), k))
    out[order[: total - int(out.sum())]] += 1
    return out


def _column_counts(rows: int, cols: int, n: int, m: int) -> np.ndarray:
    """``c_k``: how many of ``A``'s ``c`` columns are in class ``k`` (the same for every draw)."""
    sizes = class_sizes(n, m)
    if rows <= cols:  # wide: columns are the inputs, cols/M groups
        return np.array(sizes, dtype=np.int64) * (cols // m)
    return _apportion(rows, sizes)  # tall: c = rows columns, r_k = (cols/M) s_k <= c_k


def max_nnz(rows: int, cols: int, nm: tuple[int, int]) -> int:
    """Most nonzeros N:M EOI reaches in a ``rows x cols`` (out x in) weight, for every layout.

    ``sum_k r_k c_k`` (a class's block of ``A`` is at most full). In the wide case the classes of
    the last ``rows mod M`` rows depend on the draw; when the classes differ in size (``N`` does
    not divide ``M``) the least favourable draw counts. ``cols`` must be a multiple of ``M``.
    """
    n, m = check_nm(nm)
    sizes = np.array(class_sizes(n, m), dtype=np.int64)
    c_k = _column_counts(rows, cols, n, m)
    if rows <= cols:
        r_k = sizes * (rows // m)
        left = rows % m  # rows of the last, partial group: least favourable classes first
        for k in np.argsort(c_k, kind="stable"):
            take = min(left, int(sizes[k]))
            r_k[k] += take
            left -= take
    else:
        r_k = sizes * (cols // m)
    return int((r_k * c_k).sum())


def reachable_density(rows: int, cols: int, nm: tuple[int, int]) -> float:
    """Largest density N:M EOI reaches for a ``rows x cols`` (out x in) weight, for every layout:
    ``max_nnz / (rows * cols)``, which is ``N/M`` exactly when ``N`` divides ``M``.

    Rounded down if need be, so that this very value passes :func:`check_nm_problem`.
    """
    top, size = max_nnz(rows, cols, nm), min(rows, cols) * max(rows, cols)
    density = top / size
    while density * min(rows, cols) * max(rows, cols) > top:  # the product the stop rule uses
        density = math.nextafter(density, 0.0)
    return density


def check_nm_problem(rows: int, cols: int, density: float, nm: object) -> tuple[int, int]:
    """Validate ``nm`` for a validated ``rows x cols`` request at ``density``; return ``(N, M)``.

    Raises:
        TypeError: ``nm`` not a pair of integers.
        ValueError: a bad ``(N, M)``, ``cols`` (the input size) not a multiple of ``M``, or a
            density above :func:`reachable_density` (EOI's stop rule needs
            ``nnz >= density * r * c`` to be reachable).
    """
    n, m = check_nm(nm)
    if cols % m:
        raise ValueError(f"nm={(n, m)} needs the input size to be a multiple of M={m}; "
                         f"a {rows}x{cols} (out x in) weight has {cols} inputs")
    if density * min(rows, cols) * max(rows, cols) > max_nnz(rows, cols, (n, m)):
        raise ValueError(f"density={density} is above the largest density reachable with "
                         f"nm={(n, m)} for a {rows}x{cols} weight: "
                         f"{reachable_density(rows, cols, (n, m)):.6g}")
    return n, m


def satisfies_nm(mask: torch.Tensor, nm: tuple[int, int]) -> bool:
    """Whether every row of ``mask`` (..., out, in) keeps at most ``N`` of every ``M``
    consecutive inputs (``in`` a multiple of ``M``)."""
    n, m = check_nm(nm)
    if mask.shape[-1] % m:
        raise ValueError(f"mask of shape {tuple(mask.shape)}: its last dim (inputs) must be a "
                         f"multiple of M={m}")
    counts = (mask != 0).reshape(*mask.shape[:-1], -1, m).sum(dim=-1)
    return bool((counts <= n).all())


def add_capped(taken: np.ndarray, count: int, n: int, rng: np.random.Generator) -> None:
    """Set ``count`` more entries of the bool groups ``taken`` ``(G, M)`` to True, in place,
    keeping at most ``n`` per group (every group must hold at most ``n`` already).

    Group ``g`` has ``n - kept_g`` free *slots*. A uniformly random ``count``-subset of all free
    slots says how many entries each group gains; each group then gains that many of its False
    entries, uniformly (docs/nm.md §9). With every group empty and ``count = n G`` (density
    ``N/M``) the result is a uniform N:M mask with exactly ``n`` per group; below it the counts
    per group are hypergeometric. Draws from ``rng`` only (a ``numpy`` stream the caller seeds
    from its generator): the slots (only when ``count`` is below the free slots), then one
    uniform per entry of the groups that gain.
    """
    kept = taken.sum(axis=1)
    free = np.maximum(n - kept, 0)
    total = int(free.sum())
    if count > total:
        raise AssertionError(f"cannot add {count} entries under the cap: {total} free slots")
    if count == 0:
        return
    if count == total:
        gain = free
    else:
        owner = np.repeat(np.arange(taken.shape[0]), free)  # the group of every free slot
        picked = np.argpartition(rng.random(total), count - 1)[:count]
        gain = np.bincount(owner[picked], minlength=taken.shape[0])
    rows = np.flatnonzero(gain)
    keys = rng.random((rows.size, taken.shape[1]))
    keys[taken[rows]] = 2.0  # taken entries rank last
    ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
    taken[rows] |= ranks < gain[rows, None]


class NMDraws(Draws):
    """The N:M rotation stream (module docstring): same interface as
    :class:`orthosparse.eoi.stream.Draws`, pairs uniform among same-class column pairs.

    Drawn lazily from ``generator`` on the CPU, in this order, on the first :meth:`chunk` call:
    the layout (``float64`` uniforms ``(batch, cols/M, M)``, ranked per group), in the tall case
    the order of the empty columns' classes (``float64`` uniforms ``(batch, c - r)``, ranked);
    then per chunk ``u ~ U{0 .. P-1}`` (``(batch, n)``, ``P`` the number of ordered same-class
    pairs, decoded to a pair) and ``theta ~ U[0, 2 pi)``. Chunk sizes depend only on the shape,
    ``density`` and ``nm``, so every backend reads the same chunks.
    """

    def __init__(self, batch: int, rows: int, cols: int, density: float, nm: tuple[int, int],
                 generator: torch.Generator | None, *, first: int | None = None,
                 rest: int | None = None):
        self.rows, self.cols = rows, cols
        self.n, self.m = nm
        self.r = min(rows, cols)
        c = max(rows, cols)
        self.sizes = _column_counts(rows, cols, self.n, self.m)  # c_k, every matrix
        self.weights = self.sizes * (self.sizes - 1)  # ordered same-class pairs per class
        super().__init__(batch, c, density, generator, first=first, rest=rest)
        if first is None:
            t = self._expected_rotations(density)
            self.first = int(1.2 * t + 4.0 * math.sqrt(t)) + 16
        self._members: np.ndarray | None = None  # (batch, c): columns sorted by class

    def _expected_rotations(self, density: float) -> float:
        """Mean-field rotations to reach ``density``: each class's block needs EOI's count for
        its share of the reachable maximum, and gets ``weights[k] / P`` of the draws."""
        top = reachable_density(self.rows, self.cols, (self.n, self.m))
        rel = min(1.0, density / top)
        total = int(self.weights.sum())
        return max((expected_rotations(int(s), rel) * total / int(w)
                    for s, w in zip(self.sizes, self.weights, strict=True) if w > 0),
                   default=0.0)

    def column_classes(self) -> np.ndarray:
        """The class of every column of ``A``, ``(batch, c)`` int64 (draws the layout on first
        use)."""
        members = self._layout()
        classes = np.empty_like(members)
        labels = np.repeat(np.arange(len(self.sizes)), self.sizes)  # class of each sorted slot
        np.put_along_axis(classes, members, np.broadcast_to(labels, members.shape), axis=1)
        return classes

    def _layout(self) -> np.ndarray:
        if self._members is not None:
            return self._members
        g, batch, m = self.generator, self.batch, self.m
        sizes = class_sizes(self.n, m)
        # a uniform labelled partition of each group: rank M uniforms, the k-th s_k ranks -> k
        ranks = torch.rand((batch, self.cols // m, m), generator=g, dtype=torch.float64)
        order = ranks.argsort(dim=-1).numpy()  # order[..., t]: the position of rank t
        by_rank = np.repeat(np.arange(len(sizes)), sizes)
        inputs = np.empty_like(order)
        np.put_along_axis(inputs, order, np.broadcast_to(by_rank, order.shape), axis=-1)
        inputs = inputs.reshape(batch, self.cols)  # class of every input
        if self.rows <= self.cols:
            classes = inputs
        else:  # tall: columns o < r are inputs o; the empty ones fill each class up to c_k
            r = self.r
            extra = self.sizes - np.bincount(inputs[0], minlength=len(sizes))
            labels = np.repeat(np.arange(len(sizes)), extra)
            shuffle = torch.rand((batch, self.c - r), generator=g, dtype=torch.float64)
            classes = np.concatenate([inputs, labels[shuffle.argsort(dim=-1).numpy()]], axis=1)
        self._members = np.ascontiguousarray(np.argsort(classes, axis=1, kind="stable"))
        return self._members

    def chunk(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        while len(self.chunks) <= k:
            members = self._layout()
            n = self.first if not self.chunks else self.rest
            shape, g = (self.batch, n), self.generator
            total = int(self.weights.sum())
            assert total > 0, "no same-class pair: validation admits no rotation here"
            u = torch.randint(0, total, shape, generator=g).numpy()
            theta = torch.rand(shape, generator=g, dtype=torch.float64).numpy()
            theta *= 2.0 * math.pi
            ends = np.cumsum(self.weights)
            cls = np.searchsorted(ends, u, side="right")  # class of each ordered pair
            off = u - (ends - self.weights)[cls]
            span = self.sizes[cls] - 1  # >= 1: classes without pairs have weight 0
            a, b = off // span, off % span
            b += b >= a  # skip a: b uniform over the class's other columns
            start = (np.cumsum(self.sizes) - self.sizes)[cls]
            i = np.take_along_axis(members, start + a, axis=1)
            j = np.take_along_axis(members, start + b, axis=1)
            self.chunks.append((np.ascontiguousarray(i), np.ascontiguousarray(j), theta))
        return self.chunks[k]
