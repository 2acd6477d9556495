"""Init schemes for masked layers, by name: ``eoi``, ``orthogonal``, ``kaiming``, ...

An init scheme (``sparsify(init=...)``, ``--init``; the names: :func:`list_inits`) fills the
prunable weights of a model given the output of a mask method (per-layer masks and densities) and
returns the masks the layers end up with. ``init_layers`` is the one entry point; it validates,
runs the scheme without autograd (:func:`run_scheme`, which ``sparsify`` calls after validating
at its own boundary), zeroes the pruned entries, sets the biases and checks the result. Two kinds
of scheme exist:

* ``own_masks=False`` keep the given masks and only choose values (``orthogonal``,
  ``conv-orthogonal``, ``kaiming``, ``sparse-kaiming``, ``none``, ``ai``);
* ``own_masks=True`` use only the per-layer *densities* and choose the positions themselves
  (``eoi``: the support of the Givens rotations; ``sao``). ``sparsify`` then asks the mask method
  for densities only, so no mask position is drawn and thrown away (docs/design.md §3).

Registering a scheme from another module::

    from orthosparse.schemes import register_scheme

    @register_scheme("my-init")
    def my_init(layers, masks, densities, *, gain, generator, my_option=1.0):
        for layer in layers:                    # fill values in place (no autograd here)
            layer.weight.normal_(0.0, gain / layer.weight[0].numel() ** 0.5)
        return masks                            # {layer.name: bool mask}

Keyword-only parameters after ``gain`` and ``generator`` are the scheme's options; unknown
options raise a ``TypeError`` listing them.

Grouped convolutions (``nn.Conv2d(..., groups=G)``): the option ``grouped`` of ``eoi``,
``orthogonal`` and ``conv-orthogonal`` chooses ``"blocks"`` (default: each group's
``(c_out/G, c_in/G)`` block gets its own orthogonal matrix, so the layer is an isometry) or
``"paper"`` (the EOI paper's and its official code's rule: the stored ``(c_out, c_in/G)`` matrix
as one, which leaves depthwise channels dead at initialization).

Every scheme is followed by a check for dead channels: a warning names each layer left with an
output channel whose weights are all zero, or an input channel no nonzero weight reads.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._checks import check_density, check_generator
from ._layers import PrunableLayer, prunable_layers
from ._registry import Registry
from .baselines.ai import approximate_isometry_
from .baselines.sao import sao_layers_
from .init import CONV_RULES, conv_orthogonal_, eoi_group_, orthogonal_
from .masks.nm import check_nm_option, indivisible_layers

__all__ = [
    "SCHEMES",
    "Scheme",
    "SchemeName",
    "dead_channels",
    "get_scheme",
    "init_layers",
    "list_inits",
    "register_scheme",
]

SchemeName = Literal["eoi", "orthogonal", "conv-orthogonal", "kaiming", "sparse-kaiming", "none",
                     "ai", "sao"]
SchemeFn = Callable[..., Mapping[str, Tensor]]
_COMMON = ("gain", "generator")
Grouped = Literal["blocks", "paper"]
GROUPED: tuple[str, ...] = ("blocks", "paper")
Structure = Literal["elements", "kernels"]
STRUCTURES: tuple[str, ...] = ("elements", "kernels")
# Options whose value is one of a few names, checked before any work: (scheme, option) -> names.
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("eoi", "grouped"): GROUPED,
    ("eoi", "structure"): STRUCTURES,
    ("orthogonal", "grouped"): GROUPED,
    ("orthogonal", "conv"): CONV_RULES,
    ("conv-orthogonal", "grouped"): GROUPED,
    ("ai", "conv"): ("flat", "delta", "conv-orthogonal"),
}


@dataclass(frozen=True)
class Scheme:
    """A registered scheme: ``fn(layers, masks, densities, *, gain, generator, **options)``."""

    name: str
    fn: SchemeFn
    own_masks: bool

    @property
    def options(self) -> list[str]:
        return [p.name for p in inspect.signature(self.fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON]


SCHEMES: Registry[Scheme] = Registry("init scheme")


def register_scheme(name: str, fn: SchemeFn | None = None, *,
                    own_masks: bool = False) -> Callable[[SchemeFn], SchemeFn] | SchemeFn:
    """Register ``fn`` as scheme ``name``; usable as a decorator when ``fn`` is omitted.

    Args:
        name: the string users pass as ``init=``.
        fn: ``fn(layers, masks, densities, *, gain, generator, **options) -> {name: mask}``;
            ``masks`` is ``None`` for ``own_masks`` schemes called with densities only.
        own_masks: the scheme picks positions from the densities instead of keeping ``masks``;
            it must leave the weights exactly zero off the masks it returns.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def add(item: SchemeFn) -> SchemeFn:
        if not callable(item):
            raise TypeError(f"scheme {name!r} must be callable, got {type(item).__name__}")
        SCHEMES.register(name, Scheme(name, item, bool(own_masks)))
        return item

    return add if fn is None else add(fn)


