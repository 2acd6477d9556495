"""``torch.nn.init``-style initializers: EOI for Linear and Conv weights, dense (delta-)orthogonal.

Convolutions follow the delta-orthogonal construction (`Dynamical Isometry and a Mean Field Theory
of CNNs: How to Train 10,000-Layer Vanilla Convolutional Neural Networks` - Xiao et al. (2018),
arXiv 1806.05393): every tap is zero except the centre one, which holds ``gain * H`` with ``H`` an
orthogonal ``c_out x c_in`` matrix. With circular padding such a convolution is an isometry, since
it applies ``H`` to every pixel. EOI makes ``H`` sparse (docs/design.md §2 (EOI for convolutions)):
``H = EOI(c_out, c_in, d_H)`` and the mask is the support of ``H`` at the centre plus extra
trainable positions, drawn uniformly among the remaining zero positions of the whole kernel, that
start at value 0, until the mask holds ``keep_count(d, numel)`` weights (halves round up, the rule
of the masks).

Grouped and depthwise convolutions (``groups=G``, weight ``(c_out, c_in/G, *kernel)``): with
``groups=G`` every group's centre block ``(c_out/G, c_in/G)`` is an exact orthogonal matrix of its
own, so the grouped layer is an isometry too (a depthwise conv: every channel's centre tap is
``+-gain``). With ``groups=1`` (the EOI paper's rule, its EfficientNet runs) the stored
``(c_out, c_in/G)`` centre is treated as one matrix, which leaves channels of a depthwise conv
zero at initialization. A 1x1 block (depthwise) is dense at the centre, so the centre alone has
density ``1/K`` (``K`` kernel taps); the extra positions bring the layer to ``density`` as usual,
and a density below ``1/K`` is raised to it with a warning (the floor rule below).

N:M structured EOI (``nm=(N, M)``, docs/nm.md §7): a Linear weight keeps at most ``N`` of every
``M`` consecutive inputs of each output row; a conv weight at most ``N`` of every ``M``
consecutive input channels at each tap of each output channel (the reduction axis of the sparse
tensor-core convolutions). The centre is ``H = EOI(c_out, c_in, d_H, nm)`` with ``d_H`` capped
at :func:`orthosparse.eoi.reachable_density`; the extra positions go only to
``(o, tap, channel group)`` that keep fewer than ``N`` (:func:`orthosparse.eoi.nm.add_capped`).

``conv_orthogonal_`` is the dense orthogonal convolution of Xiao et al. (2018), Algorithm 1, as
the EOI paper's official code builds it (``models/initializers.py``, ``conv_orthogonal``): every
tap nonzero, the circular convolution an exact isometry.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ._checks import check_density, check_gain, check_generator, check_not_meta, keep_count
from .eoi.backends import select
from .eoi.generator import generate
from .eoi.nm import add_capped, check_nm, max_nnz
from .eoi.problem import make_problem

__all__ = [
    "CenterDensity",
    "ConvRule",
    "center_density_for",
    "conv_orthogonal_",
    "eoi_",
    "eoi_group_",
    "orthogonal_",
]

CenterDensity = float | Literal["same", "more"] | None
"""Policy for the density ``d_H`` of a conv's centre matrix: ``None``/``"same"``: ``d_H = d``;
``"more"``: the EOI paper's "more nonzeros" rule ``min(d * K, 1, sqrt(d))`` (``K`` kernel taps);
a number: that density (at most ``d * K``, so the mask can still have density ``d``)."""

ConvRule = Literal["delta", "conv-orthogonal", "flat"]
"""How :func:`orthogonal_` fills a conv weight ``(c_out, c_in/groups, *kernel)``: ``"delta"``:
delta-orthogonal (an orthogonal matrix at the centre tap, zeros elsewhere; Xiao et al. (2018),
Algorithm 2); ``"conv-orthogonal"``: :func:`conv_orthogonal_` (Algorithm 1, every tap
nonzero); ``"flat"``: an orthogonal matrix of the flattened ``(c_out, c_in/groups * K)`` shape."""
CONV_RULES: tuple[str, ...] = ("delta", "conv-orthogonal", "flat")


_ODD_REASON = "the delta construction puts the matrix at the centre tap"


def _check_weight(tensor: torch.Tensor, fn: str, odd_reason: str = _ODD_REASON) -> bool:
    """Validate a weight for ``fn``; return False for a zero-element tensor (a warned no-op)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{fn} expects a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.dtype.is_floating_point:
        raise TypeError(f"{fn} needs a floating-point tensor, got dtype {tensor.dtype}")
    check_not_meta(tensor, fn)
    if tensor.dim() < 2 or tensor.dim() > 5:
        raise ValueError(
            f"{fn} needs a 2-D Linear weight (out, in) or a 3-5-D Conv1d/2d/3d weight "
            f"(c_out, c_in/groups, *kernel); got shape {tuple(tensor.shape)}"
        )
    kernel = tensor.shape[2:]
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(
            f"{fn} needs odd kernel sizes ({odd_reason}); got kernel {tuple(kernel)} in weight "
            f"of shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0:
        warnings.warn(f"{fn}: initializing a zero-element tensor is a no-op", stacklevel=3)
        return False
    return True


def _check_groups(tensor: torch.Tensor, groups: object, fn: str) -> int:
    """Validate ``groups`` for a weight ``(c_out, c_in/groups, *kernel)``; return it as an int."""
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"{fn}: groups must be an int >= 1, got {type(groups).__name__}: "
                        f"{groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"{fn}: groups={groups} must be >= 1")
    if groups > 1 and tensor.dim() == 2:
        raise ValueError(f"{fn}: groups={groups} needs a conv weight (c_out, c_in/groups, "
                         f"*kernel); a 2-D weight {tuple(tensor.shape)} has one group")
    if tensor.shape[0] % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide c_out={tensor.shape[0]} of "
                         f"weight shape {tuple(tensor.shape)}")
    return groups


