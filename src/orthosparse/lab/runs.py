"""Run directories: what a training run writes, how it is read back, and its console output.

A run lives in ``<out>/<name>-<config hash>/``:

- ``config.json``: the resolved config;
- ``metrics.jsonl`` / ``metrics.csv``: one record per epoch (:data:`METRIC_KEYS`, plus a
  ``jacobian`` summary when recorded);
- ``final.json``: status (finished / diverged), final and best metrics;
- ``checkpoint.pt`` (:data:`CHECKPOINT`): everything needed to continue;
- ``runtime.json`` (:data:`RUNTIME`): the CPU thread count the run started with (it changes
  results bitwise, so a resume restores it: :func:`run_threads`);
- ``failed.json`` (:data:`FAILED`): written by a sweep when the run's process failed;
- ``train.log``, and ``tb/`` when TensorBoard is installed.

Two names describe a run folder: :data:`RunState` is where the run stands, read from its files
alone (:func:`run_state`: ``finished``, ``diverged``, ``failed``, ``partial``, ``pending``);
:data:`RunStart` is what :func:`prepare_run_dir` decides a call to ``train`` does with it
(``done``: return the stored result, ``resume``: continue from the checkpoint, ``fresh``: start).

Every file is written atomically through :func:`orthosparse._atomic.write_atomic` (a fresh
``mkstemp`` file in the folder, fsynced, then ``os.replace``; nothing planted in the folder is
followed), so a reader (a sweep, a report) never sees a torn file, whatever moment the run is
killed at; ``train.log`` is appended through a descriptor opened with ``O_NOFOLLOW``. A failed
write is one line naming the file and the reason, and the previous file is kept.

One process at a time trains a run: :func:`run_lock` takes ``.lock`` (``fcntl.flock``) and
writes its holder (pid, host) into it; a second ``train`` of the same run fails with
:class:`RunLockedError` naming the holder. A sweep takes the lock before starting a worker and
hands the descriptor to it (:data:`LOCK_FD_ENV`). The lock holder removes the temporary files a
killed process left behind (:func:`remove_stale_temps`). docs/design.md §6.

Example:
    >>> result = load_run("runs/digits-0123456789")
    >>> result.final["test_acc"], len(result.history)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from .._atomic import TEMP_PATTERN, AtomicWriteError, write_atomic
from .checkpoint import CheckpointError
from .config import TrainConfig, config_from_dict, config_hash

__all__ = [
    "WORKER_LOG",
    "config_readable",
    "Status",
    "RunState",
    "RunStart",
    "HAS_RESULT",
    "FAILED",
    "RunResult",
    "RunExistsError",
    "RunLockedError",
    "RunDirError",
    "RunFileError",
    "AtomicWriteError",
    "RUN_FILES",
    "LOCK",
    "LOCK_FD_ENV",
    "read_json",
    "open_append",
    "ensure_run_dir",
    "try_lock",
    "run_lock",
    "lock_holder",
    "remove_stale_temps",
    "silence_stdout",
    "METRIC_KEYS",
    "JACOBIAN_KEYS",
    "CHECKPOINT",
    "RunConsole",
    "json_safe",
    "write_json",
    "flat_record",
    "write_metrics",
    "read_history",
    "load_run",
    "prepare_run_dir",
    "run_state",
    "run_threads",
    "RUNTIME",
    "format_record",
    "format_jacobian",
    "format_pct",
]

Status = Literal["finished", "diverged", "stopped"]
RunState = Literal["finished", "diverged", "failed", "partial", "pending"]
RunStart = Literal["done", "resume", "fresh"]
# States whose run has a result (a final.json): a sweep skips them, a report reads them.
HAS_RESULT: frozenset[str] = frozenset({"finished", "diverged"})

CHECKPOINT = "checkpoint.pt"
FAILED = "failed.json"
RUNTIME = "runtime.json"
WORKER_LOG = "worker.log"  # a sweep worker's output, appended run after run
LOCK = ".lock"
# Set by a sweep for its worker: the number of an inherited descriptor holding the run's lock.
LOCK_FD_ENV = "ORTHOSPARSE_RUN_LOCK_FD"
# Every name orthosparse writes in a run folder (``tb`` is a folder, the others files).
RUN_FILES: tuple[str, ...] = ("config.json", "metrics.jsonl", "metrics.csv", "final.json",
                              CHECKPOINT, RUNTIME, FAILED, "train.log", "worker.log", LOCK, "tb")
METRIC_KEYS: tuple[str, ...] = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                "test_loss", "test_acc", "lr", "time")
JACOBIAN_KEYS: tuple[str, ...] = ("mean", "std", "min", "max", "condition_number")


class RunExistsError(FileExistsError):
    """The run directory holds an unfinished run and neither resume nor force was asked for."""


class RunLockedError(RuntimeError):
    """Another process is training this run right now (the message names it: pid, host)."""


class RunDirError(OSError):
    """The run folder cannot be used (not creatable or writable, a file where the folder should
    be, a folder or link where a run file should be); raised before any training."""


class RunFileError(ValueError):
    """A file of a run folder is corrupt or not what orthosparse wrote (the message names it)."""


@dataclass
class RunResult:
    """What :func:`orthosparse.lab.train.train` returns: where the run lives, how it ended, metrics.

    Attributes:
        run_dir: the run directory.
        config: the resolved config.
        status: ``"finished"``, ``"diverged"`` (non-finite loss) or ``"stopped"`` (``stop_after``).
        final: the contents of ``final.json`` (final and best metrics, Jacobian at init, ...).
        history: one dict per completed epoch (the lines of ``metrics.jsonl``).
        skipped: the run had finished before and was not trained again.
        model: the trained model (``None`` when ``skipped``).
    """

    run_dir: Path
    config: TrainConfig
    status: Status
    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def message(self) -> str:
        return str(self.final.get("message", ""))


# --------------------------------------------------------------------------- console


class RunConsole:
    """Log lines to ``train.log`` and (unless ``progress="none"``) to stdout; optional bar.

    ``log_path=None`` gives a silent console (the non-zero ranks of a distributed run).
    """

    def __init__(self, log_path: Path | None, progress: str) -> None:
        self.log = open_append(log_path) if log_path is not None else None
        tty = sys.stdout.isatty()
        self.echo = progress != "none" and log_path is not None
        self.bar = self.echo and (progress == "bar" or (progress == "auto" and tty))

    def line(self, text: str, echo: bool = True) -> None:
        """Log ``text``; the log is best effort (a full disk must not hide the real error) and
        a closed stdout (``train ... | head``) ends the echo, not the run."""
        if self.log is not None:
            try:
                self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
                self.log.flush()
            except OSError:
                pass
        if self.echo and echo:
            try:
                print(text, flush=True)
            except BrokenPipeError:
                self.echo = self.bar = False
                silence_stdout()

    def progress(self, total: int, desc: str) -> _Bar:
        return _Bar(total, desc, self.bar)

    def close(self) -> None:
        if self.log is not None:
            try:
                self.log.close()
            except OSError:
                pass


def silence_stdout() -> None:
    """Point file descriptor 1 at ``os.devnull`` (after a broken pipe: nothing reads it)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured in tests)
        pass


