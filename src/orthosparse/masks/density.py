"""Random masks: each layer gets a count of kept weights, then that many random positions.

Methods ``dense``, ``uniform``, ``er``, ``erk``, ``uniform-skip`` and user-given per-layer maps
decide per-layer counts only (exact integers, ``keep_count`` rounding); they never look at the
weights or draw a position. :func:`random_masks` draws the positions, a uniformly random subset
of each layer's count from the caller's generator, with all layers of one size drawn together in
a few vectorized calls. An init scheme that builds its own masks (EOI) takes the counts alone
(docs/design.md §3, the sparsify pipeline).
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from .._checks import check_density, keep_count
from .._layers import PrunableLayer
from .registry import masks_warn, register_mask_method, warn_empty

__all__ = [
    "apportion",
    "density_map_counts",
    "erk_densities",
    "random_masks",
    "resolve_density_map",
]

# Rows of one size are drawn in chunks of at most this many entries (one row if a row is larger).
# 2**15 is PyTorch's intra-op grain size: each op then runs on one thread with its data in
# cache. Measured on a 2-core CPU shared with other processes, larger chunks that fan out to
# OpenMP threads were 3-40x slower (threads waiting on a busy core); single-threaded, no slower.
_CHUNK_ENTRIES = 1 << 15


def _draws_needed(n: int, k: int) -> int:
    """Draws after which ``k <= n/2`` distinct values of ``n`` have almost surely come up."""
    # Draws D to see k distinct values: E[D] = n (H_n - H_{n-k}) <= n ln(n / (n - k)) + 1 and
    # Var[D] = sum_{i<k} (i/n) / (1 - i/n)^2 <= 2k for k <= n/2: take the mean + 6 std + 16.
    return math.ceil(n * math.log(n / (n - k))) + math.ceil(6 * math.sqrt(2 * k)) + 16


# ----------------------------------------------------------------------------- random positions
def _fill_random_subsets(outs: list[torch.Tensor], n: int, counts: list[int],
                         generator: torch.Generator | None) -> None:
    """Fill each flat bool tensor ``outs[i]`` (``n`` entries) with a uniformly random
    ``counts[i]``-subset of its positions (``0 < counts[i] < n``).

    Method: draw i.i.d. uniform positions and keep the first ``k`` *distinct* ones. By symmetry
    under relabelling positions, that set is a uniformly random ``k``-subset. It needs only about
    ``n * ln(n / (n - k))`` draws (``<= 0.7 n``, since rows with ``k > n/2`` draw the ``n - k``
    dropped positions instead), much less than a full permutation or sort of ``n`` keys.
    Vectorized per chunk of rows: ``first[r, v]`` is the draw index of the first time value ``v``
    came up (``m`` if never); the row keeps ``v`` iff ``first[r, v] <= t_r``, where ``t_r`` is the
    draw at which the ``k``-th distinct value appeared. Rows that saw fewer than ``k`` distinct
    values in ``m`` draws (rare: ``m`` is the mean plus 6 standard deviations) are redrawn with
    twice as many draws; a fresh independent attempt keeps the result uniform.
    """
    per_chunk = max(1, _CHUNK_ENTRIES // n)
    pending, attempt = list(range(len(outs))), 0
    while pending:
        failed = []
        for start in range(0, len(pending), per_chunk):
            rows = pending[start:start + per_chunk]
            ks = [min(counts[i], n - counts[i]) for i in rows]
            c, m = len(rows), _draws_needed(n, max(ks)) << attempt
            draws = torch.randint(n, (c, m), generator=generator)             # (c, m)
            steps = torch.arange(m, dtype=torch.int32)                        # (m,)
            first = torch.full((c, n), m, dtype=torch.int32)                  # (c, n)
            first.scatter_reduce_(1, draws, steps.expand(c, m), "amin")
            distinct = (first.gather(1, draws) == steps).cumsum(1, dtype=torch.int32)  # (c, m)
            k = torch.tensor(ks, dtype=torch.int32)                           # (c,)
            t = (distinct < k[:, None]).sum(1).tolist()
            seen = distinct[:, -1].tolist()
            for j, i in enumerate(rows):
                if seen[j] < ks[j]:
                    failed.append(i)
                elif ks[j] == counts[i]:
                    torch.le(first[j], t[j], out=outs[i])     # drawn set = kept positions
                else:
                    torch.gt(first[j], t[j], out=outs[i])     # k > n/2: drawn set = dropped
        pending, attempt = failed, attempt + 1


def random_masks(
    layers: Sequence[PrunableLayer],
    counts: Sequence[int],
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``{name: bool mask}`` with exactly ``counts[i]`` uniformly random kept positions.

    Layers with the same number of weights are drawn together (a few vectorized calls per
    chunk of layers), so a 1000-layer network costs no per-weight Python work. Draws happen on
    the CPU from ``generator``; masks are then moved to each weight's device.

    Raises:
        ValueError: ``counts`` does not pair up with ``layers``, or a count outside
            ``[0, numel]``.

    Example:
        >>> masks = random_masks(prunable_layers(model), [10, 20], torch.Generator().manual_seed(0))
    """
    layers = list(layers)
    counts = check_counts(layers, counts)
    warn_empty([layer.name for layer in layers], counts,
               [layer.weight.numel() for layer in layers])
    return draw_positions(layers, counts, generator)


