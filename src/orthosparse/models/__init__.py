"""Model zoo: ``create_model(name, **kw)`` for every architecture of the paper's experiments.

Names: ``mlp``, ``vanilla-cnn``, ``vanilla-cnn-paper``, ``vgg16``, ``vgg-c``, ``resnet20``,
``resnet32``, ``resnet56``, ``resnet110``, ``efficientnet-b0`` (pure PyTorch, no torchvision).
Every model takes the input size (``in_features`` for the MLP, ``in_channels`` for the conv nets)
and ``num_classes``; ``create_model`` also accepts ``input_shape=(C, H, W)`` and passes on
whichever one the model needs, plus ``input_size=(H, W)`` to the models whose layer sizes depend
on it (``vgg-c``, ``vanilla-cnn*``), so
``create_model(name, input_shape=splits.input_shape, num_classes=splits.num_classes)`` works for
every model and dataset. The output layer of every model is called ``head``.

The architectures of the paper's official code (docs/protocol.md): ``vgg-c`` (SNIP's VGG-C),
the ResNets with ``shortcut="B"`` (1x1 conv + BN projections), ``vanilla-cnn-paper`` (997 circular
convs, 2x2 average pool, Linear 2048 -> 10) and ``efficientnet-b0``. ``vgg16``, the ResNets'
default ``shortcut="A"`` and ``vanilla-cnn`` (global pooling) are the standard variants.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from .._registry import Registry
from ._activations import ACTIVATIONS, Activation, create_activation, list_activations
from .cnn import VanillaCNN, vanilla_cnn_paper
from .efficientnet import EFFICIENTNET_B0_STAGES, EfficientNet, efficientnet_b0
from .mlp import MLP
from .resnet import CIFARResNet, resnet20, resnet32, resnet56, resnet110
from .vgg import SNIPVGG, VGG, VGG16_CONFIG, VGG_C_CONFIG, vgg16, vgg_c

__all__ = [
    "MODELS", "create_model", "list_models", "model_arguments",
    "ACTIVATIONS", "Activation", "create_activation", "list_activations",
    "MLP", "VanillaCNN", "vanilla_cnn_paper", "VGG", "VGG16_CONFIG", "vgg16", "SNIPVGG",
    "VGG_C_CONFIG", "vgg_c", "CIFARResNet", "resnet20", "resnet32", "resnet56", "resnet110",
    "EfficientNet", "EFFICIENTNET_B0_STAGES", "efficientnet_b0",
]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.register("mlp", MLP)
MODELS.register("vanilla-cnn", VanillaCNN)
MODELS.register("vanilla-cnn-paper", vanilla_cnn_paper)
MODELS.register("vgg16", vgg16)
MODELS.register("vgg-c", vgg_c)
MODELS.register("resnet20", resnet20)
MODELS.register("resnet32", resnet32)
MODELS.register("resnet56", resnet56)
MODELS.register("resnet110", resnet110)
MODELS.register("efficientnet-b0", efficientnet_b0)


def list_models() -> list[str]:
    """Sorted names accepted by :func:`create_model`."""
    return MODELS.names()


def model_arguments(name: str) -> dict[str, Any]:
    """Return the keyword arguments of model ``name`` with their defaults.

    Required arguments have the default ``inspect.Parameter.empty``.

    Example:
        >>> model_arguments("mlp")["depth"]
        7
    """
    params = inspect.signature(MODELS.get(name)).parameters
    return {p.name: p.default for p in params.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _resolve_input_shape(name: str, accepted: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """Replace ``input_shape=(C, H, W)`` by ``in_features = C*H*W`` or ``in_channels = C``.

    A model that takes ``input_size`` also gets ``input_size = (H, W)``.
    """
    shape = kwargs.pop("input_shape")
    if not isinstance(shape, Sequence) or isinstance(shape, str) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(f"input_shape={shape!r} must be a sequence of positive ints, e.g. "
                         f"(3, 32, 32)")
    derived = [(key, value) for key, value in (("in_features", math.prod(shape)),
                                               ("in_channels", shape[0])) if key in accepted][:1]
    if not derived:
        raise TypeError(f"model {name!r} takes neither in_features nor in_channels")
    if "input_size" in accepted:
        if len(shape) != 3:
            raise ValueError(f"model {name!r} needs input_shape=(C, H, W), got {tuple(shape)}")
        derived.append(("input_size", tuple(shape[1:])))
    for key, value in derived:
        given = kwargs.get(key, value)
        if key == "input_size" and isinstance(given, list):
            given = tuple(given)  # a TOML/JSON option arrives as a list
        if given != value:
            raise ValueError(f"model {name!r}: {key}={kwargs[key]} contradicts "
                             f"input_shape={tuple(shape)} (which gives {key}={value})")
        kwargs[key] = value


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with its keyword arguments; weights are PyTorch's defaults.

    ``efficientnet-b0`` starts with the reference B0's own initialization (Kaiming-normal
    ``fan_out`` convs; see :class:`~orthosparse.models.efficientnet.EfficientNet`).

    Initialize and sparsify afterwards (``orthosparse.sparsify``): the zoo only builds the
    architecture.

    Args:
        name: one of :func:`list_models`.
        **kwargs: the model's arguments (see :func:`model_arguments`), plus optionally
            ``input_shape=(C, H, W)``, translated to ``in_features`` or ``in_channels`` (and
            ``input_size=(H, W)`` where the model takes it).

    Raises:
        ValueError: unknown name (lists the valid ones) or a bad argument value.
        TypeError: an argument the model does not take (lists those it takes).

    Example:
        >>> model = create_model("mlp", input_shape=(1, 28, 28), depth=1000, width=128,
        ...                      activation="tanh")
    """
    factory = MODELS.get(name)
    accepted = model_arguments(name)
    if "input_shape" in kwargs:
        _resolve_input_shape(name, accepted, kwargs)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown argument(s) {', '.join(unknown)}; it takes: "
            f"{', '.join(accepted)} (and input_shape)"
        )
    return factory(**kwargs)
