"""Atomic file writes shared by the core and the lab: a file is replaced whole or not at all.

The data is written to a fresh temporary file in the destination's folder, created with
``mkstemp`` (``O_CREAT | O_EXCL``, a random name: nothing planted there can be followed), flushed
and fsynced, then renamed over the destination with ``os.replace`` and the folder entry fsynced.
If anything fails (an exception, a full disk, a kill before the rename) the previous file is
untouched and a failed write removes its temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomic", "fsync_dir"]


def fsync_dir(directory: str | Path) -> None:
    """Persist a rename: fsync the directory entry (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file and move it to ``path`` atomically.

    Args:
        path: destination file; its directory is created if missing.
        write: writes the contents to the binary file object it is given.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path
