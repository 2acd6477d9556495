"""Approximate isometry (AI): make masked layers nearly orthogonal by gradient descent.

`A Signal Propagation Perspective for Pruning Neural Networks at Initialization` - Lee et al.
(2020), arXiv 1906.06307, Section 5. Given fixed masks ``M_l`` it minimizes, over all masked layers
jointly, with plain SGD (the paper: lr 0.1, 10,000 iterations; 1,000 for the 1000-layer runs),

    L(W) = sum_l || V_l V_l^T - gain^2 I ||_F,       V_l = M_l * W_l  flattened to (c_out, fan_in)

with the Gram matrix taken on the smaller side (``V^T V`` for tall layers), starting from masked
orthogonal weights (for convs: a flattened orthogonal matrix by default, or the delta or
``conv_orthogonal`` kernel, option ``conv``). Zeros of the mask stay exactly zero: the update
is multiplied by the mask.

Derivation of the gradient used below (wide ``V``, ``E = V V^T - gain^2 I`` symmetric):
``dL = <E, dV V^T + V dV^T> / ||E||_F = <2 E V / ||E||_F, dV>``, so
``grad_W L = M * 2 E V / ||E||_F`` (zero when ``E = 0``). A tall layer is handled as its
transpose. The loss is a sum of per-layer terms, so "jointly" equals per-layer SGD with the same
learning rate; same-shape layers are stacked and updated with one ``torch.bmm`` per step.

The norm is not squared, so the loss has a kink at 0: the normalized step keeps a length of about
``2 * lr * gain`` near an exact isometry, and plain SGD hovers at a floor instead of reaching
it. Each row the mask leaves empty (column, for tall layers) adds ``gain^4`` to ``L^2`` for good.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_generator
from ..init import orthogonal_

__all__ = ["AIConv", "AIStart", "approximate_isometry_", "isometry_loss"]

AIStart = Literal["orthogonal", "current"]
AIConv = Literal["flat", "delta", "conv-orthogonal"]
"""The orthogonal start of a conv weight: ``"flat"`` an orthogonal matrix of the flattened
``(c_out, c_in * K)`` shape; ``"delta"`` delta-orthogonal (centre tap only); ``"conv-orthogonal"``
:func:`orthosparse.init.conv_orthogonal_` (every tap nonzero; the official EOI code, whose AI
starts from the model's ``conv_orthogonal`` weights, docs/protocol.md)."""
AI_CONV_STARTS: tuple[str, ...] = ("flat", "delta", "conv-orthogonal")


def _check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive real number, got {type(value).__name__}: "
                        f"{value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name}={value} must be a finite number > 0")
    return value


def _flat_wide(tensor: Tensor) -> Tensor:
    """View a (c_out, c_in, *k) weight as its wide 2-D matrix (rows <= cols)."""
    flat = tensor.reshape(tensor.shape[0], -1)  # (c_out, c_in * k...)
    return flat if flat.shape[0] <= flat.shape[1] else flat.T


def isometry_loss(weight: Tensor, gain: float = 1.0) -> float:
    """Return ``||V V^T - gain^2 I||_F`` for ``V`` the flattened weight, Gram on the smaller side.

    Args:
        weight: (c_out, fan_in) or (c_out, c_in, *kernel); masked entries must already be zero.
        gain: target scale of the singular values.

    Example:
        >>> isometry_loss(torch.eye(3))
        0.0
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2:
        raise ValueError(f"weight must have at least 2 dimensions, got shape {tuple(weight.shape)}")
    v = _flat_wide(weight.detach()).double()  # (r, c), r <= c
    eye = torch.eye(v.shape[0], dtype=v.dtype, device=v.device)
    return float(torch.linalg.matrix_norm(v @ v.T - gain**2 * eye))


def _orthogonal_start(weight: Tensor, gain: float, generator: torch.Generator | None) -> Tensor:
    """Dense orthogonal matrix of the flattened weight's shape (QR of a Gaussian, Haar signs)."""
    rows, cols = weight.shape[0], weight[0].numel()
    big, small = max(rows, cols), min(rows, cols)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    g = torch.randn(big, small, generator=generator, dtype=dtype)  # drawn on the CPU
    q, r = torch.linalg.qr(g)  # (big, small) orthonormal columns
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)  # Haar measure
    flat = q if rows > cols else q.T  # (rows, cols)
    return (gain * flat).reshape(weight.shape)