class _Bar:
    """Batch progress: tqdm when installed, else a one-line ``\\r`` bar; silent when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0
        self.tqdm = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.tqdm = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, loss: float) -> None:
        self.n += 1
        self.loss = loss
        if not self.enabled:
            return
        if self.tqdm is not None:
            self.tqdm.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.tqdm.update(1)
            return
        if self.n % max(1, self.total // 50) and self.n != self.total:
            return
        try:
            self._draw()
        except BrokenPipeError:
            self.enabled = False
            silence_stdout()

    def _draw(self) -> None:
        width = 30
        filled = width * self.n // max(1, self.total)
        loss = self.loss
        sys.stdout.write(f"\r{self.desc} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.n}/{self.total} loss {loss:.4f}")
        sys.stdout.flush()

    def close(self) -> None:
        try:
            if self.tqdm is not None:
                self.tqdm.close()
            elif self.enabled:
                sys.stdout.write("\r" + " " * 79 + "\r")
                sys.stdout.flush()
        except BrokenPipeError:
            silence_stdout()


# --------------------------------------------------------------------------- files


def json_safe(value: Any) -> Any:
    """Floats that are NaN/inf become ``None`` (strict JSON); recurse into dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (:func:`orthosparse._atomic.write_atomic`; never through a link).

    Raises:
        AtomicWriteError: the file could not be written (the previous one is kept).
    """
    text = json.dumps(json_safe(data), indent=2) + "\n"
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def config_readable(run_dir: Path) -> bool:
    """``run_dir/config.json`` exists and holds a JSON object (a sweep rewrites it otherwise)."""
    try:
        return isinstance(read_json(run_dir / "config.json"), dict)
    except (OSError, ValueError):
        return False


def read_json(path: str | Path, what: str = "run file") -> Any:
    """Read a JSON file; an unreadable or malformed one is a :class:`RunFileError` naming it.

    Raises:
        FileNotFoundError: no file at ``path``.
        RunFileError: not UTF-8, not JSON, or unreadable (the message names the path).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are both
        raise RunFileError(f"{what} {str(path)!r} is corrupt or unreadable ({type(err).__name__}: "
                           f"{_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text else "no detail"


def open_append(path: str | Path, binary: bool = False) -> Any:
    """Open ``path`` for appending without following a link planted there (``O_NOFOLLOW``).

    Raises:
        RunDirError: ``path`` is a link, a folder or another non-regular file.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as err:
        raise RunDirError(f"cannot open {str(path)!r} for writing: [Errno {err.errno}] "
                          f"{err.strerror}{_link_hint(path)}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{str(path)!r} is not a regular file; move it away")
    return os.fdopen(fd, "ab") if binary else os.fdopen(fd, "a", encoding="utf-8")


def _link_hint(path: Path) -> str:
    return (" (it is a symbolic link; orthosparse never writes through links: remove it)"
            if path.is_symlink() else "")


def flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """One ``metrics.csv`` row: the :data:`METRIC_KEYS` plus ``jacobian_<stat>`` columns."""
    row = {k: record.get(k) for k in METRIC_KEYS}
    jac = record.get("jacobian")
    if isinstance(jac, dict):
        for k in JACOBIAN_KEYS:
            row[f"jacobian_{k}"] = jac.get(k)
    return row


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` and ``metrics.csv`` from ``history`` (atomically each)."""
    lines = "".join(json.dumps(json_safe(r)) + "\n" for r in history)
    write_atomic(run_dir / "metrics.jsonl", lambda fh: fh.write(lines.encode("utf-8")))
    rows = [flat_record(r) for r in history]
    columns = list(METRIC_KEYS) + [f"jacobian_{k}" for k in JACOBIAN_KEYS
                                   if any(f"jacobian_{k}" in r for r in rows)]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    data = text.getvalue().encode("utf-8")
    write_atomic(run_dir / "metrics.csv", lambda fh: fh.write(data))


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Return the records of ``metrics.jsonl`` (``[]`` when there is none).

    Raises:
        RunFileError: a line that is not a JSON object (the message names the file and line).
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"run file {str(path)!r} is unreadable ({_first_line(err)})") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunFileError(f"run file {str(path)!r} is corrupt at line {number} "
                               f"({err})") from None
        if not isinstance(record, dict):
            raise RunFileError(f"run file {str(path)!r} line {number} is not a JSON object")
        records.append(record)
    return records


