"""Saliency masks: score every prunable weight (SNIP, GraSP, SynFlow), keep a global top-k.

All three read the model through ``torch.func.functional_call`` with substitute weight tensors, so
the model's parameters are never written; train/eval flags and buffers (batch-norm statistics)
are restored afterwards, and ``.grad`` fields are left alone (``torch.autograd.grad``). They score
the weights the model has when called (docs/protocol.md names the weights each preset scores).

Defaults follow the paper's official code (Nowak et al. 2024, arXiv 2406.01755;
``sparselearning/snip_and_grasp.py`` and ``sparselearning/synflow.py``; docs/protocol.md lists
each setting next to ours): SNIP takes ``nll_loss`` of the logits on one batch, GraSP divides the
logits by 200, reads every batch of ``data`` and keeps the official end of its score, SynFlow
prunes in 100 exponential rounds in the model's dtype.

Global selection keeps exactly ``k = keep_count(density, N)`` weights over all layers. Ties at the
threshold score are broken by position: layers in ``layers`` order, row-major inside a layer, the
earliest position kept first. (The official code thresholds, so ties there keep or drop every
tied weight; the counts differ by at most one weight for distinct scores.)
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .._checks import check_positive_int, keep_count
from .._layers import PrunableLayer
from .registry import register_mask_method

__all__ = [
    "GRASP_VARIANTS",
    "SNIP_LOSSES",
    "Batches",
    "GraspVariant",
    "SnipLoss",
    "grasp_scores",
    "keep_top",
    "snip_scores",
    "synflow_scores",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = int | Literal["all"]
SnipLoss = Literal["nll-logits", "cross-entropy"]
GraspVariant = Literal["official", "wang"]

#: SNIP's loss by name. ``"nll-logits"``: ``F.nll_loss`` of the model's raw outputs,
#: ``-mean_b out[b, y_b]``, as the official ``SNIP`` does for the MLP and the plain CNNs, whose
#: models end in logits. ``"cross-entropy"``: ``F.cross_entropy``, which is what the official
#: ``nll_loss`` computes for its ResNets and VGGs, whose models end in ``log_softmax``.
SNIP_LOSSES: dict[str, LossFn] = {"nll-logits": F.nll_loss, "cross-entropy": F.cross_entropy}
#: Which end of GraSP's score is kept (see :func:`grasp`).
GRASP_VARIANTS: tuple[str, ...] = ("official", "wang")

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


def _check_batches(batches: object) -> int | None:
    """``batches`` as a count, or ``None`` for ``"all"``."""
    if isinstance(batches, str):
        if batches != "all":
            raise ValueError(f"batches={batches!r} must be a positive integer or 'all'")
        return None
    if isinstance(batches, bool) or not isinstance(batches, numbers.Integral):
        raise TypeError(f"batches must be a positive integer or 'all', got "
                        f"{type(batches).__name__}: {batches!r}")
    if batches < 1:
        raise ValueError(f"batches={batches} must be a positive integer (>= 1) or 'all'")
    return int(batches)


class _Batches:
    """The ``(inputs, targets)`` batches a saliency method reads, checked and moved to ``device``.

    ``count`` batches are taken once and kept, so every pass over them sees the same batches.
    With ``count=None`` (``batches="all"``) a pass reads every batch of ``data``: a re-iterable
    ``data`` (a DataLoader, a list) is read again on each pass, as the official GraSP reads its
    loader twice, so no dataset is held in memory; a one-shot iterator is read once and kept.
    """

    def __init__(self, data: Iterable | None, count: int | None, method: str,
                 device: torch.device) -> None:
        if data is None:
            raise ValueError(f"mask method {method!r} needs data: pass data= an iterable of "
                             f"(inputs, targets) batches, such as a DataLoader")
        try:
            iterator = iter(data)
        except TypeError:
            raise TypeError(f"data must be an iterable of (inputs, targets) batches, got "
                            f"{type(data).__name__}") from None
        self.method, self.device = method, device
        self._data: Iterable | None = None
        self._first: Iterator | None = None
        self._kept: list | None = None
        if count is None and iterator is not data:
            self._data, self._first = data, iterator
        else:
            self._kept = list(iterator if count is None else itertools.islice(iterator, count))
            if count is not None and len(self._kept) < count:
                raise ValueError(f"mask method {method!r} was asked for batches={count} but "
                                 f"data yielded only {len(self._kept)}")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, object]]:
        if self._kept is not None:
            source: Iterable = self._kept
        elif self._first is not None:
            source, self._first = self._first, None
        else:
            source = iter(self._data)
        seen = 0
        for batch in source:
            seen += 1
            yield self._check(batch)
        if seen == 0:
            raise ValueError(f"mask method {self.method!r} got no batches: data is empty")

    def _check(self, batch: object) -> tuple[torch.Tensor, object]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2 or \
                not isinstance(batch[0], torch.Tensor):
            raise TypeError(f"each batch of data must be an (inputs, targets) pair with tensor "
                            f"inputs, got {type(batch).__name__}; wrap a single batch as "
                            f"[(x, y)]")
        x, y = batch
        return x.to(self.device), y.to(self.device) if isinstance(y, torch.Tensor) else y


def _first_layer(model: nn.Module) -> str:
    """What the model's first Linear/Conv layer (registration order) expects, for errors."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return (f"; its first layer {name!r} (Linear) takes {module.in_features} input "
                    f"features: inputs of shape (batch, {module.in_features}), or examples the "
                    f"model flattens to {module.in_features} values")
        if isinstance(module, nn.modules.conv._ConvNd):
            dims = "".join(", " + d for d in "DHW"[3 - len(module.kernel_size):])
            return (f"; its first layer {name!r} ({type(module).__name__}) takes "
                    f"{module.in_channels} input channels: inputs of shape "
                    f"(batch, {module.in_channels}{dims})")
    return ""


