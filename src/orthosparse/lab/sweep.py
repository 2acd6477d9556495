"""Grids of runs: ``orthosparse sweep GRID.toml --jobs N`` expands, runs, skips, resumes.

A sweep file (or a named sweep preset, :func:`orthosparse.lab.presets.list_sweeps`) has four parts::

    [sweep]                      # name (default: the file name), preset, config (a base TOML
    name = "mlp-grid"            # config file, relative to this file), description, out
    preset = "mlp"

    [grid]                       # any config key; a list is an axis of the grid (a key whose
    mask = ["uniform", "erk"]    # value is itself a list, like milestones, takes a list of
    init = ["orthogonal", "eoi"] # lists to vary); first key outermost, last innermost
    density = [0.05, 0.1]
    seed = [0, 1, 2, 3, 4]

    [[add]]                      # more runs: the grid with these keys replaced (dense baseline)
    mask = "dense"
    density = 1.0
    init = "orthogonal"

    [[exclude]]                  # drop runs matching every key (a list matches any value)
    mask = "snip"
    init = "orthogonal"

    [executor]                   # optional: where the runs execute (--executor wins), and
    name = "ray"                 # each executor's options (orthosparse.lab.executors)
    [executor.ray]
    cpus = 1

On disk, ``<out>/<name>/`` holds ``sweep.json`` (the expanded grid: every run's directory,
config hash and varying values), ``index.json``/``index.csv`` (each run's state and metrics,
rewritten whenever a run ends), ``sweep.log``, and ``runs/<name>-<hash>/`` per run (see
:mod:`orthosparse.lab.runs`). All state lives in those files: a restart expands the grid again,
skips runs with a ``final.json`` (finished or diverged), resumes runs with a checkpoint from
it, retries failed runs (``failed.json`` holds the traceback) unless ``retry_failed=False``,
and finds a run by its config hash even if its directory name changed with the grid.

With the ``local`` executor (the default) each run is a separate process (``python -m
orthosparse train --resume RUN_DIR``), so a crash cannot take the sweep down; ``jobs`` run side
by side, each pinned to one GPU through ``CUDA_VISIBLE_DEVICES`` when several are visible, or
given ``cpu_count // jobs`` threads on a CPU (``OMP_NUM_THREADS``; the run folder records the
count, and a resume, by a sweep or by hand, keeps it: :func:`orthosparse.lab.runs.run_threads`).
``executor="ray"`` or ``"submitit"`` runs them on a Ray cluster or SLURM instead, with the same
folders (:mod:`orthosparse.lab.executors`, docs/cluster.md). Ctrl-C (or SIGTERM) stops the runs
(they keep their last checkpoint) and exits with 130.

Example:
    >>> result = run_sweep("configs/digits-grid.toml", jobs=2)
    >>> result.counts
    {'finished': 50}
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import typing
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import write_atomic
from . import executors as _executors
from .config import (
    GROUPS,
    TrainConfig,
    check_names,
    config_fields,
    config_from_dict,
    config_hash,
    config_to_dict,
    field_type,
    load_toml,
    parse_field,
    resolve_config,
    split_optional,
)
from .runs import (
    FAILED,
    HAS_RESULT,
    LOCK_FD_ENV,
    WORKER_LOG,
    RunState,
    config_readable,
    ensure_run_dir,
    json_safe,
    open_append,
    run_state,
    try_lock,
    write_json,
)

__all__ = [
    "SweepSpec",
    "SweepRun",
    "SweepResult",
    "load_sweep",
    "expand_sweep",
    "run_sweep",
    "sweep_to_toml",
    "parse_overrides",
]

_SWEEP_KEYS = ("name", "preset", "config", "description", "out")
_LIST_FIELDS = frozenset(f.name for f in config_fields()
                         if typing.get_origin(split_optional(field_type(f.name))[0]) is list)
_ABBREV = {"seed": "s", "density": "d", "depth": "L", "width": "w", "epochs": "e", "lr": "lr",
           "gain": "g", "batch_size": "b", "weight_decay": "wd", "bias_std": "bs"}


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: every grid key maps to its list of values (a fixed value is a list of one).

    Attributes:
        name: the sweep directory's name.
        grid: ``{config key: [values]}`` in file order (first key varies slowest).
        add: extra blocks, each ``{key: [values]}`` replacing those keys of the grid.
        exclude: blocks of ``{key: [values]}``; a run matching every key of one is dropped.
        preset: base preset of every run.
        config: base TOML config file of every run (applied after the preset).
        description: free text.
        out: parent directory of the sweep directory.
        source: where the spec came from (a path or ``preset NAME``).
        executor: the executor the file names (``[executor] name``; ``None``: local).
        executor_options: ``{executor name: {option: value}}`` from ``[executor.NAME]``.
    """

    name: str
    grid: dict[str, list[Any]]
    add: tuple[dict[str, list[Any]], ...] = ()
    exclude: tuple[dict[str, list[Any]], ...] = ()
    preset: str | None = None
    config: str | None = None
    description: str = ""
    out: str = "sweeps"
    source: str = ""
    executor: str | None = None
    executor_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def _axis(key: str, value: Any, where: str) -> list[Any]:
    """The values of ``key``: a list is an axis (for list-typed keys, a list of lists)."""
    if key in _LIST_FIELDS:
        is_axis = isinstance(value, list) and bool(value) and all(
            isinstance(v, list) for v in value)
        return list(value) if is_axis else [value]
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{key} = [] has no values{where}; give at least one")
        return list(value)
    return [value]