def get_scheme(name: str) -> Scheme:
    """Return the registered init scheme ``name``; unknown names raise ``ValueError`` listing
    all."""
    return SCHEMES.get(name)


def list_inits() -> list[str]:
    """Return the registered init scheme names (what ``sparsify(init=...)`` takes), sorted."""
    return SCHEMES.names()


# ----------------------------------------------------------------------------- helpers
def _cpu_work(weight: Tensor) -> Tensor:
    """An empty CPU tensor shaped like ``weight`` to draw into (draws happen on the CPU)."""
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.empty(weight.shape, dtype=dtype)


def _groups(layer: PrunableLayer, grouped: str) -> int:
    """The groups an init gives ``layer``: the conv's own with ``"blocks"``, else 1."""
    module = layer.module
    if grouped == "paper" or not isinstance(module, nn.modules.conv._ConvNd) \
            or layer.weight.dim() < 3:
        return 1
    return int(module.groups)


def _layer_groups(layer: PrunableLayer) -> int:
    """The groups of the operator ``layer`` computes (1 for anything but a grouped conv)."""
    return _groups(layer, "blocks")


def _shown(indices: Tensor, limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:limit].tolist())
    return f"[{shown}{', ...' if indices.numel() > limit else ''}]"


def dead_channels(weight: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """Return the indices of the dead output and input channels of a weight.

    An output channel is dead when its whole weight row ``weight[o]`` is zero; an input channel
    when no nonzero weight reads it (with ``groups``, input channel ``g * (c_in/groups) + j``
    is read only by block ``g``'s column ``j``). Pass a bool mask to count the channels no
    trainable weight can ever revive.

    Args:
        weight: ``(out, in)`` or ``(c_out, c_in/groups, *kernel)``.
        groups: the conv's groups.
    """
    nonzero = (weight != 0).reshape(weight.shape[0], weight.shape[1], -1).any(dim=2)  # (o, i)
    dead_out = torch.nonzero(~nonzero.any(dim=1)).flatten()
    blocks = nonzero.reshape(groups, weight.shape[0] // groups, weight.shape[1])  # (g, o/g, i)
    dead_in = torch.nonzero(~blocks.any(dim=1).flatten()).flatten()
    return dead_out.cpu(), dead_in.cpu()


def _warn_dead_channels(scheme: str, layers: Sequence[PrunableLayer],
                        masks: Mapping[str, Tensor], stacklevel: int) -> None:
    for layer in layers:
        groups = _layer_groups(layer)
        dead_out, dead_in = dead_channels(layer.weight, groups)
        if not dead_out.numel() and not dead_in.numel():
            continue
        never_out, never_in = dead_channels(masks[layer.name], groups)
        c_out, c_in = layer.weight.shape[0], layer.weight.shape[1] * groups
        parts = []
        if dead_out.numel():
            parts.append(f"{dead_out.numel()} of {c_out} output channels have all-zero weights "
                         f"{_shown(dead_out)} ({never_out.numel()} with no trainable weight)")
        if dead_in.numel():
            parts.append(f"{dead_in.numel()} of {c_in} input channels are read by no nonzero "
                         f"weight {_shown(dead_in)} ({never_in.numel()} with no trainable "
                         f"weight)")
        warnings.warn(f"init {scheme!r} leaves layer {layer.name!r} with dead channels at "
                      f"initialization: {'; '.join(parts)}", stacklevel=stacklevel)


def _names(layers: Sequence[PrunableLayer]) -> str:
    shown = ", ".join(repr(layer.name) for layer in layers[:3])
    return shown + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")


# ----------------------------------------------------------------------------- built-in schemes
@register_scheme("eoi", own_masks=True)
def _eoi(layers: list[PrunableLayer], masks: Mapping[str, Tensor] | None,
         densities: Mapping[str, float], *, gain: float, generator: torch.Generator | None,
         center_density: float | str | None = None, nm: tuple[int, int] | str | None = None,
         grouped: Grouped = "blocks",
         structure: Structure = "elements") -> dict[str, Tensor]:
    """Exact Orthogonal Initialization: the rotations choose the positions.

    `Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
    Initialization` - Nowak et al. (2024), arXiv 2406.01755. Layers of equal shape, density,
    dtype, device and groups are generated in one batched call (``orthosparse.init.eoi_group_``);
    convs get the sparse delta-orthogonal kernel (``center_density``: see ``orthosparse.init``),
    grouped convs one exact orthogonal centre block per group (``grouped="blocks"``) or the
    paper's one matrix (``grouped="paper"``). ``nm=(N, M)`` (or ``"N,M"``): N:M structured EOI
    (``eoi_group_(..., nm=)``, docs/nm.md §7, §9); ``sparsify(mask="nm")`` passes its ``nm``
    here too.

    ``structure="kernels"``: a conv keeps whole kernels, every tap of ``(o, i)`` where the centre
    matrix ``H`` is nonzero (``H`` at the layer's density), the official code's structured
    variant (``EIS``, ``StrcuturedSparseOrthogonalPreprocesser``; docs/protocol.md); Linear
    weights are unchanged. ``"elements"`` (default): the mask is EOI's own.
    """
    if structure == "kernels" and center_density not in (None, "same"):
        raise ValueError(f"structure='kernels' keeps the kernels of the centre matrix, whose "
                         f"density is the layer's: center_density={center_density!r} must be "
                         f"None or 'same'")
    empty = [layer for layer in layers if densities[layer.name] == 0]
    if empty:  # a data-driven mask method pruned whole layers (layer collapse)
        # As the official code does (orthogonal_with_density at density 0), such a layer gets
        # EOI's floor: the sparsest exactly orthogonal weight, one nonzero per row or column of
        # its smaller side (a density below 1/numel keeps no weight beyond the floor).
        names = [layer.name for layer in empty]
        warnings.warn(f"the mask method left {len(empty)} layer(s) with density 0 "
                      f"({', '.join(map(repr, names[:5]))}{', ...' if len(empty) > 5 else ''}); "
                      f"EOI gives them its floor, the sparsest exactly orthogonal weight, as "
                      f"the official code does", stacklevel=3)
        densities = {**densities, **{layer.name: 0.5 / layer.weight.numel() for layer in empty}}
    layer_nm = _eoi_nm(layers, densities, nm)
    groups: dict[tuple, list[PrunableLayer]] = {}
    for layer in layers:
        w = layer.weight
        key = (tuple(w.shape), densities[layer.name], w.dtype, w.device, _groups(layer, grouped),
               layer_nm[layer.name])
        groups.setdefault(key, []).append(layer)
    out: dict[str, Tensor] = {}
    for (_, density, _, _, conv_groups, group_nm), group in groups.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = eoi_group_([layer.weight for layer in group], density, gain=gain,
                             generator=generator, center_density=center_density,
                             groups=conv_groups, nm=group_nm)
        for warning in caught:  # the core does not know the layer names: add them
            warnings.warn(f"layer {_names(group)}: {warning.message}", warning.category,
                          stacklevel=3)
        out.update(zip([layer.name for layer in group], got, strict=True))
    if structure == "kernels":
        for layer in layers:
            w = layer.weight
            if w.dim() > 2:  # (c_out, c_in/groups, *kernel): whole kernels where H != 0
                centre = w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))]
                out[layer.name] = (centre != 0).reshape(*centre.shape, *[1] * (w.dim() - 2)
                                                        ).expand(w.shape).clone()
    return {layer.name: out[layer.name] for layer in layers}