def _run(model: nn.Module, weights: Mapping[str, torch.Tensor], x: torch.Tensor, method: str,
         what: str = "a batch of inputs") -> torch.Tensor:
    """``model(x)`` with ``weights``; a shape error names the input's shape and the expected one."""
    try:
        return functional_call(model, dict(weights), (x,))
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:
        raise ValueError(f"{method}: the model failed on {what} of shape {tuple(x.shape)}"
                         f"{_first_layer(model)} ({type(err).__name__}: {err})") from err


def _loss(loss_fn: LossFn, out: torch.Tensor, y: object, method: str) -> torch.Tensor:
    try:
        return loss_fn(out, y)
    except (RuntimeError, ValueError, IndexError) as err:
        shown = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{method}: the loss failed on outputs of shape {tuple(out.shape)} and "
                         f"targets of shape {shown} ({type(err).__name__}: {err})") from err


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
def _snip_loss(loss: object, loss_fn: LossFn | None) -> LossFn:
    if loss_fn is not None:
        if loss is not None:
            raise ValueError(f"pass either loss= (a name: {', '.join(map(repr, SNIP_LOSSES))}) "
                             f"or loss_fn= (a callable), not both (got loss={loss!r})")
        return loss_fn
    name = "nll-logits" if loss is None else loss
    if not isinstance(name, str) or name not in SNIP_LOSSES:
        raise ValueError(f"loss={name!r} is not a SNIP loss; choose one of: "
                         f"{', '.join(map(repr, SNIP_LOSSES))}")
    return SNIP_LOSSES[name]