def _block(data: Any, section: str, where: str) -> dict[str, list[Any]]:
    """Flatten one ``[grid]``/``[[add]]``/``[[exclude]]`` table (``[grid.optim]`` groups too)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"[{section}] must be a table{where}, got {type(data).__name__}")
    names = {f.name for f in config_fields()}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        items = value.items() if isinstance(value, Mapping) and k in GROUPS else [(k, value)]
        for sub, v in items:
            s = sub.replace("-", "_")
            if s not in names:
                import difflib

                close = difflib.get_close_matches(s, sorted(names), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown config key {s!r} in [{section}]{where}{hint}")
            if s in flat:
                raise ValueError(f"config key {s!r} is given twice in [{section}]{where}")
            flat[s] = v
    if "out" in flat:
        raise ValueError(f"[{section}] sets out{where}: runs go to <sweep dir>/runs; set the "
                         f"sweep's parent directory with [sweep] out = ... or --out")
    blocks = {k: _axis(k, v, f" in [{section}]{where}") for k, v in flat.items()}
    if len(blocks.get("name", [])) > 1:
        raise ValueError(f"name cannot vary in [{section}]{where}; run names are built from the "
                         f"varying keys")
    return blocks


def _spec_from_dict(data: Mapping[str, Any], *, default_name: str, source: str,
                    base_dir: Path | None) -> SweepSpec:
    where = f" ({source})" if source else ""
    allowed = ("sweep", "grid", "add", "exclude", "executor")
    for key in data:
        if key not in allowed:
            raise ValueError(f"unknown top-level key {key!r}{where}; a sweep file has [sweep], "
                             f"[grid], [[add]], [[exclude]] and [executor] (config keys go in "
                             f"[grid])")
    head = dict(data.get("sweep", {}))
    for key in head:
        if key not in _SWEEP_KEYS:
            raise ValueError(f"unknown key {key!r} in [sweep]{where}; allowed: "
                             f"{', '.join(_SWEEP_KEYS)}")
    for key in ("name", "preset", "config", "description", "out"):
        if key in head and not isinstance(head[key], str):
            raise TypeError(f"[sweep] {key} must be a string{where}, got {head[key]!r}")
    name = head.get("name", default_name)
    if not name or any(c in name for c in "/\\") or name in (".", ".."):
        raise ValueError(f"sweep name={name!r}{where} must be a non-empty file name")
    grid = _block(data.get("grid", {}), "grid", where)

    def blocks(section: str) -> tuple[dict[str, list[Any]], ...]:
        items = data.get(section, [])
        if isinstance(items, Mapping):
            items = [items]
        if not isinstance(items, list):
            raise TypeError(f"[[{section}]] must be an array of tables{where}")
        return tuple(_block(item, section, where) for item in items)

    config = head.get("config")
    if config is not None and base_dir is not None and not Path(config).is_absolute():
        config = str(base_dir / config)
    executor, executor_opts = _executor_table(data.get("executor", {}), where)
    return SweepSpec(name=name, grid=grid, add=blocks("add"), exclude=blocks("exclude"),
                     preset=head.get("preset"), config=config,
                     description=head.get("description", ""), out=head.get("out", "sweeps"),
                     source=source, executor=executor, executor_options=executor_opts)


def _executor_table(data: Any, where: str) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """``[executor]``: ``name`` (the default executor) and one ``[executor.NAME]`` table of
    options per executor, each checked (:func:`orthosparse.lab.executors.executor_options`)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"[executor] must be a table{where}, got {type(data).__name__}")
    name = data.get("name")
    names = _executors.list_executors()
    if name is not None and name not in names:
        raise ValueError(f"[executor] name={name!r}{where} must be one of {', '.join(names)}")
    options: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key == "name":
            continue
        if key not in names:
            raise ValueError(f"unknown key {key!r} in [executor]{where}; allowed: name, and a "
                             f"table of options per executor: {', '.join(names)}")
        if not isinstance(value, Mapping):
            raise TypeError(f"[executor.{key}] must be a table{where}, got {value!r}")
        try:
            _executors.executor_options(key, value)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{err} (in [executor.{key}]{where})") from None
        options[key] = {k.replace("-", "_"): v for k, v in value.items()}
    return name, options