def center_density_for(density: float, kernel_taps: int, policy: CenterDensity = None) -> float:
    """Return the centre-matrix density ``d_H`` of a conv with ``kernel_taps`` taps.

    Raises:
        ValueError: unknown policy, or a numeric ``d_H`` above ``density * kernel_taps``.
    """
    density = check_density(density)
    if policy is None or policy == "same":
        return density
    if policy == "more":
        return min(density * kernel_taps, 1.0, math.sqrt(density))
    if isinstance(policy, str):
        raise ValueError(
            f"center_density={policy!r} must be a number in (0, 1], 'same' or 'more'"
        )
    if not isinstance(policy, numbers.Real) or isinstance(policy, bool):
        raise TypeError(f"center_density must be a number, 'same', 'more' or None; got {policy!r}")
    d_h = check_density(policy, "center_density")
    if d_h > density * kernel_taps:
        raise ValueError(
            f"center_density={policy} exceeds density*kernel_taps={density * kernel_taps:.6g}: "
            f"the centre alone would hold more nonzeros than the mask allows"
        )
    return d_h


def _check_nm_weight(tensor: torch.Tensor, nm: object, density: float,
                     center_density: CenterDensity, groups: int, fn: str) -> tuple[int, int]:
    """Validate ``nm`` for a weight ``(out, in)`` or ``(c_out, c_in/groups, *kernel)`` at
    ``density`` (docs/nm.md §7, §8); return ``(N, M)``."""
    n, m = check_nm(nm)
    shape = tuple(tensor.shape)
    c_out, c_in, kernel = shape[0], shape[1], shape[2:]
    what = "in" if not kernel else "c_in" if groups == 1 else "c_in/groups"
    if c_in % m:
        raise ValueError(f"{fn}: nm={(n, m)} needs the input size to be a multiple of M={m}; "
                         f"weight of shape {shape} has {what}={c_in}")
    rows = c_out // groups
    if not kernel:
        top = max_nnz(rows, c_in, (n, m)) / (rows * c_in)
    else:  # every (o, tap, channel group) can be filled to N: density N/M
        top = n / m
        if not isinstance(center_density, (str, type(None))):
            d_h = check_density(center_density, "center_density")
            centre_top = max_nnz(rows, c_in, (n, m)) / (rows * c_in)
            if d_h > centre_top:
                raise ValueError(f"{fn}: center_density={center_density} is above the largest "
                                 f"density reachable with nm={(n, m)} for the {rows}x{c_in} "
                                 f"centre matrix of weight shape {shape}: {centre_top:.6g}")
    if (density * rows * c_in > max_nnz(rows, c_in, (n, m)) if not kernel
            else keep_count(density, tensor.numel()) > tensor.numel() * n // m):
        raise ValueError(f"{fn}: density={density} is above the largest density reachable with "
                         f"nm={(n, m)} for weight shape {shape}: {top:.6g}")
    return n, m


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def _fill_group(
    tensors: Sequence[torch.Tensor],
    density: float,
    gain: float,
    generator: torch.Generator | None,
    center_density: CenterDensity,
    backend: str,
    groups: int = 1,
    nm: tuple[int, int] | None = None,
) -> list[torch.Tensor]:
    """EOI for same-shape weights in one batched generation (validated by the callers).

    With ``groups > 1`` the centre ``(c_out, c_in/groups)`` is ``groups`` blocks
    ``(c_out/groups, c_in/groups)`` stacked along ``c_out`` (PyTorch's grouped weight layout),
    each an EOI matrix of its own; all blocks of all tensors are one batched generation.

    Every count computed here is ``keep_count(density, numel)`` (halves round up), the rule the
    masks use. With ``nm`` (checked by :func:`_check_nm_weight`) the centre is N:M EOI with its
    density capped at the reachable one, and the extra positions respect the cap per
    ``(o, tap, channel group)`` (docs/nm.md §7).
    """
    first = tensors[0]
    c_out, c_in = first.shape[0], first.shape[1]
    rows = c_out // groups  # block rows; c_in is already c_in/groups
    kernel = tuple(first.shape[2:])
    taps = math.prod(kernel)
    d_h = center_density_for(density, taps, center_density) if kernel else density
    if kernel:
        # A centre below its 1/max(rows, c_in) floor uses the floor; the extra positions still
        # bring the layer to ``density``, so only a layer that cannot reach it is warned about.
        floor = 1.0 / max(rows, c_in)
        d_h = max(d_h, floor)
        if nm is not None:  # the centre as dense as N:M EOI reaches, at most
            d_h = min(d_h, max_nnz(rows, c_in, nm) / (rows * c_in))
        floor_nnz = groups * min(rows, c_in)
        if floor_nnz > keep_count(density, first.numel()):
            what = "delta-orthogonal kernel" if groups == 1 else \
                f"block-orthogonal kernel with groups={groups}"
            warnings.warn(
                f"density={density:.6g} is below the sparsest exact {what} of shape "
                f"{tuple(first.shape)}; returning density {floor_nnz / first.numel():.6g} "
                f"instead",
                stacklevel=4,
            )
    problem = make_problem(rows, c_in, d_h, gain=gain, dtype=_compute_dtype(first.dtype),
                           device=first.device, batch=len(tensors) * groups, nm=nm,
                           stacklevel=4)
    weights, masks = generate(problem, generator, select(backend, problem.device)[1])
    if groups > 1:  # (n * groups, rows, c_in) -> (n, c_out, c_in): blocks stacked along c_out
        weights = weights.reshape(len(tensors), c_out, c_in)
        masks = masks.reshape(len(tensors), c_out, c_in)
    if not kernel:
        torch._foreach_copy_(list(tensors), list(weights))  # one dispatch for the whole group
        return list(masks)

    centre = (slice(None), slice(None), *(k // 2 for k in kernel))
    target = keep_count(density, first.numel())
    torch._foreach_zero_(list(tensors))
    torch._foreach_copy_([tensor[centre] for tensor in tensors], list(weights))
    centre_nnz = masks.reshape(len(tensors), -1).sum(dim=1).tolist()
    rng = None  # the stream of the extra positions, seeded on first use
    out = []
    for tensor, centre_mask, nnz in zip(tensors, masks.cpu(), centre_nnz, strict=True):
        mask = torch.zeros(tensor.shape, dtype=torch.bool)
        mask[centre] = centre_mask
        extra = target - nnz
        if extra > 0 and nm is not None:  # under the cap of every (o, tap, channel group)
            if rng is None:
                rng = _free_stream(generator)
            _add_capped_conv(mask, extra, nm, rng)
        elif extra > 0:  # uniform among the remaining zero positions of the whole kernel
            if rng is None:
                rng = _free_stream(generator)
            _add_free(mask.view(-1), extra, rng, free=mask.numel() - nnz)
        out.append(mask.to(tensor.device))
    return out


def _add_capped_conv(mask: torch.Tensor, count: int, nm: tuple[int, int],
                     rng: np.random.Generator) -> None:
    """Add ``count`` positions to the CPU conv mask ``(c_out, c_in, *kernel)`` in place, at most
    ``N`` per ``M`` consecutive input channels of each ``(o, tap)`` (docs/nm.md §7)."""
    n, m = nm
    order = (0, *range(2, mask.dim()), 1)  # (c_out, *kernel, c_in): channels innermost
    groups = mask.permute(order).contiguous().numpy().reshape(-1, m)
    add_capped(groups, count, n, rng)
    back = torch.from_numpy(groups).reshape([mask.shape[i] for i in order])
    mask.copy_(back.permute(tuple(order.index(i) for i in range(mask.dim()))))


def _free_stream(generator: torch.Generator | None) -> np.random.Generator:
    """A PCG64 stream seeded by one draw from ``generator`` (for :func:`_add_free`)."""
    return np.random.Generator(np.random.PCG64(int(torch.randint(0, 2**62, (1,),
                                                                 generator=generator))))


def _bernoulli_threshold(count: int, free: int) -> int:
    """Byte threshold of :func:`_add_free`'s first stage: ``P(byte < t) = t / 256`` sits about
    four standard deviations below ``count / free``, so the stage rarely overshoots; 0 (no
    first stage) for small counts, where rejection alone is cheap."""
    if count < 64:
        return 0
    return max(0, math.floor(256 * count / free * (1.0 - 4.0 / math.sqrt(count))))


_PERMUTE_UP_TO = 1 << 14  # entries: below this a permutation of the free entries is cheapest


def _add_free(taken: torch.Tensor, count: int, rng: np.random.Generator,
              free: int | None = None) -> None:
    """Set ``count`` more entries of the 1-D CPU bool ``taken`` to True, chosen uniformly among
    its ``free`` False entries (a uniform sample without replacement); ``free`` is counted when
    not given.

    The draws come from ``rng`` (:func:`_free_stream`, one per group of layers). Small arrays, or
    most free entries wanted: a uniform choice without replacement among the free entries.
    Otherwise:

    1. for large counts every free entry is first picked independently with one probability
       ``t/256`` (random bytes: one per entry, ten times cheaper than a float draw per entry);
       if that overshoots (rare), a uniform subset of the picks is dropped;
    2. the rest of the count by sequential uniform draws that skip taken or already drawn
       entries, made in vectorized rounds (a candidate is kept when it is free and the first
       occurrence of its position in the round).

    Each stage treats the free entries symmetrically and the total is exactly ``count``, so
    every ``count``-subset of the free entries is equally likely.
    """
    n = taken.numel()
    t = taken.numpy()  # shares memory with ``taken``
    if free is None:
        free = n - int(np.count_nonzero(t))
    if count > free:
        raise AssertionError(f"cannot draw {count} of {free} free positions")
    if count == 0:
        return
    if n <= _PERMUTE_UP_TO or 2 * count > free:
        t[rng.choice(np.flatnonzero(~t), count, replace=False, shuffle=False)] = True
        return
    threshold = _bernoulli_threshold(count, free)
    if threshold > 0:
        picked = rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n] < threshold
        picked &= ~t
        k = int(np.count_nonzero(picked))
        if k > count:  # drop a uniform subset of the picks
            where = np.flatnonzero(picked)
            picked[where[rng.choice(k, k - count, replace=False)]] = False
            k = count
        t |= picked
        count, free = count - k, free - k
    while count > 0:
        m = int(count * n / free * 1.25) + 64  # expected draws for ``count`` hits, plus margin
        cand = rng.integers(0, n, m)
        first = np.sort(np.unique(cand, return_index=True)[1])  # first occurrences, in order
        hits = cand[first]
        hits = hits[~t[hits]][:count]
        t[hits] = True
        count -= hits.size
        free -= hits.size


def eoi_(
    tensor: torch.Tensor,
    density: float,
    *,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    center_density: CenterDensity = None,
    backend: str = "auto",
    groups: int = 1,
    nm: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Fill ``tensor`` in place with an exact sparse orthogonal (EOI) weight; return its mask.

    `Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
    Initialization` - Nowak et al. (2024), arXiv 2406.01755.

    A 2-D weight ``(out, in)`` gets ``gain * A`` with ``A`` exactly orthogonal on its smaller side
    (:func:`orthosparse.eoi.sparse_orthogonal`). A conv weight ``(c_out, c_in/groups, *kernel)``
    (odd kernel) gets the sparse delta-orthogonal kernel: ``gain * H`` at the centre tap, zeros
    elsewhere; the mask adds zero-valued trainable positions until it holds
    ``keep_count(density, numel)`` weights (``round(density * numel)``, halves up). With
    ``groups=G`` (the layer's ``nn.Conv2d(..., groups=G)``) ``H`` is ``G`` stacked blocks
    ``(c_out/G, c_in/G)``, each exactly orthogonal, so the grouped conv is an isometry; a
    depthwise conv gets ``+-gain`` at every channel's centre tap and density at least ``1/K``.

    Args:
        tensor: 2-D to 5-D floating weight, any device; half types are generated in float32.
        density: target mask density in (0, 1].
        gain: scale of the orthogonal matrix.
        generator: CPU generator for every random draw.
        center_density: conv centre-matrix policy (:data:`CenterDensity`).
        backend: EOI backend, ``"auto"`` or a name from :func:`orthosparse.eoi.list_backends`
            (same masks from every one).
        groups: the conv's groups: one exact orthogonal centre block per group; 1 treats the
            ``(c_out, c_in/groups)`` centre as one matrix (the EOI paper's rule).
        nm: ``(N, M)``: at most ``N`` nonzeros in every ``M`` consecutive inputs of each output
            row (Linear), or input channels at each tap of each output channel (convs);
            docs/nm.md §7. The input size (``in``, ``c_in/groups``) must be a multiple of ``M``
            and ``density`` at most the reachable one (``N/M`` when ``N`` divides ``M``; a
            conv's centre density is capped at its reachable one, extra positions fill the
            rest under the cap).

    Returns:
        The bool mask, same shape and device as ``tensor``.

    Raises:
        ValueError: density outside (0, 1] or NaN, 1-D or >5-D tensors, even kernel sizes, an
            unknown backend, groups < 1 or not dividing ``c_out``, groups > 1 for a 2-D weight;
            with ``nm``: a bad ``(N, M)``, an input size not a multiple of ``M``, a density (or
            numeric ``center_density``) above the reachable one.
        TypeError: non-tensor or non-floating tensor, non-integer groups, ``nm`` not a pair of
            integers.
        RuntimeError: a backend named that cannot run here (``"compiled"`` without numba).

    Example:
        >>> w = torch.empty(256, 128)
        >>> mask = eoi_(w, 0.1, generator=torch.Generator().manual_seed(0))
        >>> mask = eoi_(torch.empty(64, 128), 0.5, nm=(2, 4))  # 2:4 along the inputs
    """
    if not _check_weight(tensor, "eoi_"):
        return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
    groups = _check_groups(tensor, groups, "eoi_")
    density = check_density(density)
    gain = check_gain(gain)
    if nm is not None:
        nm = _check_nm_weight(tensor, nm, density, center_density, groups, "eoi_")
    return _fill_group([tensor], density, gain, check_generator(generator), center_density,
                       backend, groups, nm)[0]


def eoi_group_(
    tensors: Sequence[torch.Tensor],
    density: float,
    *,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    center_density: CenterDensity = None,
    backend: str = "auto",
    groups: int = 1,
    nm: tuple[int, int] | None = None,
) -> list[torch.Tensor]:
    """Fill same-shape weights in place with EOI in one batched generation; return their masks.

    A 1000-layer network costs one call, not 1000. ``eoi_group_([w])`` equals ``eoi_(w)`` for the
    same generator state. Arguments as :func:`eoi_`.

    Raises:
        ValueError: tensors differing in shape, dtype or device, or an empty list.
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("eoi_group_ needs at least one tensor")
    first = tensors[0]
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"eoi_group_ expects tensors, got {type(t).__name__}")
        if (t.shape, t.dtype, t.device) != (first.shape, first.dtype, first.device):
            raise ValueError(
                "eoi_group_ needs tensors of one shape, dtype and device; got "
                f"{tuple(first.shape)}/{first.dtype}/{first.device} and "
                f"{tuple(t.shape)}/{t.dtype}/{t.device}"
            )
    if not _check_weight(first, "eoi_group_"):
        return [torch.zeros(t.shape, dtype=torch.bool, device=t.device) for t in tensors]
    groups = _check_groups(first, groups, "eoi_group_")
    density = check_density(density)
    gain = check_gain(gain)
    if nm is not None:
        nm = _check_nm_weight(first, nm, density, center_density, groups, "eoi_group_")
    return _fill_group(tensors, density, gain, check_generator(generator), center_density,
                       backend, groups, nm)


def _check_conv_rule(conv: object, fn: str) -> str:
    if not isinstance(conv, str) or conv not in CONV_RULES:
        raise ValueError(f"{fn}: conv={conv!r} must be one of: "
                         f"{', '.join(map(repr, CONV_RULES))}")
    return conv


def _haar(batch: int, n: int, dtype: torch.dtype,
          generator: torch.Generator | None) -> torch.Tensor:
    """``(batch, n, n)`` Haar-distributed orthogonal matrices: QR of a Gaussian, each column of
    ``Q`` times the sign of ``R``'s diagonal entry (Mezzadri's correction, as torch's
    ``orthogonal_``)."""
    q, r = torch.linalg.qr(torch.randn(batch, n, n, generator=generator, dtype=dtype))
    sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(dtype)  # (b, n)
    return q * sign.unsqueeze(-2)


def _symmetric_projection(batch: int, n: int, dtype: torch.dtype,
                          generator: torch.Generator | None) -> torch.Tensor:
    """``(batch, n, n)`` orthogonal projections ``P = C C^T``: ``C`` a Haar matrix whose columns
    are each kept with probability 1/2 (a uniformly random subspace of random dimension)."""
    q = _haar(batch, n, dtype, generator)
    keep = torch.randn(batch, n, generator=generator, dtype=dtype) > 0  # (b, n)
    c = q * keep.unsqueeze(-2).to(dtype)
    return c @ c.transpose(-1, -2)


def _conv_orthogonal_blocks(groups: int, rows: int, cols: int, kernel: tuple[int, ...],
                            generator: torch.Generator | None) -> torch.Tensor:
    """``groups`` independent orthogonal kernels ``(groups, rows, cols, *kernel)`` in float64.

    Xiao et al. (2018), Algorithm 1, as the official EOI code builds it. With ``n = max(rows,
    cols)`` a kernel's symbol (the matrix polynomial ``A(z) = sum_t A_t z^t`` in one variable
    ``z_a`` per spatial axis) is built as a product of factors ``P + (I - P) z_a`` with ``P`` an
    orthogonal projection: on the unit circle each factor is unitary (``P`` and ``I - P`` are
    complementary projections), and each raises the kernel size along axis ``a`` by one. So
    ``A(z)`` is unitary at every frequency: ``A`` is an orthogonal ``n -> n`` circular conv.
    The weight's taps are ``(H A_t)^T`` (``rows >= cols``) or ``H A_t``, ``H`` the first
    ``min(rows, cols)`` rows of a Haar ``n x n`` matrix: the symbol then has orthonormal columns
    (rows), so every singular value of the circular convolution is 1.

    The official code draws one projection per axis (``p``, ``q``) and reuses them in all
    ``k - 1`` steps; Algorithm 1 as published (and TensorFlow's ``ConvolutionOrthogonal2D``)
    draws a fresh pair per step. We follow the official code; both are exact isometries.
    Draw order, as the official code: per axis (of size > 1) the projection's Haar matrix then
    its column coin flips, then ``H``; the steps alternate the axes (axis 0, axis 1, ...).
    """
    dtype = torch.float64
    n, m = max(rows, cols), min(rows, cols)
    spatial = len(kernel)
    # an axis of size 1 takes no step: its projection is not drawn
    projections = [_symmetric_projection(groups, n, dtype, generator) if k > 1 else None
                   for k in kernel]
    # H: m orthonormal rows, Haar distributed (QR of an (n, m) Gaussian: the same law as the
    # first m rows of a Haar n x n matrix, which the official code takes, at O(n m^2))
    q, r = torch.linalg.qr(torch.randn(groups, n, m, generator=generator, dtype=dtype))
    sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(dtype)  # (g, m)
    h = (q * sign.unsqueeze(-2)).transpose(-1, -2)  # (g, m, n)
    view = (groups,) + (1,) * spatial + (n, n)
    a = torch.eye(n, dtype=dtype).expand(view).clone()  # (g, *taps, n, n), one tap: I
    for step in range(max(kernel, default=1) - 1):
        for axis, (k, p) in enumerate(zip(kernel, projections, strict=True)):
            if step >= k - 1:
                continue
            dim = 1 + axis
            zero_shape = list(a.shape)
            zero_shape[dim] = 1
            zero = a.new_zeros(zero_shape)
            lo = torch.cat([a, zero], dim)  # A_t at t
            hi = torch.cat([zero, a], dim)  # A_{t - e_axis} at t
            a = hi + (lo - hi) @ p.reshape(view)  # A_t P + A_{t-e} (I - P)
    w = h.reshape(groups, *(1,) * spatial, m, n) @ a  # (g, *k, m, n): H A_t
    if rows >= cols:
        w = w.transpose(-1, -2)  # (g, *k, n, m): (H A_t)^T
    return w.permute(0, spatial + 1, spatial + 2, *range(1, spatial + 1))  # (g, rows, cols, *k)


@torch.no_grad()
def conv_orthogonal_(
    tensor: torch.Tensor,
    gain: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    groups: int = 1,
) -> torch.Tensor:
    """Fill a conv weight with a dense orthogonal kernel whose every tap is nonzero.

    `Dynamical Isometry and a Mean Field Theory of CNNs: How to Train 10,000-Layer Vanilla
    Convolutional Neural Networks` - Xiao et al. (2018), arXiv 1806.05393, Algorithm 1, built as
    the EOI paper's official code does (``conv_orthogonal``; its one deviation from the published
    algorithm, one projection per axis reused at every step, is kept; docs/protocol.md). With
    circular padding ``(k - 1) / 2`` and stride 1 the convolution is an exact isometry: every
    singular value equals ``gain`` (an orthogonal ``c_out x c_in`` symbol at every frequency;
    orthonormal columns when ``c_out >= c_in``, rows otherwise). Kernels need not be square, and
    1-D and 3-D convs get one projection per axis. A tap can be zero only for very few channels
    (a projection equal to 0 or I, probability ``2^(1 - n)`` per axis for ``n = max(c_out,
    c_in)``); a 1x1 block (depthwise with ``groups``) is a single ``+-gain`` tap at a corner or
    the origin of the kernel, a circular shift.

    Args:
        tensor: conv weight ``(c_out, c_in/groups, *kernel)``, 1-3 odd kernel dims, any device.
        gain: every singular value of the circular convolution.
        generator: CPU generator for every draw (computed in float64, then cast).
        groups: the conv's groups: an independent orthogonal kernel per group's block
            ``(c_out/groups, c_in/groups)``; 1 treats the stored weight as one kernel (the
            official code's rule for grouped convs).

    Returns:
        ``tensor``.

    Raises:
        ValueError: a 2-D or >5-D weight, even kernel sizes, groups < 1 or not dividing c_out.
        TypeError: non-tensor or non-floating tensor, non-integer groups.

    Example:
        >>> w = torch.empty(64, 32, 3, 3)
        >>> conv_orthogonal_(w, generator=torch.Generator().manual_seed(0))
    """
    if isinstance(tensor, torch.Tensor) and tensor.dim() == 2:
        raise ValueError(f"conv_orthogonal_ needs a conv weight (c_out, c_in/groups, *kernel); "
                         f"got the 2-D shape {tuple(tensor.shape)} (use orthogonal_)")
    if not _check_weight(tensor, "conv_orthogonal_", "a same-size circular conv pads "
                         "(k - 1) / 2 on each side, the setting in which it is an isometry"):
        return tensor
    groups = _check_groups(tensor, groups, "conv_orthogonal_")
    gain = check_gain(gain)
    generator = check_generator(generator)
    c_out, c_in = tensor.shape[0], tensor.shape[1]
    kernel = tuple(tensor.shape[2:])
    blocks = _conv_orthogonal_blocks(groups, c_out // groups, c_in, kernel, generator)
    tensor.copy_((gain * blocks).reshape(tensor.shape))  # blocks stacked along c_out
    return tensor


@torch.no_grad()
def orthogonal_(
    tensor: torch.Tensor,
    gain: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    conv: ConvRule = "delta",
    groups: int = 1,
) -> torch.Tensor:
    """Fill ``tensor`` with a dense orthogonal matrix, or a dense orthogonal conv kernel.

    2-D: ``torch.nn.init.orthogonal_`` (QR of a Gaussian matrix). Conv ``(c_out, c_in, *kernel)``
    by the rule ``conv`` (:data:`ConvRule`): ``"delta"`` (default) zeros except the centre tap,
    which holds that orthogonal ``c_out x c_in`` matrix (Xiao et al. (2018), arXiv 1806.05393,
    Algorithm 2); ``"conv-orthogonal"`` :func:`conv_orthogonal_` (Algorithm 1, every tap nonzero,
    the official EOI code's dense conv init); ``"flat"`` an orthogonal matrix of the flattened
    ``(c_out, c_in * K)`` shape. With ``groups=G`` each group's block ``(c_out/G, c_in/G, ...)``
    gets its own. Draws are made on the CPU from ``generator``.

    Raises:
        ValueError: as :func:`eoi_`, and an unknown ``conv`` rule (listing the valid ones).

    Example:
        >>> orthogonal_(torch.empty(64, 32, 3, 3), generator=torch.Generator().manual_seed(0))
    """
    if not _check_weight(tensor, "orthogonal_"):
        return tensor
    conv = _check_conv_rule(conv, "orthogonal_")
    groups = _check_groups(tensor, groups, "orthogonal_")
    gain = check_gain(gain)
    generator = check_generator(generator)
    if tensor.dim() > 2 and conv == "conv-orthogonal":
        return conv_orthogonal_(tensor, gain, generator=generator, groups=groups)
    rows, c_in = tensor.shape[0] // groups, tensor.shape[1]
    cols = c_in if conv == "delta" or tensor.dim() == 2 else tensor[0].numel()
    blocks = []
    for _ in range(groups):  # one orthogonal matrix per group, in group order
        matrix = torch.empty(rows, cols, dtype=_compute_dtype(tensor.dtype))
        torch.nn.init.orthogonal_(matrix, gain=gain, generator=generator)
        blocks.append(matrix)
    matrix = torch.cat(blocks) if groups > 1 else blocks[0]  # (c_out, cols)
    if tensor.dim() == 2 or conv == "flat":
        return tensor.copy_(matrix.reshape(tensor.shape))
    centre = tuple(k // 2 for k in tensor.shape[2:])
    tensor.zero_()
    tensor[(slice(None), slice(None), *centre)] = matrix.to(tensor.device)
    return tensor