def snip_scores(model: nn.Module, layers: Sequence[PrunableLayer], data: Iterable, *,
                loss: SnipLoss | None = None, loss_fn: LossFn | None = None,
                batches: Batches = 1) -> dict[str, torch.Tensor]:
    """Return SNIP connection sensitivities ``|g * w|`` for each prunable weight.

    `SNIP: Single-shot Network Pruning based on Connection Sensitivity` - Lee et al. (2019),
    arXiv 1810.02340. With a mask ``c`` multiplying ``w``, ``dL/dc = g * w`` at ``c = 1``, where
    ``g = dL/dw`` is the gradient of the mean loss, averaged over ``batches`` batches (an int, or
    ``"all"`` for every batch of ``data``).

    The loss is ``loss_fn(outputs, targets)`` when given, else the named ``loss`` of
    :data:`SNIP_LOSSES`: ``"nll-logits"`` (default; ``F.nll_loss`` of the raw outputs, as the
    official code computes for the MLP and the plain CNNs) or ``"cross-entropy"`` (what the
    official code computes for its ResNets and VGGs, which end in ``log_softmax``).

    Raises:
        ValueError: an unknown ``loss``, both ``loss`` and ``loss_fn``, a batch the model or the
            loss cannot take (the message shows the batch's shape and the expected one).

    Example:
        >>> scores = snip_scores(model, prunable_layers(model), [(x, y)])
    """
    count = _check_batches(batches)
    loss_fn = _snip_loss(loss, loss_fn)
    layers = list(layers)
    with _model_preserved(model), torch.enable_grad():
        weights = _leaf_weights(layers)
        total = [torch.zeros_like(w) for w in weights.values()]
        n = 0
        for x, y in _Batches(data, count, "snip", _device(layers)):
            out = _run(model, weights, x, "snip")
            for acc, g in zip(total, _grads(_loss(loss_fn, out, y, "snip"), weights),
                              strict=True):
                acc += g
            n += 1
    return {layer.name: (g / n * w).abs().detach()
            for layer, g, w in zip(layers, total, weights.values(), strict=True)}


@register_mask_method("snip", data_driven=True)
def snip(model: nn.Module, layers: list[PrunableLayer], density: float, *, data=None,
         loss_fn: LossFn | None = None, loss: SnipLoss | None = None,
         batches: Batches = 1) -> dict[str, torch.Tensor]:
    """Keep the ``keep_count(density, N)`` weights with the highest SNIP scores over all layers.

    Options: ``loss`` (``"nll-logits"``, the default, or ``"cross-entropy"``; see
    :func:`snip_scores`), ``batches`` (how many batches of ``data`` the gradient averages over:
    an int, default 1 as the official code, or ``"all"``).
    """
    scores = list(snip_scores(model, layers, data, loss=loss, loss_fn=loss_fn,
                              batches=batches).values())
    _check_finite(scores, layers, "snip")
    return _masks_from_scores(layers, scores, keep_count(density, _numel(layers)))


# ----------------------------------------------------------------------------- GraSP
def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}: "
                        f"{temperature!r}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")
    return float(temperature)


