"""Saliency masks: score every prunable weight (SNIP, GraSP, SynFlow), keep a global top-k.

All three read the model through ``torch.func.functional_call`` with substitute weight tensors, so
the model's parameters are never written; train/eval flags and buffers (batch-norm statistics)
are restored afterwards, and ``.grad`` fields are left alone (``torch.autograd.grad``).

Global selection keeps exactly ``k = keep_count(density, N)`` weights over all layers. Ties at the
threshold score are broken by position: layers in ``layers`` order, row-major inside a layer, the
earliest position kept first.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .._checks import check_positive_int, keep_count
from .._layers import PrunableLayer
from .registry import register_mask_method

__all__ = [
    "grasp_scores",
    "keep_top",
    "snip_scores",
    "synflow_scores",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- shared machinery
@contextmanager
def _model_preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag and every buffer's value on exit."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(buf, buf.detach().clone()) for buf in model.buffers()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)


def _take_batches(data: Iterable | None, count: int, method: str, device: torch.device
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if data is None:
        raise ValueError(f"mask method {method!r} needs data: pass data= an iterable of "
                         f"(inputs, targets) batches, such as a DataLoader")
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(f"data must be an iterable of (inputs, targets) batches, got "
                        f"{type(data).__name__}") from None
    batches = list(itertools.islice(iterator, count))
    if len(batches) < count:
        raise ValueError(f"mask method {method!r} was asked for batches={count} but data yielded "
                         f"only {len(batches)}")
    out = []
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2 or \
                not isinstance(batch[0], torch.Tensor):
            raise TypeError(f"each batch of data must be an (inputs, targets) pair with tensor "
                            f"inputs, got {type(batch).__name__}; wrap a single batch as "
                            f"[(x, y)]")
        x, y = batch
        out.append((x.to(device), y.to(device) if isinstance(y, torch.Tensor) else y))
    return out


def _leaf_weights(layers: Sequence[PrunableLayer]) -> dict[str, torch.Tensor]:
    # detach() shares storage but is a new leaf: gradients flow to it, never to the Parameter
    return {layer.name: layer.weight.detach().requires_grad_() for layer in layers}


def _grads(output: torch.Tensor, weights: dict[str, torch.Tensor], create_graph: bool = False
           ) -> list[torch.Tensor]:
    """d output / d weights; a weight the output does not use gets a zero gradient."""
    grads = torch.autograd.grad(output, list(weights.values()), create_graph=create_graph,
                                allow_unused=True)
    return [torch.zeros_like(w) if g is None else g
            for g, w in zip(grads, weights.values(), strict=True)]


def _check_finite(scores: Sequence[torch.Tensor], layers: Sequence[PrunableLayer], method: str,
                  hint: str = "") -> None:
    bad = [layer.name for s, layer in zip(scores, layers, strict=True)
           if not bool(torch.isfinite(s).all())]
    if bad:
        raise ValueError(f"{method} scores are not finite (inf/NaN) in layer(s) "
                         f"{', '.join(bad)}{hint}")


def keep_top(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Keep the ``k`` highest scores over all tensors together; return bool masks.

    Ties at the threshold go to the earliest positions (tensor order, then row-major), so
    exactly ``k`` entries are kept. ``-inf`` scores are legal (they are kept last).

    Example:
        >>> keep_top([torch.tensor([1.0, 3.0]), torch.tensor([3.0, 2.0])], 2)
        [tensor([False,  True]), tensor([ True, False])]
    """
    if not scores:
        raise ValueError("keep_top needs at least one score tensor")
    device = scores[0].device
    flat = torch.cat([s.reshape(-1).to(device) for s in scores])                 # (N,)
    n = flat.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must be in [0, {n}]")
    if k == 0 or k == n:
        keep = torch.full((n,), k == n, dtype=torch.bool, device=device)
    else:
        threshold = torch.kthvalue(flat, n - k + 1).values                     # k-th largest
        above = flat > threshold
        tied = flat == threshold
        ties_kept = k - int(above.sum())                      # tied entries still to keep
        keep = above | (tied & (tied.cumsum(0) <= ties_kept))
    parts = keep.split([s.numel() for s in scores])
    return [part.reshape(s.shape).to(s.device, copy=True)
            for part, s in zip(parts, scores, strict=True)]


