"""Checkpoints that survive a crash at any moment and load with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), so
``torch.load(path, weights_only=True)`` restores it without executing code from disk. Writes are
atomic: the data goes to a temporary file in the same directory, is flushed and fsync'ed, then
``os.replace`` swaps it in (atomic on POSIX and Windows), so a reader sees either the old or the
new checkpoint, never a torn one.

Random states are stored as tensors/ints: torch CPU (``ByteTensor``), every CUDA device, numpy's
legacy global generator (MT19937 key as an int64 tensor) and Python's ``random``.

Example:
    >>> save_checkpoint("run/checkpoint.pt", {"model": model.state_dict(), "rng": rng_state()})
    >>> state = load_checkpoint("run/checkpoint.pt")
"""

from __future__ import annotations

import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import write_atomic

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "generator_state",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not in the expected format."""


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`orthosparse._atomic.write_atomic`).

    If anything fails (an exception, a full disk, a kill before the rename) the previous file at
    ``path`` is untouched; a failed write removes its temporary file.

    Args:
        path: destination file; its directory is created if missing.
        state: tensors, numbers, strings, ``None`` and nested dicts/lists/tuples of them.

    Returns:
        The destination path.
    """
    return write_atomic(path, lambda fh: torch.save(dict(state), fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, corrupt, or holds something other than a dict
            of tensors and plain values (the message names the path).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError,
            ValueError, KeyError, AttributeError, ImportError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or unreadable ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); delete it to start the "
            f"run over"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a "
                              f"dict; it was not written by orthosparse")
    return state


# --------------------------------------------------------------------------- random states


def generator_state(generator: torch.Generator) -> torch.Tensor:
    """Return a copy of ``generator``'s state (a ``uint8`` tensor)."""
    return generator.get_state().clone()


def rng_state() -> dict[str, Any]:
    """Capture the global random states (torch CPU and CUDA, numpy, Python) as plain values."""
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global state is saved)
    assert np_state[0] == "MT19937"
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),  # (624,)
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),  # (625,)
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the global random states captured by :func:`rng_state`.

    Raises:
        CheckpointError: a missing or malformed entry.
    """
    try:
        torch.set_rng_state(state["torch"].cpu())
        np_s = state["numpy"]
        np.random.set_state((  # noqa: NPY002
            "MT19937", np_s["key"].cpu().numpy().astype(np.uint32), int(np_s["pos"]),
            int(np_s["has_gauss"]), float(np_s["cached_gaussian"]),
        ))
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"].tolist()),
                         py["gauss_next"]))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"malformed random-state entry in checkpoint: {err}") from err
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            import warnings

            warnings.warn(f"checkpoint holds random states for {len(cuda)} CUDA devices, this "
                          f"machine has {torch.cuda.device_count()}; restoring the common ones",
                          stacklevel=2)
        for index, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), index)