def grasp_scores(model: nn.Module, layers: Sequence[PrunableLayer], data: Iterable, *,
                 loss_fn: LossFn | None = None, batches: Batches = "all",
                 temperature: float = 200.0) -> dict[str, torch.Tensor]:
    """Return GraSP scores ``S(-w) = -w * (H g)`` for each prunable weight.

    `Picking Winning Tickets Before Training by Preserving Gradient Flow` - Wang et al. (2020),
    arXiv 2002.07376. ``g`` is the gradient of the loss on the prunable weights and ``H`` the
    Hessian over them; ``H g = d(g(w) . stopgrad(g)) / dw`` by double backward. The loss is
    ``loss_fn(outputs / temperature, targets)`` (default cross-entropy). ``g`` is averaged over
    the batches (``batches``: an int, or ``"all"``, every batch of ``data``), then ``H g`` is
    averaged over the same batches: ``(1/B sum_b H_b)(1/B sum_b g_b)``. The official code sums
    both instead, a factor ``B^2`` that changes no ranking. Defaults are the official ones:
    temperature 200, every batch. Which end of ``S`` is kept: :func:`grasp`.

    Example:
        >>> scores = grasp_scores(model, prunable_layers(model), [(x, y)])
    """
    count = _check_batches(batches)
    temperature = _check_temperature(temperature)
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    layers = list(layers)
    with _model_preserved(model), torch.enable_grad():
        weights = _leaf_weights(layers)
        source = _Batches(data, count, "grasp", _device(layers))

        def loss_of(x: torch.Tensor, y: object) -> torch.Tensor:
            return _loss(loss_fn, _run(model, weights, x, "grasp") / temperature, y, "grasp")

        g_fixed = [torch.zeros_like(w) for w in weights.values()]
        n = 0
        for x, y in source:                                   # pass 1: g, no graph kept
            for acc, g in zip(g_fixed, _grads(loss_of(x, y), weights), strict=True):
                acc += g
            n += 1
        g_fixed = [g / n for g in g_fixed]
        hg = [torch.zeros_like(w) for w in weights.values()]
        n = 0
        for x, y in source:                                   # pass 2: H_b g, double backward
            grads = _grads(loss_of(x, y), weights, create_graph=True)
            z = sum((g * gf).sum() for g, gf in zip(grads, g_fixed, strict=True))    # g . g_fixed
            if isinstance(z, torch.Tensor) and z.requires_grad:
                for acc, h in zip(hg, _grads(z, weights), strict=True):
                    acc += h
            n += 1
    return {layer.name: (-w * h / n).detach()
            for layer, w, h in zip(layers, weights.values(), hg, strict=True)}


@register_mask_method("grasp", data_driven=True)
def grasp(model: nn.Module, layers: list[PrunableLayer], density: float, *, data=None,
          loss_fn: LossFn | None = None, variant: GraspVariant = "official",
          batches: Batches = "all", temperature: float = 200.0) -> dict[str, torch.Tensor]:
    """Keep ``keep_count(density, N)`` weights by their GraSP scores ``S = -w * Hg``.

    Options: ``variant`` (which end of ``S`` is kept, below), ``batches`` (default ``"all"``,
    every batch of ``data``; or an int), ``temperature`` dividing the logits (default 200).
    The defaults are the paper's official code (``GraSP_v2`` in
    ``sparselearning/snip_and_grasp.py``).

    * ``variant="official"`` (default): keep the *highest* ``S`` (the lowest ``w * Hg``).
    * ``variant="wang"``: keep the *lowest* ``S``, as Wang et al. (2020) prescribe.

    Derivation of the two signs. Removing weight ``w_i`` (a step ``-w_i e_i``) changes the
    gradient norm ``G = g^T g`` by ``dG ~ -2 w_i (Hg)_i = 2 S_i`` (first order). Wang et al.
    (Algorithm 1; their code scores ``-w * Hg`` and keeps ``S < tau``, the (1 - p) percentile)
    remove the highest ``S``: the weights whose removal lowers the gradient flow least (or raises
    it), and keep the lowest ``S``. The official ``GraSP_v2`` calls ``L(w) . stopgrad(g)``'s
    ``backward()``, so ``p.grad`` holds ``+Hg`` and its score is ``p.grad * p.data = +w * Hg =
    -S`` (the minus sign of Wang's ``-theta_q Hg`` is not there). It divides by
    ``|sum(scores)| + eps > 0`` (no change of order), takes the ``int(N (1 - d))`` highest
    scores by ``topk`` as the ones to remove, and keeps ``score < threshold``: it keeps the
    lowest ``w * Hg``, which are the highest ``S``, the opposite end of Wang's rule. On the
    7x100 tanh MLP at d = 0.05 Wang's end keeps about 0.1% of the 784->100 input layer, the
    official end 1-2% (docs/protocol.md).

    Raises:
        ValueError: an unknown ``variant`` (listing the valid ones), a bad ``temperature`` or
            ``batches``.
    """
    if variant not in GRASP_VARIANTS:
        raise ValueError(f"variant={variant!r} is not a GraSP variant; choose one of: "
                         f"{', '.join(map(repr, GRASP_VARIANTS))}")
    scores = list(grasp_scores(model, layers, data, loss_fn=loss_fn, batches=batches,
                               temperature=temperature).values())
    _check_finite(scores, layers, "grasp")
    if variant == "wang":
        # keep the lowest S = the highest of -S; negation keeps ties tied
        scores = [-s for s in scores]
    return _masks_from_scores(layers, scores, keep_count(density, _numel(layers)))