def check_counts(layers: Sequence[PrunableLayer], counts: Sequence[int]) -> list[int]:
    """Return ``counts`` as ints, one per layer, each in ``[0, numel]``; raise otherwise."""
    counts = list(counts)
    if len(counts) != len(layers):
        raise ValueError(f"got {len(counts)} counts for {len(layers)} layers")
    for layer, k in zip(layers, counts, strict=True):
        n = layer.weight.numel()
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= n:
            raise ValueError(f"count {k!r} for layer {layer.name!r} must be an int in [0, {n}]")
    return [int(k) for k in counts]


def draw_positions(layers: Sequence[PrunableLayer], counts: Sequence[int],
                   generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """:func:`random_masks` for counts already checked (``0 <= counts[i] <= numel``)."""
    masks, groups = {}, {}
    for layer, k in zip(layers, counts, strict=True):
        weight = layer.weight
        n = weight.numel()
        if 0 < k < n:
            mask = torch.empty(weight.shape, dtype=torch.bool)          # filled below
            outs, ks = groups.setdefault(n, ([], []))
            outs.append(mask.view(-1))
            ks.append(k)
        else:
            mask = torch.full(weight.shape, k > 0, dtype=torch.bool)
        masks[layer.name] = mask
    for n, (outs, ks) in groups.items():                      # sizes in order of first layer
        _fill_random_subsets(outs, n, ks, generator)
    for layer in layers:
        if layer.weight.device.type != "cpu":
            masks[layer.name] = masks[layer.name].to(layer.weight.device)
    return masks


def apportion(ideal: Sequence[float], numels: Sequence[int], total: int) -> list[int]:
    """Round real per-layer counts to integers summing exactly to ``total`` (largest remainder).

    Each layer gets ``floor(ideal)``; the ``total - sum(floor)`` leftover weights go one each to
    the layers with the largest fractional parts (ties: the earlier layer first). Needs
    ``sum(ideal) ~= total`` (within one half); a layer never exceeds its size.
    """
    x = np.asarray(ideal, dtype=np.float64)
    n = np.asarray(numels, dtype=np.int64)
    base = np.clip(np.floor(x), 0, n).astype(np.int64)
    frac = np.where(base < n, x - base, -1.0)                 # full layers cannot take more
    extra = int(total) - int(base.sum())
    assert 0 <= extra <= int((base < n).sum()), (extra, total)
    order = np.argsort(-frac, kind="stable")
    base[order[:extra]] += 1
    return base.tolist()


# ----------------------------------------------------------------------------- dense and uniform
@register_mask_method("dense")
def dense(layers: list[PrunableLayer], density: float) -> list[int]:
    """Keep every weight (the dense baseline); a ``density`` below 1 gets a warning."""
    if density < 1.0:
        masks_warn(f"mask method 'dense' keeps every weight; density={density} is not used")
    return [layer.weight.numel() for layer in layers]


@register_mask_method("uniform")
def uniform(layers: list[PrunableLayer], density: float) -> list[int]:
    """Give every layer the same density: ``keep_count(density, numel)`` weights each."""
    return [keep_count(density, layer.weight.numel()) for layer in layers]


UNIFORM_SKIP_BUDGETS: tuple[str, ...] = ("network", "middle")
"""Values of ``uniform-skip``'s ``budget``: what the density is the density of."""


@register_mask_method("uniform-skip")
def uniform_skip(layers: list[PrunableLayer], density: float, *, budget: str = "network"
                 ) -> list[int]:
    """Keep the first and last prunable layers dense and the others uniform.

    ``budget="network"`` (default): the uniform density ``d_mid`` of the middle layers makes the
    overall density the target: ``n_first + n_last + d_mid * N_mid = density * N``; counts are
    apportioned so that the total is exactly ``keep_count(density, N)``.
    ``budget="middle"``: every middle layer keeps ``keep_count(density, n)`` weights and the dense
    ends come on top, so the network is denser than ``density``; this is the official code's
    ``uni_skip`` masks of `Sparser, Better, Deeper, Stronger` - Nowak et al. (2024), arXiv
    2406.01755 (``uniform_skip_first_last_initializer``; docs/protocol.md).

    Raises:
        ValueError: an unknown ``budget``; with ``budget="network"``, ``density`` does not exceed
            the dense share ``(n_first + n_last) / N``.
    """
    if not isinstance(budget, str) or budget not in UNIFORM_SKIP_BUDGETS:
        raise ValueError(f"uniform-skip: budget={budget!r} must be one of: "
                         f"{', '.join(map(repr, UNIFORM_SKIP_BUDGETS))}")
    numels = [layer.weight.numel() for layer in layers]
    total = sum(numels)
    ends = {0, len(layers) - 1}
    if budget == "middle":
        return [n if i in ends else keep_count(density, n) for i, n in enumerate(numels)]
    n_dense = sum(numels[i] for i in ends)
    n_mid = total - n_dense
    if density < 1.0 and (n_mid == 0 or density * total <= n_dense):
        low = n_dense / total
        allowed = "[1, 1] (every layer is a first or last layer)" if n_mid == 0 else \
            f"({low:.6g}, 1]"
        raise ValueError(f"uniform-skip keeps the first and last layers dense ({n_dense} of "
                         f"{total} weights), so density must be in {allowed}; got "
                         f"density={density}")
    d_mid = (density * total - n_dense) / n_mid if n_mid else 1.0
    ideal = [n if i in ends else d_mid * n for i, n in enumerate(numels)]
    return apportion(ideal, numels, keep_count(density, total))


# ----------------------------------------------------------------------------- ER / ERK
def _check_power_scale(power_scale: object) -> float:
    if isinstance(power_scale, bool) or not isinstance(power_scale, numbers.Real):
        raise TypeError(f"erk_power_scale must be a real number, got "
                        f"{type(power_scale).__name__}: {power_scale!r}")
    if not math.isfinite(power_scale) or power_scale < 0:
        raise ValueError(f"erk_power_scale={power_scale!r} must be a finite number >= 0")
    return float(power_scale)


def erk_densities(
    shapes: Sequence[Sequence[int]],
    density: float,
    *,
    power_scale: float = 1.0,
    include_kernel: bool = True,
    dense: Sequence[bool] | None = None,
    names: Sequence[str] | None = None,
) -> list[float]:
    """Return per-layer Erdős–Rényi(-Kernel) densities whose weighted mean is ``density``.

    `Rigging the Lottery: Making All Tickets Winners` - Evci et al. (2020), arXiv 1911.11134
    (ERK); `Scalable training of artificial neural networks with adaptive sparse connectivity`
    - Mocanu et al. (2018) (ER). Layer ``l`` with shape ``(c_out, c_in, *kernel)`` gets
    ``d_l = eps * raw_l`` with ``raw_l = (sum(dims) / prod(dims)) ** power_scale``, where ``dims``
    is the full shape (ERK) or ``(c_out, c_in)`` only (ER); layers that would exceed 1 are dense.

    Args:
        shapes: weight shapes, 2-D or more.
        density: overall target density in (0, 1].
        power_scale: exponent on the ER(K) ratio; 0 gives uniform densities.
        include_kernel: True for ERK, False for ER.
        dense: layers forced dense; their weights count in the budget.
        names: layer names used in error messages.

    Raises:
        ValueError: the forced-dense layers leave no room: ``density`` must exceed their share.

    Example:
        >>> erk_densities([(50, 2), (50, 50), (3, 50)], 0.2)
        [1.0, 0.12, 1.0]
    """
    density = check_density(density)
    power_scale = _check_power_scale(power_scale)
    forced = [False] * len(shapes) if dense is None else list(dense)
    if len(forced) != len(shapes):
        raise ValueError(f"dense has {len(forced)} entries for {len(shapes)} layers")
    return _erk_densities(shapes, density, power_scale, include_kernel, forced,
                          names or [f"layer {i}" for i in range(len(shapes))])


def _erk_densities(shapes: Sequence[Sequence[int]], density: float, power_scale: float,
                   include_kernel: bool, dense: Sequence[bool], names: Sequence[str]
                   ) -> list[float]:
    """:func:`erk_densities` for checked arguments (``density`` in (0, 1], one flag per shape)."""
    for shape in shapes:
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"ER/ERK needs weight shapes (c_out, c_in, *kernel) with positive "
                             f"sizes, got {tuple(shape)}")
    if density == 1.0:
        return [1.0] * len(shapes)
    dims = [tuple(s) if include_kernel else tuple(s[:2]) for s in shapes]
    numel = np.array([math.prod(s) for s in shapes], dtype=np.float64)           # (L,)
    raw = np.array([sum(d) / math.prod(d) for d in dims], dtype=np.float64)      # (L,)
    raw = raw ** power_scale
    forced = np.array(dense, dtype=bool)                                         # (L,)
    total = numel.sum()
    n_forced = numel[forced].sum()
    if forced.all() or density * total <= n_forced:
        which = ", ".join(repr(names[i]) for i in np.flatnonzero(forced))
        allowed = "[1, 1]" if forced.all() else f"({n_forced / total:.6g}, 1]"
        raise ValueError(f"the dense layers ({which}) hold {int(n_forced)} of {int(total)} "
                         f"weights, so density must be in {allowed}; got density={density}")
    # Budget equation (D = dense layers, S = the others, n_l weights, N = sum n_l):
    #     sum_{l in D} n_l + sum_{l in S} eps * raw_l * n_l = density * N
    #  => eps = (density * N - sum_{l in D} n_l) / sum_{l in S} raw_l * n_l,   d_l = eps * raw_l.
    # If eps * raw_l > 1 for layers of S, they move to D and eps is re-solved. Moving layer l
    # changes eps to eps' = (B - n_l) / (R - raw_l n_l), and eps' >= eps  <=>  eps * raw_l >= 1:
    # eps only grows, so over-full layers stay over-full and moving all of them at once reaches
    # the same fixed point as moving the largest one per step (RigL). Each pass adds at least one
    # layer to D; at most one pass per distinct raw value.
    is_dense = forced.copy()
    while True:
        assert not is_dense.all(), "density < 1 always leaves a sparse layer"
        eps = (density * total - numel[is_dense].sum()) / (raw * numel)[~is_dense].sum()
        over = ~is_dense & (eps * raw > 1.0)
        if not over.any():
            break
        is_dense |= over
    return np.where(is_dense, 1.0, eps * raw).tolist()


