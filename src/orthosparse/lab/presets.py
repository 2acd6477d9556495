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
           "SWEEPS", "PAPER_MASKS", "PAPER_INITS", "PAPER_CONV_INITS", "PAPER_SEEDS",
           "get_sweep", "list_sweeps"]


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

# The official code's mask protocol (docs/protocol.md, "Masks and baselines"): SNIP, GraSP and
# SynFlow score a dense orthogonal model (conv_orthogonal for convs), the masked-orthogonal
# baseline keeps those weights (init "orthogonal" / "conv-orthogonal"), and AI starts from them.
_MLP_OPTIONS = ["score_weights=orthogonal", "ai:start=current", "ai:iterations=10000"]
_DEEP_MLP_OPTIONS = ["score_weights=orthogonal", "ai:start=current", "ai:iterations=1000"]
_DEEP_CNN_OPTIONS = ["score_weights=conv-orthogonal", "ai:start=current", "ai:iterations=1000"]
# Models ending in log_softmax (official VGG-C and CIFAR ResNets): SNIP's nll_loss of log-probs is
# cross-entropy of our logits; more_nonzeros: True is center_density "more".
_CONV_OPTIONS = ["score_weights=conv-orthogonal", "ai:start=current", "ai:iterations=10000",
                 "snip:loss=cross-entropy", "eoi:center_density=more"]

_add("mlp", "paper: MNIST, MLP 7 layers x 100, density 0.1 (paper also 0.05), tanh (paper also "
     "linear/relu/hard_tanh), 100 epochs, lr 0.01",
     dataset="mnist", model="mlp", depth=7, width=100, activation="tanh", density=0.1,
     epochs=100, lr=0.01, gain=1.0, bias_std=0.0, **PAPER_PROTOCOL,
     sparsify_options=_MLP_OPTIONS)
_add("mlp-1000", "paper: MNIST, MLP 1000 layers x 128, tanh, density 0.125, 100 epochs, lr 1e-4, "
     f"gain {DEEP_TANH_GAIN} / bias_std {DEEP_TANH_BIAS_STD}",
     dataset="mnist", model="mlp", depth=1000, width=128, density=0.125, epochs=100, lr=1e-4,
     **_DEEP_TANH, **PAPER_PROTOCOL, sparsify_options=_DEEP_MLP_OPTIONS)
_add("cnn-1000", "paper: CIFAR-10, vanilla CNN of 997 3x3 convs x 128 channels (circular "
     "padding, no BN/residuals), average pooling, Linear 2048->10, tanh, density 0.125, 100 "
     f"epochs, lr 1e-4, gain {DEEP_TANH_GAIN} / bias_std {DEEP_TANH_BIAS_STD}",
     dataset="cifar10", model="vanilla-cnn-paper", width=128, density=0.125, epochs=100,
     lr=1e-4, **_DEEP_TANH, **PAPER_PROTOCOL, sparsify_options=_DEEP_CNN_OPTIONS)
_add("vgg", "paper: CIFAR-10, VGG-C (SNIP's VGG: 13 convs, Linear 2048->512->512->10 with BN), "
     "density 0.1 (paper also 0.05), relu (paper also tanh, leaky_relu, selu), 200 epochs, lr 0.1",
     dataset="cifar10", model="vgg-c", activation="relu", density=0.1, epochs=200, lr=0.1,
     gain=1.0, bias_std=0.0, **PAPER_PROTOCOL, sparsify_options=_CONV_OPTIONS)
_add("vgg16", "standard VGG-16 (global pooling) on CIFAR-10 with the paper's VGG protocol; the "
     "paper's own VGG is the preset vgg (VGG-C)",
     dataset="cifar10", model="vgg16", activation="relu", density=0.1, epochs=200, lr=0.1,
     gain=1.0, bias_std=0.0, **PAPER_PROTOCOL, sparsify_options=_CONV_OPTIONS)
for _depth in (32, 56, 110):
    # SynFlow in float64 on ResNet-56/110, as the official specs run it there.
    _options = _CONV_OPTIONS + (["synflow:double_precision=true"] if _depth > 32 else [])
    _add(f"resnet{_depth}", f"paper: CIFAR-10, ResNet-{_depth} (1x1-conv shortcuts, option B), "
         f"density 0.1 (paper also 0.05), relu, 200 epochs, lr 0.1",
         dataset="cifar10", model=f"resnet{_depth}", model_options=["shortcut=B"],
         activation="relu", density=0.1, epochs=200, lr=0.1, gain=1.0, bias_std=0.0,
         **PAPER_PROTOCOL, sparsify_options=_options)
