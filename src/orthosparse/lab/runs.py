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

Every file is written atomically (temporary file + ``os.replace``), so a reader (a sweep, a
report) never sees a torn file, whatever moment the run is killed at.

Example:
    >>> result = load_run("runs/digits-0123456789")
    >>> result.final["test_acc"], len(result.history)
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from .checkpoint import CheckpointError
from .config import TrainConfig, config_from_dict, config_hash

__all__ = [
    "Status",
    "RunState",
    "RunStart",
    "HAS_RESULT",
    "FAILED",
    "RunResult",
    "RunExistsError",
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
METRIC_KEYS: tuple[str, ...] = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                "test_loss", "test_acc", "lr", "time")
JACOBIAN_KEYS: tuple[str, ...] = ("mean", "std", "min", "max", "condition_number")


class RunExistsError(FileExistsError):
    """The run directory holds an unfinished run and neither resume nor force was asked for."""


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
        self.log = log_path.open("a", encoding="utf-8") if log_path is not None else None
        tty = sys.stdout.isatty()
        self.echo = progress != "none" and log_path is not None
        self.bar = self.echo and (progress == "bar" or (progress == "auto" and tty))

    def line(self, text: str, echo: bool = True) -> None:
        if self.log is not None:
            self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self.log.flush()
        if self.echo and echo:
            print(text, flush=True)

    def progress(self, total: int, desc: str) -> _Bar:
        return _Bar(total, desc, self.bar)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


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
        if not self.enabled:
            return
        if self.tqdm is not None:
            self.tqdm.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.tqdm.update(1)
            return
        if self.n % max(1, self.total // 50) and self.n != self.total:
            return
        width = 30
        filled = width * self.n // max(1, self.total)
        sys.stdout.write(f"\r{self.desc} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.n}/{self.total} loss {loss:.4f}")
        sys.stdout.flush()

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
        elif self.enabled:
            sys.stdout.write("\r" + " " * 79 + "\r")
            sys.stdout.flush()


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
    """Write JSON atomically (temp file + ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
    tmp = run_dir / ".metrics.jsonl.tmp"
    tmp.write_text(lines, encoding="utf-8")
    os.replace(tmp, run_dir / "metrics.jsonl")
    rows = [flat_record(r) for r in history]
    columns = list(METRIC_KEYS) + [f"jacobian_{k}" for k in JACOBIAN_KEYS
                                   if any(f"jacobian_{k}" in r for r in rows)]
    tmp = run_dir / ".metrics.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    os.replace(tmp, run_dir / "metrics.csv")


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Return the records of ``metrics.jsonl`` (``[]`` when there is none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_run(run_dir: str | Path) -> RunResult:
    """Read a run directory written by :func:`orthosparse.lab.train.train` (config, history, final).

    Raises:
        FileNotFoundError: no ``config.json`` in ``run_dir``.
        ValueError: the run has no ``final.json`` yet (it is unfinished).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    data = json.loads(config_path.read_text(encoding="utf-8"))
    config = config_from_dict(data, where=f" (in {config_path})")
    final_path = run_dir / "final.json"
    if not final_path.is_file():
        raise ValueError(f"run {str(run_dir)!r} has not finished (no final.json); resume it "
                         f"with `orthosparse train --resume {run_dir}`")
    final = json.loads(final_path.read_text(encoding="utf-8"))
    return RunResult(run_dir, config, final["status"], final, read_history(run_dir),
                     skipped=True)


def run_state(run_dir: str | Path) -> RunState:
    """Where a run stands, from its files alone.

    ``final.json`` -> its status (``finished``/``diverged``); else ``failed.json`` ->
    ``failed``; else a checkpoint -> ``partial`` (resumable); else ``pending``.
    """
    run_dir = Path(run_dir)
    final = run_dir / "final.json"
    if final.is_file():
        try:
            status = json.loads(final.read_text("utf-8")).get("status")
        except (json.JSONDecodeError, OSError):
            status = None
        if status in HAS_RESULT:
            return status
    if (run_dir / FAILED).is_file():
        return "failed"
    if (run_dir / CHECKPOINT).is_file():
        return "partial"
    return "pending"


def prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool, force: bool) -> RunStart:
    """Return ``"done"``, ``"resume"`` or ``"fresh"`` for ``run_dir``; clear it when forced.

    Raises:
        ValueError: the directory holds a different config (and not ``force``).
        RunExistsError: an unfinished run is there and neither ``resume`` nor ``force``.
        CheckpointError: ``resume`` but metrics without a checkpoint to continue from.
    """
    h = config_hash(config)
    config_path = run_dir / "config.json"
    if config_path.is_file():
        try:
            saved = config_hash(config_from_dict(json.loads(config_path.read_text("utf-8"))))
        except (ValueError, TypeError) as err:
            saved = f"unreadable ({err})"
        if saved != h and not force:
            raise ValueError(f"run directory {str(run_dir)!r} holds a different config (hash "
                             f"{saved} != {h}); pick another --out/--name or pass --force to "
                             f"overwrite it")
    if force and run_dir.exists():
        for name in ("final.json", CHECKPOINT, "metrics.jsonl", "metrics.csv", "train.log",
                     "config.json", RUNTIME):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
        return "fresh"
    if (run_dir / "final.json").is_file():
        return "done"
    if (run_dir / CHECKPOINT).is_file():
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
        except (OSError, json.JSONDecodeError, AttributeError):
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