def _masks_from_scores(layers: Sequence[PrunableLayer], scores: Sequence[torch.Tensor], k: int
                       ) -> dict[str, torch.Tensor]:
    return _finish(layers, keep_top(scores, k))


def _finish(layers: Sequence[PrunableLayer], kept: Sequence[torch.Tensor]
            ) -> dict[str, torch.Tensor]:
    return {layer.name: mask.to(layer.weight.device)
            for layer, mask in zip(layers, kept, strict=True)}


def _device(layers: Sequence[PrunableLayer]) -> torch.device:
    return layers[0].weight.device


# ----------------------------------------------------------------------------- SNIP
def snip_scores(model: nn.Module, layers: Sequence[PrunableLayer], data: Iterable, *,
                loss_fn: LossFn | None = None, batches: int = 1) -> dict[str, torch.Tensor]:
    """Return SNIP connection sensitivities ``|g * w|`` for each prunable weight.

    `SNIP: Single-shot Network Pruning based on Connection Sensitivity` - Lee et al. (2019),
    arXiv 1810.02340. With a mask ``c`` multiplying ``w``, ``dL/dc = g * w`` at ``c = 1``, where
    ``g = dL/dw`` is the gradient of the mean loss, averaged over ``batches`` batches.

    Example:
        >>> scores = snip_scores(model, prunable_layers(model), [(x, y)])
    """
    batches = check_positive_int(batches, "batches")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    layers = list(layers)
    with _model_preserved(model), torch.enable_grad():
        weights = _leaf_weights(layers)
        total = [torch.zeros_like(w) for w in weights.values()]
        for x, y in _take_batches(data, batches, "snip", _device(layers)):
            loss = loss_fn(functional_call(model, weights, (x,)), y)
            for acc, g in zip(total, _grads(loss, weights), strict=True):
                acc += g
    return {layer.name: (g / batches * w).abs().detach()
            for layer, g, w in zip(layers, total, weights.values(), strict=True)}


@register_mask_method("snip", data_driven=True)
def snip(model: nn.Module, layers: list[PrunableLayer], density: float, *, data=None,
         loss_fn: LossFn | None = None, batches: int = 1) -> dict[str, torch.Tensor]:
    """Keep the ``keep_count(density, N)`` weights with the highest SNIP scores over all layers.

    Option ``batches``: how many batches of ``data`` to average the gradient over (default 1).
    """
    scores = list(snip_scores(model, layers, data, loss_fn=loss_fn, batches=batches).values())
    _check_finite(scores, layers, "snip")
    return _masks_from_scores(layers, scores, keep_count(density, _numel(layers)))


