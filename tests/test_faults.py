"""Faults and bad input (issue 16): the audit's cases kept fixed.

Part 1, in-process: bad input at the core's entry points (one gain rule, ``exclude``, devices,
meta tensors). Part 2, fault injection on tiny runs of ``python -m orthosparse train`` in
subprocesses: kill -9, SIGINT and SIGTERM followed by ``--resume`` (bitwise the uninterrupted
run), a full disk (a small tmpfs in a user+mount namespace, skipped where ``unshare`` cannot
make one) and a file-size limit (``RLIMIT_FSIZE``), and two ``train`` commands of one run at
once. Each case that needs a mechanism this machine lacks is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import orthosparse
from orthosparse.eoi import sparse_orthogonal
from orthosparse.init import eoi_, eoi_group_, orthogonal_
from orthosparse.lab.checkpoint import load_checkpoint
from orthosparse.lab.config import TrainConfig, config_from_dict
from orthosparse.lab.train import train
from orthosparse.sparsify import sparsify

# --------------------------------------------------------------------------- part 1: bad input

_ENTRY_POINTS = {
    "eoi_": lambda gain: eoi_(torch.empty(8, 8), 0.5, gain=gain),
    "eoi_group_": lambda gain: eoi_group_([torch.empty(8, 8)], 0.5, gain=gain),
    "orthogonal_": lambda gain: orthogonal_(torch.empty(8, 8), gain=gain),
    "sparse_orthogonal": lambda gain: sparse_orthogonal(8, 8, 0.5, gain=gain),
    "sparsify": lambda gain: sparsify(nn.Sequential(nn.Linear(8, 8)), 0.5, gain=gain),
    "TrainConfig": lambda gain: TrainConfig(gain=gain),
}


@pytest.mark.parametrize("entry", list(_ENTRY_POINTS))
@pytest.mark.parametrize("gain", [0.0, -1.0, float("nan"), float("inf")])
def test_one_gain_rule_refuses_non_positive_and_non_finite_gains(entry, gain):
    with pytest.raises(ValueError, match=rf"gain={gain} must be a finite number > 0"):
        _ENTRY_POINTS[entry](gain)


@pytest.mark.parametrize("entry", list(_ENTRY_POINTS))
def test_one_gain_rule_takes_numpy_scalars_and_refuses_bools(entry):
    if entry != "TrainConfig":  # a config holds plain JSON values (np.float32 is not one)
        _ENTRY_POINTS[entry](np.float32(2.0))
    with pytest.raises(TypeError, match="gain.*must be a (real )?number"):
        _ENTRY_POINTS[entry](True)


def test_numpy_gain_scales_like_the_same_float():
    a = sparse_orthogonal(8, 8, 0.5, gain=np.float32(2.0),
                          generator=torch.Generator().manual_seed(0))
    b = sparse_orthogonal(8, 8, 0.5, gain=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_exclude_that_is_not_patterns_or_types_is_a_type_error():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="exclude must be a glob pattern, a module type or an "
                                        "iterable of them, got int: 123"):
        sparsify(model, 0.5, exclude=123)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available here"):
        sparse_orthogonal(8, 8, 0.5, device="cuda")


@pytest.mark.parametrize("fn", [lambda w: eoi_(w, 0.5), orthogonal_,
                                lambda w: sparse_orthogonal(8, 8, 0.5, device=w.device)])
def test_meta_tensors_are_refused(fn):
    with pytest.raises(ValueError, match="meta"):
        fn(torch.empty(8, 8, device="meta"))


# --------------------------------------------------------------------------- part 2: faults

SRC = str(Path(orthosparse.__file__).resolve().parents[1])
TINY = dict(
    dataset="synthetic", data_options=["input_shape=[1,4,4]", "train_size=96", "test_size=32",
                                       "num_classes=3"],
    model="mlp", depth=3, width=16, activation="tanh", density=0.5, mask="uniform",
    batch_size=16, epochs=4, device="cpu", progress="epoch", tensorboard=False, threads=1,
)  # 6 steps per epoch
FLAGS = [
    "--dataset", "synthetic", "--data-options", "input_shape=[1,4,4]", "train_size=96",
    "test_size=32", "num_classes=3", "--model", "mlp", "--depth", "3", "--width", "16",
    "--activation", "tanh", "--density", "0.5", "--mask", "uniform", "--batch-size", "16",
    "--epochs", "4", "--device", "cpu", "--progress", "epoch", "--no-tensorboard",
    "--threads", "1",
]
# `python -m orthosparse` with every optimizer step slowed down, so that a signal lands mid-run.
SLOW = textwrap.dedent("""
    import os, sys, time
    import orthosparse.lab.train as t
    step = t._Run._forward_loss
    def slow(self, x, y):
        time.sleep(float(os.environ.get("STEP_SECONDS", "0.05")))
        return step(self, x, y)
    t._Run._forward_loss = slow
    from orthosparse.lab.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run (in-process: the same result bitwise, one thread)."""
    cfg = config_from_dict({**TINY, "progress": "none",
                            "out": str(tmp_path_factory.mktemp("straight"))})
    return train(cfg)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ORTHOSPARSE_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    env["PYTHONWARNINGS"] = "ignore"  # stderr holds only what the run says about the fault
    return env


def _train(out: Path, *extra: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orthosparse", "train", *FLAGS, "--out",
                           str(out), *extra], capture_output=True, text=True, env=_env(),
                          timeout=120, **kw)


def _start_slow(tmp_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    script = tmp_path / "slow_train.py"
    script.write_text(SLOW)
    return subprocess.Popen([sys.executable, str(script), "train", *FLAGS, "--out", str(out),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: "
                                 f"{proc.communicate()[1][-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def _epochs_logged(out: Path) -> int:
    try:
        return len((_run_dir(out) / "metrics.jsonl").read_text().splitlines())
    except (OSError, ValueError):
        return 0


def _assert_same_as_straight(run_dir: Path, straight) -> None:
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "finished"
    assert (final["test_loss"], final["test_acc"]) == (straight.final["test_loss"],
                                                       straight.final["test_acc"])
    model = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(model[key], value), key  # bitwise
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL),
                                       (signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_by_a_signal_resumes_to_the_straight_result(tmp_path, straight, sig,
                                                                  code):
    out = tmp_path / "out"
    proc = _start_slow(tmp_path, out, "--checkpoint-every", "1")
    _wait_for(lambda: _epochs_logged(out) >= 1, proc, "the first epoch")
    time.sleep(0.12)  # a couple of steps into the second epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    if sig != signal.SIGKILL:  # one line saying what is kept, no traceback
        assert "Traceback" not in err
        assert "the last checkpoint is kept, continue with --resume" in err
    run_dir = _run_dir(out)
    assert not (run_dir / "final.json").exists()
    resumed = _train(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    _assert_same_as_straight(run_dir, straight)


@pytest.mark.slow
def test_two_trains_of_one_run_at_once_the_second_is_refused_naming_the_first(tmp_path,
                                                                             straight):
    out = tmp_path / "out"
    first = _start_slow(tmp_path, out)
    _wait_for(lambda: out.is_dir() and any((p / "train.log").exists() for p in out.iterdir()),
              first, "the first run to start")
    second = _train(out)
    assert second.returncode == 3, second.stderr
    assert f"being trained by another process (pid {first.pid} on host " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    first.communicate(timeout=90)
    assert first.returncode == 0
    run_dir = _run_dir(out)
    log = (run_dir / "train.log").read_text()
    assert log.count(": mlp on synthetic") == 1 and log.count("epoch 1/4") == 1  # one writer
    _assert_same_as_straight(run_dir, straight)


def _fsize_limit(limit: int):
    def apply() -> None:  # pragma: no cover - runs in the child
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_file_size_limit_is_one_line_naming_the_file(tmp_path):
    try:
        import resource  # noqa: F401
    except ImportError:
        pytest.skip("no resource module (RLIMIT_FSIZE) here")
    out = tmp_path / "out"
    proc = _train(out, preexec_fn=_fsize_limit(20_000))  # the checkpoint needs ~33 kB
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "could not write" in line and "checkpoint.pt" in line
    assert "[Errno 27] File too large" in line and "no checkpoint had been written yet" in line
    assert "Traceback" not in proc.stderr and "inline_container" not in proc.stderr
    assert not [p.name for p in _run_dir(out).iterdir() if p.name.endswith(".tmp")]


# Runs inside a private mount namespace holding a 1 MiB tmpfs at $MNT: train one epoch, fill the
# disk to ~16 kB free, resume (the next checkpoint cannot be written), free it, resume again.
DISK_FULL = textwrap.dedent("""
    import json, os, subprocess, sys
    mnt, flags, report = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    out = os.path.join(mnt, "out")
    def train(*extra):
        p = subprocess.run([sys.executable, "-m", "orthosparse", "train", *flags, "--out", out,
                            *extra], capture_output=True, text=True)
        return {"code": p.returncode, "out": p.stdout, "err": p.stderr}
    steps = [train("--stop-after", "6")]
    run_dir = os.path.join(out, [d for d in os.listdir(out)][0])
    ckpt = os.path.join(run_dir, "checkpoint.pt")
    before = open(ckpt, "rb").read()
    st = os.statvfs(mnt)
    with open(os.path.join(mnt, "filler"), "wb") as fh:
        fh.write(bytes(st.f_bavail * st.f_frsize - 16384))
    steps.append(train("--resume"))
    kept = open(ckpt, "rb").read() == before
    left = sorted(n for n in os.listdir(run_dir) if n.endswith(".tmp"))
    os.unlink(os.path.join(mnt, "filler"))
    steps.append(train("--resume"))
    final = json.load(open(os.path.join(run_dir, "final.json")))
    json.dump({"steps": steps, "kept": kept, "left": left, "final": final},
              open(report, "w"))
""")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_previous_checkpoint_is_kept(tmp_path, straight):
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux `unshare` for a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {mnt}"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here: {probe.stderr.strip()[:200]}")
    script, report = tmp_path / "disk_full.py", tmp_path / "report.json"
    script.write_text(DISK_FULL)
    flags = list(FLAGS)
    proc = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$1" "$2" "$0" "$3" "$4"',
         str(mnt), sys.executable, str(script), json.dumps(flags), str(report)],
        capture_output=True, text=True, env=_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    first, full, freed = data["steps"]
    assert first["code"] == 0, first["err"]
    assert full["code"] == 1, full
    (line,) = full["err"].strip().splitlines()  # one line, the real cause visible
    assert "[Errno 28] No space left on device" in line and "could not write" in line
    assert "the last checkpoint" in line and "is kept" in line
    assert "Traceback" not in full["err"] and "inline_container" not in full["err"]
    assert data["kept"] and data["left"] == []  # old checkpoint intact, no temp file left
    assert freed["code"] == 0, freed["err"]
    assert (data["final"]["test_loss"], data["final"]["test_acc"]) == (
        straight.final["test_loss"], straight.final["test_acc"])