def _dense_flags(layers: Sequence[PrunableLayer], patterns: object) -> list[bool]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Iterable):
        raise TypeError(f"dense_layers must be a list of parameter names or glob patterns, got "
                        f"{type(patterns).__name__}")
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"dense_layers entries must be strings, got {p!r}")
    flags = [any(fnmatch.fnmatchcase(layer.name, p) for p in patterns) for layer in layers]
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(lay.name, p) for lay in layers)]
    if unused:
        raise ValueError(f"dense_layers pattern(s) {unused} match no prunable layer; layers are: "
                         f"{', '.join(layer.name for layer in layers)}")
    return flags


def _er_counts(layers: list[PrunableLayer], density: float, include_kernel: bool,
               power_scale: object, dense_layers: object) -> list[int]:
    densities = _erk_densities([tuple(layer.weight.shape) for layer in layers], density,
                               _check_power_scale(power_scale), include_kernel,
                               _dense_flags(layers, dense_layers),
                               [layer.name for layer in layers])
    numels = [layer.weight.numel() for layer in layers]
    ideal = [d * n for d, n in zip(densities, numels, strict=True)]
    return apportion(ideal, numels, keep_count(density, sum(numels)))


@register_mask_method("erk")
def erk(layers: list[PrunableLayer], density: float, *, erk_power_scale: float = 1.0,
        dense_layers: Iterable[str] = ()) -> list[int]:
    """Erdős–Rényi-Kernel densities (see :func:`erk_densities`), apportioned to an exact total.

    Options: ``erk_power_scale`` (default 1.0); ``dense_layers``: names or glob patterns of
    layers kept dense inside the budget.
    """
    return _er_counts(layers, density, True, erk_power_scale, dense_layers)