def _eoi_nm(layers: list[PrunableLayer], densities: Mapping[str, float],
            nm: object) -> dict[str, tuple[int, int] | None]:
    """Each layer's ``nm`` under the eoi option ``nm`` (docs/nm.md §9): ``(N, M)``, or None for a
    layer whose input size is not a multiple of ``M`` and that is dense (density 1, as
    ``mask="nm", nm_indivisible="dense"`` leaves it).

    Raises:
        ValueError: sparse layers whose input size is not a multiple of ``M`` (listing them).
    """
    if nm is None:
        return {layer.name: None for layer in layers}
    n, m = check_nm_option(nm)
    bad = [(name, size) for name, size in indivisible_layers(layers, m)
           if densities[name] < 1.0]
    if bad:
        shown = ", ".join(f"{name!r} (input size {size})" for name, size in bad)
        raise ValueError(f"init 'eoi' with nm={(n, m)} needs the input size of every sparse "
                         f"layer to be a multiple of M={m}; not: {shown} (mask 'nm' with "
                         f"nm_indivisible='dense' keeps such layers dense)")
    return {layer.name: None if int(layer.weight.shape[1]) % m else (n, m) for layer in layers}


@register_scheme("orthogonal")
def _orthogonal(layers: list[PrunableLayer], masks: Mapping[str, Tensor],
                densities: Mapping[str, float], *, gain: float,
                generator: torch.Generator | None, conv: str = "delta",
                grouped: Grouped = "blocks") -> Mapping[str, Tensor]:
    """Dense orthogonal, then masked: the paper's baseline.

    Convs by ``conv`` (``orthosparse.init.ConvRule``): ``"delta"`` (default, centre tap only),
    ``"conv-orthogonal"`` (every tap, the official code's baseline; the same as the
    ``conv-orthogonal`` scheme) or ``"flat"``.
    """
    for layer in layers:
        orthogonal_(layer.weight, gain, generator=generator, conv=conv,
                    groups=_groups(layer, grouped))
    return masks


