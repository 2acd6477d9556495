"""Experiment configuration: one typed dataclass, layered defaults -> preset/TOML -> overrides.

Every field carries its help text and group in ``dataclasses.field(metadata=...)``; the command
line (``orthosparse train --lr 0.1``) is generated from those fields, TOML files use the same
keys (flat, or inside ``[data]``/``[model]``/... tables named after the groups), and the resolved
config is saved as JSON next to the results. The run directory is named by a short hash of the
fields that differ from their defaults (display fields left out) plus :data:`HASH_SCHEMA`, so a
rerun finds finished work and a new field whose default keeps the old behaviour renames no run
(open_lth's ``hashname``; docs/design.md §6, run identity and run folders).

Names of datasets, models, mask methods, initializations and augmentations are not listed here:
the help text and :func:`check_names` read them from the registries.

Example:
    >>> cfg = resolve_config("digits", overrides={"lr": 0.05, "epochs": 3})
    >>> cfg.run_dir()                       # runs/digits-<hash>
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._checks import check_gain
from ..data import list_augmentations, list_datasets
from ..masks import list_mask_methods
from ..models import list_models
from ..paper import DEEP_TANH_BIAS_STD, DEEP_TANH_GAIN
from ..schemes import list_inits

__all__ = [
    "Optimizer",
    "Schedule",
    "Precision",
    "Progress",
    "Jacobian",
    "GROUPS",
    "NOT_HASHED",
    "HASH_SCHEMA",
    "SEED_MAX",
    "TrainConfig",
    "sparsify_options_for",
    "config_fields",
    "field_type",
    "split_optional",
    "describe_type",
    "parse_field",
    "coerce_field",
    "config_from_dict",
    "config_to_dict",
    "config_hash",
    "hashed_values",
    "load_toml",
    "resolve_config",
    "check_names",
    "options_dict",
    "config_to_toml",
]

Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["multistep", "cosine", "constant"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Progress = Literal["auto", "bar", "epoch", "none"]
Jacobian = Literal["off", "init", "epoch"]

GROUPS: tuple[str, ...] = ("data", "model", "sparsity", "optim", "run")

# Fields that change where and how results are shown, not what they are: left out of the hash.
# ``threads`` does change results bitwise (CPU reductions split differently), but it is a
# property of the machine, not of the experiment: the run folder records the count a run started
# with and a resume restores it (:func:`orthosparse.lab.runs.run_threads`).
NOT_HASHED: frozenset[str] = frozenset(
    {"out", "name", "progress", "tensorboard", "eval_batch_size", "checkpoint_every",
     "threads"}
)

# Version of the run-identity rule (:func:`config_hash`). Bump it, renaming every run, when the
# hash rule changes or when a field's default or meaning changes so that an unchanged config
# would train differently; adding a field whose default keeps the old behaviour needs no bump.
HASH_SCHEMA: int = 1

# Largest seed: torch.manual_seed takes [-2**63, 2**64 - 1] but maps a negative seed s to
# 2**64 + s (two names for one run); TOML integers are 64-bit signed. Seeds are in [0, 2**63 - 1].
SEED_MAX: int = 2**63 - 1


def _names(names: Iterable[str]) -> str:
    return ", ".join(names)


def _f(default: Any, help: str, group: str, **kw: Any) -> Any:
    """Declare a config field with its help text and CLI group."""
    meta = {"help": help, "group": group}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class TrainConfig:
    """Everything that defines one training run (data, model, sparsity, optimization, output).

    Defaults are the fast ``digits`` setting; :mod:`orthosparse.lab.presets` holds the paper's
    experiments. Values are validated on construction (``TypeError``/``ValueError`` naming the
    field and the allowed values); names of datasets, models, masks and initializations are
    checked against their registries by :func:`check_names`.
    """

    # data
    dataset: str = _f("digits", f"dataset: {_names(list_datasets())} (digits is bundled)",
                      "data")
    data_root: str | None = _f(None, "directory holding the dataset files (none: the "
                               "dataset's default location)", "data")
    val_fraction: float = _f(0.1, "fraction of the training set held out for validation, "
                             "in [0, 1)", "data")
    batch_size: int = _f(128, "training batch size", "data")
    eval_batch_size: int = _f(1000, "evaluation batch size (does not change results)", "data")
    augment: str = _f("auto", "training augmentation: auto (the dataset's recommendation: "
                      f"crop-flip for CIFAR/Tiny ImageNet), {_names(list_augmentations())}",
                      "data")
    data_options: list[str] = _f([], "extra dataset arguments as key=value (value read as "
                                 "JSON when it parses, else text), e.g. train_size=256 "
                                 "input_shape=[1,8,8]", "data")
    # model
    model: str = _f("mlp", f"model: {_names(list_models())}", "model")
    depth: int | None = _f(None, "number of layers for mlp/vanilla-cnn (none: model default)",
                           "model")
    width: int | None = _f(None, "hidden width (mlp) or channels (vanilla-cnn) (none: model "
                           "default)", "model")
    activation: str | None = _f(None, "activation for mlp/vanilla-cnn/vgg16: linear, tanh, "
                                "relu, hard_tanh, selu, ... (none: model default)", "model")
    model_options: list[str] = _f([], "extra model arguments as key=value (value read as JSON "
                                  "when it parses, else text), e.g. bias=false shortcut=B",
                                  "model")
    # sparsity
    density: float = _f(0.1, "fraction of prunable weights kept, in (0, 1]", "sparsity")
    mask: str = _f("erk", f"mask method: {_names(list_mask_methods())}", "sparsity")
    init: str = _f("eoi", f"initialization: {_names(list_inits())}", "sparsity")
    gain: float = _f(1.0, f"initialization gain (1000-layer tanh nets: {DEEP_TANH_GAIN})",
                     "sparsity")
    bias_std: float = _f(0.0, f"standard deviation of the normal bias init (1000-layer tanh "
                         f"nets: {DEEP_TANH_BIAS_STD})", "sparsity")
    exclude: list[str] = _f([], "layers kept dense: glob patterns over module or parameter "
                            "names", "sparsity")
    sparsify_options: list[str] = _f([], "extra options of the mask method or init scheme as "
                                     "key=value (JSON value or text), e.g. rounds=100, "
                                     "center_density=more; NAME:key=value applies only when "
                                     "the init or mask is NAME (sao:fallback=true)", "sparsity")
    # optimization
    epochs: int = _f(20, "number of training epochs", "optim")
    optimizer: Optimizer = _f("sgd", "optimizer", "optim")
    lr: float = _f(0.05, "peak learning rate", "optim")
    momentum: float = _f(0.9, "SGD momentum", "optim")
    nesterov: bool = _f(True, "use Nesterov momentum (SGD)", "optim")
    betas: list[float] = _f([0.9, 0.999], "Adam/AdamW betas (two numbers)", "optim")
    weight_decay: float = _f(1e-4, "weight decay (L2 for SGD/Adam, decoupled for AdamW)",
                             "optim")
    schedule: Schedule = _f("multistep", "learning-rate schedule after warmup", "optim")
    milestones: list[float] = _f([0.5, 0.75], "multistep: fractions of the epochs at which the "
                                 "learning rate is multiplied by lr_decay", "optim")
    lr_decay: float = _f(0.1, "multistep: factor applied at each milestone", "optim")
    warmup_epochs: float = _f(0.0, "linear warmup length in epochs (may be fractional)",
                              "optim")
    grad_clip: float | None = _f(None, "clip the global gradient norm to this value (none: "
                                 "off)", "optim")
    precision: Precision = _f("auto", "auto: bf16 (or fp16 + GradScaler) autocast on GPU, fp32 "
                              "on CPU; or force fp32/bf16/fp16", "optim")
    # run
    seed: int = _f(0, "random seed (data split, mask, weights, batch order)", "run")
    device: str = _f("auto", "device: auto (cuda if available), cpu, cuda, cuda:1, ...", "run")
    threads: int | None = _f(None, "CPU threads torch may use (none: torch's default); 1 is "
                             "fastest for small models and for runs side by side; not hashed, "
                             "but it changes results bitwise, so a resume keeps the count the "
                             "run started with", "run")
    deterministic: bool = _f(False, "use deterministic algorithms only (slower on GPU)", "run")
    jacobian: Jacobian = _f("off", "record input-output Jacobian singular values: off, at init, "
                            "or at init and after every epoch", "run")
    jacobian_examples: int = _f(32, "examples used for the Jacobian summary", "run")
    checkpoint_every: int = _f(0, "also checkpoint every N optimizer steps (0: once per epoch "
                               "only)", "run")
    out: str = _f("runs", "parent directory of run directories", "run")
    name: str = _f("run", "run name; the run directory is <out>/<name>-<config hash>", "run")
    progress: Progress = _f("auto", "console output: auto (bar on a terminal), bar, epoch "
                            "(one line per epoch), none", "run")
    tensorboard: bool = _f(True, "write TensorBoard logs when tensorboard is installed", "run")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce_field(f.name, getattr(self, f.name)))
        _check_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict (lists copied)."""
        return config_to_dict(self)

    def hash(self) -> str:
        """Return the short hash naming the run directory (see :func:`config_hash`)."""
        return config_hash(self)

    def run_dir(self) -> Path:
        """Return ``<out>/<name>-<hash>``."""
        return Path(self.out) / f"{self.name}-{self.hash()}"


