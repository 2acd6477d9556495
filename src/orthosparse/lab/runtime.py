"""Where and how a run executes: its device, autocast precision, and seeded global RNG scope.

Example:
    >>> device = resolve_device("auto")
    >>> with run_scope(seed=0, deterministic=False, threads=None):
    ...     ...                                   # torch/numpy/random seeded, restored after
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from .._checks import check_device

__all__ = ["resolve_device", "resolve_precision", "seed_for", "run_scope"]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; otherwise ``torch.device(device)``.

    Raises:
        ValueError: a malformed name, an unavailable CUDA device (or index), ``meta``
            (:func:`orthosparse._checks.check_device`, the core's rule).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (``None``: plain fp32).

    ``auto`` is bf16 on a GPU that supports it, fp16 on older GPUs, fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def seed_for(seed: int, what: str) -> int:
    """Return an independent 63-bit seed for stream ``what`` (mask, data order, ...) of run seed
    ``seed``: the first 8 bytes of ``sha256("orthosparse:<seed>:<what>")``, shifted right by 1.

    Example:
        >>> seed_for(0, "batches") != seed_for(0, "sparsify")
        True
    """
    digest = hashlib.sha256(f"orthosparse:{seed}:{what}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def run_scope(seed: int, deterministic: bool, threads: int | None) -> Iterator[None]:
    """Seed torch/numpy/random for the run (thread count, determinism too); restore afterwards."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    old_det = torch.are_deterministic_algorithms_enabled()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002 (code outside may use it)
        random.seed(seed)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_det)
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
