"""Sweeps: grid expansion, paper grids, state on disk, restart without repeating work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import orthosparse
from orthosparse.lab.cli import main
from orthosparse.lab.config import config_hash
from orthosparse.lab.presets import PAPER_CONV_INITS, PAPER_INITS, PAPER_MASKS, list_sweeps
from orthosparse.lab.runs import lock_holder, run_state, try_lock
from orthosparse.lab.sweep import (
    _Runner,
    expand_sweep,
    load_sweep,
    parse_overrides,
    run_sweep,
    sweep_to_toml,
)
from orthosparse.lab.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SRC = str(Path(orthosparse.__file__).resolve().parents[1])

TINY_GRID = """
[sweep]
name = "tiny"

[grid]
dataset = "synthetic"
data_options = ["input_shape=[1,4,4]", "train_size=96", "test_size=32", "num_classes=3"]
model = "mlp"
depth = 3
width = 16
activation = "tanh"
mask = "uniform"
density = 0.5
batch_size = 16
epochs = 2
lr = 0.05
device = "cpu"
tensorboard = false
init = "eoi"
seed = [0, 1, 2]

[[add]]                # fails at run time: no MNIST files there
dataset = "mnist"
data_root = "/nonexistent/mnist"
data_options = []
seed = 0
"""


@pytest.fixture(autouse=True)
def _importable_workers(monkeypatch):
    """Workers (``python -m orthosparse``) import this checkout."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))


