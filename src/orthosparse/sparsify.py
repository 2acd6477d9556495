"""One call from a dense model to a sparse one: mask method -> densities -> init -> fixed masks.

The pipeline (docs/design.md §3, the sparsify pipeline):

1. Validate once, here: the density, the mask method and init scheme names, the generator, the
   options (each routed to the step that takes it), gain and bias_std. The steps below take the
   checked values as they are.
2. ``prunable_layers(model, exclude)``: Linear/Conv, Hugging Face ``Conv1D`` and
   ``MultiheadAttention`` weights, one per Parameter (``orthosparse._layers``), minus the excluded
   ones (which are left exactly as they are: not masked, not re-initialized); a reparametrized
   weight (prune, weight_norm, parametrize) is an error naming the call that undoes it.
3. The mask method's per-layer densities (``orthosparse.masks``). An init scheme that builds its
   own masks (``eoi``, ``sao``) takes only these, so a random method (``uniform``, ``erk``, ...)
   draws no position; any other scheme gets masks with uniformly random positions. Data-driven
   methods (``snip``, ``grasp``, ``synflow``) score the weights the model has when ``sparsify``
   is called (``score_weights="current"``, the default) or a dense draw of a named init made
   just before (``score_weights="conv-orthogonal"`` etc., the official code's protocol), and
   their densities are those of their masks.
4. ``orthosparse.schemes``: weights and biases by the init scheme; the masks it returns.
5. ``orthosparse.sparse.apply_masks``: the masks become fixed (zero weights, masked gradients);
   warnings name weights tied to an unprunable module (left dense) and a large share of
   parameters that no mask covers (``orthosparse.sparse.coverage_warnings``).

Example:
    >>> model = nn.Sequential(nn.Linear(784, 100), nn.Tanh(), nn.Linear(100, 10))
    >>> masks = sparsify(model, 0.1, mask="erk", init="eoi",
    ...                  generator=torch.Generator().manual_seed(0))
    >>> print(density_report(model))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_gain, check_generator
from ._layers import check_maskable, prunable_layers
from .masks.compute import check_method_density, densities_for, get_mask_method, masks_for
from .schemes import SchemeName, check_scheme_arguments, get_scheme, run_scheme
from .sparse import (
    _record_targets,
    apply_masks,
    attach_optimizer,
    coverage_warnings,
    density_report,
    get_masks,
)
from .sparse import remove_masks as _remove_masks

__all__ = ["SCORE_WEIGHTS", "attach_optimizer", "density_report", "sparsify"]

SCORE_WEIGHTS: tuple[str, ...] = ("current", "orthogonal", "conv-orthogonal", "kaiming")
"""Values of ``sparsify(score_weights=...)``: ``"current"`` (the model's weights) or the dense
init scheme drawn before the mask method runs."""


# Options a mask method and an init scheme may both take, and then both get: the structure of the
# masks, which a scheme that builds its own masks must build too (nm: docs/nm.md §9).
_SHARED_OPTIONS: tuple[str, ...] = ("nm",)


def _route(options: dict[str, Any], mask: object, mask_opts: list[str], init: str,
           init_opts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send each option to the mask method or the init scheme that takes it (a shared one,
    :data:`_SHARED_OPTIONS`, to both)."""
    to_mask, to_init = {}, {}
    for key, value in options.items():
        if key in mask_opts and key in init_opts and key in _SHARED_OPTIONS:
            to_mask[key] = to_init[key] = value
        elif key in mask_opts and key in init_opts:
            raise TypeError(f"option {key!r} is taken by both mask method {mask!r} and init "
                            f"{init!r}; call compute_masks and init_layers separately")
        if key in mask_opts:
            to_mask[key] = value
        elif key in init_opts:
            to_init[key] = value
        else:
            raise TypeError(f"unknown option {key!r}: mask method {mask!r} takes "
                            f"{', '.join(mask_opts) or '(none)'}; init {init!r} takes "
                            f"{', '.join(init_opts) or '(none)'}")
    return to_mask, to_init


def _warn_unused_excludes(model: nn.Module, exclude: tuple[object, ...], total: int) -> None:
    for rule in exclude:
        if len(prunable_layers(model, (rule,))) == total:
            shown = rule.__name__ if isinstance(rule, type) else repr(rule)
            warnings.warn(f"exclude entry {shown} matches no prunable layer of the model",
                          stacklevel=3)


def sparsify(
    model: nn.Module,
    density: float | None,
    *,
    mask: str | Mapping[str, float] = "erk",
    init: SchemeName | str = "eoi",
    data: Iterable | None = None,
    gain: float = 1.0,
    bias_std: float = 0.0,
    generator: torch.Generator | None = None,
    exclude: Iterable[object] | str | type = (),
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    score_weights: str = "current",
    **options: Any,
) -> dict[str, Tensor]:
    """Make ``model`` a static sparse network in place and return its masks.

    `Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
    Initialization` - Nowak et al. (2024), arXiv 2406.01755: the mask method decides per-layer
    densities, EOI builds exactly orthogonal sparse weights with those densities, and the masks
    stay fixed in training (``W_pruned = 0``, ``grad_pruned = 0`` at every step).

    Args:
        model: any module; its Linear/Conv weights are sparsified.
        density: overall fraction of prunable weights kept, in (0, 1] (may be ``None`` when
            ``mask`` is a per-layer density map, or ``"nm"``: ``N/M``).
        mask: mask method (``orthosparse.masks.list_mask_methods()``) or ``{name or glob:
            density}``.
        init: init scheme (:func:`~orthosparse.schemes.list_inits`).
        data: batches ``(inputs, targets)`` for ``snip``/``grasp`` (input shape for ``synflow``).
        gain: weight scale (paper: 1.0; 1000-layer tanh nets:
            :data:`orthosparse.paper.DEEP_TANH_GAIN`).
        bias_std: biases ~ ``N(0, bias_std^2)`` (paper: 0; 1000-layer tanh nets:
            :data:`orthosparse.paper.DEEP_TANH_BIAS_STD`).
        generator: CPU generator for every random draw: mask positions (only for init schemes
            that keep the masks), then weights, then biases.
        exclude: module types or glob patterns of layers left untouched (dense, not
            re-initialized); a pattern matching nothing gives a warning.
        loss_fn: ``loss_fn(outputs, targets)`` for ``snip``/``grasp`` (default cross-entropy).
        score_weights: the weights the mask method sees. ``"current"`` (default): the model's
            own, as given (a pretrained or custom-initialized model is scored as it is).
            ``"orthogonal"``, ``"conv-orthogonal"`` or ``"kaiming"``: first re-initialize every
            sparsified layer densely with that init scheme (``gain``, ``bias_std``, this
            ``generator``, the init options it shares, e.g. ``grouped``, and options only it
            takes), as the official
            code scores SNIP/GraSP/SynFlow on its dense orthogonal model
            (``conv-orthogonal``: ``conv_orthogonal`` for convs; docs/protocol.md). When
            ``init`` is that same scheme, the scored weights are kept (masked) instead of drawn
            again, as the official masked-orthogonal baseline keeps them; ``init="none"`` keeps
            them too, and ``init="ai", start="current"`` starts AI from them (the official AI).
            Random mask methods draw positions only, so the re-initialization matters for them
            only through those kept weights.
        **options: options of the mask method (e.g. ``erk_power_scale``, ``rounds``) or of the
            init scheme (e.g. ``center_density``, ``nonlinearity``), routed by name. ``nm=(N,
            M)`` goes to both ``mask="nm"`` and ``init="eoi"``: N:M masks, built by EOI itself
            (``eoi_(nm=)``) or drawn at random for a scheme that keeps masks (docs/nm.md §9).

    Returns:
        ``{parameter name: bool mask}`` of every sparsified weight, as installed on the model.

    Raises:
        ValueError: bad density, unknown mask or init name (listing the valid ones), an unknown
            ``score_weights`` (listing the valid ones), a model without prunable layers, any
            error of the mask method or scheme.
        TypeError: bad argument types, an option no step takes.

    Example:
        >>> masks = sparsify(model, 0.05, mask="snip", init="eoi", data=loader,
        ...                  generator=torch.Generator().manual_seed(0))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    method = get_mask_method(mask, name="mask")  # unknown names fail before any work
    density = check_method_density(method, density)
    generator = check_generator(generator)
    scheme = get_scheme(init)
    if not isinstance(score_weights, str) or score_weights not in SCORE_WEIGHTS:
        raise ValueError(f"score_weights={score_weights!r} must be one of: "
                         f"{', '.join(map(repr, SCORE_WEIGHTS))}")
    score = None if score_weights == "current" else get_scheme(score_weights)
    # Options of the scoring scheme that neither the mask method nor the init takes go to the
    # scoring scheme alone (e.g. grouped="paper" for conv-orthogonal scores under init="ai").
    score_only = {} if score is None else {
        k: options.pop(k) for k in list(options)
        if k in score.options and k not in method.options and k not in scheme.options}
    to_mask, to_init = _route(options, mask, method.options, init, scheme.options)
    if scheme.own_masks and method.positions is not None:  # structured masks (nm)
        lost = [k for k in _SHARED_OPTIONS if k in method.options and k not in scheme.options]
        if lost:
            raise ValueError(f"mask {mask!r} gives structured masks ({', '.join(lost)}), but "
                             f"init {init!r} builds its own masks without that structure; use "
                             f"init 'eoi' or a scheme that keeps masks")
    check_gain(gain)  # the one gain rule of every entry point (orthosparse._checks)
    gain, bias_std = check_scheme_arguments(scheme, gain, bias_std, to_init)
    score_opts = {} if score is None else {
        **{k: v for k, v in to_init.items() if k in score.options}, **score_only}
    if score is not None:
        check_scheme_arguments(score, gain, bias_std, score_opts)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(exclude, (str, type, Iterable)):
        raise TypeError(f"exclude must be a glob pattern, a module type or an iterable of them, "
                        f"got {type(exclude).__name__}: {exclude!r}")
    exclude = (exclude,) if isinstance(exclude, (str, type)) else tuple(exclude)
    everything = prunable_layers(model)
    layers = prunable_layers(model, exclude)
    check_maskable(layers)  # pruned / weight-normed / parametrized: say which call undoes it
    _warn_unused_excludes(model, exclude, len(everything))
    if not layers:
        raise ValueError("no prunable layers: the model has no Linear/Conv weights"
                         + (f" left after exclude={list(exclude)!r}" if exclude else ""))
    previous = get_masks(model)
    if previous:
        warnings.warn(f"the model already has fixed masks on {len(previous)} parameters; "
                      f"sparsify replaces them", stacklevel=2)
        _remove_masks(model, bake=False)

    if score is not None:  # the dense weights the mask method sees (and a same init keeps)
        run_scheme(score, layers, {layer.name: torch.ones(layer.weight.shape, dtype=torch.bool,
                                                          device=layer.weight.device)
                                   for layer in layers},
                   {layer.name: 1.0 for layer in layers}, gain=gain, bias_std=bias_std,
                   generator=generator, options=score_opts)
    if scheme.own_masks:  # the scheme picks positions: ask for densities only
        masks = None
        densities = densities_for(method, model, layers, density, data=data, loss_fn=loss_fn,
                                  options=to_mask)
    else:
        masks = masks_for(method, model, layers, density, data=data, generator=generator,
                          loss_fn=loss_fn, options=to_mask)
        densities = {name: int(torch.count_nonzero(m)) / m.numel() for name, m in masks.items()}
    final = run_scheme(scheme, layers, masks, densities, gain=gain, bias_std=bias_std,
                       generator=generator, options=to_init,
                       keep_values=score is not None and score.name == scheme.name)
    apply_masks(model, final)
    _record_targets(model, densities)
    coverage_warnings(model, stacklevel=2)  # tied weights left dense, large unprunable share
    return final