def load_sweep(source: str | Path | Mapping[str, Any] | SweepSpec) -> SweepSpec:
    """Read a sweep from a TOML file, a sweep preset name, or a dict of the same structure.

    Raises:
        FileNotFoundError: ``source`` looks like a path (``.toml``) that does not exist.
        ValueError: an unknown sweep preset, section or config key; an empty axis.
        TypeError: a section of the wrong type.

    Example:
        >>> spec = load_sweep("paper-mlp")
        >>> spec.grid["density"]
        [0.05, 0.1]
    """
    if isinstance(source, SweepSpec):
        return source
    if isinstance(source, Mapping):
        return _spec_from_dict(source, default_name="sweep", source="", base_dir=None)
    path = Path(source)
    if path.suffix == ".toml" or path.is_file():
        data = load_toml(path)
        return _spec_from_dict(data, default_name=path.stem, source=str(path),
                               base_dir=path.parent)
    from .presets import get_sweep

    preset = get_sweep(str(source))
    return _spec_from_dict(preset.spec, default_name=preset.name,
                           source=f"preset {preset.name}", base_dir=None)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``["epochs=1", "milestones=0.3,0.6"]`` (command-line syntax) into typed values.

    Raises:
        ValueError: an item without ``=``, an unknown key, a value that does not parse.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set {item!r} must look like KEY=VALUE")
        out[key] = parse_field(key, text)
    return out


