"""Validation shared by the public entry points: clear errors naming the bad value."""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["check_density", "check_positive_int", "check_generator", "check_float_dtype",
           "check_gain", "check_device", "check_not_meta", "density_off_target", "keep_count"]


def check_density(density: object, name: str = "density") -> float:
    """Return ``density`` as a float in (0, 1]; raise ``TypeError``/``ValueError`` otherwise."""
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1], got {type(density).__name__}: "
                        f"{density!r}")
    value = float(density)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}={density} must be in (0, 1]")
    return value


def check_gain(gain: object, name: str = "gain") -> float:
    """Return ``gain`` as a float: a finite real number > 0; raise ``TypeError``/``ValueError``.

    The one gain rule of every entry point (``eoi_``, ``orthogonal_``, ``sparse_orthogonal``,
    ``sparsify``, the lab config). numpy scalars (``np.float32(2.0)``) are accepted; ``bool`` is
    refused (``True`` is not a scale).
    """
    if isinstance(gain, bool) or not isinstance(gain, numbers.Real):  # np.bool_ is not Real
        raise TypeError(f"{name} must be a real number, got {type(gain).__name__}: {gain!r}")
    value = float(gain)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name}={value} must be a finite number > 0")
    return value


def check_device(device: object, name: str = "device") -> torch.device:
    """Return ``device`` (a name or ``torch.device``; ``None`` is the CPU) as a usable device.

    Raises:
        TypeError: not a string, ``torch.device`` or ``None``.
        ValueError: a malformed name, a CUDA device when CUDA is not available (or an index
            past the visible GPUs), or the ``meta`` device (it holds no values to build from).
    """
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a device name (cpu, cuda, cuda:1, ...) or a "
                        f"torch.device, got {type(device).__name__}: {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"{name}={device!r} is not a device name (cpu, cuda, cuda:1, ...): "
                         f"{str(err).splitlines()[0]}") from None
    if dev.type == "meta":
        raise ValueError(f"{name}={device!r}: meta tensors hold no values; build the weights "
                         f"on a real device (cpu, cuda)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r} but CUDA is not available here (torch "
                             f"{torch.__version__}); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r} but only {torch.cuda.device_count()} CUDA "
                             f"device(s) are visible (cuda:0 ... "
                             f"cuda:{torch.cuda.device_count() - 1})")
    return dev


def check_not_meta(tensor: torch.Tensor, fn: str) -> None:
    """Refuse a ``meta`` tensor (no storage, so nothing to fill or to build a mask from)."""
    if tensor.is_meta:
        raise ValueError(f"{fn} cannot fill a meta tensor (shape {tuple(tensor.shape)}, no "
                         f"storage); materialize the module first, e.g. model.to_empty("
                         f"device='cpu'), then initialize it")


def keep_count(density: float, numel: int) -> int:
    """Return how many of ``numel`` weights a ``density`` keeps: ``round(density * numel)``.

    Halves round up (``floor(x + 0.5)``), unlike Python's ``round`` (half to even), so the
    rule is the same on every platform and in every test.
    """
    return int(math.floor(density * numel + 0.5))


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int >= 1; raise ``TypeError``/``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__}: {value!r}")
    if value < 1:
        raise ValueError(f"{name}={value} must be a positive integer (>= 1)")
    return int(value)


def check_generator(generator: object) -> torch.Generator | None:
    """Accept ``None`` or a CPU ``torch.Generator`` (all random draws happen on the CPU)."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must live on the CPU (draws are made there so CPU and GPU "
                         f"agree), got a generator on {generator.device}")
    return generator


def check_float_dtype(dtype: object) -> torch.dtype:
    """Accept a floating-point ``torch.dtype``; raise ``TypeError`` otherwise."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype={dtype} must be a floating-point torch.dtype "
                        f"(torch.float32, torch.float64, torch.bfloat16, torch.float16)")
    return dtype


def density_off_target(achieved: float, wanted: float, tolerance: float = 0.1) -> bool:
    """Whether a network's achieved mask density misses the wanted one by more than
    ``tolerance`` of it: more than per-layer rounding, e.g. layers an init left dense (SAO with
    ``fallback=True``). Reports flag such results instead of presenting them at ``wanted``."""
    return abs(achieved - wanted) > tolerance * wanted