# ----------------------------------------------------------------------------- GraSP
def grasp_scores(model: nn.Module, layers: Sequence[PrunableLayer], data: Iterable, *,
                 loss_fn: LossFn | None = None, batches: int = 1, temperature: float = 1.0
                 ) -> dict[str, torch.Tensor]:
    """Return GraSP scores ``S(-w) = -w * (H g)`` for each prunable weight.

    `Picking Winning Tickets Before Training by Preserving Gradient Flow` - Wang et al. (2020),
    arXiv 2002.07376. ``g`` is the gradient of the loss on the prunable weights and ``H`` the
    Hessian over them; ``H g = d(g(w) . stopgrad(g)) / dw`` by double backward. Removing weight
    ``w_i`` changes the gradient norm ``g^T g`` by about ``2 S_i``: the paper removes the
    weights with the *highest* scores (they reduce gradient flow least) and keeps the lowest.
    ``g`` and ``H g`` are averaged over ``batches`` batches; logits are divided by
    ``temperature`` before the loss (the authors' code uses 200; the paper states none).

    Example:
        >>> scores = grasp_scores(model, prunable_layers(model), [(x, y)])
    """
    batches = check_positive_int(batches, "batches")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
            not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    layers = list(layers)
    with _model_preserved(model), torch.enable_grad():
        weights = _leaf_weights(layers)
        pairs = _take_batches(data, batches, "grasp", _device(layers))

        def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(functional_call(model, weights, (x,)) / temperature, y)

        g_fixed = [torch.zeros_like(w) for w in weights.values()]
        for x, y in pairs:
            for acc, g in zip(g_fixed, _grads(loss_of(x, y), weights), strict=True):
                acc += g / batches
        hg = [torch.zeros_like(w) for w in weights.values()]
        for x, y in pairs:
            grads = _grads(loss_of(x, y), weights, create_graph=True)
            z = sum((g * gf).sum() for g, gf in zip(grads, g_fixed, strict=True))    # g . g_fixed
            if isinstance(z, torch.Tensor) and z.requires_grad:
                for acc, h in zip(hg, _grads(z, weights), strict=True):
                    acc += h / batches
    return {layer.name: (-w * h).detach()
            for layer, w, h in zip(layers, weights.values(), hg, strict=True)}