# --------------------------------------------------------------------------- expansion


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep.

    Attributes:
        index: position in the expanded grid.
        config: its resolved config (``out`` = ``<sweep dir>/runs``).
        values: its value of every key that varies across the sweep.
        run_dir: its run directory.
    """

    index: int
    config: TrainConfig
    values: dict[str, Any]
    run_dir: Path

    @property
    def hash(self) -> str:
        return config_hash(self.config)


def _matches(config: TrainConfig, rule: Mapping[str, list[Any]]) -> bool:
    return all(getattr(config, key) in values for key, values in rule.items())


def _label(key: str, value: Any) -> str:
    if isinstance(value, list):
        text = "+".join(str(v) for v in value) or "none"
    elif isinstance(value, bool):
        text = key if value else f"no-{key}"
    elif value is None:
        text = f"{key}-none"
    else:
        text = str(value)
        if key in _ABBREV:
            text = _ABBREV[key] + text
        elif isinstance(value, (int, float)):
            text = f"{key}{text}"
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)


def _existing_dirs(root: Path) -> dict[str, Path]:
    """``{config hash: run dir}`` of the run directories already under ``root``."""
    found: dict[str, Path] = {}
    if root.is_dir():
        for path in sorted(root.iterdir()):
            tail = path.name.rsplit("-", 1)[-1]
            if path.is_dir() and re.fullmatch(r"[0-9a-f]{10}", tail) and (
                    path / "config.json").is_file():
                found.setdefault(tail, path)
    return found


def expand_sweep(spec: SweepSpec | str | Path | Mapping[str, Any], *,
                 sweep_dir: str | Path | None = None,
                 overrides: Mapping[str, Any] | None = None) -> list[SweepRun]:
    """Return the runs of ``spec``: the grid's product, plus each ``add`` block's, minus the
    excluded runs, without duplicates (same config hash), each validated.

    Args:
        spec: a :class:`SweepSpec` or anything :func:`load_sweep` reads.
        sweep_dir: the sweep directory (default ``<spec.out>/<spec.name>``).
        overrides: ``{key: value}`` fixed for every run (replacing the grid's axis; ``add``
            blocks that set the key keep their value), e.g. ``{"epochs": 1}`` for a smoke run.

    Raises:
        ValueError / TypeError: a bad value, an unknown name (mask, init, model, ...) in any
            run, naming the run; a sweep with no runs left.
    """
    spec = load_sweep(spec)
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else Path(spec.out) / spec.name
    runs_root = sweep_dir / "runs"
    base = resolve_config(spec.preset, spec.config)
    fixed = {k.replace("-", "_"): [v] for k, v in (overrides or {}).items()}
    for key in fixed:
        field_type(key)  # unknown keys raise with a suggestion
    grid = {**spec.grid, **fixed}
    blocks = [grid] + [{**grid, **{k: v for k, v in add.items()}} for add in spec.add]
    for add, block in zip(spec.add, blocks[1:], strict=True):
        for key in fixed:
            if key in add:
                block[key] = add[key]
    configs: list[TrainConfig] = []
    seen: set[str] = set()
    where_sweep = f" (sweep {spec.name!r})"
    for block in blocks:
        keys = list(block)
        for combo in itertools.product(*(block[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items() if len(block[k]) > 1)
            where = f"{where_sweep[:-1]}, run {shown or '(the only one)'})"
            cfg = config_from_dict({**values, "out": str(runs_root)}, base, where)
            try:
                check_names(cfg)
            except ValueError as err:
                raise ValueError(f"{err}{where}") from None
            if any(_matches(cfg, rule) for rule in spec.exclude):
                continue
            h = config_hash(cfg)
            if h not in seen:
                seen.add(h)
                configs.append(cfg)
    if not configs:
        raise ValueError(f"sweep {spec.name!r} has no runs (every run is excluded)")
    skip = {"name", "out"}
    varying = [f.name for f in config_fields() if f.name not in skip and len(
        {json.dumps(getattr(c, f.name)) for c in configs}) > 1]
    prefix = grid["name"][0] if "name" in grid else spec.name
    existing = _existing_dirs(runs_root)
    runs = []
    for index, cfg in enumerate(configs):
        values = {k: getattr(cfg, k) for k in varying}
        name = "-".join([prefix, *(_label(k, v) for k, v in values.items())])[:120]
        cfg = dataclasses.replace(cfg, name=name)
        run_dir = existing.get(config_hash(cfg), cfg.run_dir())
        runs.append(SweepRun(index, cfg, values, run_dir))
    return runs


# --------------------------------------------------------------------------- state on disk


def _final(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "final.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _failure(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / FAILED).read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _index_rows(sweep_dir: Path, runs: Sequence[SweepRun]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        state = run_state(run.run_dir)
        final = _final(run.run_dir) if state in HAS_RESULT else {}
        rows.append({
            "run": run.run_dir.name, "run_dir": os.path.relpath(run.run_dir, sweep_dir),
            "config_hash": run.hash, **run.values, "state": state,
            "test_acc": final.get("test_acc"), "best_test_acc": final.get("best_test_acc"),
            "val_acc": final.get("val_acc"), "epochs_completed": final.get("epochs_completed"),
            "wall_time": final.get("wall_time"),
            "error": _failure(run.run_dir).get("error") if state == "failed" else None,
        })
    return rows


def _write_index(sweep_dir: Path, runs: Sequence[SweepRun]) -> list[dict[str, Any]]:
    rows = _index_rows(sweep_dir, runs)
    write_json(sweep_dir / "index.json", rows)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "+".join(map(str, v)) if isinstance(v, list) else (
            "" if v is None else v) for k, v in row.items()})
    data = text.getvalue().encode("utf-8")
    write_atomic(sweep_dir / "index.csv", lambda fh: fh.write(data))
    return rows


def _spec_dict(spec: SweepSpec) -> dict[str, Any]:
    head = {"name": spec.name, "description": spec.description, "out": spec.out}
    if spec.preset is not None:
        head["preset"] = spec.preset
    if spec.config is not None:
        head["config"] = spec.config
    data = {"sweep": head, "grid": spec.grid, "add": list(spec.add),
            "exclude": list(spec.exclude)}
    if spec.executor is not None or spec.executor_options:
        data["executor"] = {**({"name": spec.executor} if spec.executor else {}),
                            **spec.executor_options}
    return data


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def sweep_to_toml(spec: SweepSpec | str | Mapping[str, Any]) -> str:
    """Return ``spec`` as a sweep TOML file (readable by :func:`load_sweep`)."""
    spec = load_sweep(spec)
    data = _spec_dict(spec)

    def table(block: Mapping[str, list[Any]]) -> list[str]:
        return [f"{k} = {_toml(v if len(v) > 1 else v[0])}" for k, v in block.items()]

    lines = [f"# {spec.description}" if spec.description else "# sweep", "", "[sweep]"]
    lines += [f"{k} = {_toml(v)}" for k, v in data["sweep"].items() if v != ""]
    lines += ["", "[grid]", *table(spec.grid)]
    for section in ("add", "exclude"):
        for block in data[section]:
            lines += ["", f"[[{section}]]", *table(block)]
    if spec.executor is not None:
        lines += ["", "[executor]", f"name = {_toml(spec.executor)}"]
    for name, options in spec.executor_options.items():
        lines += ["", f"[executor.{name}]", *(f"{k} = {_toml(v)}" for k, v in options.items())]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- running


@dataclass
class SweepResult:
    """What :func:`run_sweep` did.

    Attributes:
        sweep_dir: the sweep directory.
        runs: the expanded runs.
        states: ``{run dir name: state}`` at the end (:data:`~orthosparse.lab.runs.RunState`).
        to_run: the runs this call had to run (no result yet; failed ones when retried).
        launched: runs started (or resumed, or retried) by this call.
        interrupted: stopped by Ctrl-C/SIGTERM before every run was done.
    """

    sweep_dir: Path
    runs: list[SweepRun]
    states: dict[str, RunState] = field(default_factory=dict)
    to_run: list[SweepRun] = field(default_factory=list)
    launched: int = 0
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.states.values():
            out[state] = out.get(state, 0) + 1
        return out

    @property
    def failed(self) -> list[Path]:
        return [r.run_dir for r in self.runs if self.states.get(r.run_dir.name) == "failed"]

    @property
    def complete(self) -> bool:
        """Every run has a result (finished or diverged)."""
        return all(state in HAS_RESULT for state in self.states.values())


@dataclass
class _Job:
    run: SweepRun
    proc: subprocess.Popen
    log: Any
    log_start: int
    gpu: str | None
    started: float
    timed_out: bool = False


def _visible_gpus(devices: Sequence[str] | None) -> list[str]:
    if devices is not None:
        return [str(d) for d in devices]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver must not stop a CPU sweep
        return []


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child, pre-exec
    """Linux: SIGKILL the worker when the sweep process dies (its checkpoint stays)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        return
    if os.getppid() != parent:  # the sweep died before prctl took effect
        os._exit(1)