@register_scheme("conv-orthogonal")
def _conv_orthogonal(layers: list[PrunableLayer], masks: Mapping[str, Tensor],
                     densities: Mapping[str, float], *, gain: float,
                     generator: torch.Generator | None, grouped: Grouped = "blocks"
                     ) -> Mapping[str, Tensor]:
    """Dense orthogonal with every conv tap nonzero, then masked: the official baseline.

    Linear weights: ``torch.nn.init.orthogonal_``; convs: ``orthosparse.init.conv_orthogonal_``
    (`Dynamical Isometry and a Mean Field Theory of CNNs` - Xiao et al. (2018), arXiv
    1806.05393, Algorithm 1), as the official EOI code's ``Orthogonal`` initializer does.
    """
    for layer in layers:
        if layer.weight.dim() > 2:
            conv_orthogonal_(layer.weight, gain, generator=generator,
                             groups=_groups(layer, grouped))
        else:
            orthogonal_(layer.weight, gain, generator=generator)
    return masks


@register_scheme("kaiming")
def _kaiming(layers: list[PrunableLayer], masks: Mapping[str, Tensor],
             densities: Mapping[str, float], *, gain: float,
             generator: torch.Generator | None) -> Mapping[str, Tensor]:
    """PyTorch's default Linear/Conv weight init (``reset_parameters``), times ``gain``, masked.

    ``W ~ U(-b, b)``, ``b = gain * 1/sqrt(fan_in)`` with the dense ``fan_in`` (it is
    ``kaiming_uniform_(a=sqrt(5))``: ``sqrt(2/(1+5)) * sqrt(3/fan_in) = 1/sqrt(fan_in)``).
    """
    for layer in layers:
        work = _cpu_work(layer.weight)
        nn.init.kaiming_uniform_(work, a=math.sqrt(5), generator=generator)
        layer.weight.copy_(work.mul_(gain))
    return masks