_add("efficientnet", "paper: Tiny ImageNet, EfficientNet-B0 (our own, no torchvision), density "
     "0.1, 120 epochs, lr 0.01, weight decay 1e-3, grouped convs by the paper's rule",
     dataset="tiny-imagenet", model="efficientnet-b0", density=0.1, epochs=120, lr=0.01,
     gain=1.0, bias_std=0.0, **{**PAPER_PROTOCOL, "weight_decay": 1e-3},
     sparsify_options=["score_weights=conv-orthogonal", "ai:start=current",
                       "ai:iterations=10000", "eoi:center_density=more", "grouped=paper",
                       "synflow:double_precision=true"])


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


# The paper's grids are the official code's specs (specs/**/*.py of
# github.com/woocash2/sparser-better-deeper-stronger; docs/protocol.md has them side by side):
# mask method x {masked orthogonal, AI, EOI}, dense baselines, SAO where the specs run it, 5 seeds.
PAPER_MASKS: tuple[str, ...] = ("uniform", "erk", "snip", "grasp", "synflow")
PAPER_INITS: tuple[str, ...] = ("orthogonal", "ai", "eoi")
"""MLPs: the masked-orthogonal baseline is ``orthogonal`` (official ``init_type: orthogonal``)."""
PAPER_CONV_INITS: tuple[str, ...] = ("conv-orthogonal", "ai", "eoi")
"""Conv nets: the masked-orthogonal baseline is ``conv-orthogonal`` (``conv_orthogonal``)."""
PAPER_SEEDS: tuple[int, ...] = (1, 2, 3, 4, 5)

SWEEPS: Registry[SweepPreset] = Registry("sweep preset")


def _options(preset: str, *extra: str) -> list[str]:
    """The preset's sparsify options plus ``extra`` (a sweep block that sets sparsify_options
    replaces the preset's list, so it repeats it)."""
    return [*PRESETS.get(preset).overrides.get("sparsify_options", []), *extra]


def _add_sweep(name: str, description: str, preset: str, grid: dict[str, Any],
               add: list[dict[str, Any]], exclude: list[dict[str, Any]] | None = None) -> None:
    spec: dict[str, Any] = {
        "sweep": {"name": name, "preset": preset, "description": description},
        "grid": {**grid, "seed": list(PAPER_SEEDS)},
        "add": add,
    }
    if exclude:
        spec["exclude"] = exclude
    SWEEPS.register(name, SweepPreset(name, description, MappingProxyType(spec)))


def _sao(preset: str) -> dict[str, Any]:
    """The official SAO runs of the 1000-layer specs: degree 16 of width 128 (density 0.125),
    both non-square layers dense, blocks from ``scipy.linalg.orth`` of uniform draws."""
    return {"mask": "uniform", "init": "sao",
            "sparsify_options": _options(preset, "sao:non_square=dense", "sao:blocks=official")}


_MLP_ACTIVATIONS = ["linear", "tanh", "relu", "hard_tanh"]
_CONV_ACTIVATIONS = ["relu", "tanh", "leaky_relu", "selu"]

# specs/mlp/loss-curves.py
_add_sweep("paper-mlp", "paper grid (specs/mlp/loss-curves.py): MNIST MLP 7x100, 5 masks x "
           "{orthogonal, ai, eoi} x densities 0.05/0.1 x linear/tanh/relu/hard_tanh x seeds 1-5, "
           "+ dense orthogonal/kaiming (640 runs)", "mlp",
           {"mask": list(PAPER_MASKS), "init": list(PAPER_INITS), "density": [0.05, 0.1],
            "activation": _MLP_ACTIVATIONS},
           [{"mask": "dense", "density": 1.0, "init": ["orthogonal", "kaiming"]}])
# specs/1000-layer-networks/deep-mlp.py
_add_sweep("paper-mlp-1000", "paper grid (specs/1000-layer-networks/deep-mlp.py): MNIST MLP "
           "1000x128 tanh, density 0.125, 5 masks x {orthogonal, ai, eoi} x seeds 1-5, + dense "
           "orthogonal and SAO (85 runs)", "mlp-1000",
           {"mask": list(PAPER_MASKS), "init": list(PAPER_INITS)},
           [{"mask": "dense", "density": 1.0, "init": "orthogonal"}, _sao("mlp-1000")])
# specs/1000-layer-networks/deep-conv.py: + uni_skip_EI, uni_skip_EIS, erk_EIS; the dense
# baseline is delta-orthogonal.
_add_sweep("paper-cnn-1000", "paper grid (specs/1000-layer-networks/deep-conv.py): CIFAR-10 "
           "vanilla CNN 997x128 tanh, density 0.125, 5 masks x {conv-orthogonal, ai, eoi}, "
           "uniform-skip eoi, uniform-skip/erk structured eoi, x seeds 1-5, + dense "
           "delta-orthogonal and SAO (100 runs)", "cnn-1000",
           {"mask": list(PAPER_MASKS), "init": list(PAPER_CONV_INITS)},
           [{"mask": "uniform-skip", "init": "eoi",
             "sparsify_options": _options("cnn-1000", "uniform-skip:budget=middle")},
            {"mask": "uniform-skip", "init": "eoi",
             "sparsify_options": _options("cnn-1000", "uniform-skip:budget=middle",
                                          "eoi:structure=kernels")},
            {"mask": "erk", "init": "eoi",
             "sparsify_options": _options("cnn-1000", "eoi:structure=kernels")},
            {"mask": "dense", "density": 1.0, "init": "orthogonal",
             "sparsify_options": _options("cnn-1000", "orthogonal:conv=delta")},
            _sao("cnn-1000")])


