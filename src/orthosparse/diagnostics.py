"""Signal-propagation diagnostics: Jacobian spectra, orthogonality error, norms per depth.

A network is *dynamically isometric* when every singular value of its input-output Jacobian is
close to 1, so signals and gradients keep their size through any depth. EOI builds every layer as an
exactly orthogonal sparse matrix to get there; this module measures how close a model is:

* ``jacobian_singular_values`` / ``jacobian_summary``: per-example Jacobian of the outputs (logits)
  with respect to the input, singular values pooled over a batch (the paper's metric);
* ``orthogonality_error``: ``||W W^T - gain^2 I||_F / sqrt(r)`` per layer under its mask;
* ``signal_propagation``: forward activation and backward gradient norms per depth (hooks);
* ``conv_singular_values``: exact singular values of a circular-padded convolution via the FFT;
* ``inspect_model``: all of the above as one printable report (what ``orthosparse inspect`` shows).

All functions run the model in eval mode (restored afterwards): the per-example Jacobian is the
Jacobian of the deterministic network (no dropout, BatchNorm with its running statistics), and
examples do not interact. None of them touches ``.grad`` of the parameters.

`Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
Initialization` - Nowak et al. (2024), arXiv 2406.01755.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_positive_int
from ._layers import PRUNABLE_TYPES, PrunableLayer, prunable_layers
from ._registry import Registry
from .sparse import MASK_SUFFIX

__all__ = [
    "ACTIVATION_TYPES",
    "ConvMode",
    "InspectReport",
    "JacobianMethod",
    "LayerReport",
    "PropagationKinds",
    "PropagationRecord",
    "conv_singular_values",
    "input_output_jacobian",
    "inspect_model",
    "jacobian_singular_values",
    "jacobian_summary",
    "orthogonality_error",
    "orthogonality_errors",
    "signal_propagation",
    "summarize_singular_values",
]

JacobianMethod = Literal["auto", "vmap", "loop"]
ConvMode = Literal["center", "flat"]
PropagationKinds = Literal["all", "layers", "activations"]

# Elementwise activation modules whose outputs ``signal_propagation`` records. Activations applied
# functionally inside ``forward`` (``torch.tanh(x)``) have no module and are not seen by hooks.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.Tanh, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SELU, nn.ELU, nn.CELU, nn.LeakyReLU, nn.PReLU,
    nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Hardsigmoid, nn.Hardswish, nn.Softplus,
    nn.Softsign, nn.Tanhshrink,
)
_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_inputs(inputs: object, max_examples: int | None = None) -> torch.Tensor:
    """Return the first ``max_examples`` rows of a floating ``(batch, *features)`` tensor."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got dtype={inputs.dtype}")
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must have shape (batch, *features) with batch >= 1, "
                         f"got shape {tuple(inputs.shape)}")
    if max_examples is not None:
        inputs = inputs[: check_positive_int(max_examples, "max_examples")]
    return inputs.detach()


def _check_output(output: object) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the model must return a torch.Tensor (batch, *outputs) to be "
                        f"differentiated, got {type(output).__name__}")
    return output


def _check_gain(gain: object) -> float:
    if isinstance(gain, bool) or not isinstance(gain, numbers.Real):
        raise TypeError(f"gain must be a real number, got {type(gain).__name__}: {gain!r}")
    if not math.isfinite(float(gain)) or gain <= 0:
        raise ValueError(f"gain={gain} must be a finite number > 0")
    return float(gain)


# --------------------------------------------------------------------------- Jacobian