@register_scheme("sparse-kaiming")
def _sparse_kaiming(layers: list[PrunableLayer], masks: Mapping[str, Tensor],
                    densities: Mapping[str, float], *, gain: float,
                    generator: torch.Generator | None,
                    nonlinearity: str = "relu") -> Mapping[str, Tensor]:
    """Kaiming normal with each output unit's true fan-in under the mask.

    `Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win` - Evci et al. (2022),
    arXiv 2010.03533: ``W_ij ~ N(0, s_i^2)`` on kept entries,
    ``s_i = gain * g(nonlinearity) / sqrt(fan_in_i)``, ``fan_in_i = sum_j M_ij`` (over input
    channels and kernel taps), ``g`` = ``torch.nn.init.calculate_gain`` (``sqrt(2)`` for relu).
    The variance of each pre-activation then matches the dense He init. Units with fan-in 0
    stay 0 (they have no kept weights).
    """
    g_nl = nn.init.calculate_gain(nonlinearity)
    for layer in layers:
        mask = masks[layer.name]
        fan_in = mask.reshape(mask.shape[0], -1).sum(dim=1).cpu()  # (c_out,)
        std = gain * g_nl / fan_in.clamp(min=1).to(torch.float64).sqrt()  # (c_out,)
        work = _cpu_work(layer.weight)
        work.normal_(0.0, 1.0, generator=generator)
        view = (-1,) + (1,) * (work.dim() - 1)
        work.mul_(std.to(work.dtype).view(view))
        layer.weight.copy_(work)
    return masks


@register_scheme("none")
def _none(layers: list[PrunableLayer], masks: Mapping[str, Tensor],
          densities: Mapping[str, float], *, gain: float,
          generator: torch.Generator | None) -> Mapping[str, Tensor]:
    """Keep the model's own weights and biases; only the pruned entries become 0."""
    return masks


@register_scheme("ai")
def _ai(layers: list[PrunableLayer], masks: Mapping[str, Tensor],
        densities: Mapping[str, float], *, gain: float, generator: torch.Generator | None,
        iterations: int = 1000, lr: float = 0.1, start: str = "orthogonal",
        conv: str = "flat") -> Mapping[str, Tensor]:
    """Approximate isometry on the given masks (``orthosparse.baselines.ai``); ``conv`` is the
    orthogonal start of conv weights (``"flat"``, ``"delta"``, ``"conv-orthogonal"``)."""
    approximate_isometry_([layer.weight for layer in layers],
                          [masks[layer.name] for layer in layers], gain=gain,
                          iterations=iterations, lr=lr, start=start, generator=generator,
                          conv=conv)
    return masks


@register_scheme("sao", own_masks=True)
def _sao(layers: list[PrunableLayer], masks: Mapping[str, Tensor] | None,
         densities: Mapping[str, float], *, gain: float, generator: torch.Generator | None,
         activation: str = "tanh", fallback: bool = False, non_square: str = "dense",
         blocks: str = "haar") -> dict[str, Tensor]:
    """Sparsity-aware orthogonal init from the densities (``orthosparse.baselines.sao``).

    ``non_square="dense"`` (the paper's official code) or ``"sparse"``; ``blocks="haar"`` or
    ``"official"`` (``scipy.linalg.orth`` of uniform draws, as the official code draws them).
    """
    got = sao_layers_([layer.weight for layer in layers],
                      [densities[layer.name] for layer in layers], gain=gain,
                      generator=generator, activation=activation, fallback=fallback,
                      non_square=non_square, blocks=blocks,
                      names=[layer.name for layer in layers])
    return dict(zip([layer.name for layer in layers], got, strict=True))


# ----------------------------------------------------------------------------- entry point
def _check_real(value: object, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value) or (value <= 0.0 if positive else value < 0.0):
        raise ValueError(f"{name}={value} must be a finite number {'> 0' if positive else '>= 0'}")
    return value


def _check_layers(layers: object) -> list[PrunableLayer]:
    if isinstance(layers, nn.Module):
        return prunable_layers(layers)
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a model or a list of PrunableLayer, got "
                        f"{type(layers).__name__}")
    layers = list(layers)
    for layer in layers:
        if not isinstance(layer, PrunableLayer):
            raise TypeError(f"layers must hold PrunableLayer entries (from prunable_layers), "
                            f"got {type(layer).__name__}")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"layers lists a parameter twice: {names}")
    return layers