# ----------------------------------------------------------------------------- SynFlow
def _input_shape(input_shape: object, data: Iterable | None, device: torch.device
                 ) -> tuple[int, ...]:
    if input_shape is None:
        if data is None:
            raise ValueError("mask method 'synflow' needs the shape of one input example: pass "
                             "input_shape=(channels, height, width) (or (features,)), or data "
                             "to read it from")
        x, _ = next(iter(_Batches(data, 1, "synflow", device)))
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
        out = _run(self.model, {**self.constants, **weights}, self.x, "synflow",
                   "an all-ones input")
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"synflow needs a model that returns a tensor, got "
                            f"{type(out).__name__}")
        grads = _grads(out.sum(), weights)
        return [(g * w).abs().detach() for g, w in zip(grads, weights.values(), strict=True)]


def synflow_scores(model: nn.Module, layers: Sequence[PrunableLayer], *,
                   input_shape: Sequence[int] | int | None = None, data: Iterable | None = None,
                   masks: Mapping[str, torch.Tensor] | None = None,
                   double_precision: bool = False) -> dict[str, torch.Tensor]:
    """Return one round of SynFlow scores ``|dR/dw * w|`` (data-free).

    `Pruning neural networks without any data by iteratively conserving synaptic flow` - Tanaka
    et al. (2020), arXiv 2006.05467. Every float parameter and buffer ``theta`` is replaced by
    ``|theta|`` (prunable weights also multiplied by ``masks[name]``), the model runs in eval
    mode on an all-ones input of shape ``(1, *input_shape)``, and ``R`` is the sum of its
    outputs. ``double_precision=True`` computes in float64 (default False: the model's dtype).

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
            input_shape: Sequence[int] | int | None = None, double_precision: bool = False
            ) -> dict[str, torch.Tensor]:
    """Prune iteratively by SynFlow scores with an exponential schedule.

    After round ``r < rounds`` the kept count is the official ``N - int((1 - density ** (r /
    rounds)) N)``, after the last round ``keep_count(density, N)`` (global top-k among the
    still-kept weights; pruned weights score ``-inf``). Options:
    ``rounds`` (default 100), ``input_shape`` (one example; else read from ``data``),
    ``double_precision`` (default False, the model's dtype; True: float64 scores, which avoid
    overflow in deep networks).

    As the official ``synflow_prune_loop`` (``sparselearning/synflow.py``; its defaults: 100
    epochs, exponential schedule, global scope, eval mode, ``|theta|`` for every float parameter
    and buffer, input ones of one example's shape, float32 unless ``--double_precision``, which
    the paper's specs set for ResNet-56/110 and EfficientNet). The official scores the pruned
    weights too (they are 0, so they score 0) and drops every score ``<=`` the k-th smallest;
    pruned weights here score ``-inf`` and exactly ``keep_count`` stay, which differs only when
    live weights tie at the threshold.
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
            kept = keep_top(scores, _synflow_count(density, r, rounds, total))
    return _finish(layers, kept)


def _synflow_count(density: float, r: int, rounds: int, total: int) -> int:
    """Weights kept after round ``r``: the official ``N - int((1 - d ** (r / R)) N)`` before the
    last round (the same float expression, so the same masks), ``keep_count(d, N)`` after it."""
    if r == rounds:
        return keep_count(density, total)
    return total - int((1.0 - density ** (r / rounds)) * total)


def _numel(layers: Sequence[PrunableLayer]) -> int:
    return sum(layer.weight.numel() for layer in layers)
