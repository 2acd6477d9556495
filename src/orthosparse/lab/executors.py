"""Where a sweep's runs execute: one table of executors (``local``, ``ray``, ``submitit``).

A sweep (:mod:`orthosparse.lab.sweep`) expands the grid, decides which runs still need work
from their folders, and hands those runs to an executor; the folders stay the one source of
truth whatever runs them (docs/design.md §6): the same run folders and hashes, finished runs
skipped, partial runs resumed from their checkpoint, one process per run at a time (the run's
``.lock``), failures recorded in ``failed.json``, ``orthosparse report`` unchanged.

- ``local`` (the default, nothing to install): one ``orthosparse train --resume RUN_DIR``
  subprocess per run, ``jobs`` at a time (the sweep's own loop, ``sweep._Runner``).
- ``ray`` (extra ``ray``): one Ray task per run on a running cluster (``address``) or a local
  one; Ray reuses its worker processes, so many short runs share one warm process each
  (:func:`run_one`). A worker that dies (a lost node) is retried by Ray and resumes from the
  checkpoint.
- ``submitit`` (extra ``slurm``): one SLURM job per ``runs_per_job`` runs, submitted as a job
  array with ``array_parallelism`` at once. Preemption and time-outs requeue the job
  (:class:`SlurmRuns` is checkpointable: its requeued copy resumes each run from its folder).
  Without SLURM (no ``sbatch``) submitit's local executor runs the jobs as local processes.

Every remote run goes through :func:`run_one`, which trains one run in the calling process as
``orthosparse train --resume RUN_DIR`` would in a fresh one: it takes the run's lock (waiting
while another process holds it), and resets the process state a previous run could have left
(:func:`clean_process_state`), so a warm worker gives the result a fresh process gives, bitwise.

Example:
    >>> run_sweep("configs/digits-grid.toml", executor="ray", executor_options={"cpus": 1})
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .._optional import import_optional
from .._registry import Registry
from .runs import (
    FAILED,
    HAS_RESULT,
    LOCK_FD_ENV,
    WORKER_LOG,
    config_readable,
    ensure_run_dir,
    open_append,
    read_json,
    run_state,
    try_lock,
    write_json,
)

__all__ = [
    "ExecutorName",
    "Executor",
    "EXECUTORS",
    "LocalOptions",
    "RayOptions",
    "SubmititOptions",
    "RunOutcome",
    "SweepContext",
    "SlurmRuns",
    "list_executors",
    "get_executor",
    "executor_options",
    "run_one",
    "clean_process_state",
    "DIST_ENV",
    "ray_task",
]

ExecutorName = Literal["local", "ray", "submitit"]

# torchrun's variables: a run trained inside a worker must not join a distributed job.
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
             "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
_LOCK_POLL_S = 0.5
_STOP_GRACE_S = 30.0


# --------------------------------------------------------------------------- options


def _opt(default: Any, help: str) -> Any:
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class LocalOptions:
    """``local`` takes its settings as arguments of the sweep (``jobs``, ``devices``,
    ``timeout``); it has no ``[executor.local]`` keys."""


@dataclass(frozen=True)
class RayOptions:
    """Options of the ``ray`` executor (``[executor.ray]`` in a sweep file)."""

    address: str | None = _opt(None, "Ray cluster to connect to ('auto': the running one, "
                                     "'ray://host:10001'); default: RAY_ADDRESS, else a local "
                                     "cluster started for the sweep")
    cpus: float = _opt(1.0, "CPUs per run (Ray's num_cpus); also the run's thread count")
    gpus: float = _opt(0.0, "GPUs per run (Ray's num_gpus; a fraction shares a GPU)")
    retries: int = _opt(3, "times a run is started again when its worker dies (it resumes "
                           "from its checkpoint)")


@dataclass(frozen=True)
class SubmititOptions:
    """Options of the ``submitit`` executor (``[executor.submitit]`` in a sweep file)."""

    cluster: str | None = _opt(None, "submitit cluster: 'slurm', 'local' (processes here) or "
                                     "'debug' (in this process); default: slurm when sbatch "
                                     "is found, else local")
    partition: str | None = _opt(None, "SLURM partition")
    time: int = _opt(60, "time limit of one job in minutes; a job that reaches it is "
                         "requeued and its runs resume (up to 3 times)")
    cpus: int = _opt(1, "CPUs per job (cpus_per_task); also each run's thread count")
    gpus: int = _opt(0, "GPUs per job (gpus_per_node)")
    mem_gb: float | None = _opt(None, "memory per job in GB")
    array_parallelism: int | None = _opt(None, "jobs running at once (SLURM array throttle; "
                                               "local: CPUs // cpus by default)")
    runs_per_job: int = _opt(1, "at most this many runs per job, trained one after the "
                                "other in one warm process (jobs filled evenly): fewer, "
                                "longer jobs for short runs")
    folder: str | None = _opt(None, "submitit's folder for job logs and pickles; default "
                                    "<sweep dir>/submitit")
    sbatch: dict[str, Any] = _opt({}, "more sbatch options, e.g. {account = 'x', qos = 'y'} "
                                      "(submitit's slurm_additional_parameters)")


# --------------------------------------------------------------------------- the table


class SweepContext(Protocol):
    """What a sweep gives its executor (``sweep._Runner``): where it is, and what to call."""

    sweep_dir: Path
    jobs: int
    timeout: float | None

    def say(self, text: str) -> None: ...

    def started(self, run: Any) -> None: ...

    def ended(self, run: Any, outcome: RunOutcome) -> None: ...

    def run_processes(self, runs: Sequence[Any]) -> None: ...


@dataclass(frozen=True)
class Executor:
    """One way to execute a sweep's runs.

    Attributes:
        name: its name (``--executor NAME``).
        run: ``run(runs, sweep, options)``: execute ``runs`` (each with ``run_dir`` and
            ``config``), calling ``sweep.started``/``sweep.ended`` for each; on
            ``KeyboardInterrupt`` stop them (each keeps its last checkpoint) and re-raise.
        options: the dataclass of its options.
        extra: the orthosparse extra that installs what it needs (``None``: nothing).
        help: one line for ``--help``.
        shared: sweep arguments besides the options that it takes (of ``jobs``, ``devices``,
            ``timeout``).
    """

    name: str
    run: Callable[[Sequence[Any], SweepContext, Any], None]
    options: type
    extra: str | None
    help: str
    shared: tuple[str, ...] = ()


EXECUTORS: Registry[Executor] = Registry("executor")


def list_executors() -> list[str]:
    """Names of the registered executors."""
    return EXECUTORS.names()


def get_executor(name: str) -> Executor:
    """The executor ``name``; an unknown name is a ``ValueError`` listing the valid ones."""
    return EXECUTORS.get(name)


def _check_value(name: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (a string under postponed annotations)."""
    text = str(hint)
    if value is None and "None" in text:
        return None
    where = f"executor {name}: {key}={value!r}"
    if text.startswith("dict"):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where} must be a table of sbatch options")
        return dict(value)
    if text.startswith("str"):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{where} must be a non-empty string")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number")
    zero_ok = key in ("gpus", "retries")
    if text.startswith("int"):
        if value != int(value) or value < (0 if zero_ok else 1):
            allowed = "a whole number >= 0" if zero_ok else "a positive integer"
            raise ValueError(f"{where} must be {allowed}")
        value = int(value)
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{where} must be {'>= 0' if zero_ok else '> 0'}")
    return value


