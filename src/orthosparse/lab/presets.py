"""Named experiment presets: the rows of the paper's experiment table plus a fast default.

Each preset is a set of :class:`~orthosparse.lab.config.TrainConfig` overrides on top of the
defaults. The paper protocol (`Sparser, Better, Deeper, Stronger: Improving Static Sparse
Training with Exact Orthogonal Initialization` - Nowak et al. (2024), arXiv 2406.01755) is SGD
with Nesterov momentum 0.9, batch 128, weight decay 1e-4, learning rate x0.1 at 50% and 75% of
the epochs, 10% of the training set held out, final-epoch test accuracy reported. Rows with
several densities or activations in the paper pick one here; override the others
(``--density 0.05``, ``--activation relu``), or run the whole grid: each *sweep preset* is the
paper's grid over a preset (``orthosparse sweep paper-mlp``; the same grids are the TOML files
in ``configs/``).

Example:
    >>> get_preset("mlp-1000").overrides["depth"]
    1000
    >>> get_sweep("paper-mlp").spec["grid"]["init"]
    ['orthogonal', 'ai', 'eoi']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .._registry import Registry
from ..paper import DEEP_TANH_BIAS_STD, DEEP_TANH_GAIN

__all__ = ["Preset", "PRESETS", "PAPER_PROTOCOL", "get_preset", "list_presets", "SweepPreset",
           "SWEEPS", "PAPER_MASKS", "PAPER_INITS", "PAPER_SEEDS", "get_sweep", "list_sweeps"]


@dataclass(frozen=True)
class Preset:
    """A named experiment: a description and the config overrides it applies."""

    name: str
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


PAPER_PROTOCOL: Mapping[str, Any] = MappingProxyType({
    "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "batch_size": 128,
    "weight_decay": 1e-4, "schedule": "multistep", "milestones": [0.5, 0.75], "lr_decay": 0.1,
    "val_fraction": 0.1,
})

# 1000-layer tanh networks sit at the edge of chaos (orthosparse.paper has the derivation).
_DEEP_TANH = {"activation": "tanh", "gain": DEEP_TANH_GAIN, "bias_std": DEEP_TANH_BIAS_STD}

PRESETS: Registry[Preset] = Registry("preset")


def _add(name: str, description: str, **overrides: Any) -> None:
    PRESETS.register(name, Preset(name, description, MappingProxyType(overrides)))


_add("digits", "fast default: 7-layer tanh MLP (width 100), 8x8 digits (bundled), density 0.1, "
     "20 epochs, ~10 s on a CPU",
     dataset="digits", model="mlp", depth=7, width=100, activation="tanh", density=0.1,
     epochs=20, lr=0.05, **{k: v for k, v in PAPER_PROTOCOL.items() if k != "batch_size"},
     batch_size=64)
_add("mlp", "paper: MNIST, MLP 7 layers x 100, density 0.1 (paper also 0.05), tanh (paper also "
     "linear/relu/hard_tanh), 100 epochs, lr 0.01",
     dataset="mnist", model="mlp", depth=7, width=100, activation="tanh", density=0.1,
     epochs=100, lr=0.01, gain=1.0, bias_std=0.0, **PAPER_PROTOCOL)
_add("mlp-1000", "paper: MNIST, MLP 1000 layers x 128, tanh, density 0.125, 100 epochs, lr 1e-4, "
     f"gain {DEEP_TANH_GAIN} / bias_std {DEEP_TANH_BIAS_STD}",
     dataset="mnist", model="mlp", depth=1000, width=128, density=0.125, epochs=100, lr=1e-4,
     **_DEEP_TANH, **PAPER_PROTOCOL)
_add("cnn-1000", "paper: CIFAR-10, vanilla CNN 1000 layers x 128 channels (circular padding, no "
     f"BN/residuals), tanh, density 0.125, 100 epochs, lr 1e-4, gain {DEEP_TANH_GAIN} / bias_std "
     f"{DEEP_TANH_BIAS_STD}",
     dataset="cifar10", model="vanilla-cnn", depth=1000, width=128, density=0.125, epochs=100,
     lr=1e-4, **_DEEP_TANH, **PAPER_PROTOCOL)
_add("vgg16", "paper: CIFAR-10, VGG-16, density 0.1 (paper also 0.05), relu (paper also tanh, "
     "leaky_relu, selu), 200 epochs, lr 0.1",
     dataset="cifar10", model="vgg16", activation="relu", density=0.1, epochs=200, lr=0.1,
     gain=1.0, bias_std=0.0, **PAPER_PROTOCOL)
for _depth in (32, 56, 110):
    _add(f"resnet{_depth}", f"paper: CIFAR-10, ResNet-{_depth}, density 0.1 (paper also 0.05), "
         f"relu, 200 epochs, lr 0.1",
         dataset="cifar10", model=f"resnet{_depth}", activation="relu", density=0.1, epochs=200,
         lr=0.1, gain=1.0, bias_std=0.0, **PAPER_PROTOCOL)
_add("efficientnet", "paper: Tiny ImageNet, EfficientNet-B0 (needs torchvision), density 0.1, "
     "120 epochs, lr 0.01",
     dataset="tiny-imagenet", model="efficientnet-b0", density=0.1, epochs=120, lr=0.01,
     gain=1.0, bias_std=0.0, **PAPER_PROTOCOL)


def get_preset(name: str) -> Preset:
    """Return preset ``name``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return PRESETS.get(name)


def list_presets() -> list[str]:
    """Sorted preset names."""
    return PRESETS.names()


# --------------------------------------------------------------------------- sweep presets