@register_mask_method("er")
def er(layers: list[PrunableLayer], density: float, *, erk_power_scale: float = 1.0,
       dense_layers: Iterable[str] = ()) -> list[int]:
    """Erdős–Rényi densities from the channel dims only; otherwise as ``erk``."""
    return _er_counts(layers, density, False, erk_power_scale, dense_layers)


# ----------------------------------------------------------------------------- per-layer maps
def resolve_density_map(mapping: Mapping[str, float], layers: Sequence[PrunableLayer]
                        ) -> dict[str, float]:
    """Return ``{layer name: density}`` from a map of names or glob patterns.

    An exact parameter name wins over patterns; otherwise exactly one pattern must match (or all
    matching patterns must agree). Every layer must be covered and every key must match a layer.

    Raises:
        ValueError: uncovered layers, keys matching nothing, conflicting patterns, bad densities.
        TypeError: non-string keys or non-numeric densities.
    """
    values = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"density map keys must be parameter names or glob patterns (str), "
                            f"got {key!r}")
        values[key] = check_density(value, name=f"density[{key!r}]")
    names = [layer.name for layer in layers]
    resolved, missing, used = {}, [], set()
    for name in names:
        if name in values:
            resolved[name] = values[name]
            used.add(name)
            continue
        hits = [key for key in values if fnmatch.fnmatchcase(name, key)]
        used.update(hits)
        if not hits:
            missing.append(name)
        elif len({values[key] for key in hits}) > 1:
            raise ValueError(f"layer {name!r} matches patterns with different densities: "
                             f"{ {key: values[key] for key in hits} }")
        else:
            resolved[name] = values[hits[0]]
    if missing:
        raise ValueError(f"the density map does not cover layer(s) {', '.join(missing)}; add them "
                         f"(or a pattern such as '*') to the map")
    unused = [key for key in values if key not in used]
    if unused:
        raise ValueError(f"density map key(s) {unused} match no prunable layer; layers are: "
                         f"{', '.join(names)}")
    return resolved


def density_map_counts(mapping: Mapping[str, float], layers: Sequence[PrunableLayer],
                       density: float | None = None) -> list[int]:
    """Kept counts from a user-given per-layer density map, ``keep_count(d_l, numel)`` each.

    A given overall ``density`` that the map's counts miss by more than rounding (half a weight
    per layer) gets a warning: the map wins.

    Example:
        >>> density_map_counts({"fc1.weight": 0.5, "*": 0.1}, prunable_layers(model))
    """
    layers = list(layers)
    resolved = resolve_density_map(mapping, layers)
    numels = [layer.weight.numel() for layer in layers]
    counts = [keep_count(resolved[layer.name], n) for layer, n in zip(layers, numels, strict=True)]
    if density is not None and abs(sum(counts) - density * sum(numels)) > 0.5 * len(layers) + 1e-9:
        masks_warn(f"density={density} differs from the per-layer map's overall density "
                   f"{sum(counts) / sum(numels):.6g}; the map is used")
    return counts