def executor_options(name: str, values: Mapping[str, Any] | None = None) -> Any:
    """Return executor ``name``'s options from ``values`` (a ``[executor.NAME]`` table or the
    command line's flags), checked.

    Raises:
        ValueError: an unknown executor or key (the message lists the allowed ones), a value
            out of range.
        TypeError: a value of the wrong type.

    Example:
        >>> executor_options("ray", {"cpus": 2})
        RayOptions(address=None, cpus=2, gpus=0.0, retries=3)
    """
    executor = get_executor(name)
    fields = {f.name: f for f in dataclasses.fields(executor.options)}
    checked = {}
    for key, value in (values or {}).items():
        key = key.replace("-", "_")
        if key not in fields:
            allowed = ", ".join(fields) or "none"
            raise ValueError(f"unknown option {key!r} of executor {name!r}; its options: "
                             f"{allowed}")
        checked[key] = _check_value(name, key, value, fields[key].type)
    if name == "submitit" and checked.get("cluster") not in (None, "slurm", "local", "debug"):
        raise ValueError(f"executor submitit: cluster={checked['cluster']!r} must be one of "
                         f"slurm, local, debug")
    return executor.options(**checked)


# --------------------------------------------------------------------------- one run, in-process


@dataclass
class RunOutcome:
    """How one run ended in an executor (what the sweep logs; the folder holds the result).

    Attributes:
        run_dir: the run folder.
        state: its :data:`~orthosparse.lab.runs.RunState` when the run ended.
        seconds: wall time of the call.
        error: the last line of the traceback when it failed, else ``None``.
        traceback: the traceback when it failed.
        by_other: it got its result from another process (it waited on the run's lock).
        interrupted: stopped (Ctrl-C, a cancelled task, a preempted job): resumable.
        where: the process that ran it (``pid N on host H``).
    """

    run_dir: str
    state: str
    seconds: float = 0.0
    error: str | None = None
    traceback: str = ""
    by_other: bool = False
    interrupted: bool = False
    where: str = ""


