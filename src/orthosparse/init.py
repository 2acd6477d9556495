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

Grouped and depthwise convolutions treat their ``(c_out, c_in / groups)`` centre matrix like any
other, as the EOI paper does for EfficientNet.
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
from .eoi.problem import make_problem

__all__ = ["CenterDensity", "center_density_for", "eoi_", "eoi_group_", "orthogonal_"]

CenterDensity = float | Literal["same", "more"] | None
"""Policy for the density ``d_H`` of a conv's centre matrix: ``None``/``"same"``: ``d_H = d``;
``"more"``: the EOI paper's "more nonzeros" rule ``min(d * K, 1, sqrt(d))`` (``K`` kernel taps);
a number: that density (at most ``d * K``, so the mask can still have density ``d``)."""


def _check_weight(tensor: torch.Tensor, fn: str) -> bool:
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
            f"{fn} needs odd kernel sizes (the delta construction puts the matrix at the centre "
            f"tap); got kernel {tuple(kernel)} in weight of shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0:
        warnings.warn(f"{fn}: initializing a zero-element tensor is a no-op", stacklevel=3)
        return False
    return True


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
) -> list[torch.Tensor]:
    """EOI for same-shape weights in one batched generation (validated by the callers).

    Every count computed here is ``keep_count(density, numel)`` (halves round up), the rule the
    masks use.
    """
    first = tensors[0]
    c_out, c_in = first.shape[0], first.shape[1]
    kernel = tuple(first.shape[2:])
    taps = math.prod(kernel)
    d_h = center_density_for(density, taps, center_density) if kernel else density
    if kernel:
        # A centre below its 1/max(c_out, c_in) floor uses the floor; the extra positions still
        # bring the layer to ``density``, so only a layer that cannot reach it is warned about.
        floor = 1.0 / max(c_out, c_in)
        d_h = max(d_h, floor)
        if floor * c_out * c_in > keep_count(density, first.numel()):
            warnings.warn(
                f"density={density:.6g} is below the sparsest exact delta-orthogonal kernel of "
                f"shape {tuple(first.shape)}; returning density "
                f"{min(c_out, c_in) / first.numel():.6g} instead",
                stacklevel=4,
            )
    problem = make_problem(c_out, c_in, d_h, gain=gain, dtype=_compute_dtype(first.dtype),
                           device=first.device, batch=len(tensors), stacklevel=4)
    weights, masks = generate(problem, generator, select(backend, problem.device)[1])
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
        if extra > 0:  # uniform among the remaining zero positions of the whole kernel
            if rng is None:
                rng = _free_stream(generator)
            _add_free(mask.view(-1), extra, rng, free=mask.numel() - nnz)
        out.append(mask.to(tensor.device))
    return out


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
) -> torch.Tensor:
    """Fill ``tensor`` in place with an exact sparse orthogonal (EOI) weight; return its mask.

    `Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
    Initialization` - Nowak et al. (2024), arXiv 2406.01755.

    A 2-D weight ``(out, in)`` gets ``gain * A`` with ``A`` exactly orthogonal on its smaller side
    (:func:`orthosparse.eoi.sparse_orthogonal`). A conv weight ``(c_out, c_in/groups, *kernel)``
    (odd kernel) gets the sparse delta-orthogonal kernel: ``gain * H`` at the centre tap, zeros
    elsewhere; the mask adds zero-valued trainable positions until it holds
    ``keep_count(density, numel)`` weights (``round(density * numel)``, halves up).

    Args:
        tensor: 2-D to 5-D floating weight, any device; half types are generated in float32.
        density: target mask density in (0, 1].
        gain: scale of the orthogonal matrix.
        generator: CPU generator for every random draw.
        center_density: conv centre-matrix policy (:data:`CenterDensity`).
        backend: EOI backend, ``"auto"`` or a name from :func:`orthosparse.eoi.list_backends`
            (same masks from every one).

    Returns:
        The bool mask, same shape and device as ``tensor``.

    Raises:
        ValueError: density outside (0, 1] or NaN, 1-D or >5-D tensors, even kernel sizes, an
            unknown backend.
        TypeError: non-tensor or non-floating tensor.
        RuntimeError: a backend named that cannot run here (``"compiled"`` without numba).

    Example:
        >>> w = torch.empty(256, 128)
        >>> mask = eoi_(w, 0.1, generator=torch.Generator().manual_seed(0))
    """
    if not _check_weight(tensor, "eoi_"):
        return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
    density = check_density(density)
    gain = check_gain(gain)
    return _fill_group([tensor], density, gain, check_generator(generator), center_density,
                       backend)[0]


def eoi_group_(
    tensors: Sequence[torch.Tensor],
    density: float,
    *,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    center_density: CenterDensity = None,
    backend: str = "auto",
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
    density = check_density(density)
    gain = check_gain(gain)
    return _fill_group(tensors, density, gain, check_generator(generator), center_density,
                       backend)


@torch.no_grad()
def orthogonal_(
    tensor: torch.Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill ``tensor`` with a dense orthogonal matrix, or a dense delta-orthogonal conv kernel.

    2-D: ``torch.nn.init.orthogonal_`` (QR of a Gaussian matrix). Conv ``(c_out, c_in, *kernel)``:
    zeros except the centre tap, which holds that orthogonal ``c_out x c_in`` matrix (Xiao et al.
    (2018), arXiv 1806.05393). Draws are made on the CPU from ``generator``.

    Example:
        >>> orthogonal_(torch.empty(64, 32, 3, 3), generator=torch.Generator().manual_seed(0))
    """
    if not _check_weight(tensor, "orthogonal_"):
        return tensor
    gain = check_gain(gain)
    generator = check_generator(generator)
    matrix = torch.empty(tensor.shape[0], tensor.shape[1], dtype=_compute_dtype(tensor.dtype))
    torch.nn.init.orthogonal_(matrix, gain=gain, generator=generator)
    if tensor.dim() == 2:
        return tensor.copy_(matrix)
    centre = tuple(k // 2 for k in tensor.shape[2:])
    tensor.zero_()
    tensor[(slice(None), slice(None), *centre)] = matrix.to(tensor.device)
    return tensor
