"""Data-parallel training over processes and machines: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=K -m orthosparse train ...`` (several machines: add ``--nnodes N
--node_rank i --master_addr HOST --master_port PORT``) starts K processes per machine with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`orthosparse.lab.train.train` finds them (:func:`init_distributed`) and trains one model with
DDP: NCCL between GPUs (process ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``), gloo on CPUs.

Same result as one process with the same global batch ``B``, to rounding. Every rank walks the
*same* global batch sequence (same loader seed: same permutation, same augmentation draws) and
keeps its contiguous slice ``torch.tensor_split(batch, K)[rank]`` (:func:`shard`). Rank ``r``'s
loss is the *sum* of its per-example losses times ``K / B``; DDP averages gradients over the
ranks, so every rank applies

    (1/K) * sum_r (K/B) * grad(sum_{i in r} l_i) = grad((1/B) * sum_i l_i),

the single-process mean-loss gradient: exact up to the order of floating-point additions, also
when ``K`` does not divide ``B`` (the short last batch included). Logged losses and accuracies
are all-reduced sums (:func:`all_reduce_sum`), so the logs match as well. Batch norm statistics
stay per rank (standard DDP), so models with batch norm match only approximately.

Masks must be identical on every rank: :func:`sync_masks` compares
:func:`~orthosparse.sparse.mask_checksum` across ranks at start and, if a mask method was not
deterministic across devices, replaces the masks with rank 0's
(:func:`~orthosparse.sparse.broadcast_masks`) before DDP broadcasts rank 0's weights.

Example:
    >>> ctx = init_distributed("auto")        # None outside torchrun
    >>> model, checksum = wrap_model(model, ctx)
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..sparse import MASK_SUFFIX, broadcast_masks, get_masks, mask_checksum

__all__ = [
    "DistContext",
    "init_distributed",
    "shutdown_distributed",
    "shard",
    "all_reduce_sum",
    "broadcast_object",
    "compare_checksums",
    "sync_masks",
    "wrap_model",
    "find_free_port",
    "ENV_VARS",
]

# What torchrun sets for every process (``MASTER_*`` tell the ranks where rank 0 listens).
ENV_VARS: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a distributed run.

    Attributes:
        rank: global rank in ``[0, world_size)``; rank 0 writes every file.
        world_size: number of processes (> 1).
        local_rank: rank on this machine (the GPU index).
        backend: ``"nccl"`` or ``"gloo"``.
        device: the device this rank trains on.
        owns_group: :func:`init_distributed` created the process group (and
            :func:`shutdown_distributed` destroys it); ``False`` when the caller had one.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    owns_group: bool = True

    @property
    def is_main(self) -> bool:
        """This is rank 0 (it logs, checkpoints and writes results)."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set; start distributed runs "
                             f"with torchrun (it sets {', '.join(ENV_VARS)})")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} must be an integer") from None


def _device_for(device: str, local_rank: int) -> torch.device:
    """The device of process ``local_rank``: ``cuda:LOCAL_RANK`` for GPU runs, else the CPU."""
    if device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    elif device in ("cpu", "cuda"):
        kind = device
    else:
        raise ValueError(f"device={device!r} names one device, but each process of a "
                         f"distributed run takes its own (cuda:LOCAL_RANK); use auto, cuda or cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use --device cpu")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are "
                         f"visible; start at most that many processes per machine")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistContext | None:
    """Join the process group torchrun describes; return ``None`` for a single process.

    A process group that already exists (the caller's own DDP script) is used as it is.
    Otherwise, with ``WORLD_SIZE > 1`` in the environment, the group is created from
    ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` (``env://``): NCCL when training on
    GPUs, gloo on CPUs.

    Args:
        device: the config's device: ``auto``, ``cuda`` (each process takes
            ``cuda:LOCAL_RANK``) or ``cpu``.

    Raises:
        ValueError: a missing or malformed variable, a single named device (``cuda:1``), more
            processes on a machine than GPUs.

    Example:
        >>> ctx = init_distributed("cpu")      # under torchrun --nproc_per_node=2
        >>> ctx.world_size, ctx.backend
        (2, 'gloo')
    """
    dist = torch.distributed
    if not dist.is_available():
        if _env_int("WORLD_SIZE", 1) > 1:
            raise ValueError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
        return None
    if dist.is_initialized():
        world = dist.get_world_size()
        if world == 1:
            return None
        rank = dist.get_rank()
        local_rank = _env_int("LOCAL_RANK", rank)
        dev = _device_for(device, local_rank)
        return DistContext(rank, world, local_rank, str(dist.get_backend()), dev,
                           owns_group=False)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return None
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    if not os.environ.get("MASTER_ADDR"):
        raise ValueError(f"environment variable MASTER_ADDR is not set; start distributed runs "
                         f"with torchrun (it sets {', '.join(ENV_VARS)})")
    _env_int("MASTER_PORT")
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    dev = _device_for(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, backend, dev, owns_group=True)