_BASELINE_THREADS: int | None = None


@contextlib.contextmanager
def clean_process_state(threads: int | None = None) -> Iterator[None]:
    """Give the block the process state of a fresh interpreter; put the caller's back after.

    Set: the thread count (``threads``, else the count this process started with), the
    default dtype (float32), grad mode (on), anomaly detection (off), deterministic algorithms
    (off), cuDNN benchmark/deterministic (off), float32 matmul precision (``highest``, TF32
    off), and no ``torchrun`` variables in ``os.environ``; the environment is restored after.
    The global RNGs are seeded by the run itself (``runtime.run_scope``), from its seed.
    """
    import torch

    global _BASELINE_THREADS
    if _BASELINE_THREADS is None:
        _BASELINE_THREADS = torch.get_num_threads()
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
             torch.is_anomaly_enabled(), torch.are_deterministic_algorithms_enabled(),
             cudnn.benchmark, cudnn.deterministic, torch.get_float32_matmul_precision(),
             matmul.allow_tf32, cudnn.allow_tf32, dict(os.environ))
    try:
        torch.set_num_threads(threads or _BASELINE_THREADS)
        torch.set_default_dtype(torch.float32)
        torch.set_grad_enabled(True)
        torch.set_anomaly_enabled(False)
        torch.use_deterministic_algorithms(False)
        cudnn.benchmark, cudnn.deterministic = False, False
        torch.set_float32_matmul_precision("highest")
        matmul.allow_tf32, cudnn.allow_tf32 = False, True
        for var in DIST_ENV:
            os.environ.pop(var, None)
        yield
    finally:
        (threads_, dtype, grad, anomaly, det, bench, cdet, precision, tf32, ctf32,
         environ) = saved
        torch.set_num_threads(threads_)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.set_anomaly_enabled(anomaly)
        torch.use_deterministic_algorithms(det)
        cudnn.benchmark, cudnn.deterministic = bench, cdet
        torch.set_float32_matmul_precision(precision)
        matmul.allow_tf32, cudnn.allow_tf32 = tf32, ctf32
        os.environ.clear()
        os.environ.update(environ)
        gc.collect()  # the run's model and loaders, before the next run allocates its own
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _where() -> str:
    return f"pid {os.getpid()} on host {socket.gethostname()}"


def _wait_for_lock(run_dir: Path) -> int | None | Literal[False]:
    """Take the run's lock, waiting while another process holds it; ``False`` when the run
    got its result meanwhile (it was trained elsewhere)."""
    while True:
        fd = try_lock(run_dir)
        if fd is not False:
            return fd
        if run_state(run_dir) in HAS_RESULT:
            return False
        time.sleep(_LOCK_POLL_S)


def run_one(run_dir: str | Path, config: Mapping[str, Any], *,
            threads: int | None = None) -> RunOutcome:
    """Train, resume or skip one sweep run in this process; record a failure in its folder.

    What ``orthosparse train --resume RUN_DIR`` does in a fresh process, in this one: the run's
    lock is taken (waiting while another process trains it), ``config.json`` is written when
    missing or corrupt (from ``config``), a stale ``failed.json`` removed, the run trained or
    resumed under :func:`clean_process_state` with its output appended to ``worker.log``; an
    exception is written to ``failed.json`` (traceback included) and returned, not raised.
    ``KeyboardInterrupt`` and ``SystemExit`` (a cancelled task, a preempted job) propagate:
    the run keeps its last checkpoint.

    Args:
        run_dir: the run folder.
        config: the run's config as a dict (``config_to_dict``).
        threads: CPU threads of a fresh start (a resume keeps its recorded count); ``None``:
            the count this process started with.
    """
    from .config import config_from_dict
    from .train import train

    run_dir = Path(run_dir)
    t0 = time.time()
    ensure_run_dir(run_dir)
    fd = _wait_for_lock(run_dir)
    if fd is False or run_state(run_dir) in HAS_RESULT:  # trained elsewhere, or before
        if fd not in (False, None):
            os.close(fd)
        return RunOutcome(str(run_dir), run_state(run_dir), time.time() - t0,
                          by_other=fd is False, where=_where())
    if not config_readable(run_dir):  # missing, or corrupt: the sweep knows the config
        write_json(run_dir / "config.json", dict(config))
    (run_dir / FAILED).unlink(missing_ok=True)
    outcome = RunOutcome(str(run_dir), "pending", where=_where())
    with open_append(run_dir / WORKER_LOG) as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} run_one {run_dir} (in-process, "
                  f"{outcome.where})\n")
        log.flush()
        try:
            with clean_process_state(threads), contextlib.redirect_stdout(log), \
                    contextlib.redirect_stderr(log):
                if fd is not None:
                    os.environ[LOCK_FD_ENV] = str(fd)  # train takes this lock over
                try:
                    cfg = config_from_dict(read_json(run_dir / "config.json"),
                                           where=f" (in {run_dir / 'config.json'})")
                    train(cfg, resume=True, run_dir=run_dir)
                finally:
                    if fd is not None and os.environ.pop(LOCK_FD_ENV, None) is not None:
                        os.close(fd)  # train failed before taking it over
        except Exception as err:  # recorded in the folder; the sweep carries on
            trace = traceback.format_exc()
            log.write(trace)
            outcome.error = traceback.format_exception_only(type(err), err)[-1].strip()
            outcome.traceback = trace.strip()
            write_json(run_dir / FAILED, {
                "state": "failed", "returncode": 1, "error": outcome.error,
                "traceback": outcome.traceback, "command": ["run_one", str(run_dir)],
                "seconds": time.time() - t0, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "where": outcome.where,
            })
    outcome.state = run_state(run_dir)
    outcome.seconds = time.time() - t0
    return outcome