def _conv_sweep(name: str, spec_file: str, preset: str, runs: int, *, other_activations: bool,
                synflow: bool, eoi_lrs: bool, dense_inits: list[str]) -> None:
    """A contemporary-network spec: relu at densities 0.05/0.1 (+ tanh/leaky_relu/selu at 0.1
    when ``other_activations``), SynFlow in the grid (``synflow``: else it is excluded, because
    the preset runs it in float64 in its own block of the spec), EOI at lr 0.1 and 0.01
    (``eoi_lrs``), dense baselines at every activation of the grid."""
    masks = list(PAPER_MASKS) if synflow else [m for m in PAPER_MASKS if m != "synflow"]
    activations = _CONV_ACTIVATIONS if other_activations else ["relu"]
    add: list[dict[str, Any]] = []
    if other_activations:
        add.append({"mask": masks, "density": 0.1, "activation": _CONV_ACTIVATIONS[1:]})
    if not synflow:  # the spec's "Synflow double precision" block (the preset's own option)
        add.append({"mask": "synflow", "density": [0.05, 0.1]})
    if eoi_lrs:
        add.append({"mask": masks, "init": "eoi", "lr": 0.01})
    add.append({"mask": "dense", "density": 1.0, "init": dense_inits, "activation": activations})
    desc = (f"paper grid (specs/contemporary-networks/{spec_file}): {name.split('-', 1)[1]} "
            f"masks x {{conv-orthogonal, ai, eoi}} x relu at densities 0.05/0.1"
            + (", tanh/leaky_relu/selu at 0.1" if other_activations else "")
            + (", EOI also at lr 0.01" if eoi_lrs else "")
            + (", SynFlow in float64" if not synflow else "")
            + f" x seeds 1-5, + dense {'/'.join(dense_inits)} ({runs} runs)")
    _add_sweep(name, desc, preset, {"mask": masks, "init": list(PAPER_CONV_INITS),
                                    "density": [0.05, 0.1], "activation": "relu"}, add)


_conv_sweep("paper-vgg", "vgg.py", "vgg", 415, other_activations=True, synflow=True,
            eoi_lrs=False, dense_inits=["conv-orthogonal", "kaiming"])
_conv_sweep("paper-resnet32", "res32.py", "resnet32", 415, other_activations=True, synflow=True,
            eoi_lrs=False, dense_inits=["conv-orthogonal", "kaiming"])
_conv_sweep("paper-resnet56", "res56.py", "resnet56", 200, other_activations=False,
            synflow=False, eoi_lrs=True, dense_inits=["conv-orthogonal", "kaiming"])
_conv_sweep("paper-resnet110", "res110.py", "resnet110", 200, other_activations=False,
            synflow=False, eoi_lrs=True, dense_inits=["conv-orthogonal", "kaiming"])
# specs/contemporary-networks/efficientnet_fixed.py: density 0.1 only, SynFlow in float64.
_add_sweep("paper-efficientnet", "paper grid (specs/contemporary-networks/efficientnet_fixed.py): "
           "Tiny ImageNet EfficientNet-B0, density 0.1, 5 masks x {conv-orthogonal, ai, eoi} x "
           "seeds 1-5 (SynFlow in float64), + dense conv-orthogonal/kaiming (85 runs)",
           "efficientnet", {"mask": list(PAPER_MASKS), "init": list(PAPER_CONV_INITS)},
           [{"mask": "dense", "density": 1.0, "init": ["conv-orthogonal", "kaiming"]}])
SWEEPS.register("digits-grid", SweepPreset(
    "digits-grid", "quick grid on the bundled digits (no download): 7-layer tanh MLP, ERK masks, "
    "5 inits x densities 0.05/0.1 x 5 seeds, 5 epochs (50 runs, a few minutes on a CPU)",
    MappingProxyType({
        "sweep": {"name": "digits-grid", "preset": "digits",
                  "description": "quick grid on the bundled digits: 5 inits x 2 densities x 5 "
                                 "seeds"},
        "grid": {"epochs": 5, "mask": "erk",
                 "init": ["eoi", "orthogonal", "ai", "sparse-kaiming", "kaiming"],
                 "density": [0.05, 0.1], "seed": [0, 1, 2, 3, 4]},
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