# --------------------------------------------------------------------------- field types


def config_fields() -> list[dataclasses.Field]:
    """Return the fields of :class:`TrainConfig` in declaration order."""
    return list(dataclasses.fields(TrainConfig))


_HINTS: dict[str, Any] | None = None


def field_type(name: str) -> Any:
    """Return the resolved type annotation of field ``name``."""
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(TrainConfig)
    try:
        return _HINTS[name]
    except KeyError:
        raise ValueError(_unknown_key_message(name)) from None


def _unknown_key_message(name: str, where: str = "") -> str:
    names = [f.name for f in config_fields()]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {name!r}{where}{hint} Valid keys: {', '.join(names)}"


def split_optional(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def describe_type(hint: Any) -> str:
    """Human name of a field type: ``float``, ``list of str``, ``one of: a, b``."""
    base, optional = split_optional(hint)
    origin = typing.get_origin(base)
    if origin is Literal:
        text = "one of: " + ", ".join(str(a) for a in typing.get_args(base))
    elif origin is list:
        text = f"list of {typing.get_args(base)[0].__name__}"
    else:
        text = base.__name__
    return f"{text} or none" if optional else text


def _coerce_scalar(name: str, base: type, value: Any) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the types above are declared
        raise AssertionError(f"unsupported config type {base!r} for {name}")
    noun = {bool: "a boolean (true/false)", int: "an integer", float: "a number",
            str: "a string"}[base]
    raise TypeError(f"{name}={value!r} must be {noun}, got {type(value).__name__}")


def coerce_field(name: str, value: Any) -> Any:
    """Check ``value`` (already parsed: TOML, JSON or Python) against the type of field ``name``.

    ints are accepted for floats; everything else must match exactly.

    Raises:
        ValueError: unknown field, or a value outside a ``Literal`` choice.
        TypeError: wrong type.
    """
    hint = field_type(name)
    base, optional = split_optional(hint)
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name}=None is not allowed; expected {describe_type(hint)}")
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not allowed; choose one of: "
                             f"{', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name}={value!r} must be a list of "
                            f"{typing.get_args(base)[0].__name__}, got {type(value).__name__}")
        elem = typing.get_args(base)[0]
        return [_coerce_scalar(f"{name}[{i}]", elem, v) for i, v in enumerate(value)]
    return _coerce_scalar(name, base, value)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