def _threads(cpus: float) -> int:
    return max(1, int(cpus))


# --------------------------------------------------------------------------- local


def _run_local(runs: Sequence[Any], sweep: SweepContext, options: LocalOptions) -> None:
    sweep.run_processes(runs)


# --------------------------------------------------------------------------- ray


def _ray() -> Any:
    return import_optional("ray", user="orthosparse sweep --executor ray", package="Ray",
                           extra="ray", pip_name="ray")


def ray_task(options: RayOptions) -> Any:
    """:func:`run_one` as a Ray remote function with ``options``' resources and retries.

    Ray reuses a worker process for CPU tasks (warm workers); a task with GPUs gets a fresh
    worker each time (Ray's default for GPU tasks, ray-project/ray#29624), so that every run's
    CUDA context sees only the GPUs Ray gave it.
    """
    ray = _ray()
    return ray.remote(num_cpus=options.cpus, num_gpus=options.gpus,
                      max_retries=options.retries, retry_exceptions=False)(run_one)


def _run_ray(runs: Sequence[Any], sweep: SweepContext, options: RayOptions) -> None:
    from .config import config_to_dict

    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray_task(options)
        pending: dict[Any, Any] = {}
        for run in runs:
            ref = task.remote(str(Path(run.run_dir).absolute()), config_to_dict(run.config),
                              threads=_threads(options.cpus))
            pending[ref] = run
            sweep.started(run)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    sweep.ended(pending.pop(ref), _ray_outcome(ray, ref))
        except KeyboardInterrupt:
            _stop_ray(ray, pending, sweep)
            raise
    finally:
        if started_here:
            ray.shutdown()


def _ray_outcome(ray: Any, ref: Any) -> RunOutcome:
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return RunOutcome("", "partial", interrupted=True)
    except ray.exceptions.RayError as err:  # a worker or node lost more than `retries` times
        text = str(err).strip().splitlines()
        return RunOutcome("", "failed", error=f"{type(err).__name__}: {text[0] if text else ''}",
                          traceback=str(err))


def _stop_ray(ray: Any, pending: dict[Any, Any], sweep: SweepContext) -> None:
    """Cancel the tasks (KeyboardInterrupt in each: it keeps its last checkpoint); force the
    ones still running after the grace period."""
    for ref in pending:
        ray.cancel(ref)
    deadline = time.time() + _STOP_GRACE_S
    with contextlib.suppress(KeyboardInterrupt):
        while pending and time.time() < deadline:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.2)
            if len(done) == len(pending):
                break
    for ref, run in pending.items():
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
        sweep.ended(run, RunOutcome(str(run.run_dir), "partial", interrupted=True))
    pending.clear()


# --------------------------------------------------------------------------- submitit


def _submitit() -> Any:
    return import_optional("submitit", user="orthosparse sweep --executor submitit",
                           package="submitit (SLURM jobs)", extra="slurm", pip_name="submitit")