@dataclass(frozen=True)
class SweepPreset:
    """A named grid of runs: a description and the sweep spec (the structure of a sweep TOML
    file: ``sweep``, ``grid``, ``add``, ``exclude``; see :mod:`orthosparse.lab.sweep`)."""

    name: str
    description: str
    spec: Mapping[str, Any] = field(default_factory=dict)


# The paper's grid (Nowak et al. 2024; docs/results.md part 1): mask method x initialization,
# plus dense baselines and SAO where it applies, 5 seeds.
PAPER_MASKS: tuple[str, ...] = ("uniform", "erk", "snip", "grasp", "synflow")
PAPER_INITS: tuple[str, ...] = ("orthogonal", "ai", "eoi")
PAPER_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)

SWEEPS: Registry[SweepPreset] = Registry("sweep preset")


def _sao(activations: list[str] | None) -> list[dict[str, Any]]:
    """SAO runs (uniform densities; unsupported layer shapes fall back to dense orthogonal with a
    warning): the mirrored construction for ReLU, the plain one for other activations."""
    if activations is None:  # the preset's own activation, not ReLU
        return [{"mask": "uniform", "init": "sao", "sparsify_options": ["fallback=true"]}]
    blocks = []
    plain = [a for a in activations if a != "relu"]
    if plain:
        blocks.append({"mask": "uniform", "init": "sao", "activation": plain,
                       "sparsify_options": ["fallback=true"]})
    if "relu" in activations:
        blocks.append({"mask": "uniform", "init": "sao", "activation": "relu",
                       "sparsify_options": ["fallback=true", "activation=relu"]})
    return blocks


def _add_sweep(name: str, description: str, preset: str, grid: dict[str, Any],
               dense_inits: list[str], sao: list[dict[str, Any]]) -> None:
    spec = {
        "sweep": {"name": name, "preset": preset, "description": description},
        "grid": {"mask": list(PAPER_MASKS), "init": list(PAPER_INITS), **grid,
                 "seed": list(PAPER_SEEDS)},
        "add": [{"mask": "dense", "density": 1.0, "init": dense_inits}, *sao],
    }
    SWEEPS.register(name, SweepPreset(name, description, MappingProxyType(spec)))


_MLP_ACTIVATIONS = ["linear", "tanh", "relu", "hard_tanh"]
_VGG_ACTIVATIONS = ["relu", "tanh", "leaky_relu", "selu"]
_add_sweep("paper-mlp", "paper grid: MNIST MLP 7x100, masks x {orthogonal, ai, eoi} x densities "
           "0.05/0.1 x linear/tanh/relu/hard_tanh x 5 seeds, + dense and SAO (680 runs)", "mlp",
           {"density": [0.05, 0.1], "activation": _MLP_ACTIVATIONS},
           ["orthogonal", "kaiming"], _sao(_MLP_ACTIVATIONS))
_add_sweep("paper-mlp-1000", "paper grid: MNIST MLP 1000x128 tanh, density 0.125, masks x "
           "{orthogonal, ai, eoi} x 5 seeds, + dense orthogonal and SAO (85 runs)", "mlp-1000",
           {}, ["orthogonal"], _sao(None))
_add_sweep("paper-cnn-1000", "paper grid: CIFAR-10 vanilla CNN 1000x128 tanh, density 0.125, "
           "masks x {orthogonal, ai, eoi} x 5 seeds, + dense orthogonal and SAO (85 runs)",
           "cnn-1000", {}, ["orthogonal"], _sao(None))
_add_sweep("paper-vgg16", "paper grid: CIFAR-10 VGG-16, masks x {orthogonal, ai, eoi} x densities "
           "0.05/0.1 x relu/tanh/leaky_relu/selu x 5 seeds, + dense and SAO (680 runs)", "vgg16",
           {"density": [0.05, 0.1], "activation": _VGG_ACTIVATIONS},
           ["orthogonal", "kaiming"], _sao(_VGG_ACTIVATIONS))
_add_sweep("paper-resnet", "paper grid: CIFAR-10 ResNet-32/56/110 (relu), masks x {orthogonal, ai, "
           "eoi} x densities 0.05/0.1 x 5 seeds, + dense and SAO (510 runs)", "resnet32",
           {"model": ["resnet32", "resnet56", "resnet110"], "density": [0.05, 0.1]},
           ["orthogonal", "kaiming"], _sao(["relu"]))
_add_sweep("paper-efficientnet", "paper grid: Tiny ImageNet EfficientNet-B0, density 0.1, masks x "
           "{orthogonal, ai, eoi} x 5 seeds, + dense (85 runs; SAO does not apply to depthwise "
           "convolutions)", "efficientnet", {}, ["orthogonal", "kaiming"], [])
SWEEPS.register("digits-grid", SweepPreset(
    "digits-grid", "quick grid on the bundled digits (no download): 7-layer tanh MLP, ERK masks, "
    "5 inits x densities 0.05/0.1 x 5 seeds, 5 epochs (50 runs, a few minutes on a CPU)",
    MappingProxyType({
        "sweep": {"name": "digits-grid", "preset": "digits",
                  "description": "quick grid on the bundled digits: 5 inits x 2 densities x 5 "
                                 "seeds"},
        "grid": {"epochs": 5, "mask": "erk",
                 "init": ["eoi", "orthogonal", "ai", "sparse-kaiming", "kaiming"],
                 "density": [0.05, 0.1], "seed": list(PAPER_SEEDS)},
    })))


def get_sweep(name: str) -> SweepPreset:
    """Return sweep preset ``name``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return SWEEPS.get(name)


def list_sweeps() -> list[str]:
    """Sorted sweep preset names."""
    return SWEEPS.names()