@register_mask_method("grasp", data_driven=True)
def grasp(model: nn.Module, layers: list[PrunableLayer], density: float, *, data=None,
          loss_fn: LossFn | None = None, batches: int = 1,
          temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Keep the ``keep_count(density, N)`` weights with the *lowest* GraSP scores over all layers.

    Options: ``batches`` (default 1), ``temperature`` dividing the logits (default 1.0).
    """
    scores = list(grasp_scores(model, layers, data, loss_fn=loss_fn, batches=batches,
                               temperature=temperature).values())
    _check_finite(scores, layers, "grasp")
    # keep the lowest scores = the highest of -score; negation keeps ties tied
    return _masks_from_scores(layers, [-s for s in scores], keep_count(density, _numel(layers)))


# ----------------------------------------------------------------------------- SynFlow
def _input_shape(input_shape: object, data: Iterable | None, device: torch.device
                 ) -> tuple[int, ...]:
    if input_shape is None:
        if data is None:
            raise ValueError("mask method 'synflow' needs the shape of one input example: pass "
                             "input_shape=(channels, height, width) (or (features,)), or data "
                             "to read it from")
        x, _ = _take_batches(data, 1, "synflow", device)[0]
        if x.dim() < 2:
            raise ValueError(f"cannot infer input_shape from a data batch of shape "
                             f"{tuple(x.shape)}: it needs a leading batch dimension")
        return tuple(x.shape[1:])
    if isinstance(input_shape, numbers.Integral) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list, torch.Size)) or not input_shape or any(
            isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
            for s in input_shape):
        raise ValueError(f"input_shape={input_shape!r} must be a non-empty tuple of positive "
                         f"ints (one example, no batch dimension)")
    return tuple(int(s) for s in input_shape)


class _SynFlowNet:
    """The model with every float parameter and buffer replaced by its absolute value."""

    def __init__(self, model: nn.Module, layers: Sequence[PrunableLayer],
                 input_shape: tuple[int, ...], dtype: torch.dtype | None) -> None:
        self.model = model
        names = {layer.name for layer in layers}
        self.constants = {}
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
            if name not in names and tensor.is_floating_point():
                self.constants[name] = tensor.detach().abs().to(dtype or tensor.dtype)
        self.weights = {layer.name: layer.weight.detach().abs().to(dtype or layer.weight.dtype)
                        for layer in layers}
        self.x = torch.ones((1, *input_shape), device=_device(layers),
                            dtype=dtype or layers[0].weight.dtype)          # (1, *input_shape)

    def scores(self, masks: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """``|dR/dw * w|`` with ``w = |theta| * mask`` and ``R = sum(model(ones))``."""
        weights = {name: (w if m is None else w * m).requires_grad_()
                   for (name, w), m in zip(self.weights.items(),
                                           masks or [None] * len(self.weights), strict=True)}
        out = functional_call(self.model, {**self.constants, **weights}, (self.x,))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"synflow needs a model that returns a tensor, got "
                            f"{type(out).__name__}")
        grads = _grads(out.sum(), weights)
        return [(g * w).abs().detach() for g, w in zip(grads, weights.values(), strict=True)]


def synflow_scores(model: nn.Module, layers: Sequence[PrunableLayer], *,
                   input_shape: Sequence[int] | int | None = None, data: Iterable | None = None,
                   masks: Mapping[str, torch.Tensor] | None = None,
                   double_precision: bool = True) -> dict[str, torch.Tensor]:
    """Return one round of SynFlow scores ``|dR/dw * w|`` (data-free).

    `Pruning neural networks without any data by iteratively conserving synaptic flow` - Tanaka
    et al. (2020), arXiv 2006.05467. Every float parameter and buffer ``theta`` is replaced by
    ``|theta|`` (prunable weights also multiplied by ``masks[name]``), the model runs in eval
    mode on an all-ones input of shape ``(1, *input_shape)``, and ``R`` is the sum of its
    outputs.

    Example:
        >>> scores = synflow_scores(model, prunable_layers(model), input_shape=(784,))
    """
    layers = list(layers)
    shape = _input_shape(input_shape, data, _device(layers))
    if masks is not None:
        missing = [layer.name for layer in layers if layer.name not in masks]
        if missing:
            raise ValueError(f"masks has no entry for layer(s) {', '.join(missing)}")
        for layer in layers:
            if masks[layer.name].shape != layer.weight.shape:
                raise ValueError(f"mask for {layer.name!r} has shape "
                                 f"{tuple(masks[layer.name].shape)} but the weight has shape "
                                 f"{tuple(layer.weight.shape)}")
        masks = [masks[layer.name].to(layer.weight.device) for layer in layers]
    with _model_preserved(model), torch.enable_grad():
        model.eval()
        net = _SynFlowNet(model, layers, shape, torch.float64 if double_precision else None)
        scores = net.scores(masks)
    return {layer.name: s for layer, s in zip(layers, scores, strict=True)}


@register_mask_method("synflow", data_driven=True)
def synflow(model: nn.Module, layers: list[PrunableLayer], density: float, *, data=None,
            loss_fn=None, rounds: int = 100,
            input_shape: Sequence[int] | int | None = None, double_precision: bool = True
            ) -> dict[str, torch.Tensor]:
    """Prune iteratively by SynFlow scores with an exponential schedule.

    After round ``r`` of ``rounds`` the kept count is ``keep_count(density ** (r / rounds), N)``
    (global top-k among the still-kept weights; pruned weights score ``-inf``). Options:
    ``rounds`` (default 100), ``input_shape`` (one example; else read from ``data``),
    ``double_precision`` (default True: float64 scores, which avoid overflow in deep networks).
    """
    rounds = check_positive_int(rounds, "rounds")
    if not isinstance(double_precision, bool):
        raise TypeError(f"double_precision must be a bool, got {double_precision!r}")
    shape = _input_shape(input_shape, data, _device(layers))
    total = _numel(layers)
    if density == 1.0:
        return {layer.name: torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers}
    hint = "" if double_precision else "; try double_precision=True"
    with _model_preserved(model), torch.enable_grad():
        model.eval()
        net = _SynFlowNet(model, layers, shape, torch.float64 if double_precision else None)
        kept = [torch.ones_like(w, dtype=torch.bool) for w in net.weights.values()]
        for r in range(1, rounds + 1):
            scores = net.scores(kept)
            _check_finite(scores, layers, "synflow", hint)
            scores = [s.masked_fill(~m, -math.inf) for s, m in zip(scores, kept, strict=True)]
            kept = keep_top(scores, keep_count(density ** (r / rounds), total))
    return _finish(layers, kept)


def _numel(layers: Sequence[PrunableLayer]) -> int:
    return sum(layer.weight.numel() for layer in layers)