def _check_mask_map(masks: object, layers: list[PrunableLayer], what: str) -> dict[str, Tensor]:
    if not isinstance(masks, Mapping):
        raise TypeError(f"{what} must be a mapping {{layer name: bool tensor}}, got "
                        f"{type(masks).__name__}")
    names = [layer.name for layer in layers]
    extra = [name for name in masks if name not in names]
    missing = [name for name in names if name not in masks]
    if extra or missing:
        raise ValueError(f"{what} must have one entry per layer; missing: {missing or 'none'}, "
                         f"not a layer: {extra or 'none'}")
    out = {}
    for layer in layers:
        mask = masks[layer.name]
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"{what}[{layer.name!r}] must be a bool tensor, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != layer.weight.shape:
            raise ValueError(f"{what}[{layer.name!r}] has shape {tuple(mask.shape)} but the "
                             f"parameter {layer.name!r} has shape {tuple(layer.weight.shape)}")
        out[layer.name] = mask.to(layer.weight.device)
    return out


def check_scheme_arguments(entry: Scheme, gain: object, bias_std: object,
                           options: Mapping[str, Any]) -> tuple[float, float]:
    """Validate ``gain``, ``bias_std`` and the options of init scheme ``entry``; return the
    numbers as floats."""
    gain = _check_real(gain, "gain", positive=True)
    bias_std = _check_real(bias_std, "bias_std", positive=False)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        allowed = ", ".join(entry.options) or "(none)"
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for init scheme "
                        f"{entry.name!r}; its options are: {allowed}")
    if options.get("nm") is not None and "nm" in entry.options:
        check_nm_option(options["nm"])  # N:M structure (docs/nm.md §9), before any work
    for key, value in options.items():
        allowed = _CHOICES.get((entry.name, key))
        if allowed is not None and (not isinstance(value, str) or value not in allowed):
            raise ValueError(f"{key}={value!r} for init scheme {entry.name!r} must be one of: "
                             f"{', '.join(map(repr, allowed))}")
    if entry.name == "none" and bias_std != 0.0:
        raise ValueError(f"init='none' keeps the model's biases; bias_std={bias_std} must be 0")
    return gain, bias_std