def _parse_scalar(name: str, base: type, text: str) -> Any:
    text = text.strip()
    if base is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{name}={text!r} is not a boolean; use true or false")
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not an integer") from None
    if base is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not a number") from None
    return text


def _split_commas(word: str) -> list[str]:
    """Split on commas outside brackets and quotes: ``"a=[1,2],b"`` -> ``["a=[1,2]", "b"]``."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(word):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(word[start:i])
            start = i + 1
    parts.append(word[start:])
    return parts


def parse_field(name: str, text: str | list[str]) -> Any:
    """Parse command-line text for field ``name`` into a validated value.

    Booleans accept true/false/yes/no/on/off/1/0, optional fields accept ``none``, lists take
    several words or one comma-separated word (``--milestones 0.5,0.75``).

    Raises:
        ValueError: the text does not parse or is not an allowed choice.
    """
    hint = field_type(name)
    base, optional = split_optional(hint)
    words = [text] if isinstance(text, str) else list(text)
    if optional and len(words) == 1 and words[0].strip().lower() in _NONE:
        return None
    if typing.get_origin(base) is list:
        elem = typing.get_args(base)[0]
        items = [w for word in words for w in _split_commas(word) if w.strip()]
        return coerce_field(name, [_parse_scalar(name, elem, w) for w in items])
    if len(words) != 1:
        raise ValueError(f"{name} takes one value, got {len(words)}: {words}")
    origin = typing.get_origin(base)
    value = words[0].strip() if origin is Literal else _parse_scalar(name, base, words[0])
    return coerce_field(name, value)


# --------------------------------------------------------------------------- validation


def _check_ranges(cfg: TrainConfig) -> None:
    def finite(name: str) -> float:
        value = getattr(cfg, name)
        if not math.isfinite(value):
            raise ValueError(f"{name}={value} must be a finite number")
        return value

    if not 0.0 < finite("density") <= 1.0:
        raise ValueError(f"density={cfg.density} must be in (0, 1]")
    if not 0.0 <= finite("val_fraction") < 1.0:
        raise ValueError(f"val_fraction={cfg.val_fraction} must be in [0, 1)")
    for name in ("batch_size", "eval_batch_size", "epochs", "jacobian_examples"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be a positive integer (>= 1)")
    if cfg.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={cfg.checkpoint_every} must be >= 0")
    for name in ("depth", "width", "threads"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be a positive integer or none")
    if finite("lr") <= 0:
        raise ValueError(f"lr={cfg.lr} must be > 0")
    if not 0.0 <= finite("momentum") < 1.0:
        raise ValueError(f"momentum={cfg.momentum} must be in [0, 1)")
    if cfg.nesterov and cfg.optimizer == "sgd" and cfg.momentum == 0:
        raise ValueError("nesterov=true needs momentum > 0 (set --momentum or --nesterov false)")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ValueError(f"betas={cfg.betas} must be two numbers in [0, 1)")
    if finite("weight_decay") < 0:
        raise ValueError(f"weight_decay={cfg.weight_decay} must be >= 0")
    if any(not 0.0 < m < 1.0 for m in cfg.milestones) or cfg.milestones != sorted(
        cfg.milestones
    ):
        raise ValueError(f"milestones={cfg.milestones} must be increasing fractions of the "
                         f"epochs in (0, 1)")
    if not 0.0 < finite("lr_decay") <= 1.0:
        raise ValueError(f"lr_decay={cfg.lr_decay} must be in (0, 1]")
    if not 0.0 <= finite("warmup_epochs") <= cfg.epochs:
        raise ValueError(f"warmup_epochs={cfg.warmup_epochs} must be in [0, epochs={cfg.epochs}]")
    if cfg.grad_clip is not None and not (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0):
        raise ValueError(f"grad_clip={cfg.grad_clip} must be > 0 or none")
    check_gain(cfg.gain)  # the core's rule: a finite real number > 0
    if not 0 <= cfg.seed <= SEED_MAX:
        raise ValueError(f"seed={cfg.seed} must be an integer in [0, 2**63 - 1]")
    if finite("bias_std") < 0:
        raise ValueError(f"bias_std={cfg.bias_std} must be >= 0")
    for name in ("data_options", "model_options"):
        options_dict(getattr(cfg, name), name)
    by_scope: dict[str | None, list[str]] = {}
    for scope, item in _scoped(cfg.sparsify_options):
        by_scope.setdefault(scope, []).append(item)
    for scope, items in by_scope.items():
        options_dict(items + (by_scope.get(None, []) if scope else []), "sparsify_options")
    if not cfg.name or any(c in cfg.name for c in "/\\") or cfg.name in (".", ".."):
        raise ValueError(f"name={cfg.name!r} must be a non-empty file name without slashes")


def options_dict(items: Iterable[str], name: str = "options") -> dict[str, Any]:
    """Turn ``["k=v", ...]`` into ``{k: v}``; ``v`` is read as JSON when it parses, else text.

    Raises:
        ValueError: an item without ``=`` or a key given twice.

    Example:
        >>> options_dict(["train_size=64", "input_shape=[1, 8, 8]", "label_mode=coarse"])
        {'train_size': 64, 'input_shape': [1, 8, 8], 'label_mode': 'coarse'}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{name} entry {item!r} must look like key=value")
        if key in out:
            raise ValueError(f"{name} sets {key!r} twice")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _scoped(items: Iterable[str]) -> list[tuple[str | None, str]]:
    """Split ``NAME:key=value`` into ``(NAME, "key=value")``; plain items get scope None (a
    colon after the first ``=`` belongs to the value)."""
    out = []
    for item in items:
        scope, sep, rest = item.partition(":")
        if sep and "=" not in scope:
            out.append((scope.strip(), rest))
        else:
            out.append((None, item))
    return out