def _check_inputs(weights: Sequence[Tensor], masks: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(weights, Tensor) or isinstance(masks, Tensor):
        raise TypeError("weights and masks must be sequences of tensors (wrap one layer in a list)")
    weights, masks = list(weights), list(masks)
    if len(weights) != len(masks):
        raise ValueError(f"got {len(weights)} weights but {len(masks)} masks; they must pair up")
    bool_masks = []
    for i, (w, m) in enumerate(zip(weights, masks, strict=True)):
        if not isinstance(w, Tensor) or not isinstance(m, Tensor):
            raise TypeError(f"layer {i}: weight and mask must be torch.Tensors, got "
                            f"{type(w).__name__} and {type(m).__name__}")
        if not w.is_floating_point():
            raise TypeError(f"layer {i}: weight dtype {w.dtype} must be floating point")
        if w.dim() < 2 or w.dim() > 5:
            raise ValueError(f"layer {i}: weight must be 2-D (Linear) or 3-5-D (Conv), got shape "
                             f"{tuple(w.shape)}")
        if m.shape != w.shape:
            raise ValueError(f"layer {i}: mask shape {tuple(m.shape)} does not match weight "
                             f"shape {tuple(w.shape)}")
        if m.dtype != torch.bool:
            if m.is_floating_point() or m.is_complex() or not ((m == 0) | (m == 1)).all():
                raise TypeError(f"layer {i}: mask must be a bool tensor (or integer 0/1), got "
                                f"dtype {m.dtype}")
            m = m != 0
        bool_masks.append(m.to(w.device))
    return bool_masks


def approximate_isometry_(
    weights: Sequence[Tensor],
    masks: Sequence[Tensor],
    *,
    gain: float = 1.0,
    iterations: int = 1000,
    lr: float = 0.1,
    start: AIStart = "orthogonal",
    generator: torch.Generator | None = None,
    conv: AIConv = "flat",
) -> list[float]:
    """Fill masked weights in place by SGD on the approximate-isometry loss; return final losses.

    `A Signal Propagation Perspective for Pruning Neural Networks at Initialization` -
    Lee et al. (2020), arXiv 1906.06307:
    ``min_W sum_l ||(M_l * W_l)(M_l * W_l)^T - gain^2 I||_F`` (Gram on the smaller side, convs
    flattened to ``c_out x c_in*k*k``), plain SGD, ``W <- W - lr * M * grad``.

    Same-shape layers are stacked and updated together with ``torch.bmm``; the computation runs
    on the weights' device (GPU when the model is there) in their dtype (float32 for half types).

    Args:
        weights: layer weights, (c_out, fan_in) or (c_out, c_in, *kernel); modified in place.
        masks: bool masks of the same shapes (integer 0/1 accepted); masked entries end exactly 0.
        gain: target singular value (``V V^T = gain^2 I``).
        iterations: SGD steps (paper: 10,000; 1,000 for the 1000-layer networks). 0 only masks.
        lr: SGD learning rate (paper: 0.1).
        start: ``"orthogonal"`` refills every weight with a dense orthogonal matrix of its
            flattened shape (``gain`` scaled, QR of a Gaussian drawn from ``generator``; convs
            by default, ``conv`` below) before masking, as in the paper; ``"current"`` starts
            from the weights as given (masked).
        generator: CPU generator for the orthogonal start.
        conv: the orthogonal start of conv weights (:data:`AIConv`): ``"flat"`` (default, the
            flattened matrix), ``"delta"`` or ``"conv-orthogonal"`` (the official code's);
            Linear weights always start from a QR of the flattened shape. Only with
            ``start="orthogonal"``.

    Returns:
        The loss ``||V V^T - gain^2 I||_F`` of each layer after the last step, in input order.

    Raises:
        TypeError: non-tensor inputs, non-float weights, non-bool masks, bad option types.
        ValueError: length or shape mismatch, unsupported weight rank, non-positive lr or gain,
            negative iterations, unknown ``start`` or ``conv``, ``conv`` other than ``"flat"``
            with ``start="current"``, an even conv kernel with ``"delta"``/``"conv-orthogonal"``.

    Example:
        >>> w, m = torch.empty(64, 64), torch.rand(64, 64) < 0.1
        >>> losses = approximate_isometry_([w], [m], iterations=100)
    """
    gain = _check_positive_float(gain, "gain")
    lr = _check_positive_float(lr, "lr")
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise TypeError(f"iterations must be an int >= 0, got {type(iterations).__name__}: "
                        f"{iterations!r}")
    if iterations < 0:
        raise ValueError(f"iterations={iterations} must be >= 0")
    if start not in ("orthogonal", "current"):
        raise ValueError(f"start={start!r} must be one of: 'orthogonal', 'current'")
    if not isinstance(conv, str) or conv not in AI_CONV_STARTS:
        raise ValueError(f"conv={conv!r} must be one of: {', '.join(map(repr, AI_CONV_STARTS))}")
    if start == "current" and conv != "flat":
        raise ValueError(f"conv={conv!r} chooses the orthogonal start of convs; start='current' "
                         f"keeps the given weights (use start='orthogonal')")
    generator = check_generator(generator)
    weights = list(weights) if not isinstance(weights, Tensor) else weights
    masks = _check_inputs(weights, masks)

    # Group layers whose wide flattened matrices share (shape, dtype, device): one bmm per group.
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(weights):
        flat = w.reshape(w.shape[0], -1)
        key = (min(flat.shape), max(flat.shape), w.dtype, w.device)
        groups.setdefault(key, []).append(i)

    losses = [0.0] * len(weights)
    with torch.no_grad():
        if start == "orthogonal":
            # Drawn in input order so a seed gives the same start however layers are grouped.
            for w in weights:
                if w.dim() > 2 and conv != "flat":
                    orthogonal_(w, gain, generator=generator, conv=conv)
                else:
                    w.copy_(_orthogonal_start(w, gain, generator).to(w.dtype))
        for (rows, _, dtype, device), idx in groups.items():
            work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            v = torch.stack([_flat_wide(weights[i]) for i in idx]).to(work)  # (n, r, c)
            m = torch.stack([_flat_wide(masks[i]) for i in idx]).to(work)  # (n, r, c)
            v.mul_(m)
            eye = torch.eye(rows, dtype=work, device=device).expand(len(idx), rows, rows)
            target = gain**2 * eye  # (n, r, r)
            for _ in range(iterations):
                err = torch.bmm(v, v.transpose(1, 2)) - target  # (n, r, r)
                norm = torch.linalg.matrix_norm(err)  # (n,)
                scale = torch.where(norm > 0, 2.0 * lr / norm, torch.zeros_like(norm))
                step = torch.bmm(err, v)  # (n, r, c)
                v.sub_(step.mul_(m).mul_(scale[:, None, None]))
            err = torch.bmm(v, v.transpose(1, 2)) - target  # (n, r, r)
            final = torch.linalg.matrix_norm(err.double()).tolist()
            for j, i in enumerate(idx):
                w = weights[i]
                flat = v[j] if w.reshape(w.shape[0], -1).shape[0] == rows else v[j].T
                w.copy_(flat.reshape(w.shape).to(w.dtype))
                losses[i] = float(final[j])
    return losses
