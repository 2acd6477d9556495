"""Helpers shared by the benchmark scripts: timing and EOI over a model's weights."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from orthosparse import eoi_group_


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeats: int, *, warmup: bool = False,
                device: torch.device | None = None) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (after one untimed call if ``warmup``),
    each synchronized with ``device`` when given."""
    device = device or torch.device("cpu")
    if warmup:
        fn()
        sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def eoi_by_shape(weights: list[torch.Tensor], density: float, generator: torch.Generator,
                 backend: str = "auto") -> list[torch.Tensor]:
    """EOI on every weight, same-shape weights in one ``eoi_group_`` call (as ``sparsify``
    does) with EOI backend ``backend``; the masks in the order of ``weights``."""
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(weights):
        groups.setdefault(tuple(w.shape), []).append(i)
    masks: list[torch.Tensor] = [None] * len(weights)  # type: ignore[list-item]
    for idx in groups.values():
        group = eoi_group_([weights[i] for i in idx], density, generator=generator,
                           backend=backend)
        for i, m in zip(idx, group, strict=True):
            masks[i] = m
    return masks


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes by which memory use peaks above its level before ``fn()``: on CUDA from
    ``torch.cuda.max_memory_allocated`` (reset before); on the CPU from the process's peak
    resident memory (Linux ``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``; it counts
    pages touched, so it is rougher). None where neither can be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _proc_status("VmRSS")
    fn()
    peak = _proc_status("VmHWM")
    return None if base is None or peak is None else max(0, peak - base)