def sparsify_options_for(cfg: TrainConfig) -> dict[str, Any]:
    """The ``sparsify`` keyword options of ``cfg``: every plain ``key=value`` entry, and each
    ``NAME:key=value`` entry whose NAME is ``cfg.init`` or ``cfg.mask`` (so one option list can
    serve several inits, e.g. ``orthosparse inspect --init eoi,sao --sparsify-options
    sao:fallback=true``).

    Example:
        >>> cfg = TrainConfig(init="eoi", sparsify_options=["sao:fallback=true",
        ...                                                 "center_density=more"])
        >>> sparsify_options_for(cfg)
        {'center_density': 'more'}
    """
    kept = [item for scope, item in _scoped(cfg.sparsify_options)
            if scope is None or scope in (cfg.init, cfg.mask)]
    return options_dict(kept, "sparsify_options")


def check_names(cfg: TrainConfig) -> None:
    """Check dataset, model, mask, init and augmentation names against their registries.

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    checks = (
        ("dataset", list_datasets()),
        ("model", list_models()),
        ("mask", list_mask_methods()),
        ("init", list_inits()),
        ("augment", ["auto", *list_augmentations()]),
    )
    scopes = {scope for scope, _ in _scoped(cfg.sparsify_options) if scope is not None}
    for name, valid in checks:
        value = getattr(cfg, name)
        if value not in valid:
            close = difflib.get_close_matches(value, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name}={value!r} is not a known {name}{hint}; choose one of: "
                             f"{', '.join(valid)}")
        if name in ("mask", "init"):
            scopes -= set(valid)
    if scopes:
        raise ValueError(f"sparsify_options scope(s) {', '.join(sorted(scopes))} name no init or "
                         f"mask method; NAME:key=value needs one of those names")


# --------------------------------------------------------------------------- (de)serialization


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Return ``cfg`` as a plain dict (JSON-ready)."""
    return {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), list) else v)
            for f in config_fields()}