def shutdown_distributed(ctx: DistContext | None, *, barrier: bool = True) -> None:
    """Destroy the process group if :func:`init_distributed` created it.

    With ``barrier`` (a normal end) the ranks first wait for each other, so none tears down its
    connections while another still talks to it; after an error on one rank, pass
    ``barrier=False`` (the other ranks may be stuck in a collective).
    """
    dist = torch.distributed
    if ctx is not None and ctx.owns_group and dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def shard(tensor: Tensor, ctx: DistContext | None) -> Tensor:
    """Return this rank's contiguous slice of a global batch (dim 0); the whole batch if single.

    Slices come from ``torch.tensor_split(tensor, K)``: sizes differ by at most one, the first
    ``B mod K`` ranks get the larger ones, and a rank gets an empty slice when ``B < K``.

    Example:
        >>> [len(torch.tensor_split(torch.arange(5), 2)[r]) for r in range(2)]
        [3, 2]
    """
    if ctx is None:
        return tensor
    return torch.tensor_split(tensor, ctx.world_size)[ctx.rank]


def _comm_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(values: Sequence[float | Tensor], ctx: DistContext | None,
                   dtype: torch.dtype = torch.float64) -> list[float]:
    """Sum each value over all ranks (one collective); return them as Python floats.

    Example:
        >>> loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, len(y)], ctx)
    """
    flat = torch.stack([v.detach().to(dtype=dtype, device="cpu").reshape(())
                        if isinstance(v, Tensor) else torch.tensor(float(v), dtype=dtype)
                        for v in values])  # (n,)
    if ctx is not None:
        flat = flat.to(_comm_device(ctx))
        torch.distributed.all_reduce(flat)
    return [float(v) for v in flat.cpu().tolist()]


def broadcast_object(obj: Any, ctx: DistContext | None, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (pickled in memory between our own processes;
    nothing is read from disk)."""
    if ctx is None:
        return obj
    box = [obj if ctx.rank == src else None]
    torch.distributed.broadcast_object_list(box, src=src,
                                            device=_comm_device(ctx))
    return box[0]


def compare_checksums(checksums: Sequence[str]) -> str:
    """Return the common checksum of all ranks.

    Raises:
        ValueError: the ranks differ (the message lists each rank's checksum prefix).

    Example:
        >>> compare_checksums(["ab12", "ab12"])
        'ab12'
    """
    if not checksums:
        raise ValueError("compare_checksums needs at least one checksum")
    if len(set(checksums)) > 1:
        shown = ", ".join(f"rank {r}: {c[:12]}" for r, c in enumerate(checksums))
        raise ValueError(f"masks differ across ranks ({shown})")
    return checksums[0]


def _gather(obj: Any, ctx: DistContext) -> list[Any]:
    out: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def sync_masks(model: nn.Module, ctx: DistContext | None) -> str:
    """Make every rank hold rank 0's masks; return their checksum (verified on all ranks).

    Masks computed from the same seed are already equal (checked by comparing
    :func:`~orthosparse.sparse.mask_checksum` across ranks). If they differ (a data-driven mask
    method that is not bitwise reproducible across devices), rank 0's masks are broadcast into
    the mask buffers, with a warning; the weights follow when DDP broadcasts rank 0's
    parameters.

    Raises:
        RuntimeError: the masks still differ after the broadcast.
    """
    local = mask_checksum(model)
    if ctx is None:
        return local
    try:
        return compare_checksums(_gather(local, ctx))
    except ValueError as err:
        if ctx.is_main:
            warnings.warn(f"{err}; using rank 0's masks on every rank", stacklevel=2)
    synced = broadcast_masks(get_masks(model), src=0)
    with torch.no_grad():
        for name, mask in synced.items():
            model.get_buffer(f"{name}{MASK_SUFFIX}").copy_(mask)
    try:
        return compare_checksums(_gather(mask_checksum(model), ctx))
    except ValueError as err:  # pragma: no cover - broadcast_masks guarantees equality
        raise RuntimeError(f"{err} after broadcasting rank 0's masks") from None


def wrap_model(model: nn.Module, ctx: DistContext | None) -> tuple[nn.Module, str]:
    """Return ``(DDP-wrapped model, mask checksum)``; ``(model, checksum)`` for one process.

    Masks are synchronized first (:func:`sync_masks`); DDP then broadcasts rank 0's parameters
    and buffers. Mask buffers never change in training, so they are not re-broadcast at every
    forward unless the model has other buffers (batch norm statistics) that need it.
    """
    checksum = sync_masks(model, ctx)
    if ctx is None:
        return model, checksum
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    other_buffers = any(not name.endswith(MASK_SUFFIX) for name, _ in model.named_buffers())
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "forward_sync_buffers" in params:  # torch >= 2.13
        kwargs["forward_sync_buffers"] = other_buffers
    else:  # older: broadcast_buffers=False also skips the init sync; masks are synced above
        kwargs["broadcast_buffers"] = other_buffers
    if ctx.device.type == "cuda":
        kwargs.update(device_ids=[ctx.device.index], output_device=ctx.device.index)
    return DistributedDataParallel(model, **kwargs), checksum


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (for ``MASTER_PORT`` in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