def init_layers(
    scheme: SchemeName | str,
    layers: Sequence[PrunableLayer] | nn.Module,
    masks: Mapping[str, Tensor] | None,
    *,
    densities: Mapping[str, float] | None = None,
    gain: float = 1.0,
    bias_std: float = 0.0,
    generator: torch.Generator | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    """Initialize masked layers in place with a named scheme; return their final masks.

    ``eoi`` (and ``sao``) use only the per-layer densities (``densities``, else each mask's kept
    fraction) and return masks of their own; every other scheme keeps ``masks``. Afterwards the
    pruned entries of every weight are 0 and every bias of these layers is drawn from
    ``N(0, bias_std^2)`` (zero by default), except with ``none``, which keeps the model's values.
    Normalization layers are not touched. Nothing is installed: pass the result to
    :func:`orthosparse.sparse.apply_masks` (``sparsify`` does both).

    Args:
        scheme: an init scheme name from :func:`list_inits`.
        layers: the layers (``prunable_layers(model)``) or a model (all its prunable layers).
        masks: ``{layer name: bool mask}`` with one entry per layer; ``None`` means dense for
            schemes that keep masks and requires ``densities`` for ``eoi``/``sao``.
        densities: ``{layer name: density}`` for ``eoi``/``sao`` (overrides the masks').
        gain: weight scale (orthogonal: ``W W^T = gain^2 I``; kaiming: bound times ``gain``).
        bias_std: standard deviation of the biases.
        generator: CPU generator for every draw (weights in layer order, then biases).
        **options: scheme options, e.g. ``center_density`` (eoi), ``nonlinearity``
            (sparse-kaiming), ``iterations`` (ai), ``activation`` (sao).

    Returns:
        ``{layer name: bool mask}`` in layer order, on each weight's device.

    Raises:
        ValueError: unknown init scheme (listing the valid ones), bad gain/bias_std/density, masks
            or densities that do not match the layers (naming the parameter and both shapes).
        TypeError: bad argument types or an option the scheme does not take.

    Example:
        >>> model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
        >>> masks = init_layers("eoi", model, None, densities={"0.weight": 0.1, "2.weight": 0.5},
        ...                     generator=torch.Generator().manual_seed(0))
    """
    entry = get_scheme(scheme)
    layers = _check_layers(layers)
    gain, bias_std = check_scheme_arguments(entry, gain, bias_std, options)
    generator = check_generator(generator)
    if not layers:
        return {}

    given = None if masks is None else _check_mask_map(masks, layers, "masks")
    if densities is not None:
        if not isinstance(densities, Mapping):
            raise TypeError(f"densities must be a mapping {{layer name: density}}, got "
                            f"{type(densities).__name__}")
        names = [layer.name for layer in layers]
        if set(densities) != set(names):
            raise ValueError(f"densities must have one entry per layer; missing: "
                             f"{[n for n in names if n not in densities] or 'none'}, not a "
                             f"layer: {[n for n in densities if n not in names] or 'none'}")
        densities = {n: check_density(densities[n], f"densities[{n!r}]") for n in names}
    elif given is not None:
        densities = {n: int(torch.count_nonzero(m)) / m.numel() for n, m in given.items()}
    elif entry.own_masks:
        raise ValueError(f"init scheme {scheme!r} needs per-layer densities: pass masks or "
                         f"densities")
    else:
        densities = {layer.name: 1.0 for layer in layers}
    if given is None and not entry.own_masks:
        given = {layer.name: torch.ones(layer.weight.shape, dtype=torch.bool,
                                        device=layer.weight.device) for layer in layers}
    return run_scheme(entry, layers, given, densities, gain=gain, bias_std=bias_std,
                      generator=generator, options=options)


def run_scheme(entry: Scheme, layers: list[PrunableLayer], masks: Mapping[str, Tensor] | None,
               densities: Mapping[str, float], *, gain: float, bias_std: float,
               generator: torch.Generator | None, options: Mapping[str, Any],
               keep_values: bool = False) -> dict[str, Tensor]:
    """:func:`init_layers` on checked arguments (``masks`` may be ``None`` only for a scheme
    that builds its own); the scheme's output masks are still checked, and a warning names
    every layer left with dead channels (:func:`dead_channels`).

    Schemes see every weight as ``(out, in, *kernel)``: a layer stored ``(in, out)`` (Hugging
    Face ``Conv1D``) is passed as its transposed view, its masks transposed both ways.

    ``keep_values``: the weights and biases already hold this scheme's dense draw (``sparsify``
    scored them, option ``score_weights``): only mask them (a scheme that keeps masks only).
    """
    if keep_values and entry.own_masks:
        raise AssertionError(f"keep_values needs a scheme that keeps masks, not {entry.name!r}")
    stored = layers
    if any(layer.transposed for layer in layers):
        layers = [layer.oriented() for layer in stored]
        if masks is not None:
            masks = {layer.name: layer.orient(masks[layer.name]) for layer in stored}
    with torch.no_grad():
        result = masks if keep_values else entry.fn(layers, masks, densities, gain=gain,
                                                    generator=generator, **options)
        final = _check_mask_map(result, layers, f"the masks returned by init scheme "
                                                f"{entry.name!r}")
        if not entry.own_masks:  # schemes that build their own masks build zeros off them
            for layer in layers:
                layer.weight.masked_fill_(~final[layer.name], 0)
        if entry.name != "none" and not keep_values:
            for layer in layers:
                bias = getattr(layer.module, "bias", None)
                if isinstance(bias, Tensor):
                    if bias_std == 0.0:
                        bias.zero_()
                    else:
                        work = torch.empty(bias.shape, dtype=torch.float64)
                        work.normal_(0.0, bias_std, generator=generator)
                        bias.copy_(work)
    _warn_dead_channels(entry.name, layers, final, stacklevel=4)
    if stored is not layers:
        final = {layer.name: layer.orient(final[layer.name]).contiguous() for layer in stored}
    return final