def write(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- expansion


def test_grid_add_exclude_and_list_valued_keys(tmp_path):
    path = write(tmp_path, """
[sweep]
name = "g"
preset = "digits"

[grid]
init = ["orthogonal", "eoi"]
density = [0.05, 0.1]
milestones = [[0.5, 0.75], [0.3]]   # a list of lists: an axis of a list-valued key
betas = [0.8, 0.9]                  # a plain list: one value of a list-valued key
seed = [0, 1]

[grid.optim]
lr = 0.2

[[add]]
mask = "dense"
density = 1.0
init = "orthogonal"

[[exclude]]
init = "eoi"
density = [0.05]
seed = 1
""")
    runs = expand_sweep(path, sweep_dir=tmp_path / "out")
    # grid: 2*2*2*2 = 16, minus eoi/0.05/seed 1 (2 milestone values) = 14;
    # add: density and init fixed: milestones 2 x seeds 2 = 4
    assert len(runs) == 18
    assert [(r.config.init, r.config.density, r.config.milestones, r.config.seed)
            for r in runs[:3]] == [("orthogonal", 0.05, [0.5, 0.75], 0),
                                   ("orthogonal", 0.05, [0.5, 0.75], 1),
                                   ("orthogonal", 0.05, [0.3], 0)]  # last key fastest
    assert all(r.config.betas == [0.8, 0.9] and r.config.lr == 0.2 for r in runs)
    assert all(r.config.depth == 7 for r in runs)  # from the preset
    assert not any(r.config.init == "eoi" and r.config.density == 0.05 and r.config.seed == 1
                   for r in runs)
    dense = [r for r in runs if r.config.mask == "dense"]
    assert len(dense) == 4 and {r.config.density for r in dense} == {1.0}
    assert list(runs[0].values) == ["density", "mask", "init", "milestones", "seed"]
    assert runs[0].run_dir == tmp_path / "out" / "runs" / (
        f"g-d0.05-erk-orthogonal-0.5+0.75-s0-{config_hash(runs[0].config)}")
    assert len({r.hash for r in runs}) == 18


def test_duplicates_are_dropped_and_overrides_fix_keys(tmp_path):
    spec = {"sweep": {"name": "d", "preset": "digits"},
            "grid": {"init": ["eoi", "orthogonal"], "seed": [0, 1]},
            "add": [{"init": "eoi"}, {"epochs": 3}]}
    runs = expand_sweep(spec, sweep_dir=tmp_path)
    assert len(runs) == 4 + 0 + 4  # the first add block repeats grid runs; the second is new
    fixed = expand_sweep(spec, sweep_dir=tmp_path, overrides={"epochs": 1, "seed": 5})
    assert [(r.config.init, r.config.seed, r.config.epochs) for r in fixed] == [
        ("eoi", 5, 1), ("orthogonal", 5, 1), ("eoi", 5, 3), ("orthogonal", 5, 3)]
    assert parse_overrides(["epochs=1", "milestones=0.3,0.6", "nesterov=false"]) == {
        "epochs": 1, "milestones": [0.3, 0.6], "nesterov": False}
    with pytest.raises(ValueError, match="--set 'epochs' must look like KEY=VALUE"):
        parse_overrides(["epochs"])


@pytest.mark.parametrize("text, error, message", [
    ("lr = 0.1", ValueError, r"unknown top-level key 'lr'.*config keys go in \[grid\]"),
    ("[sweep]\nname = 'a'\njobs = 2", ValueError, r"unknown key 'jobs' in \[sweep\]"),
    ("[grid]\nlearning_rate = 0.1", ValueError, r"unknown config key 'learning_rate' in \[grid\]"),
    ("[grid]\nout = 'x'", ValueError, r"\[grid\] sets out.*set the sweep's parent directory"),
    ("[grid]\nseed = []", ValueError, r"seed = \[\] has no values"),
    ("[grid]\nname = ['a', 'b']", ValueError, "name cannot vary"),
    ("[grid]\ninit = ['eoi', 'eio']", ValueError,
     r"init='eio' is not a known init.*run init='eio'"),
    ("[grid]\ndensity = [0.1, 2.0]", ValueError, r"density=2.0 must be in \(0, 1\].*density=2.0"),
    ("[grid]\nlr = 'fast'", TypeError, "lr='fast' must be a number"),
    ("[grid]\nseed = [0, 1]\n[[exclude]]\nseed = [0, 1]", ValueError, "has no runs"),
    ("[sweep]\nname = 'a/b'", ValueError, "must be a non-empty file name"),
])
def test_bad_sweep_files_are_named(tmp_path, text, error, message):
    with pytest.raises(error, match=message):
        expand_sweep(write(tmp_path, text), sweep_dir=tmp_path)


def test_unknown_sweep_preset_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown sweep preset 'paper-mlpp'; choose one of"):
        load_sweep("paper-mlpp")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sweep(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="jobs=0 must be a positive integer"):
        run_sweep(write(tmp_path, "[grid]\nseed = 0"), jobs=0)


def test_paper_mlp_grid_is_the_papers():
    # specs/mlp/loss-curves.py of the official code (docs/protocol.md): no SAO in this spec.
    runs = expand_sweep("paper-mlp", sweep_dir="unused")
    masks, inits = set(PAPER_MASKS), set(PAPER_INITS)
    assert masks == {"uniform", "erk", "snip", "grasp", "synflow"}
    assert inits == {"orthogonal", "ai", "eoi"}
    grid = [r for r in runs if r.config.mask in masks and r.config.init in inits]
    assert len(grid) == 5 * 3 * 2 * 4 * 5
    combos = {(r.config.mask, r.config.init, r.config.density, r.config.activation)
              for r in grid}
    assert len(combos) == 5 * 3 * 2 * 4
    assert {r.config.seed for r in grid} == {1, 2, 3, 4, 5}
    dense = [r for r in runs if r.config.mask == "dense"]
    assert len(dense) == 2 * 4 * 5 and {r.config.density for r in dense} == {1.0}
    assert {r.config.init for r in dense} == {"orthogonal", "kaiming"}
    assert len(runs) == 600 + 40
    cfg = grid[0].config  # the paper protocol, from the preset
    assert (cfg.dataset, cfg.depth, cfg.width, cfg.epochs, cfg.lr, cfg.batch_size) == (
        "mnist", 7, 100, 100, 0.01, 128)
    assert "score_weights=orthogonal" in cfg.sparsify_options


def test_paper_resnet56_grid_is_the_official_spec():
    # specs/contemporary-networks/res56.py: sparse baselines without SynFlow, EOI at lr 0.1 and
    # 0.01, SynFlow in float64 for all three inits, dense conv_orthogonal and default.
    runs = expand_sweep("paper-resnet56", sweep_dir="unused")
    cells = Counter((r.config.mask, r.config.init, r.config.lr) for r in runs)
    for mask in ("uniform", "erk", "snip", "grasp"):
        assert cells[(mask, "conv-orthogonal", 0.1)] == cells[(mask, "ai", 0.1)] == 10
        assert cells[(mask, "eoi", 0.1)] == cells[(mask, "eoi", 0.01)] == 10
    for init in PAPER_CONV_INITS:
        assert cells[("synflow", init, 0.1)] == 10
    assert cells[("dense", "conv-orthogonal", 0.1)] == cells[("dense", "kaiming", 0.1)] == 5
    assert len(runs) == 200
    synflow = next(r.config for r in runs if r.config.mask == "synflow")
    assert "synflow:double_precision=true" in synflow.sparsify_options
    assert synflow.model_options == ["shortcut=B"]


@pytest.mark.parametrize("name", list_sweeps())
def test_config_files_are_the_named_sweeps(name):
    from_file = expand_sweep(CONFIGS / f"{name}.toml", sweep_dir="x")
    from_preset = expand_sweep(name, sweep_dir="x")
    assert [r.hash for r in from_file] == [r.hash for r in from_preset]
    assert [r.run_dir for r in from_file] == [r.run_dir for r in from_preset]


def test_toml_round_trip(tmp_path):
    text = sweep_to_toml("paper-resnet56")
    again = expand_sweep(write(tmp_path, text), sweep_dir="x")
    assert [r.hash for r in again] == [r.hash for r in expand_sweep("paper-resnet56",
                                                                    sweep_dir="x")]


# --------------------------------------------------------------------------- state on disk


def test_run_state_reads_the_files(tmp_path):
    assert run_state(tmp_path) == "pending"
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert run_state(tmp_path) == "partial"
    (tmp_path / "failed.json").write_text("{}")
    assert run_state(tmp_path) == "failed"
    (tmp_path / "final.json").write_text(json.dumps({"status": "diverged"}))
    assert run_state(tmp_path) == "diverged"
    (tmp_path / "final.json").write_text(json.dumps({"status": "finished"}))
    assert run_state(tmp_path) == "finished"


def test_a_run_is_found_by_its_hash_when_its_name_changes(tmp_path):
    one = expand_sweep({"sweep": {"name": "s"}, "grid": {"seed": [0, 1]}}, sweep_dir=tmp_path)
    old = tmp_path / "runs" / f"old-name-{one[0].hash}"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    again = expand_sweep({"sweep": {"name": "s"}, "grid": {"seed": [0, 1]}},
                         sweep_dir=tmp_path)
    assert again[0].run_dir == old and again[1].run_dir.name == f"s-s1-{one[1].hash}"


# --------------------------------------------------------------------------- running


def test_sweep_skips_finished_resumes_partial_records_failures(tmp_path):
    path = write(tmp_path, TINY_GRID)
    out = tmp_path / "sweeps"
    runs = expand_sweep(path, sweep_dir=out / "tiny")
    assert len(runs) == 4
    done, partial, fresh, bad = runs
    # before the sweep: one run finished, one stopped half way (as if killed), one untouched
    train(done.config.__class__(**{**done.config.to_dict(), "progress": "none"}),
          run_dir=done.run_dir)
    stamp = (done.run_dir / "final.json").stat().st_mtime_ns
    quiet = partial.config.__class__(**{**partial.config.to_dict(), "progress": "none"})
    train(quiet, run_dir=partial.run_dir, stop_after=8)
    assert run_state(partial.run_dir) == "partial"
    straight = train(quiet, run_dir=tmp_path / "straight")

    result = run_sweep(path, jobs=2, out=out, echo=False, devices=["7", "8"])
    assert result.counts == {"finished": 3, "failed": 1}
    pinned = [(r.run_dir / "worker.log").read_text().splitlines()[0] for r in runs[1:3]]
    assert {line.rsplit("=", 1)[-1] for line in pinned} == {"7)", "8)"}  # one GPU per job
    assert {r.run_dir.name for r in result.to_run} == {
        partial.run_dir.name, fresh.run_dir.name, bad.run_dir.name}
    assert result.launched == 3 and not result.complete and result.failed == [bad.run_dir]
    assert (done.run_dir / "final.json").stat().st_mtime_ns == stamp  # not trained again
    log = (partial.run_dir / "train.log").read_text()
    assert "resuming" in log and log.count(": mlp on synthetic") == 1
    resumed = [json.loads(x) for x in (partial.run_dir / "metrics.jsonl").read_text().splitlines()]
    for got, want in zip(resumed, straight.history, strict=True):
        assert {k: v for k, v in got.items() if k != "time"} == pytest.approx(
            {k: v for k, v in want.items() if k != "time"}, rel=1e-6)
    failure = json.loads((bad.run_dir / "failed.json").read_text())
    assert failure["returncode"] == 1
    assert "Traceback (most recent call last)" in failure["traceback"]
    assert "/nonexistent/mnist" in failure["error"]
    index = json.loads((out / "tiny" / "index.json").read_text())
    assert [row["state"] for row in index] == ["finished", "finished", "finished", "failed"]
    assert index[0]["test_acc"] == json.loads((done.run_dir / "final.json").read_text())[
        "test_acc"]
    assert index[3]["error"] == failure["error"]
    sweep = json.loads((out / "tiny" / "sweep.json").read_text())
    assert [r["config_hash"] for r in sweep["runs"]] == [r.hash for r in runs]
    assert sweep["varying"] == ["dataset", "data_root", "data_options", "seed"]

    # restart: nothing left to do but the failed run, which is retried only when asked
    t0 = time.perf_counter()
    again = run_sweep(path, jobs=2, out=out, retry_failed=False, echo=False)
    assert again.launched == 0 and again.to_run == [] and time.perf_counter() - t0 < 10
    assert again.states == result.states
    dry = run_sweep(path, jobs=2, out=out, dry_run=True)
    assert [r.run_dir for r in dry.to_run] == [bad.run_dir]


def test_cli_lists_prints_and_dry_runs(tmp_path, capsys):
    assert main(["sweep"]) == 0
    assert "paper-mlp " in capsys.readouterr().out
    assert main(["sweep", "digits-grid", "--print"]) == 0
    assert 'init = ["eoi", "orthogonal", "ai", "sparse-kaiming", "kaiming"]' in (
        capsys.readouterr().out)
    assert main(["sweep", "digits-grid", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "# 50 runs: 50 pending" in out and not any(tmp_path.iterdir())
    assert main(["sweep", "digits-grid", "--dry-run", "--set", "epochs=0"]) == 2
    assert "epochs=0 must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_restart_finishes(tmp_path):
    text = TINY_GRID.split("[[add]]")[0].replace("epochs = 2", "epochs = 100").replace(
        "seed = [0, 1, 2]", "seed = [0, 1]")
    path = write(tmp_path, text + 'checkpoint_every = 5\nprogress = "epoch"\n')
    out = tmp_path / "sweeps"
    cmd = [sys.executable, "-m", "orthosparse", "sweep", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = expand_sweep(path, sweep_dir=out / "tiny")
    deadline = time.time() + 60
    while not (runs[0].run_dir / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert run_state(runs[0].run_dir) == "partial"  # stopped mid-run, checkpoint kept
    assert run_state(runs[1].run_dir) == "pending"
    assert "interrupted" in (out / "tiny" / "sweep.log").read_text()
    result = run_sweep(path, out=out, echo=False)
    assert result.counts == {"finished": 2}
    assert "resuming" in (runs[0].run_dir / "train.log").read_text()


def test_index_is_rewritten_as_each_run_ends(tmp_path, monkeypatch):
    from orthosparse.lab import sweep as sweep_module

    grid = TINY_GRID.split("[[add]]")[0].replace("seed = [0, 1, 2]", "seed = [0, 1]")
    snapshots = []
    real = sweep_module._write_index

    def spy(sweep_dir, runs):
        rows = real(sweep_dir, runs)
        snapshots.append(sorted(row["state"] for row in rows))
        return rows

    monkeypatch.setattr(sweep_module, "_write_index", spy)
    result = run_sweep(write(tmp_path, grid), jobs=1, out=tmp_path / "sweeps", echo=False)
    assert result.counts == {"finished": 2}
    # at the start, after the first run, after the second, at the end
    assert snapshots == [["pending", "pending"], ["finished", "pending"],
                         ["finished", "finished"], ["finished", "finished"]]


def _final_numbers(result):
    """Everything a run produced except wall-clock times."""
    final = {k: v for k, v in result.final.items() if k not in ("wall_time", "message")}
    history = [{k: v for k, v in r.items() if k != "time"} for r in result.history]
    return final, history


@pytest.mark.slow
def test_a_sweep_started_run_resumed_by_hand_ends_where_the_sweep_would(tmp_path):
    """The thread count changes results bitwise and is not hashed: a run started by a sweep
    worker (``train --resume RUN_DIR`` with ``OMP_NUM_THREADS = cpu_count // jobs``) and resumed
    by hand with another count, implicit or explicit, trains on with the recorded one."""
    import dataclasses

    import torch

    from orthosparse.lab.config import config_to_dict, resolve_config
    from orthosparse.lab.runs import RUNTIME, load_run, write_json

    cfg = resolve_config("digits", overrides={
        "epochs": 2, "out": str(tmp_path), "progress": "none", "tensorboard": False})
    sweep_threads, hand_threads = 1, 2  # a 2-job sweep on 2 cores; a shell's torch default

    def sweep_worker(run_dir, *extra):  # what sweep._Runner.launch starts
        run_dir.mkdir(parents=True)
        write_json(run_dir / "config.json", config_to_dict(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": str(sweep_threads),
               "MKL_NUM_THREADS": str(sweep_threads)}
        subprocess.run([sys.executable, "-m", "orthosparse", "train", "--resume", str(run_dir),
                        *extra], env=env, check=True, capture_output=True, timeout=300)

    whole = tmp_path / "whole"
    sweep_worker(whole)
    expected = _final_numbers(load_run(whole))
    assert json.loads((whole / RUNTIME).read_text()) == {"threads": sweep_threads}

    old = torch.get_num_threads()
    torch.set_num_threads(hand_threads)
    try:
        for name, threads in (("implicit", None), ("explicit", hand_threads)):
            part = tmp_path / name
            sweep_worker(part, "--stop-after", "15")  # killed in the second epoch
            assert run_state(part) == "partial"
            by_hand = dataclasses.replace(cfg, threads=threads)
            result = train(by_hand, resume=True, run_dir=part)
            assert result.status == "finished" and torch.get_num_threads() == hand_threads
            assert _final_numbers(result) == expected, name
            log = (part / "train.log").read_text()
            assert f"threads: {sweep_threads}, as recorded when this run started" in log
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------- issue 16


ONE_RUN = TINY_GRID.split("[[add]]")[0].replace("seed = [0, 1, 2]", "seed = 0")


@pytest.mark.slow
def test_a_corrupt_final_json_with_a_complete_checkpoint_is_finished_not_failed(tmp_path):
    path = write(tmp_path, ONE_RUN)
    out = tmp_path / "sweeps"
    (run,) = expand_sweep(path, sweep_dir=out / "tiny")
    quiet = run.config.__class__(**{**run.config.to_dict(), "progress": "none"})
    straight = train(quiet, run_dir=run.run_dir)
    (run.run_dir / "final.json").write_text('{"status": "fini')  # torn by hand, say
    (run.run_dir / "config.json").write_text("{")  # and the config too: the sweep knows it
    assert run_state(run.run_dir) == "partial"
    for _ in range(2):  # not FAILED, on this rerun or any later one
        result = run_sweep(path, out=out, echo=False)
        assert result.counts == {"finished": 1}, (run.run_dir / "worker.log").read_text()
    assert result.launched == 0  # the first rerun rebuilt it; the second has nothing to do
    final = json.loads((run.run_dir / "final.json").read_text())
    assert final["test_acc"] == straight.final["test_acc"]


def test_a_run_being_trained_elsewhere_is_not_started_twice(tmp_path):
    path = write(tmp_path, ONE_RUN)
    out = tmp_path / "sweeps"
    (run,) = expand_sweep(path, sweep_dir=out / "tiny")
    run.run_dir.mkdir(parents=True)
    fd = try_lock(run.run_dir)  # a standalone `train` of the same run holds it
    if fd is None:
        pytest.skip("no fcntl.flock here (Windows): runs are not locked")
    holder = lock_holder(run.run_dir)
    assert holder.startswith(f"pid {os.getpid()} on host ")
    try:
        runner = _Runner(out / "tiny", [run], jobs=1, gpus=[], timeout=None, echo=False)
        runner.log.close()
        assert runner.launch(run) is False and runner.running == []
    finally:
        os.close(fd)