def _traceback_tail(log_path: Path, start: int) -> tuple[str, str]:
    """``(last line, traceback)`` of the worker's output since byte ``start``."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "", ""
    at = text.rfind("Traceback (most recent call last)")
    tail = text[at:] if at >= 0 else "\n".join(text.splitlines()[-30:])
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1].strip() if lines else ""), tail.strip()


class _Runner:
    """The scheduling loop of :func:`run_sweep` (state kept in files, see the module doc): the
    ``local`` executor's loop, and the log and index every executor reports to
    (:class:`orthosparse.lab.executors.SweepContext`)."""

    def __init__(self, sweep_dir: Path, runs: list[SweepRun], *, jobs: int,
                 gpus: list[str], timeout: float | None, echo: bool) -> None:
        self.sweep_dir, self.runs, self.jobs = sweep_dir, runs, jobs
        self.gpus = gpus if len(gpus) > 1 else []
        self.timeout, self.echo = timeout, echo
        self.running: list[_Job] = []
        self.done = 0
        self.total = 0
        self.launched = 0
        self.log = open_append(sweep_dir / "sweep.log")
        threads = max(1, (os.cpu_count() or 1) // jobs)
        self.threads = None if self.gpus or jobs == 1 else threads

    def say(self, text: str) -> None:
        self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self.log.flush()
        if self.echo:
            print(text, flush=True)

    # ---------------------------------------------------------------- executors report here
    def run_processes(self, runs: Sequence[SweepRun]) -> None:
        """The ``local`` executor: one subprocess per run, ``jobs`` at a time."""
        self.loop(deque(runs))

    def started(self, run: SweepRun) -> None:
        """An executor handed ``run`` to a worker."""
        self.launched += 1

    def ended(self, run: SweepRun, outcome: _executors.RunOutcome) -> None:
        """An executor's worker is done with ``run``: log it (its folder says how it stands),
        record a failure the worker could not record itself, rewrite the index."""
        run_dir = run.run_dir
        state = run_state(run_dir)
        self.done += 1
        head = f"[{self.done}/{self.total}] {run_dir.name}"
        if state in HAS_RESULT:
            acc = _final(run_dir).get("test_acc")
            acc_text = "-" if acc is None else f"{100 * acc:.2f}%"
            by = "by another process, " if outcome.by_other else ""
            self.say(f"{head}: {state}, test acc {acc_text} ({by}{outcome.seconds:.1f} s"
                     f"{', ' + outcome.where if outcome.where else ''})"
                     + (f"; the worker then failed: {outcome.error}" if outcome.error else ""))
        elif outcome.interrupted:
            self.say(f"{head}: interrupted; it resumes from its checkpoint on restart")
        else:
            error = outcome.error or f"the worker ended without a result (state {state})"
            if not (run_dir / FAILED).is_file():  # the worker died before it could write it
                write_json(run_dir / FAILED, {
                    "state": "failed", "returncode": None, "error": error,
                    "traceback": outcome.traceback, "command": None,
                    "seconds": outcome.seconds, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "where": outcome.where})
            self.say(f"{head}: FAILED: {error}; log: {run_dir / WORKER_LOG}")
        _write_index(self.sweep_dir, self.runs)

    def _gpu(self) -> str | None:
        if not self.gpus:
            return None
        load = {g: 0 for g in self.gpus}
        for job in self.running:
            if job.gpu is not None:
                load[job.gpu] += 1
        return min(self.gpus, key=lambda g: load[g])

    def launch(self, run: SweepRun) -> bool:
        """Start ``run``'s worker; ``False`` if another process is training it right now."""
        run_dir = run.run_dir
        ensure_run_dir(run_dir)
        lock = try_lock(run_dir)  # the run's lock (orthosparse.lab.runs), handed to the worker
        if lock is False:
            return False
        if run_state(run_dir) in HAS_RESULT:  # finished by someone else meanwhile
            if lock is not None:
                os.close(lock)
            self.done += 1
            self.say(f"[{self.done}/{self.total}] {run_dir.name}: {run_state(run_dir)} (by "
                     f"another process)")
            return True
        if not config_readable(run_dir):  # missing, or corrupt: the sweep knows the config
            write_json(run_dir / "config.json", config_to_dict(run.config))
        (run_dir / FAILED).unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _executors.DIST_ENV}
        env["ORTHOSPARSE_DEBUG"] = "1"  # a failure leaves its full traceback in the log
        if lock is not None:
            env[LOCK_FD_ENV] = str(lock)  # the worker holds this lock; it does not take another
        gpu = self._gpu()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        if self.threads is not None:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env.setdefault(var, str(self.threads))
        cmd = [sys.executable, "-m", "orthosparse", "train", "--resume", str(run_dir)]
        log_path = run_dir / WORKER_LOG
        log = open_append(log_path, binary=True)
        start = log.tell()
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}"
                  f"{f' (CUDA_VISIBLE_DEVICES={gpu})' if gpu is not None else ''}\n".encode())
        log.flush()
        posix = os.name == "posix"
        linux = sys.platform.startswith("linux")
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                pass_fds=(lock,) if lock is not None else (), start_new_session=posix,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()) if linux else None)
        except BaseException:
            log.close()
            raise
        finally:
            if lock is not None:
                os.close(lock)  # the worker holds it now (or nobody, if it did not start)
        self.running.append(_Job(run, proc, log, start, gpu, time.time()))
        self.launched += 1
        return True

    def finish(self, job: _Job, stopping: bool) -> None:
        job.log.close()
        run_dir, rc = job.run.run_dir, job.proc.returncode
        state = run_state(run_dir)
        seconds = time.time() - job.started
        self.done += 1
        head = f"[{self.done}/{self.total}] {run_dir.name}"
        if state in HAS_RESULT:
            final = _final(run_dir)
            acc = final.get("test_acc")
            acc_text = "-" if acc is None else f"{100 * acc:.2f}%"
            self.say(f"{head}: {state}, test acc {acc_text} ({seconds:.1f} s)")
            return
        if stopping:
            self.say(f"{head}: interrupted (exit {rc}); it resumes from its checkpoint on "
                     f"restart")
            return
        error, trace = _traceback_tail(run_dir / WORKER_LOG, job.log_start)
        if rc is not None and rc < 0:
            error = f"killed by signal {-rc}" + (f" ({error})" if error else "")
        if job.timed_out:
            error = f"timed out after {self.timeout:g} s"
        write_json(run_dir / FAILED, {
            "state": "failed", "returncode": rc, "error": error, "traceback": trace,
            "command": job.proc.args, "seconds": seconds,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        })
        self.say(f"{head}: FAILED (exit {rc}): {error}; log: {run_dir / WORKER_LOG}")

    def stop(self, grace: float = 30.0) -> None:
        """SIGINT every worker (each exits keeping its last checkpoint), wait for them
        ``grace`` seconds, then SIGKILL the rest."""
        for job in self.running:
            _signal(job.proc, signal.SIGINT)
        deadline = time.time() + grace
        try:
            while any(job.proc.poll() is None for job in self.running) and (
                    time.time() < deadline):
                time.sleep(0.05)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            pass
        for job in self.running:
            if job.proc.poll() is None:
                _signal(job.proc, signal.SIGKILL)
                job.proc.wait()
            self.finish(job, stopping=True)
        self.running.clear()

    def loop(self, queue: deque[SweepRun]) -> None:
        waiting: list[SweepRun] = []  # locked by another process
        last_check = 0.0
        while queue or self.running or waiting:
            while queue and len(self.running) < self.jobs:
                run = queue.popleft()
                if not self.launch(run):
                    self.say(f"{run.run_dir.name}: another process is training it; waiting")
                    waiting.append(run)
            for job in list(self.running):
                if self.timeout is not None and job.proc.poll() is None and (
                        time.time() - job.started > self.timeout):
                    job.timed_out = True
                    _signal(job.proc, signal.SIGKILL)
                    job.proc.wait()
                if job.proc.poll() is not None:
                    self.running.remove(job)
                    self.finish(job, stopping=False)
                    _write_index(self.sweep_dir, self.runs)  # the index follows every run
            if waiting and time.time() - last_check > 1.0:
                last_check = time.time()
                for run in list(waiting):
                    if run_state(run.run_dir) in HAS_RESULT:
                        waiting.remove(run)
                        self.done += 1
                        self.say(f"[{self.done}/{self.total}] {run.run_dir.name}: "
                                 f"{run_state(run.run_dir)} (by another process)")
                    elif len(self.running) < self.jobs and self.launch(run):
                        waiting.remove(run)
            time.sleep(0.02)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the worker's process group (its own session), else to the worker."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        else:  # pragma: no cover
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_sweep(source: SweepSpec | str | Path | Mapping[str, Any], *, jobs: int = 1,
              out: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
              retry_failed: bool = True, devices: Sequence[str] | None = None,
              timeout: float | None = None, dry_run: bool = False,
              echo: bool = True, executor: str | None = None,
              executor_options: Mapping[str, Any] | None = None) -> SweepResult:
    """Run every run of a sweep that has no result yet; return the states.

    Args:
        source: a sweep TOML file, a sweep preset name, a dict, or a :class:`SweepSpec`.
        jobs: runs side by side (each its own process; ``local`` executor only).
        out: parent of the sweep directory (default: the spec's ``out``, ``sweeps``).
        overrides: ``{key: value}`` for every run (see :func:`expand_sweep`).
        retry_failed: run failed runs again (from their checkpoint when they have one).
        devices: GPU ids to spread the jobs over (default: the visible GPUs; with one or none,
            ``CUDA_VISIBLE_DEVICES`` is left alone).
        timeout: seconds after which a run is killed and marked failed.
        dry_run: expand and report the states; write and start nothing.
        echo: print progress lines (they also go to ``sweep.log``).
        executor: ``"local"``, ``"ray"`` or ``"submitit"``
            (:func:`orthosparse.lab.executors.list_executors`); default: the file's
            ``[executor] name``, else local. ``jobs``, ``devices`` and ``timeout`` are the
            local executor's.
        executor_options: its options (:func:`orthosparse.lab.executors.executor_options`),
            over the file's ``[executor.NAME]`` table.

    Returns:
        A :class:`SweepResult`. Stopped by Ctrl-C/SIGTERM: ``interrupted=True`` (running
        workers get SIGINT, then SIGKILL after 30 s; their checkpoints stay).

    Raises:
        ValueError / TypeError: a bad spec (see :func:`expand_sweep`), ``jobs < 1``, an
            unknown executor or option, a local-only argument with another executor.
        ImportError: the executor's library is missing (the message names the extra).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be a positive integer")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout={timeout!r} must be > 0 seconds or None")
    spec = load_sweep(source)
    chosen = _executors.get_executor(executor or spec.executor or "local")
    options = _executors.executor_options(chosen.name, {
        **spec.executor_options.get(chosen.name, {}), **(executor_options or {})})
    for arg, value, unset in (("jobs", jobs, 1), ("devices", devices, None),
                              ("timeout", timeout, None)):
        if value != unset and arg not in chosen.shared:
            raise ValueError(f"{arg}={value!r} is the local executor's; executor "
                             f"{chosen.name!r} takes its resources from its options "
                             f"({', '.join(f.name for f in dataclasses.fields(options))})")
    sweep_dir = Path(out if out is not None else spec.out) / spec.name
    runs = expand_sweep(spec, sweep_dir=sweep_dir, overrides=overrides)
    result = SweepResult(sweep_dir, runs)
    todo = result.to_run
    for run in runs:
        state = run_state(run.run_dir)
        result.states[run.run_dir.name] = state
        if state in ("pending", "partial") or (state == "failed" and retry_failed):
            todo.append(run)
    if dry_run:
        return result
    sweep_dir.mkdir(parents=True, exist_ok=True)
    varying = sorted({k for run in runs for k in run.values},
                     key=[f.name for f in config_fields()].index)
    write_json(sweep_dir / "sweep.json", json_safe({
        "name": spec.name, "source": spec.source, "spec": _spec_dict(spec),
        "overrides": dict(overrides or {}), "varying": varying,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": [{"run_dir": os.path.relpath(r.run_dir, sweep_dir), "config_hash": r.hash,
                  "values": r.values} for r in runs],
    }))
    _write_index(sweep_dir, runs)
    local = chosen.name == "local"
    runner = _Runner(sweep_dir, runs, jobs=jobs,
                     gpus=_visible_gpus(devices) if local else [], timeout=timeout, echo=echo)
    runner.total = len(todo)
    have = sum(state in HAS_RESULT for state in result.states.values())
    kept = sum(state == "failed" for state in result.states.values()) if not retry_failed else 0
    runner.say(f"sweep {spec.name}: {len(runs)} runs, {have} with results already"
               + (f", {kept} failed (not retried)" if kept else "")
               + (f", {len(todo)} to run, {jobs} at a time" if local else
                  f", {len(todo)} to run on executor {chosen.name} ({_describe(options)})")
               + (f" on GPUs {','.join(runner.gpus)}" if runner.gpus else "")
               + f"; directory {sweep_dir}")
    old_term = None
    main_thread = _is_main_thread()
    if main_thread:
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if todo:
            chosen.run(todo, runner, options)
    except KeyboardInterrupt:
        result.interrupted = True
        runner.say(f"sweep {spec.name}: interrupted; stopping {len(runner.running)} running "
                   f"runs (rerun the same command to continue)" if local else
                   f"sweep {spec.name}: interrupted (rerun the same command to continue)")
        runner.stop()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
        result.launched = runner.launched
        rows = _write_index(sweep_dir, runs)
        result.states = {row["run"]: row["state"] for row in rows}
        counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
        runner.say(f"sweep {spec.name}: {counts}; index {sweep_dir / 'index.csv'}; report: "
                   f"orthosparse report {sweep_dir}")
        runner.log.close()
    return result


def _describe(options: Any) -> str:
    """``"cpus=1, gpus=0"``: the options that are set."""
    items = [(f.name, getattr(options, f.name)) for f in dataclasses.fields(options)]
    return ", ".join(f"{k}={v}" for k, v in items if v not in (None, {})) or "defaults"


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