def _constant_params_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` as a function of its input alone, parameters and buffers detached.

    Differentiating only w.r.t. the input this way is ~10x faster than calling ``model``
    directly when its parameters require grad: autograd then also works out weight gradients.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def f(x: torch.Tensor) -> torch.Tensor:
        return _check_output(torch.func.functional_call(model, (params, buffers), (x,)))

    return f


def _single_example_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (*in_shape) -> model(x[None])`` flattened to ``(out_numel,)``."""
    f = _constant_params_fn(model)
    return lambda x: f(x.unsqueeze(0)).reshape(-1)


def _jacobian_vmap(model: nn.Module, x: torch.Tensor, out_numel: int) -> torch.Tensor:
    """``vmap`` over examples of ``jacrev`` (out <= in) or ``jacfwd`` (out > in).

    Either way the work is ``min(out, in)`` vectorized passes, batched over the examples.
    """
    f = _single_example_fn(model)
    n, in_numel = x.shape[0], x[0].numel()
    jac = torch.func.jacrev(f) if out_numel <= in_numel else torch.func.jacfwd(f)
    return torch.func.vmap(jac)(x).reshape(n, out_numel, in_numel)  # (n, out, in)


def _jacobian_loop(model: nn.Module, x: torch.Tensor, out_numel: int) -> torch.Tensor:
    """One forward pass on the batch, then one ``autograd.grad`` per output dimension.

    Examples do not interact (eval mode), so d(sum_b y_b[k]) / dx_b = dy_b[k] / dx_b: row k of
    every example's Jacobian comes from a single backward pass.
    """
    n = x.shape[0]
    x = x.clone().requires_grad_(True)
    y = _constant_params_fn(model)(x).reshape(n, -1)  # (n, out_numel)
    rows = []
    for k in range(out_numel):
        (row,) = torch.autograd.grad(y[:, k].sum(), x, retain_graph=k < out_numel - 1,
                                     allow_unused=True, materialize_grads=True)
        rows.append(row.reshape(n, -1))  # (n, in_numel)
    return torch.stack(rows, dim=1)  # (n, out, in)


_JACOBIAN_METHODS: Registry[Callable[[nn.Module, torch.Tensor, int], torch.Tensor]] = Registry(
    "Jacobian method")
_JACOBIAN_METHODS.register("vmap", _jacobian_vmap)
_JACOBIAN_METHODS.register("loop", _jacobian_loop)
_JACOBIAN_METHODS.register("auto", _jacobian_vmap)  # falls back to "loop"; see _jacobian_chunks


def _jacobian_chunks(model: nn.Module, inputs: torch.Tensor, *, max_examples: int | None,
                     method: str, chunk_size: int | None,
                     max_dim: int) -> Iterator[torch.Tensor]:
    """Yield the per-example Jacobians ``(chunk, out_numel, in_numel)``, chunk by chunk."""
    model = _check_model(model)
    _JACOBIAN_METHODS.get(method)
    x = _check_inputs(inputs, max_examples)
    chunk = x.shape[0] if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
    max_dim = check_positive_int(max_dim, "max_dim")
    with _eval_mode(model):
        with torch.no_grad():
            out_numel = _check_output(model(x[:1]))[0].numel()
        in_numel = x[0].numel()
        if min(out_numel, in_numel) > max_dim:
            raise ValueError(
                f"the Jacobian is {out_numel} x {in_numel} per example: computing it takes "
                f"min(outputs, inputs)={min(out_numel, in_numel)} passes, more than "
                f"max_dim={max_dim}; raise max_dim or use a model with fewer outputs (logits)")
        for start in range(0, x.shape[0], chunk):
            xs = x[start:start + chunk]
            if method != "auto":
                yield _JACOBIAN_METHODS.get(method)(model, xs, out_numel)
                continue
            try:
                jac = _jacobian_vmap(model, xs, out_numel)
            except (RuntimeError, NotImplementedError) as err:
                warnings.warn(f"torch.func.vmap could not differentiate the model ({err}); "
                              f"falling back to a loop over the {out_numel} outputs with "
                              f"torch.autograd", stacklevel=3)
                method = "loop"
                jac = _jacobian_loop(model, xs, out_numel)
            yield jac


def input_output_jacobian(model: nn.Module, inputs: torch.Tensor, *,
                          max_examples: int | None = None, method: JacobianMethod = "auto",
                          chunk_size: int | None = None, max_dim: int = 4096) -> torch.Tensor:
    """Return the per-example Jacobian of the flattened outputs w.r.t. the flattened input.

    ``J_b = d model(x_b) / d x_b``, one ``(out_numel, in_numel)`` matrix per example, computed in
    eval mode with the parameters held constant.

    Args:
        model: maps ``(batch, *in_shape)`` to a tensor ``(batch, *out_shape)``.
        inputs: ``(batch, *in_shape)`` floating tensor on the model's device.
        max_examples: use only the first ``max_examples`` examples (default: all).
        method: ``"vmap"``: ``torch.func.vmap`` over examples of ``jacrev`` (or ``jacfwd`` when
            the input is smaller than the output); ``"loop"``: one ``torch.autograd.grad`` per
            output dimension on the whole batch; ``"auto"``: ``"vmap"``, falling back to
            ``"loop"`` with a warning when ``vmap`` cannot trace the model.
        chunk_size: examples per vectorized call (default: all at once); lower it to save memory.
        max_dim: refuse Jacobians needing more than this many passes, ``min(out_numel,
            in_numel)`` (an exact Jacobian of an image-to-image model is rarely what you want).

    Returns:
        ``(n, out_numel, in_numel)`` with ``n = min(batch, max_examples)``.

    Raises:
        TypeError: model, inputs or the model's output of the wrong type.
        ValueError: unknown method, bad shapes, or a Jacobian larger than ``max_dim`` allows.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> input_output_jacobian(net, torch.randn(5, 4)).shape  # (5, 3, 4)
    """
    return torch.cat(list(_jacobian_chunks(model, inputs, max_examples=max_examples,
                                           method=method, chunk_size=chunk_size,
                                           max_dim=max_dim)))


def jacobian_singular_values(model: nn.Module, inputs: torch.Tensor, *,
                             max_examples: int | None = None, method: JacobianMethod = "auto",
                             chunk_size: int | None = None, max_dim: int = 4096) -> torch.Tensor:
    """Return the singular values of each example's input-output Jacobian, largest first.

    The dynamical-isometry metric of Nowak et al. (2024), arXiv 2406.01755 (after `Resurrecting
    the sigmoid in deep learning through dynamical isometry` - Pennington et al. (2017),
    arXiv 1711.04735): ``sigma(J_b)`` with ``J_b = d logits(x_b) / d x_b``. Only one chunk of
    Jacobians is held in memory at a time. Examples whose Jacobian is not finite (an exploding
    network) get NaN singular values and a warning.

    Args: as ``input_output_jacobian``.

    Returns:
        ``(n, min(out_numel, in_numel))``, each row sorted in descending order.

    Example:
        >>> sv = jacobian_singular_values(net, x, max_examples=64)  # (64, 10) for 10 logits
    """
    values = []
    bad = 0
    for jac in _jacobian_chunks(model, inputs, max_examples=max_examples, method=method,
                                chunk_size=chunk_size, max_dim=max_dim):
        finite = torch.isfinite(jac).flatten(1).all(dim=1)  # (chunk,)
        sv = jac.new_full((jac.shape[0], min(jac.shape[1:])), math.nan)  # (chunk, k)
        if finite.any():
            sv[finite] = torch.linalg.svdvals(jac[finite])
        bad += int((~finite).sum())
        values.append(sv)
    out = torch.cat(values)
    if bad:
        warnings.warn(f"{bad} of {out.shape[0]} examples have a non-finite Jacobian (the network "
                      f"over- or underflows); their singular values are NaN", stacklevel=2)
    return out


def summarize_singular_values(values: torch.Tensor) -> dict[str, float]:
    """Summarize pooled singular values: mean, std, min, max and condition number.

    ``std`` is the population standard deviation; ``condition_number = max / min`` over the
    pooled values (``inf`` when ``min == 0``). A NaN anywhere makes every statistic NaN.

    Example:
        >>> summarize_singular_values(torch.tensor([1.0, 2.0]))["condition_number"]  # 2.0
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.numel() == 0:
        raise ValueError("values is empty: nothing to summarize")
    v = values.detach().double().flatten()
    lo, hi = v.min().item(), v.max().item()
    if v.isnan().any():
        cond = math.nan
    else:
        cond = math.inf if lo == 0 else hi / lo
    return {"mean": v.mean().item(), "std": v.std(correction=0).item(), "min": lo, "max": hi,
            "condition_number": cond}


def jacobian_summary(model: nn.Module, inputs: torch.Tensor, *, max_examples: int | None = None,
                     method: JacobianMethod = "auto",
                     chunk_size: int | None = None) -> dict[str, float]:
    """Return mean, std, min, max and condition number of the pooled Jacobian singular values.

    The call a training loop makes each epoch: ``summarize_singular_values`` of
    ``jacobian_singular_values``. A 1000-layer width-128 tanh MLP on 128 digits takes about 1-3 s
    on a 2-core CPU (``benchmarks/jacobian_speed.py``).

    Example:
        >>> jacobian_summary(net, x, max_examples=128)
        {'mean': 1.0, 'std': 2e-07, 'min': 0.9999, 'max': 1.0, 'condition_number': 1.0}
    """
    return summarize_singular_values(jacobian_singular_values(
        model, inputs, max_examples=max_examples, method=method, chunk_size=chunk_size))


# --------------------------------------------------------------------------- orthogonality


# The matrix whose orthogonality a conv kernel (c_out, c_in, *k) is judged by.
# "center": the centre tap (c_out, c_in). A delta-orthogonal kernel (Xiao et al. 2018) is
#   orthogonal there and zero elsewhere; the mask's extra positions hold zeros at init, so they do
#   not count until training moves them. Needs odd kernel sizes.
# "flat": the whole kernel as (c_out, c_in * prod(k)). Row p of it, dotted with row q, sums the
#   tap-wise products, so for a delta-orthogonal kernel with c_out <= c_in its Gram equals the
#   centre tap's; it also sees every off-centre weight (after training, or for other inits).
_CONV_MATRIX: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry(
    "conv orthogonality mode")


@_CONV_MATRIX.register("center")
def _center_tap(weight: torch.Tensor) -> torch.Tensor:
    kernel = tuple(weight.shape[2:])
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"conv='center' needs odd kernel sizes, got kernel_size={kernel}; "
                         f"use conv='flat'")
    return weight[(slice(None), slice(None), *(k // 2 for k in kernel))]  # (c_out, c_in)


@_CONV_MATRIX.register("flat")
def _flat_kernel(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)  # (c_out, c_in * prod(k))


def orthogonality_error(weight: torch.Tensor, mask: torch.Tensor | None = None, *,
                        gain: float = 1.0, conv: ConvMode = "center", groups: int = 1) -> float:
    """Return how far the masked weight is from a scaled orthogonal matrix.

    ``err = ||G - gain^2 I_r||_F / sqrt(r)`` for ``W = mask * weight`` of shape ``(m, n)``,
    ``r = min(m, n)`` and the Gram on the smaller side: ``G = W W^T`` when ``m <= n`` (rows
    orthonormal), ``G = W^T W`` otherwise. It is 0 exactly when ``W`` has orthogonal rows (or
    columns) of norm ``gain``; dividing by ``sqrt(r)`` makes it the RMS deviation per diagonal
    entry, comparable across widths. Computed in float64. Conv weights ``(c_out, c_in, *k)``
    are first reduced to a matrix by ``conv``: ``"center"`` (the centre tap; delta-orthogonal
    kernels are orthogonal there) or ``"flat"`` (``(c_out, c_in * prod(k))``). A grouped conv
    (``groups=G``: the weight holds G blocks of ``c_out/G`` rows) is the operator it computes,
    block-diagonal: ``err`` is the root mean square of the G blocks' errors (each block's Gram on
    its smaller side), so a depthwise conv with every centre tap ``+-gain`` has ``err = 0``.

    Args:
        weight: ``(out, in)`` or ``(c_out, c_in, *kernel)``.
        mask: same shape as ``weight`` (bool or 0/1), or None for the weight as it is.
        gain: the scale the weight should have (``W W^T = gain^2 I``).
        conv: ``"center"`` or ``"flat"``.
        groups: the conv's groups (a positive divisor of ``c_out``; 1 for Linear weights).

    Raises:
        TypeError: weight/mask not tensors.
        ValueError: bad shapes, gain <= 0, unknown conv mode, even kernel with ``"center"``,
            ``groups`` not a positive divisor of ``c_out``.

    Example:
        >>> w = torch.nn.init.orthogonal_(torch.empty(64, 128), gain=2.0)
        >>> orthogonality_error(w, gain=2.0)  # ~1e-7
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2 or weight.dim() > 5:
        raise ValueError(f"weight must have 2 dims (out, in) or 3-5 dims (c_out, c_in, *kernel), "
                         f"got shape {tuple(weight.shape)}")
    gain = _check_gain(gain)
    to_matrix = _CONV_MATRIX.get(conv)
    w = weight.detach().double()
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.shape != weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape "
                             f"{tuple(weight.shape)}")
        w = w * mask.detach().to(device=w.device, dtype=w.dtype)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 \
            or w.shape[0] % groups:
        raise ValueError(f"groups={groups!r} must be a positive integer dividing c_out="
                         f"{w.shape[0]} of weight shape {tuple(weight.shape)}")
    if w.dim() > 2:
        w = to_matrix(w)
    blocks = w.reshape(groups, w.shape[0] // groups, w.shape[1])  # (G, m, n)
    m, n = blocks.shape[1:]
    gram = blocks @ blocks.mT if m <= n else blocks.mT @ blocks  # (G, r, r)
    r = gram.shape[-1]
    eye = torch.eye(r, dtype=gram.dtype, device=gram.device)
    per_block = torch.linalg.matrix_norm(gram - gain**2 * eye) / math.sqrt(r)  # (G,)
    return per_block.square().mean().sqrt().item()


def _layer_masks(model: nn.Module, masks: Mapping[str, torch.Tensor] | None,
                 exclude: Iterable[object]) -> list[tuple[PrunableLayer, torch.Tensor | None]]:
    """Prunable layers with their mask: ``masks[name]``, else the fixed-mask buffer
    ``<attr>_orthosparse_mask`` (``orthosparse.sparse``), else ``torch.nn.utils.prune``'s
    ``<attr>_mask`` buffer (next to ``<attr>_orig``), else None.
    """
    layers = prunable_layers(model, exclude)
    masks = {} if masks is None else dict(masks)
    unknown = sorted(set(masks) - {layer.name for layer in layers})
    if unknown:
        raise ValueError(f"masks has keys {unknown} that are not prunable weights of the model; "
                         f"valid keys: {[layer.name for layer in layers]}")
    def buffer(layer: PrunableLayer) -> torch.Tensor | None:
        own = layer.module._buffers.get(layer.attr + MASK_SUFFIX)
        return own if own is not None else layer.module._buffers.get(layer.attr + "_mask")

    return [(layer, masks[layer.name] if layer.name in masks else buffer(layer))
            for layer in layers]


def orthogonality_errors(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None, *,
                         gain: float = 1.0, conv: ConvMode = "center",
                         exclude: Iterable[object] = ()) -> dict[str, float]:
    """Return ``orthogonality_error`` for every Linear/Conv weight, keyed by parameter name.

    Args:
        model: any module; its prunable layers are found with ``prunable_layers``.
        masks: ``{"layers.0.weight": mask}`` for some or all layers (unknown keys raise); a
            layer without one uses its fixed mask (or ``torch.nn.utils.prune``'s mask) if it
            has one, else its weight.
        gain, conv: as ``orthogonality_error``; each conv's own ``groups`` is used.
        exclude: module types or name patterns to skip (as ``prunable_layers``).

    Example:
        >>> orthogonality_errors(net, gain=1.0247)  # {"0.weight": 1e-07, ...}
    """
    return {layer.name: orthogonality_error(layer.weight, mask, gain=gain, conv=conv,
                                            groups=_groups_of(layer))
            for layer, mask in _layer_masks(_check_model(model), masks, exclude)}


def _groups_of(layer: PrunableLayer) -> int:
    """The groups of a conv layer's operator (1 for anything else)."""
    groups = getattr(layer.module, "groups", 1) if layer.weight.dim() > 2 else 1
    return groups if isinstance(groups, int) and groups >= 1 else 1


# --------------------------------------------------------------------------- signal propagation


@dataclass(frozen=True)
class PropagationRecord:
    """Norms at one module output: the ``call``-th time module ``name`` ran in the forward."""

    name: str
    call: int
    kind: Literal["layer", "activation"]
    activation_norm: float
    gradient_norm: float

    @property
    def label(self) -> str:
        """``name``, or ``name[call]`` for a module called more than once (a shared Tanh)."""
        return f"{self.name}[{self.call}]" if self.call else self.name


_PROPAGATION_KINDS: Registry[tuple[tuple[type[nn.Module], ...], ...]] = Registry(
    "propagation kinds")
_PROPAGATION_KINDS.register("all", (PRUNABLE_TYPES, ACTIVATION_TYPES))
_PROPAGATION_KINDS.register("layers", (PRUNABLE_TYPES, ()))
_PROPAGATION_KINDS.register("activations", ((), ACTIVATION_TYPES))


def _per_example_norm(t: torch.Tensor) -> float:
    """Mean over the batch of the L2 norm of each example's flattened tensor."""
    return t.detach().double().flatten(1).norm(dim=1).mean().item()


def signal_propagation(model: nn.Module, inputs: torch.Tensor,
                       targets: torch.Tensor | None = None, *,
                       kinds: PropagationKinds = "all") -> list[PropagationRecord]:
    """Return forward activation and backward gradient norms at each depth, in call order.

    Forward hooks record the output ``h`` of every Linear/Conv layer and activation module
    (``ACTIVATION_TYPES``) in the order they run. ``activation_norm = mean_b ||h_b||_2`` over
    the examples; ``gradient_norm = mean_b ||dL/dh_b||_2`` where ``L = sum_b CE(y_b, t_b)`` if
    ``targets`` are given, else ``L = sum_b sum_k y_b[k]`` (a cotangent of ones at the output).
    A module called several times yields one record per call (``PropagationRecord.call``).
    Hooks hand a copy of each output onward, so in-place activations do not disturb the record.

    Args:
        model: any module; run in eval mode, parameters' ``.grad`` untouched.
        inputs: ``(batch, *in_shape)``.
        targets: ``(batch,)`` class indices for a ``(batch, classes)`` output, or None.
        kinds: ``"all"``, ``"layers"`` (Linear/Conv) or ``"activations"``.

    Raises:
        ValueError: bad shapes, unknown kinds, or no module of the requested kinds ran.

    Example:
        >>> recs = signal_propagation(net, x, y, kinds="layers")
        >>> [r.gradient_norm for r in recs]  # vanishing or exploding gradients show here
    """
    model = _check_model(model)
    layer_types, act_types = _PROPAGATION_KINDS.get(kinds)
    x = _check_inputs(inputs)
    captured: list[tuple[str, int, str, torch.Tensor]] = []
    calls: dict[str, int] = {}

    def make_hook(name: str, kind: str) -> Callable[..., torch.Tensor | None]:
        def hook(module: nn.Module, args: object, output: object) -> torch.Tensor | None:
            if not isinstance(output, torch.Tensor):
                return None
            call = calls.get(name, 0)
            calls[name] = call + 1
            captured.append((name, call, kind, output))
            return output.clone()  # later in-place ops change the copy, not the record

        return hook

    handles = []
    for name, module in model.named_modules():
        kind = ("layer" if isinstance(module, layer_types) else
                "activation" if isinstance(module, act_types) else None)
        if kind is not None:
            label = name or type(module).__name__
            handles.append(module.register_forward_hook(make_hook(label, kind)))
    try:
        with _eval_mode(model):
            y = _check_output(model(x.clone().requires_grad_(True)))
            if targets is None:
                loss = y.sum()
            else:
                if not isinstance(targets, torch.Tensor):
                    raise TypeError(f"targets must be a torch.Tensor or None, got "
                                    f"{type(targets).__name__}")
                if y.dim() != 2 or targets.shape != (y.shape[0],):
                    raise ValueError(f"targets shape {tuple(targets.shape)} must be (batch,) = "
                                     f"({y.shape[0]},) for an output (batch, classes), got "
                                     f"output shape {tuple(y.shape)}")
                loss = F.cross_entropy(y, targets, reduction="sum")
            if not captured:
                raise ValueError(f"no module of kinds={kinds!r} ran in the forward pass; "
                                 f"hooked types: {[t.__name__ for t in layer_types + act_types]}")
            tracked = [i for i, c in enumerate(captured) if c[3].requires_grad]
            grads = torch.autograd.grad(loss, [captured[i][3] for i in tracked],
                                        allow_unused=True, materialize_grads=True)
    finally:
        for handle in handles:
            handle.remove()
    grad_norm = dict(zip(tracked, (_per_example_norm(g) for g in grads), strict=True))
    return [PropagationRecord(name, call, kind, _per_example_norm(out),
                              grad_norm.get(i, math.nan))
            for i, (name, call, kind, out) in enumerate(captured)]


# --------------------------------------------------------------------------- conv spectra


def _check_circular_conv(conv: nn.Module) -> None:
    """Raise unless ``conv`` is a stride-1 circular convolution that keeps the spatial size."""
    if conv.padding_mode != "circular":
        raise ValueError(f"conv_singular_values needs padding_mode='circular' (the operator is "
                         f"then a circulant and the FFT diagonalizes it), got "
                         f"padding_mode={conv.padding_mode!r}")
    if any(s != 1 for s in conv.stride):
        raise ValueError(f"conv_singular_values needs stride 1, got stride={conv.stride}")
    if isinstance(conv.padding, str):
        if conv.padding != "same":
            raise ValueError(f"padding={conv.padding!r} does not keep the spatial size; use "
                             f"padding='same' or (kernel_size - 1) // 2 with an odd kernel")
        return
    for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation, strict=True):
        if 2 * p != d * (k - 1):
            raise ValueError(
                f"kernel_size={conv.kernel_size} with padding={conv.padding} and "
                f"dilation={conv.dilation} does not keep the spatial size (needs 2 * padding == "
                f"dilation * (kernel_size - 1): an odd kernel with padding (kernel_size - 1) // 2 "
                f"times dilation, or padding='same')")


def conv_singular_values(conv: nn.Module | torch.Tensor,
                         input_size: int | Sequence[int]) -> torch.Tensor:
    """Return the exact singular values of a circular convolution on a given input size.

    `The Singular Values of Convolutional Layers` - Sedghi et al. (2019), arXiv 1805.10408:
    with circular padding and stride 1 the layer is a linear map ``R^{c_in x n} -> R^{c_out x n}``
    (``n`` the spatial size, 1-3 dims) whose blocks are circulant, so the spatial DFT
    block-diagonalizes it. Its singular values are the union over the ``prod(n)`` frequencies
    ``u`` of ``svd(P(u))``, ``P(u)[o, i] = sum_a K[o, i, a] exp(-2 pi i <u, a / n>)``: the DFT of
    the kernel zero-padded to ``n``. Cross-correlation instead of convolution conjugates
    ``P(u)``, and the padding offset multiplies it by a unit phase; neither changes singular
    values. Groups give a block-diagonal operator (union over groups); dilation spaces the taps.

    Args:
        conv: an ``nn.Conv1d/2d/3d`` with ``padding_mode="circular"``, stride 1 and a padding that
            keeps the size, or a weight ``(c_out, c_in, *kernel)`` (taken as such a layer with
            groups 1, dilation 1, any kernel size).
        input_size: spatial size ``n`` (an int for every dim, or one per dim); each dilated
            kernel size must be <= n.

    Returns:
        ``(prod(n) * groups * min(c_out, c_in) / groups,)`` singular values, descending.

    Raises:
        TypeError: not a conv module or tensor.
        ValueError: not circular, stride != 1, size-changing padding, kernel larger than the input,
            input_size of the wrong length.

    Example:
        >>> conv = nn.Conv2d(16, 16, 3, padding=1, padding_mode="circular", bias=False)
        >>> conv_singular_values(conv, 8).shape  # (8 * 8 * 16,)
    """
    if isinstance(conv, torch.Tensor):
        weight, groups, dilation = conv, 1, (1,) * (conv.dim() - 2)
        if not 3 <= weight.dim() <= 5:
            raise ValueError(f"weight must have shape (c_out, c_in, *kernel) with 1-3 kernel "
                             f"dims, got shape {tuple(weight.shape)}")
    elif isinstance(conv, _CONV_TYPES):
        _check_circular_conv(conv)
        weight, groups, dilation = conv.weight, conv.groups, tuple(conv.dilation)
    else:
        raise TypeError(f"conv must be an nn.Conv1d/Conv2d/Conv3d or a weight tensor, got "
                        f"{type(conv).__name__}")
    spatial = weight.dim() - 2
    size = (input_size,) * spatial if isinstance(input_size, numbers.Integral) else input_size
    size = tuple(check_positive_int(s, "input_size") for s in size)
    if len(size) != spatial:
        raise ValueError(f"input_size={input_size} must give {spatial} spatial dims for weight "
                         f"shape {tuple(weight.shape)}")
    w = weight.detach()
    if not w.is_floating_point():
        raise TypeError(f"weight must be floating point, got dtype={w.dtype}")
    if any(d != 1 for d in dilation):  # spread the taps: kernel k -> d * (k - 1) + 1
        dilated = w.new_zeros(*w.shape[:2], *(d * (k - 1) + 1 for k, d in
                                               zip(w.shape[2:], dilation, strict=True)))
        dilated[(slice(None), slice(None), *(slice(None, None, d) for d in dilation))] = w
        w = dilated
    kernel = tuple(w.shape[2:])
    if any(k > n for k, n in zip(kernel, size, strict=True)):
        raise ValueError(f"(dilated) kernel size {kernel} is larger than input_size={size}; "
                         f"circular padding cannot wrap it")
    c_out, c_in_g = w.shape[:2]
    w = w.reshape(groups, c_out // groups, c_in_g, *kernel)  # (g, c_out/g, c_in/g, *k)
    dims = tuple(range(3, 3 + spatial))
    transfer = torch.fft.fftn(w, s=size, dim=dims)  # (g, c_out/g, c_in/g, *n)
    blocks = transfer.permute(0, *dims, 1, 2)  # (g, *n, c_out/g, c_in/g)
    sv = torch.linalg.svdvals(blocks).flatten()
    return sv.sort(descending=True).values


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class LayerReport:
    """One prunable layer: mask density, orthogonality error, norms at its output."""

    name: str
    shape: tuple[int, ...]
    density: float
    orthogonality_error: float
    activation_norm: float
    gradient_norm: float


@dataclass
class InspectReport:
    """What ``inspect_model`` measured; ``str(report)`` is a table for the terminal."""

    layers: list[LayerReport]
    jacobian: dict[str, float]
    num_examples: int
    gain: float
    conv: str
    propagation: list[PropagationRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Plain dict (JSON-serializable) of the whole report."""
        return asdict(self)

    def __str__(self) -> str:
        width = max([len("layer"), *(len(layer.name) for layer in self.layers)])
        head = (f"{'layer':<{width}}  {'shape':<18} {'density':>8} {'orth_err':>10} "
                f"{'act_norm':>10} {'grad_norm':>10}")
        lines = [f"orth_err: ||W W^T - gain^2 I||_F / sqrt(r) under the mask (gain={self.gain:g}, "
                 f"conv={self.conv!r})",
                 f"act_norm, grad_norm: per-example L2 norm at the layer output, mean over "
                 f"{self.num_examples} examples", head, "-" * len(head)]
        for layer in self.layers:
            shape = "x".join(str(s) for s in layer.shape)
            lines.append(f"{layer.name:<{width}}  {shape:<18} {layer.density:>8.4f} "
                         f"{layer.orthogonality_error:>10.3e} {layer.activation_norm:>10.3e} "
                         f"{layer.gradient_norm:>10.3e}")
        j = self.jacobian
        lines.append(f"Jacobian singular values ({self.num_examples} examples): "
                     f"mean {j['mean']:.4g}  std {j['std']:.4g}  min {j['min']:.4g}  "
                     f"max {j['max']:.4g}  condition number {j['condition_number']:.4g}")
        return "\n".join(lines)


def inspect_model(model: nn.Module, inputs: torch.Tensor, *, gain: float = 1.0,
                  masks: Mapping[str, torch.Tensor] | None = None,
                  targets: torch.Tensor | None = None, max_examples: int | None = 128,
                  conv: ConvMode = "center", method: JacobianMethod = "auto",
                  exclude: Iterable[object] = ()) -> InspectReport:
    """Measure a model's signal propagation at once: per-layer table plus Jacobian summary.

    Per prunable layer: mask density (``masks[name]``, else its mask buffer, else the
    fraction of nonzero weights), ``orthogonality_error`` under the mask, and the activation and
    gradient norms at its output (first call) from ``signal_propagation``; plus
    ``jacobian_summary`` over the same examples.

    Args:
        model, inputs, targets: as ``signal_propagation``.
        gain, conv: as ``orthogonality_error``.
        masks, exclude: as ``orthogonality_errors``.
        max_examples: examples used for norms and the Jacobian (default 128; None for all).
        method: as ``input_output_jacobian``.

    Example:
        >>> print(inspect_model(net, x, gain=1.0247))
    """
    model = _check_model(model)
    gain = _check_gain(gain)
    x = _check_inputs(inputs, max_examples)
    if targets is not None and isinstance(targets, torch.Tensor):
        targets = targets[: x.shape[0]]
    records = signal_propagation(model, x, targets, kinds="all")
    first = {r.name: r for r in reversed(records) if r.kind == "layer"}
    layers = []
    for layer, mask in _layer_masks(model, masks, exclude):
        weight = layer.weight.detach()
        support = mask if mask is not None else weight
        density = support.count_nonzero().item() / support.numel()
        rec = first.get(layer.module_name or type(layer.module).__name__)
        layers.append(LayerReport(
            layer.name, tuple(weight.shape), density,
            orthogonality_error(weight, mask, gain=gain, conv=conv, groups=_groups_of(layer)),
            rec.activation_norm if rec else math.nan, rec.gradient_norm if rec else math.nan))
    jac = jacobian_summary(model, x, method=method)
    return InspectReport(layers, jac, x.shape[0], gain, conv, records)
