"""Atomic file writes shared by the core and the lab: a file is replaced whole or not at all.

The data is written to a fresh temporary file in the destination's folder, created with
``mkstemp`` (``O_CREAT | O_EXCL``, a random name: nothing planted there can be followed), flushed
and fsynced, then renamed over the destination with ``os.replace`` and the folder entry fsynced.
If anything fails (an exception, a full disk, a kill before the rename) the previous file is
untouched and a failed write removes its temporary file. A failed write raises
:class:`AtomicWriteError`, one line naming the destination and the operating system's reason
(``[Errno 28] No space left on device``) dug out of whatever the writer raised (``torch.save``
wraps it in a ``RuntimeError``), and saying that the previous file is kept.

Temporary files are named ``.<name>.<random>.tmp``; :data:`TEMP_PATTERN` matches them (and the
fixed ``.<name>.tmp`` names of older versions) so that a folder's owner can remove the ones a
killed process left behind.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomic", "fsync_dir", "AtomicWriteError", "TEMP_PATTERN", "os_error_in"]

TEMP_PATTERN = re.compile(r"^\.(?P<name>.+?)\.(?:[A-Za-z0-9_]{8}\.)?tmp$")
"""Names of :func:`write_atomic`'s temporary files (``.<name>.<8 random>.tmp``) and of the
fixed ``.<name>.tmp`` names written before; ``name`` is the destination's file name."""


class AtomicWriteError(OSError):
    """A file could not be written; the previous version of it (if any) is untouched."""


def os_error_in(err: BaseException) -> OSError | None:
    """The first ``OSError`` in ``err``'s chain (itself, its ``__cause__``/``__context__``)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        stack += [e.__cause__, e.__context__]
    return None


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

    Raises:
        AtomicWriteError: the file could not be written (full disk, read-only or missing
            folder, a directory at ``path``, ...); the message names ``path`` and the reason,
            and the previous file at ``path`` is untouched. Other errors of ``write`` (a
            ``KeyboardInterrupt``, a ``TypeError``) pass through after the cleanup.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _failed(path, err) from err
    try:
        # mkstemp creates 0600; give the file the mode open() would (0666 minus the umask).
        if hasattr(os, "fchmod"):  # (not on Windows, where modes do not apply)
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        cause = os_error_in(err) if isinstance(err, Exception) else None
        if cause is None or isinstance(err, AtomicWriteError):
            raise
        raise _failed(path, cause) from err
    fsync_dir(path.parent)
    return path


def _umask() -> int:
    """The process umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _failed(path: Path, err: OSError) -> AtomicWriteError:
    code = err.errno if err.errno is not None else errno.EIO
    reason = f"[Errno {code}] {err.strerror}" if err.errno is not None and err.strerror else (
        str(err) or os.strerror(code))
    if path.is_dir():
        reason += f" ({path.name} is a directory)"
    failure = AtomicWriteError(f"could not write {str(path)!r}: {reason}; the previous "
                               f"{path.name} (if any) is kept unchanged")
    failure.errno = code  # (strerror and filename stay unset: str() is the message above)
    return failure