class SlurmRuns:
    """A submitit job: train its runs one after the other (:func:`run_one`); checkpointable.

    On preemption or a time-out SLURM signals the job; submitit calls :meth:`checkpoint` and
    requeues what it returns: the same runs, whose folders hold their state, so the requeued
    job skips the finished ones and resumes the interrupted one from its checkpoint.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __call__(self, runs: Sequence[tuple[str, dict[str, Any]]]) -> list[RunOutcome]:
        return [run_one(run_dir, config, threads=self.threads) for run_dir, config in runs]

    def checkpoint(self, runs: Sequence[tuple[str, dict[str, Any]]]) -> Any:
        """The requeued job: the same runs (the run folders are the checkpoint)."""
        return _submitit().helpers.DelayedSubmission(self, runs)


def _run_submitit(runs: Sequence[Any], sweep: SweepContext, options: SubmititOptions) -> None:
    from .config import config_to_dict

    submitit = _submitit()
    folder = Path(options.folder) if options.folder else sweep.sweep_dir / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    params: dict[str, Any] = {"name": f"orthosparse-{sweep.sweep_dir.name}",
                              "timeout_min": options.time, "cpus_per_task": options.cpus,
                              "gpus_per_node": options.gpus, "nodes": 1, "tasks_per_node": 1,
                              "mem_gb": options.mem_gb, "slurm_partition": options.partition}
    if options.array_parallelism is not None:
        params["slurm_array_parallelism"] = options.array_parallelism
    if options.sbatch:
        params["slurm_additional_parameters"] = dict(options.sbatch)
    executor.update_parameters(**params)
    work = [(str(Path(r.run_dir).absolute()), config_to_dict(r.config)) for r in runs]
    n_jobs = -(-len(runs) // options.runs_per_job)  # as few jobs as allowed, evenly filled
    bounds = [len(runs) * i // n_jobs for i in range(n_jobs + 1)]
    chunks = [(runs[a:b], work[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    slurm = executor.cluster == "slurm"
    at_once = len(chunks) if slurm else (options.array_parallelism or max(
        1, (os.cpu_count() or 1) // options.cpus))  # SLURM throttles its arrays itself
    job = SlurmRuns(options.cpus)
    sweep.say(f"submitit ({executor.cluster}): {len(runs)} runs in {n_jobs} jobs, logs in "
              f"{folder}")
    queue = list(chunks)
    pending: dict[Any, Any] = {}
    try:
        while queue or pending:
            batch, queue = queue[:max(0, at_once - len(pending))], queue[
                max(0, at_once - len(pending)):]
            if batch:
                with executor.batch():
                    handles = [executor.submit(job, items) for _, items in batch]
                for handle, (chunk, _) in zip(handles, batch, strict=True):
                    pending[handle] = chunk
                    for run in chunk:
                        sweep.started(run)
            for handle in [h for h in pending if h.done()]:
                chunk = pending.pop(handle)
                for run, outcome in zip(chunk, _job_outcomes(handle, chunk), strict=True):
                    sweep.ended(run, outcome)
            time.sleep(0.2)
    except KeyboardInterrupt:
        for handle, chunk in pending.items():
            with contextlib.suppress(Exception):
                handle.cancel(check=False)  # SIGINT (local) / scancel: each keeps its checkpoint
            for run in chunk:
                sweep.ended(run, RunOutcome(str(run.run_dir), "partial", interrupted=True))
        raise


def _job_outcomes(handle: Any, chunk: Sequence[Any]) -> list[RunOutcome]:
    """The outcomes of a finished job; a job that failed as a whole (killed, out of memory,
    cancelled by hand) counts as failed for each of its runs without a result."""
    try:
        return list(handle.result())
    except Exception as err:  # submitit's FailedJobError / UncompletedJobError
        lines = [line for line in str(err).splitlines() if line.strip()]
        error = f"submitit job {handle.job_id}: {type(err).__name__}: " + (
            lines[-1].strip() if lines else "no detail")
        return [RunOutcome(str(r.run_dir), run_state(r.run_dir), error=error, traceback=str(err))
                for r in chunk]


EXECUTORS.register("local", Executor(
    "local", _run_local, LocalOptions, None,
    "one subprocess per run on this machine, --jobs at a time (the default)",
    shared=("jobs", "devices", "timeout")))
EXECUTORS.register("ray", Executor(
    "ray", _run_ray, RayOptions, "ray",
    "one Ray task per run on a Ray cluster (or a local one); warm workers run many short "
    "runs each"))
EXECUTORS.register("submitit", Executor(
    "submitit", _run_submitit, SubmititOptions, "slurm",
    "SLURM job arrays through submitit (requeued on preemption, runs resume); local "
    "processes without SLURM"))
