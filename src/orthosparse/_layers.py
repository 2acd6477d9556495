"""Which parameters of a model are prunable, and what the rest of the model is.

Prunable weights (docs/design.md §4, coverage):

* ``nn.Linear`` (and subclasses such as ``nn.MultiheadAttention.out_proj``) and
  ``nn.Conv1d/2d/3d``: ``weight``, stored ``(out, in, *kernel)``.
* Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2's attention and MLP projections):
  ``weight``, stored ``(in, out)``; recognized by class name and its ``nx``/``nf`` attributes, so
  the core never imports ``transformers``. :meth:`PrunableLayer.oriented` gives the
  ``(out, in)`` view that init schemes fill, so fan-in and fan-out are the layer's own.
* ``nn.MultiheadAttention``'s packed ``in_proj_weight`` ``(3E, E)``: one ``(out, in)`` matrix
  ``[W_q; W_k; W_v]``, as PyTorch itself initializes it (``xavier_uniform_`` on the packed matrix,
  fan-in ``E``, fan-out ``3E``), so ERK sees ``3E`` rows and ``E`` columns and EOI makes the
  packed matrix's ``E`` columns orthonormal. With ``kdim``/``vdim`` set, ``q_proj_weight``,
  ``k_proj_weight`` and ``v_proj_weight`` are three separate prunable weights.

Shared parameters: one entry per Parameter object, under its first name (the name
``model.named_parameters()`` gives it), so it is masked, initialized and counted once. A
Parameter that a module without prunable weights also uses (an output layer tied to a token
embedding, GPT-2's ``lm_head``/``wte``) is not prunable: masking it would zero the embedding as a
side effect. :func:`tied_to_unprunable` lists such weights; ``sparsify`` leaves them dense with
a warning.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["PRUNABLE_TYPES", "PrunableLayer", "check_maskable", "parameter_owners",
           "prunable_layers", "tied_to_unprunable"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass(frozen=True)
class PrunableLayer:
    """A prunable weight: ``module.<attr>`` is known in the model as ``name`` (``"fc.weight"``).

    ``transposed``: the weight is stored ``(in, out)`` (Hugging Face ``Conv1D``) rather than
    PyTorch's ``(out, in)``.
    """

    name: str
    module_name: str
    module: nn.Module
    attr: str = "weight"
    transposed: bool = False

    @property
    def weight(self) -> Tensor:
        """The weight as stored (a Parameter, unless the module reparametrizes it)."""
        return getattr(self.module, self.attr)

    def orient(self, tensor: Tensor) -> Tensor:
        """``tensor`` (shaped like the stored weight) in ``(out, in, *kernel)`` orientation, or
        back: a transpose for ``(in, out)`` storage, else ``tensor`` itself."""
        return tensor.T if self.transposed else tensor

    def oriented(self) -> PrunableLayer:
        """This layer with ``.weight`` an ``(out, in, *kernel)`` view of the stored weight."""
        return _OrientedLayer(self.name, self.module_name, self.module, self.attr, False) \
            if self.transposed else self


@dataclass(frozen=True)
class _OrientedLayer(PrunableLayer):
    @property
    def weight(self) -> Tensor:
        return getattr(self.module, self.attr).T


def _is_hf_conv1d(module: nn.Module) -> bool:
    weight = module._parameters.get("weight")
    return (type(module).__name__ == "Conv1D" and isinstance(weight, Tensor)
            and weight.dim() == 2 and tuple(weight.shape) == (getattr(module, "nx", None),
                                                              getattr(module, "nf", None)))


def _candidates(module: nn.Module) -> Iterator[tuple[str, bool]]:
    """``(attribute, transposed)`` of the prunable weights a module owns by its type."""
    if isinstance(module, PRUNABLE_TYPES) or _is_hf_conv1d(module):
        if isinstance(getattr(module, "weight", None), Tensor):
            yield "weight", _is_hf_conv1d(module)
    elif isinstance(module, nn.MultiheadAttention):
        for attr in _MHA_WEIGHTS:
            if isinstance(getattr(module, attr, None), Tensor):
                yield attr, False


def parameter_owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """``id(parameter) -> [(qualified name, module, attribute), ...]`` over every module that
    registers it (a tied parameter has several owners), in registration order."""
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None:
                name = f"{module_name}.{attr}" if module_name else attr
                owners.setdefault(id(param), []).append((name, module, attr))
    return owners


def _prunable_owner(module: nn.Module, attr: str) -> bool:
    return any(a == attr for a, _ in _candidates(module))


def _excluded(module_name: str, name: str, module: nn.Module, exclude: Iterable[object]) -> bool:
    for rule in exclude:
        if isinstance(rule, str):
            if fnmatch.fnmatchcase(module_name, rule) or fnmatch.fnmatchcase(name, rule):
                return True
        elif isinstance(rule, type) and issubclass(rule, nn.Module):
            if isinstance(module, rule):
                return True
        else:
            raise TypeError(
                f"exclude entries must be module types or name patterns (str), got {rule!r}"
            )
    return False


def _all_layers(model: nn.Module) -> tuple[list[PrunableLayer], dict[str, list[str]]]:
    """Prunable layers (one per tensor, first name) and the weights tied to an unprunable owner."""
    owners = parameter_owners(model)
    layers, tied, seen = [], {}, set()
    for module_name, module in model.named_modules():
        for attr, transposed in _candidates(module):
            tensor = getattr(module, attr)
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            name = f"{module_name}.{attr}" if module_name else attr
            others = [n for n, m, a in owners.get(id(tensor), []) if not _prunable_owner(m, a)]
            if others:
                first = owners[id(tensor)][0][0]
                tied[first] = [n for n, _, _ in owners[id(tensor)] if n != first]
                continue
            layers.append(PrunableLayer(name, module_name, module, attr, transposed))
    return layers, tied


def prunable_layers(model: nn.Module, exclude: Iterable[object] = ()) -> list[PrunableLayer]:
    """List the prunable weights of ``model`` (module docstring) in registration order.

    Args:
        model: any module.
        exclude: module types (``nn.Linear``) or glob patterns over module or parameter names
            (``"head"``, ``"features.0"``, ``"*.downsample.*"``); matching layers stay dense.
    """
    exclude = tuple(exclude) if not isinstance(exclude, (str, type)) else (exclude,)
    return [layer for layer in _all_layers(model)[0]
            if not _excluded(layer.module_name, layer.name, layer.module, exclude)]


def tied_to_unprunable(model: nn.Module) -> dict[str, list[str]]:
    """``{first name: [other names]}`` of prunable-type weights that a module without prunable
    weights also uses (``{"transformer.wte.weight": ["lm_head.weight"]}``); they stay dense."""
    return _all_layers(model)[1]


def reparametrization(module: nn.Module, attr: str) -> str | None:
    """How ``module.<attr>`` is computed instead of being a Parameter, with what to do, or None."""
    if isinstance(module._parameters.get(attr), nn.Parameter):
        return None
    hooks = list(module._forward_pre_hooks.values())
    kinds = {type(hook).__module__ + "." + type(hook).__name__ for hook in hooks
             if getattr(hook, "_tensor_name", getattr(hook, "name", None)) == attr}
    if any(kind.startswith("torch.nn.utils.prune.") for kind in kinds):
        return (f"it is pruned by torch.nn.utils.prune ({attr}_orig, {attr}_mask); call "
                f"torch.nn.utils.prune.remove(module, {attr!r}) first (sparsify then "
                f"re-initializes the weight and chooses its own mask)")
    if any(kind.endswith("weight_norm.WeightNorm") for kind in kinds):
        return (f"it has torch.nn.utils.weight_norm ({attr}_g, {attr}_v); call "
                f"torch.nn.utils.remove_weight_norm(module, {attr!r}) first and apply "
                f"weight_norm after the masks (it then keeps them)")
    if torch.nn.utils.parametrize.is_parametrized(module, attr):
        return (f"it is parametrized (torch.nn.utils.parametrize); call "
                f"torch.nn.utils.parametrize.remove_parametrizations(module, {attr!r}) first; "
                f"after the masks only torch.nn.utils.parametrizations.weight_norm can be "
                f"registered again (it keeps them)")
    if isinstance(getattr(module, attr, None), Tensor):
        return "it is a computed tensor, not a registered Parameter"
    return None


def check_maskable(layers: Iterable[PrunableLayer]) -> None:
    """Raise ``ValueError`` naming every layer whose weight is not a plain Parameter (pruned,
    weight-normed or parametrized) and what to do: a fixed mask needs the Parameter itself."""
    bad = []
    for layer in layers:
        reason = reparametrization(layer.module, layer.attr)
        if reason is not None:
            bad.append(f"layer {layer.module_name or '(model)'!r} ({type(layer.module).__name__},"
                       f" {layer.name!r}): {reason}")
    if bad:
        raise ValueError("cannot mask these weights: " + "; ".join(bad)
                         + "; or leave them dense with exclude=[...]")