def _read_final(run_dir: Path) -> dict[str, Any]:
    """``final.json`` checked: a JSON object whose ``status`` is finished or diverged."""
    path = run_dir / "final.json"
    final = read_json(path)
    if not isinstance(final, dict) or final.get("status") not in HAS_RESULT:
        got = final.get("status") if isinstance(final, dict) else type(final).__name__
        raise RunFileError(f"run file {str(path)!r} is not a result orthosparse wrote (status "
                           f"{got!r}, expected one of {', '.join(sorted(HAS_RESULT))})")
    return final


def _result_problem(run_dir: Path) -> str | None:
    """Why the stored result of ``run_dir`` cannot be read back (``None``: it can)."""
    try:
        _read_final(run_dir)
        read_history(run_dir)
    except (RunFileError, FileNotFoundError) as err:
        return str(err)
    return None


def load_run(run_dir: str | Path) -> RunResult:
    """Read a run directory written by :func:`orthosparse.lab.train.train` (config, history, final).

    Raises:
        FileNotFoundError: no ``config.json`` in ``run_dir``.
        ValueError: the run has no ``final.json`` yet (it is unfinished).
        RunFileError: ``config.json``, ``final.json`` or ``metrics.jsonl`` is corrupt (the
            message names the file; a run with a complete checkpoint rebuilds them with
            ``--resume``).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    data = read_json(config_path)
    if not isinstance(data, dict):
        raise RunFileError(f"run file {str(config_path)!r} holds a {type(data).__name__}, not a "
                           f"config")
    config = config_from_dict(data, where=f" (in {config_path})")
    final_path = run_dir / "final.json"
    if not final_path.is_file():
        raise ValueError(f"run {str(run_dir)!r} has not finished (no final.json); resume it "
                         f"with `orthosparse train --resume {run_dir}`")
    final = _read_final(run_dir)
    return RunResult(run_dir, config, final["status"], final, read_history(run_dir),
                     skipped=True)


def run_state(run_dir: str | Path) -> RunState:
    """Where a run stands, from its files alone.

    A readable ``final.json`` -> its status (``finished``/``diverged``); else ``failed.json``
    -> ``failed``; else a checkpoint -> ``partial`` (resumable: a corrupt ``final.json`` next
    to a complete checkpoint is rebuilt by a resume); else ``pending``.
    """
    run_dir = Path(run_dir)
    final = run_dir / "final.json"
    if final.is_file():
        try:
            status = json.loads(final.read_text("utf-8")).get("status")
        except (ValueError, OSError, AttributeError):
            status = None
        if status in HAS_RESULT:
            return status
    if (run_dir / FAILED).is_file():
        return "failed"
    if (run_dir / CHECKPOINT).is_file():
        return "partial"
    return "pending"


# --------------------------------------------------------------------------- folder, lock


def ensure_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` and check, before any training, that every run file can be written.

    Raises:
        RunDirError: the folder cannot be created (a file in the way, a read-only or special
            file system, no permission), it is not writable (a probe file is written, fsynced
            and removed), or one of :data:`RUN_FILES` is a link, or a folder where a file
            belongs (``checkpoint.pt/``); the message names the path and the reason.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()),
                       run_dir)
        raise RunDirError(f"cannot create the run folder {str(run_dir)!r}: {str(blocker)!r} is a "
                          f"file, not a folder; pick another --out or move it away") from None
    except OSError as err:
        raise RunDirError(f"cannot create the run folder {str(run_dir)!r}: [Errno {err.errno}] "
                          f"{err.strerror}{_where(err, run_dir)}") from None
    if not run_dir.is_dir():
        raise RunDirError(f"cannot use {str(run_dir)!r} as a run folder: it is not a folder")
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_symlink():
            raise RunDirError(f"{str(path)!r} is a symbolic link; orthosparse never writes "
                              f"through links: remove it")
        kind = "folder" if name == "tb" else "file"
        if path.exists() and (path.is_dir() != (kind == "folder") or not (
                path.is_dir() or path.is_file())):
            raise RunDirError(f"{str(path)!r} is not a {kind} but the run writes its {name} "
                              f"there; move it away")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=run_dir)
    except OSError as err:
        raise RunDirError(f"the run folder {str(run_dir)!r} is not writable: [Errno {err.errno}] "
                          f"{err.strerror}") from None
    try:
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise RunDirError(f"cannot write in the run folder {str(run_dir)!r}: [Errno {err.errno}] "
                          f"{err.strerror}") from None


def _where(err: OSError, run_dir: Path) -> str:
    return f" (at {err.filename!r})" if err.filename and str(err.filename) != str(run_dir) else ""


def _holder_text() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()


def lock_holder(run_dir: Path) -> str:
    """Who holds ``run_dir``'s lock, as recorded in it: ``"pid 123 on host h since ..."``."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            data = json.loads(os.read(fd, 4096).decode("utf-8"))
        finally:
            os.close(fd)
        return f"pid {data['pid']} on host {data['host']} since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not record itself"