def _flatten(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Accept flat keys or ``[group]`` tables; return flat keys (dashes read as underscores)."""
    flat: dict[str, Any] = {}
    groups = {f.name: f.metadata["group"] for f in config_fields()}
    for key, value in data.items():
        k = key.replace("-", "_")
        if isinstance(value, Mapping) and k in GROUPS:
            for sub, v in value.items():
                s = sub.replace("-", "_")
                if s not in groups:
                    raise ValueError(_unknown_key_message(s, f" in [{k}]{where}"))
                if groups[s] != k:
                    raise ValueError(f"config key {s!r}{where} belongs in [{groups[s]}], "
                                     f"not [{k}]")
                if s in flat:
                    raise ValueError(f"config key {s!r} is given twice{where}")
                flat[s] = v
        else:
            if k not in groups:
                raise ValueError(_unknown_key_message(k, where))
            if k in flat:
                raise ValueError(f"config key {k!r} is given twice{where}")
            flat[k] = value
    return flat


def config_from_dict(data: Mapping[str, Any], base: TrainConfig | None = None,
                     where: str = "") -> TrainConfig:
    """Apply ``data`` (flat or grouped keys) on top of ``base`` (default: the defaults).

    Raises:
        ValueError: unknown key (with the closest valid one) or bad value.
        TypeError: value of the wrong type.
    """
    flat = _flatten(data, where)
    values = config_to_dict(base) if base is not None else {}
    for key, value in flat.items():
        try:
            values[key] = coerce_field(key, value)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{err}{where}") from None
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err}{where}") from None


def hashed_values(cfg: TrainConfig) -> dict[str, Any]:
    """Return the fields that name ``cfg``'s run: those whose value differs from the field's
    default, display fields (:data:`NOT_HASHED`) left out.

    Example:
        >>> hashed_values(TrainConfig(lr=0.1, progress="none"))
        {'lr': 0.1}
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name in NOT_HASHED:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        value = getattr(cfg, f.name)
        if value != default:
            out[f.name] = list(value) if isinstance(value, list) else value
    return out


def config_hash(cfg: TrainConfig, length: int = 10) -> str:
    """Return the short hash naming ``cfg``'s run directory (open_lth's ``hashname``).

    The first ``length`` hex digits of the SHA-256 of the JSON of ``{"schema": HASH_SCHEMA,
    "changed": hashed_values(cfg)}`` (sorted keys, no spaces): only fields that differ from
    their defaults count, so adding a field whose default keeps the old behaviour renames no
    run, while the same experiment always lands in the same ``<name>-<hash>`` directory.
    """
    data = {"schema": HASH_SCHEMA, "changed": hashed_values(cfg)}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid TOML (message names the path).
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ImportError("reading TOML configs needs Python >= 3.11 or `pip install "
                              "tomli`") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text (TOML files are UTF-8): "
                         f"byte {err.object[err.start:err.start + 1]!r} at offset "
                         f"{err.start}") from None
    except OSError as err:
        raise ValueError(f"config file {str(path)!r} cannot be read: [Errno {err.errno}] "
                         f"{err.strerror}") from None


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
) -> TrainConfig:
    """Build a config from the layers: defaults -> preset -> TOML file -> overrides.

    A TOML file may name its own base with a top-level ``preset = "..."`` key; it must agree
    with ``preset`` when both are given. Override values are typed Python values (or strings,
    parsed like the command line).

    Args:
        preset: name from :func:`orthosparse.lab.presets.list_presets` (``None``: defaults).
        config_file: TOML file with config keys.
        overrides: ``{"lr": 0.1}`` applied last.

    Raises:
        ValueError: unknown preset/key, bad value, conflicting presets.

    Example:
        >>> resolve_config("mlp", overrides={"density": 0.05}).density
        0.05
    """
    from orthosparse.lab.presets import get_preset

    file_data: dict[str, Any] = {}
    where = ""
    if config_file is not None:
        file_data = dict(load_toml(config_file))
        where = f" (in {config_file})"
        file_preset = file_data.pop("preset", None)
        if file_preset is not None:
            if not isinstance(file_preset, str):
                raise TypeError(f"preset={file_preset!r} must be a string{where}")
            if preset is not None and preset != file_preset:
                raise ValueError(f"preset {preset!r} conflicts with preset = {file_preset!r}"
                                 f"{where}")
            preset = file_preset
    cfg = TrainConfig()
    if preset is not None:
        cfg = config_from_dict(get_preset(preset).overrides, cfg, f" (preset {preset!r})")
        if "name" not in get_preset(preset).overrides:
            cfg = dataclasses.replace(cfg, name=preset)
    if file_data:
        cfg = config_from_dict(file_data, cfg, where)
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    parsed = {}
    for key, value in items:
        key = key.replace("-", "_")
        base, _ = split_optional(field_type(key))  # unknown keys raise with a suggestion
        is_text = isinstance(value, str) and base is not str and typing.get_origin(
            base) is not Literal
        parsed[key] = parse_field(key, value) if is_text else value
    if parsed:
        cfg = config_from_dict(parsed, cfg)
    return cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)  # TOML basic strings share JSON's escapes; floats as repr
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_toml(cfg: TrainConfig) -> str:
    """Return ``cfg`` as a TOML document with ``[group]`` tables (fields set to none are
    commented out), readable back by :func:`resolve_config` (``config_file=``)."""
    lines: list[str] = []
    for group in GROUPS:
        lines.append(f"[{group}]")
        for f in config_fields():
            if f.metadata["group"] != group:
                continue
            value = getattr(cfg, f.name)
            help_text = f.metadata["help"]
            if value is None:
                lines.append(f"# {f.name} =   # {help_text}")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}   # {help_text}")
        lines.append("")
    return "\n".join(lines)
