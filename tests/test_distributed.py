"""Data-parallel training: two gloo processes on the CPU give the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import orthosparse
from orthosparse.lab.config import config_from_dict
from orthosparse.lab.distributed import (
    compare_checksums,
    find_free_port,
    init_distributed,
    shard,
    sync_masks,
    wrap_model,
)
from orthosparse.lab.train import train
from orthosparse.sparse import apply_masks, mask_checksum

# 86 training examples after the hold-out, global batch 15: 5 full batches + one of 11, so the
# two shards are uneven (8/7, then 6/5: a per-rank mean loss would weigh them wrongly); 6 steps
# per epoch.
TINY = dict(
    dataset="synthetic", data_options=["input_shape=[1,4,4]", "train_size=96", "test_size=32",
                                       "num_classes=3"],
    model="mlp", depth=3, width=16, activation="tanh", density=0.5, mask="uniform",
    init="eoi", batch_size=15, epochs=2, lr=0.05, device="cpu", progress="epoch",
    tensorboard=False, jacobian="init", jacobian_examples=8,
)
CLI = ["--dataset", "synthetic", "--data-options", "input_shape=[1,4,4]", "train_size=96",
       "test_size=32", "num_classes=3", "--model", "mlp", "--depth", "3", "--width", "16",
       "--activation", "tanh", "--density", "0.5", "--mask", "uniform", "--init", "eoi",
       "--batch-size", "15", "--epochs", "2", "--lr", "0.05", "--device", "cpu", "--progress",
       "epoch", "--tensorboard", "false", "--jacobian", "init", "--jacobian-examples", "8"]
SRC = str(Path(orthosparse.__file__).resolve().parents[1])


def launch(world: int, args: list[str], timeout: float = 120) -> list[str]:
    """Start ``world`` processes as torchrun would (env vars, one free port); return outputs."""
    port = find_free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, "-m", "orthosparse", "train", *args],
                                      env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for rank, (proc, text) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{text}"
    return outputs


def test_two_gloo_processes_match_one_process_and_resume(tmp_path):
    single = train(config_from_dict({**TINY, "out": str(tmp_path / "single"),
                                     "progress": "none"}))
    out = str(tmp_path / "ddp")
    launch(2, [*CLI, "--out", out, "--stop-after", "8"])  # stops in epoch 2 (8 = 6 + 2)
    run_dir = single.run_dir.parent.parent / "ddp" / single.run_dir.name
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["progress"]["global_step"] == 8 and not (run_dir / "final.json").exists()
    launch(2, [*CLI, "--out", out, "--resume"])

    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "finished" and final["world_size"] == 2
    assert final["global_step"] == 12
    assert final["mask_checksum"] == mask_checksum(single.model)  # same masks on every rank
    assert final["jacobian_init"] == pytest.approx(single.final["jacobian_init"], rel=1e-6)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    reference = single.model.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        if value.dtype == torch.bool:
            assert torch.equal(state[key], value), key
        else:  # same global batches, summed in another order: equal to rounding
            torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)
    for name in ("hidden.0.weight", "hidden.2.weight", "head.weight"):
        assert torch.count_nonzero(state[name][~state[name + "_orthosparse_mask"]]) == 0
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2
    for got, want in zip(history, single.history, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    # rank 0 alone writes the log: one start line, one resume line, one line per launch
    log = (run_dir / "train.log").read_text()
    assert log.count(": mlp on synthetic, density 0.5") == 1
    assert log.count("resuming") == 1
    assert log.count("distributed: 2 processes (gloo), global batch 15 = 2 x ~8") == 2


def test_sharded_sum_losses_give_the_mean_loss_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    F.cross_entropy(model(x), y).backward()
    want = [p.grad.clone() for p in model.parameters()]
    k, total = 3, None
    from orthosparse.lab.distributed import DistContext

    for rank in range(k):  # what DDP averages: (1/K) sum_r grad(sum_r l_i * K / B)
        ctx = DistContext(rank, k, rank, "gloo", torch.device("cpu"))
        model.zero_grad()
        xs, ys = shard(x, ctx), shard(y, ctx)
        (F.cross_entropy(model(xs), ys, reduction="sum") * (k / 7)).backward()
        grads = [p.grad.clone() / k for p in model.parameters()]
        total = grads if total is None else [a + b for a, b in zip(total, grads, strict=True)]
    for got, expected in zip(total, want, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)


def test_shard_splits_a_batch_into_contiguous_slices():
    from orthosparse.lab.distributed import DistContext

    batch = torch.arange(7)
    parts = [shard(batch, DistContext(r, 2, r, "gloo", torch.device("cpu"))) for r in range(2)]
    assert parts[0].tolist() == [0, 1, 2, 3] and parts[1].tolist() == [4, 5, 6]
    one = [shard(torch.arange(1), DistContext(r, 2, r, "gloo", torch.device("cpu"))).numel()
           for r in range(2)]
    assert one == [1, 0]
    assert shard(batch, None) is batch


def test_single_process_needs_no_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") is None
    model = nn.Linear(4, 4)
    apply_masks(model, {"weight": torch.eye(4, dtype=torch.bool)})
    wrapped, checksum = wrap_model(model, None)
    assert wrapped is model and checksum == mask_checksum(model) == sync_masks(model, None)


@pytest.mark.parametrize("env, device, message", [
    ({"WORLD_SIZE": "2"}, "cpu", "environment variable RANK is not set; start distributed"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "cpu", "MASTER_ADDR is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "cpu",
     "MASTER_PORT is not set"),
    ({"WORLD_SIZE": "2", "RANK": "x", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "cpu",
     r"RANK='x' must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "cpu",
     r"RANK=2 must be in \[0, WORLD_SIZE=2\)"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "cuda:1",
     "names one device, but each process of a distributed run takes its own"),
])
def test_bad_distributed_environment_is_named(monkeypatch, env, device, message):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        init_distributed(device)


def test_checksums_must_agree():
    assert compare_checksums(["ab", "ab", "ab"]) == "ab"
    with pytest.raises(ValueError, match=r"masks differ across ranks \(rank 0: aa, rank 1: bb\)"):
        compare_checksums(["aa", "bb"])
    with pytest.raises(ValueError, match="at least one checksum"):
        compare_checksums([])


def test_free_port_is_a_port():
    port = find_free_port()
    assert isinstance(port, int) and 1024 <= port < 65536