def _open_lock(run_dir: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    path = run_dir / LOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        raise RunDirError(f"cannot open the run lock {str(path)!r}: [Errno {err.errno}] "
                          f"{err.strerror}{_link_hint(path)}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{str(path)!r} is not a regular file; move it away")
    return fd


def try_lock(run_dir: Path) -> int | None | Literal[False]:
    """Take ``run_dir``'s lock without waiting: its descriptor, ``False`` if another process
    holds it, ``None`` where locks are unavailable (no ``fcntl``: Windows).

    The lock is ``fcntl.flock`` on ``run_dir/.lock`` (opened without following links), so it
    ends with the process that holds it, however that process ends; the holder's pid and host
    are written into the file for :func:`lock_holder`. A descriptor inherited from a sweep
    (:data:`LOCK_FD_ENV`, same file) is the lock already held and is returned as is.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    inherited = _inherited_lock(run_dir)
    if inherited is not None:
        fd = inherited
    else:
        fd = _open_lock(run_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_text(), 0)
    return fd


def _inherited_lock(run_dir: Path) -> int | None:
    """The descriptor named by :data:`LOCK_FD_ENV` if it is open on ``run_dir/.lock``."""
    text = os.environ.get(LOCK_FD_ENV)
    if not text or not text.isdigit():
        return None
    try:
        held, here = os.fstat(int(text)), os.stat(run_dir / LOCK, follow_symlinks=False)
    except OSError:
        return None
    if (held.st_dev, held.st_ino) != (here.st_dev, here.st_ino):
        return None
    os.environ.pop(LOCK_FD_ENV, None)  # taken: a later run in this process locks its own
    return int(text)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (:func:`try_lock`).

    Raises:
        RunLockedError: another process holds it; the message names it (pid, host, since).
        RunDirError: the lock file cannot be opened (a link, a folder, no permission).
    """
    fd = try_lock(run_dir)
    if fd is False:
        raise RunLockedError(
            f"run {str(run_dir)!r} is being trained by another process ({lock_holder(run_dir)}); "
            f"wait for it to end, or stop it (its last checkpoint is kept) and pass --resume")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the flock


def remove_stale_temps(run_dir: Path) -> list[str]:
    """Remove the temporary files a killed writer left in ``run_dir`` (call with the lock held).

    Only names of :func:`orthosparse._atomic.write_atomic` temporaries of the run's own files
    (``.checkpoint.pt.<random>.tmp``, ``.final.json.tmp``, ...) and write probes are removed; a
    link there is removed as a link. Returns the removed names.
    """
    removed = []
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_PATTERN.match(entry.name)
        if match is None or not (match.group("name") in RUN_FILES or match.group(
                "name") == "write-probe"):
            continue
        if entry.is_dir(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return sorted(removed)


def prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool, force: bool) -> RunStart:
    """Return ``"done"``, ``"resume"`` or ``"fresh"`` for ``run_dir``; clear it when forced.

    A stored result (``final.json``, ``metrics.jsonl``) that cannot be read back is not
    ``done``: with a checkpoint and ``resume`` the run resumes from it (a checkpoint written at
    the end rebuilds the files without training).

    Raises:
        ValueError: the directory holds a different config (and not ``force``).
        RunFileError: its ``config.json`` is corrupt, or its result is corrupt with no
            checkpoint to rebuild it from (and not ``force``).
        RunExistsError: an unfinished run is there and neither ``resume`` nor ``force``.
        CheckpointError: ``resume`` but metrics without a checkpoint to continue from.
    """
    h = config_hash(config)
    config_path = run_dir / "config.json"
    if config_path.is_file() and not force:
        data = read_json(config_path)
        try:
            saved = config_hash(config_from_dict(data))
        except (ValueError, TypeError, AttributeError) as err:
            raise RunFileError(f"run file {str(config_path)!r} is not a config this version "
                               f"reads ({_first_line(err)}); pass --force to start over") from None
        if saved != h:
            raise ValueError(f"run directory {str(run_dir)!r} holds a different config (hash "
                             f"{saved} != {h}); pick another --out/--name or pass --force to "
                             f"overwrite it")
    if force and run_dir.exists():
        for name in ("final.json", CHECKPOINT, "metrics.jsonl", "metrics.csv", "train.log",
                     "config.json", RUNTIME, FAILED):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
        return "fresh"
    has_checkpoint = (run_dir / CHECKPOINT).is_file()
    if (run_dir / "final.json").is_file():
        problem = _result_problem(run_dir)
        if problem is None:
            return "done"
        if not has_checkpoint:
            raise RunFileError(f"{problem}; there is no {CHECKPOINT} to rebuild it from: pass "
                               f"--force to train the run again")
        if not resume:
            raise RunExistsError(f"{problem}; pass --resume to rebuild the result from "
                                 f"{str(run_dir / CHECKPOINT)!r} or --force to start over")
        return "resume"
    if has_checkpoint:
        if not resume:
            raise RunExistsError(
                f"run directory {str(run_dir)!r} holds an unfinished run; pass --resume "
                f"(resume=True) to continue it or --force (force=True) to start over")
        return "resume"
    if resume and (run_dir / "metrics.jsonl").is_file():
        raise CheckpointError(f"run directory {str(run_dir)!r} has metrics but no {CHECKPOINT} "
                              f"to resume from; pass --force to start over")
    return "fresh"


def run_threads(run_dir: Path, requested: int | None, start: RunStart) -> tuple[int, str | None]:
    """Return the CPU thread count the run in ``run_dir`` trains with, and a note for its log.

    The thread count splits CPU reductions differently, so it changes results bitwise
    (``threads`` 1 vs 2 on the same config differ in the 9th digit of the loss); it is not part
    of the config hash (a property of the machine, not of the experiment) but of the run folder:

    - a ``fresh`` start uses ``requested``, or torch's current count when ``None`` (which
      follows ``OMP_NUM_THREADS``, as set by a sweep for its workers), and records it in
      ``runtime.json``;
    - a ``resume`` uses the recorded count whatever ``requested`` says, so a run started by a
      sweep and resumed by hand ends bitwise where the uninterrupted run would; the note says
      so when the request differs. A folder without a record (written before there was one) is
      treated like a fresh start.

    Example:
        >>> threads, note = run_threads(run_dir, config.threads, "resume")
    """
    import torch

    path = run_dir / RUNTIME
    recorded = None
    if start == "resume" and path.is_file():
        try:
            recorded = json.loads(path.read_text("utf-8")).get("threads")
        except (OSError, ValueError, AttributeError):
            recorded = None
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
        note = None
        if recorded != (requested if requested is not None else torch.get_num_threads()):
            asked = f"threads={requested}" if requested is not None else (
                f"torch's default, {torch.get_num_threads()}")
            note = (f"threads: {recorded}, as recorded when this run started ({asked} asked "
                    f"for); the thread count changes results bitwise")
        return recorded, note
    threads = requested if requested is not None else torch.get_num_threads()
    write_json(path, {"threads": threads})
    return threads, None


# --------------------------------------------------------------------------- formatting


def format_pct(value: float | None) -> str:
    """``0.9731`` -> ``"97.31%"``; ``None`` -> ``"-"``."""
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_jacobian(jac: dict[str, Any]) -> str:
    """``"mean 1 std 0.01 min 0.97 ..."`` for the recorded Jacobian statistics."""
    return " ".join(f"{k} {jac[k]:.4g}" for k in JACOBIAN_KEYS if isinstance(jac.get(k), float))


def format_record(r: dict[str, Any], epochs: int) -> str:
    """The one-line console summary of an epoch record."""
    text = (f"epoch {r['epoch']}/{epochs}  train loss {_num(r['train_loss'])} acc "
            f"{format_pct(r['train_acc'])}")
    if r.get("val_acc") is not None:
        text += f"  val loss {_num(r['val_loss'])} acc {format_pct(r['val_acc'])}"
    text += (f"  test loss {_num(r['test_loss'])} acc {format_pct(r['test_acc'])}  lr "
             f"{r['lr']:.3g}  {r['time']:.1f}s")
    if isinstance(r.get("jacobian"), dict):
        text += "  jacobian " + format_jacobian(r["jacobian"])
    return text
