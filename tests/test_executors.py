"""Executors of a sweep: local, Ray and submitit give the same run folders, bitwise.

The Ray and submitit tests use the real engines (a local Ray cluster, submitit's local
executor), each on a 4-run grid, against the local executor's results; each stops a run mid-way
(a cancelled Ray task; a preempted, requeued submitit job) and checks the resumed result.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import get_args

import pytest
import torch

import orthosparse
from orthosparse.lab.config import config_to_dict
from orthosparse.lab.executors import (
    ExecutorName,
    RayOptions,
    SubmititOptions,
    clean_process_state,
    executor_options,
    list_executors,
    ray_task,
    run_one,
)
from orthosparse.lab.runs import run_state
from orthosparse.lab.sweep import expand_sweep, load_sweep, run_sweep, sweep_to_toml

SRC = str(Path(orthosparse.__file__).resolve().parents[1])
HAVE_RAY = importlib.util.find_spec("ray") is not None
HAVE_SUBMITIT = importlib.util.find_spec("submitit") is not None

# 4 runs of ~1 s each (63 steps per epoch): long enough to stop one after its first epoch.
GRID = """
[sweep]
name = "grid"

[grid]
dataset = "synthetic"
data_options = ["input_shape=[1,4,4]", "train_size=1000", "test_size=64", "num_classes=5"]
model = "mlp"
depth = 3
width = 16
activation = "tanh"
mask = "uniform"
density = 0.5
batch_size = 16
epochs = 3
lr = 0.05
device = "cpu"
tensorboard = false
progress = "epoch"
threads = 1
init = ["eoi", "kaiming"]
seed = [0, 1]
"""


@pytest.fixture(autouse=True)
def _importable_workers(monkeypatch):
    """Workers (``python -m orthosparse``, submitit's processes) import this checkout."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))


def write_grid(folder: Path, text: str = GRID) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.toml"
    path.write_text(text)
    return path


def numbers(run_dir: Path) -> tuple[dict, list]:
    """Everything a run produced except wall-clock times."""
    final = json.loads((run_dir / "final.json").read_text())
    final = {k: v for k, v in final.items() if k not in ("wall_time", "message")}
    history = [{k: v for k, v in json.loads(line).items() if k != "time"}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return final, history


def index_rows(sweep_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_time"}
            for row in json.loads((sweep_dir / "index.json").read_text())]


def worker_pids(run_dir: Path) -> list[str]:
    """The processes that ran ``run_one`` on this run (one line each in worker.log)."""
    lines = (run_dir / "worker.log").read_text().splitlines()
    return [line.split("pid ")[1].split()[0] for line in lines if "run_one" in line]


def wait_for_first_epoch(run_dir: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while not (path.is_file() and path.read_text().strip()):
        assert time.time() < deadline, f"{run_dir} did not finish an epoch in {timeout} s"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The grid run by the local executor: ``(sweep dir, {run name: numbers})``."""
    root = tmp_path_factory.mktemp("local")
    result = run_sweep(write_grid(root), out=root / "sweeps", jobs=2, echo=False)
    assert result.counts == {"finished": 4}
    return result.sweep_dir, {r.run_dir.name: numbers(r.run_dir) for r in result.runs}


@pytest.fixture(scope="module")
def ray_cluster():
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'orthosparse[ray]'; the test extra has it)")
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# --------------------------------------------------------------------------- the table, options


def test_the_table_and_its_options():
    assert list_executors() == ["local", "ray", "submitit"] == sorted(get_args(ExecutorName))
    assert executor_options("ray", {"cpus": 2, "address": "auto"}) == RayOptions(
        address="auto", cpus=2, gpus=0.0, retries=3)
    assert executor_options("submitit", {"time": 30, "array-parallelism": 8, "gpus": 1.0}) == (
        SubmititOptions(time=30, array_parallelism=8, gpus=1))
    with pytest.raises(ValueError, match="unknown executor 'dask'; choose one of: local, ray"):
        executor_options("dask")
    with pytest.raises(ValueError, match="unknown option 'partition' of executor 'ray'; its "
                                         "options: address, cpus, gpus, retries"):
        executor_options("ray", {"partition": "gpu"})
    with pytest.raises(ValueError, match="unknown option 'jobs' of executor 'local'; its "
                                         "options: none"):
        executor_options("local", {"jobs": 2})
    with pytest.raises(ValueError, match=r"executor ray: cpus=0 must be > 0"):
        executor_options("ray", {"cpus": 0})
    with pytest.raises(ValueError, match=r"executor submitit: time=1.5 must be a positive "
                                         r"integer"):
        executor_options("submitit", {"time": 1.5})
    with pytest.raises(TypeError, match=r"executor submitit: partition=3 must be a non-empty "
                                        r"string"):
        executor_options("submitit", {"partition": 3})
    with pytest.raises(TypeError, match=r"executor ray: gpus='1' must be a number"):
        executor_options("ray", {"gpus": "1"})
    with pytest.raises(ValueError, match="cluster='pbs' must be one of slurm, local, debug"):
        executor_options("submitit", {"cluster": "pbs"})


@pytest.mark.parametrize("text, error, message", [
    ('[executor]\nname = "dask"', ValueError,
     r"\[executor\] name='dask' .* must be one of local, ray, submitit"),
    ('[executor]\nworkers = 4', ValueError,
     "unknown key 'workers' in \\[executor\\].*allowed: name, and a table of options per "
     "executor: local, ray, submitit"),
    ('[executor.ray]\nnum_cpus = 4', ValueError,
     r"unknown option 'num_cpus' of executor 'ray'.* \(in \[executor.ray\]"),
    ('[executor.submitit]\ntime = "1h"', TypeError,
     r"executor submitit: time='1h' must be a number \(in \[executor.submitit\]"),
    ('[executor]\nray = 2', TypeError, r"\[executor.ray\] must be a table"),
])
def test_bad_executor_tables_are_named(tmp_path, text, error, message):
    path = write_grid(tmp_path, GRID + text + "\n")
    with pytest.raises(error, match=message):
        load_sweep(path)


def test_the_executor_table_round_trips_and_the_flags_win(tmp_path, cli):
    text = GRID + ('[executor]\nname = "ray"\n\n[executor.ray]\ncpus = 2\naddress = "auto"\n\n'
                   '[executor.submitit]\npartition = "gpu"\nsbatch = {account = "lab"}\n')
    spec = load_sweep(write_grid(tmp_path, text))
    assert spec.executor == "ray"
    assert spec.executor_options == {"ray": {"cpus": 2, "address": "auto"},
                                     "submitit": {"partition": "gpu",
                                                  "sbatch": {"account": "lab"}}}
    again = load_sweep(write_grid(tmp_path / "again", sweep_to_toml(spec)))
    assert (again.executor, again.executor_options) == (spec.executor, spec.executor_options)
    # a dry run checks the options of the executor it would use, without starting it
    code, out, _ = cli("sweep", str(tmp_path / "grid.toml"), "--dry-run", "--out",
                       str(tmp_path / "o"), "--cpus-per-run", "4")
    assert code == 0 and "# 4 runs: 4 pending" in out
    code, _, err = cli("sweep", str(tmp_path / "grid.toml"), "--dry-run", "--executor", "ray",
                       "--partition", "gpu")
    assert code == 2 and "unknown option 'partition' of executor 'ray'" in err
    code, _, err = cli("sweep", str(tmp_path / "grid.toml"), "--dry-run", "--jobs", "4")
    assert code == 2 and ("jobs=4 is the local executor's; executor 'ray' takes its "
                          "resources from its options (address, cpus, gpus, retries)") in err
    with pytest.raises(ValueError, match="timeout=60 is the local executor's; executor "
                                         "'submitit'"):
        run_sweep(spec, executor="submitit", timeout=60, dry_run=True)


@pytest.mark.parametrize("executor, extra", [("ray", "ray"), ("submitit", "slurm")])
def test_a_missing_engine_names_its_extra(tmp_path, monkeypatch, executor, extra):
    monkeypatch.setitem(sys.modules, "ray" if executor == "ray" else "submitit", None)
    path = write_grid(tmp_path, GRID.replace("seed = [0, 1]", "seed = 0").replace(
        'init = ["eoi", "kaiming"]', 'init = "eoi"'))
    with pytest.raises(ImportError, match=rf"pip install 'orthosparse\[{extra}\]'"):
        run_sweep(path, out=tmp_path / "o", executor=executor, echo=False)
    assert run_state(expand_sweep(path, sweep_dir=tmp_path / "o" / "grid")[0].run_dir) == (
        "pending")


# --------------------------------------------------------------------------- warm workers


def test_a_warm_process_gives_a_fresh_process_result(tmp_path, local):
    """State a previous run (or the caller) left is reset for the run and put back after."""
    sweep_dir, expected = local
    runs = expand_sweep(sweep_dir.parent.parent / "grid.toml", sweep_dir=tmp_path / "grid")
    old = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads())
    torch.set_default_dtype(torch.float64)  # what a careless earlier run could leave behind
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    torch.manual_seed(123)
    os.environ["WORLD_SIZE"] = "8"  # a torchrun variable: the run must not join a group
    try:
        for run in runs[:2]:
            outcome = run_one(run.run_dir, config_to_dict(run.config), threads=1)
            assert outcome.state == "finished" and outcome.error is None, outcome.traceback
            assert numbers(run.run_dir) == expected[run.run_dir.name]
        # put back: the caller's state, not the defaults
        assert torch.get_default_dtype() == torch.float64 and not torch.is_grad_enabled()
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 2
        assert os.environ["WORLD_SIZE"] == "8"
        again = run_one(runs[0].run_dir, {}, threads=1)  # a finished run is not trained again
        assert again.state == "finished" and worker_pids(runs[0].run_dir) == [str(os.getpid())]
    finally:
        os.environ.pop("WORLD_SIZE")
        torch.set_default_dtype(old[0])
        torch.set_grad_enabled(old[1])
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(old[2])


def test_clean_state_sets_fresh_defaults_inside():
    with clean_process_state(threads=1):
        torch.set_default_dtype(torch.float16)
        with clean_process_state(threads=2):
            assert torch.get_default_dtype() == torch.float32 and torch.get_num_threads() == 2
            assert torch.is_grad_enabled() and not torch.are_deterministic_algorithms_enabled()
        assert torch.get_default_dtype() == torch.float16 and torch.get_num_threads() == 1
    assert torch.get_default_dtype() == torch.float32


def test_a_failing_run_is_recorded_by_its_worker(tmp_path):
    text = GRID.replace('dataset = "synthetic"', 'dataset = "mnist"\ndata_root = '
                        '"/nonexistent/mnist"').replace("data_options = [", "# [")
    text = text.replace("seed = [0, 1]", "seed = 0").replace('init = ["eoi", "kaiming"]',
                                                              'init = "eoi"')
    (run,) = expand_sweep(write_grid(tmp_path, text), sweep_dir=tmp_path / "grid")
    outcome = run_one(run.run_dir, config_to_dict(run.config))
    assert outcome.state == "failed" and "/nonexistent/mnist" in outcome.error
    failure = json.loads((run.run_dir / "failed.json").read_text())
    assert failure["error"] == outcome.error
    assert "Traceback (most recent call last)" in failure["traceback"]
    # the lock was released: the next attempt takes it (and fails the same way)
    assert run_one(run.run_dir, config_to_dict(run.config)).error == outcome.error


# --------------------------------------------------------------------------- the real engines


@pytest.mark.slow
def test_ray_matches_local_and_a_cancelled_run_resumes(tmp_path, local, ray_cluster):
    ray = ray_cluster
    sweep_dir, expected = local
    path = write_grid(tmp_path)
    runs = expand_sweep(path, sweep_dir=tmp_path / "sweeps" / "grid")
    # cancel one run's task after its first epoch (KeyboardInterrupt in the worker)
    first = runs[0]
    ref = ray_task(RayOptions()).remote(str(first.run_dir), config_to_dict(first.config),
                                        threads=1)
    wait_for_first_epoch(first.run_dir)
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=60)
    assert run_state(first.run_dir) == "partial"

    result = run_sweep(path, out=tmp_path / "sweeps", executor="ray", echo=False)
    assert result.counts == {"finished": 4} and result.launched == 4
    assert {r.run_dir.name: numbers(r.run_dir) for r in runs} == expected
    assert index_rows(result.sweep_dir) == index_rows(sweep_dir)
    assert "resuming" in (first.run_dir / "train.log").read_text()
    pids = [pid for r in runs[1:] for pid in worker_pids(r.run_dir)]
    assert len(set(pids)) < len(pids)  # warm workers: some process ran several runs
    again = run_sweep(path, out=tmp_path / "sweeps", executor="ray", echo=False)
    assert again.launched == 0 and again.states == result.states


@pytest.mark.slow
def test_ray_records_failures_through_the_cli(tmp_path, ray_cluster, cli):
    text = GRID.replace("seed = [0, 1]", "seed = 0").replace('init = ["eoi", "kaiming"]',
                                                             'init = "eoi"')
    text += '\n[[add]]\ndataset = "mnist"\ndata_root = "/nonexistent/mnist"\ndata_options = []\n'
    code, out, _ = cli("sweep", str(write_grid(tmp_path, text)), "--executor", "ray", "--out",
                       str(tmp_path / "sweeps"))
    assert code == 1 and "FAILED: " in out and "/nonexistent/mnist" in out
    rows = json.loads((tmp_path / "sweeps" / "grid" / "index.json").read_text())
    assert [row["state"] for row in rows] == ["finished", "failed"]
    assert "/nonexistent/mnist" in rows[1]["error"]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SUBMITIT, reason="submitit is not installed (pip install "
                    "'orthosparse[slurm]'; the test extra has it)")
def test_submitit_matches_local_and_a_preempted_job_requeues(tmp_path, local):
    """SIGUSR2 is what SLURM sends before preemption or the time limit: submitit calls the
    job's ``checkpoint()`` and requeues it; the requeued job resumes the run from its folder."""
    sweep_dir, expected = local
    path = write_grid(tmp_path)
    runs = expand_sweep(path, sweep_dir=tmp_path / "sweeps" / "grid")
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(result=run_sweep(
        path, out=tmp_path / "sweeps", executor="submitit", echo=False,
        executor_options={"cluster": "local", "runs_per_job": 2})))
    thread.start()
    first = runs[0]
    try:
        wait_for_first_epoch(first.run_dir)
        holder = json.loads((first.run_dir / ".lock").read_text())
        os.kill(int(holder["pid"]), signal.SIGUSR2)  # the job process training the run
    finally:
        thread.join(timeout=600)
    result = done["result"]
    assert result.counts == {"finished": 4}
    assert {r.run_dir.name: numbers(r.run_dir) for r in runs} == expected
    assert index_rows(result.sweep_dir) == index_rows(sweep_dir)
    log = (first.run_dir / "train.log").read_text()
    assert "resuming" in log and "SystemExit" in log
    assert len(set(worker_pids(first.run_dir))) == 2  # the job, then its requeued copy
    assert worker_pids(runs[1].run_dir)[0] == worker_pids(first.run_dir)[-1]  # one job, 2 runs
