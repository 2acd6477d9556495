"""Training loop: schedules, reproducibility, exact resume, divergence, run directories."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import orthosparse.lab.train as train_module
from orthosparse.lab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from orthosparse.lab.config import TrainConfig, config_from_dict
from orthosparse.lab.experiment import build_model
from orthosparse.lab.runs import RunDirError, RunFileError, RunLockedError, load_run, try_lock
from orthosparse.lab.train import RunExistsError, lr_factor, train

# 96 train examples (86 after the 10% validation hold-out), batch 16: 6 steps per epoch.
TINY = dict(
    dataset="synthetic", data_options=["input_shape=[1,4,4]", "train_size=96", "test_size=32",
                                       "num_classes=3"],
    model="mlp", depth=3, width=16, activation="tanh", density=0.5, mask="uniform",
    init="eoi", batch_size=16, epochs=2, lr=0.05, device="cpu", progress="none",
    tensorboard=False,
)
STEPS_PER_EPOCH = 6


def tiny(tmp_path, **overrides) -> TrainConfig:
    return config_from_dict({**TINY, "out": str(tmp_path), **overrides})


def strip_time(history):
    return [{k: v for k, v in r.items() if k != "time"} for r in history]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --------------------------------------------------------------------------- schedule


def test_multistep_is_the_paper_schedule():
    kw = dict(steps_per_epoch=10, epochs=100, schedule="multistep")
    assert lr_factor(0, **kw) == 1.0
    assert lr_factor(499, **kw) == 1.0  # last step of epoch 49
    assert lr_factor(500, **kw) == pytest.approx(0.1, rel=0, abs=1e-15)  # epoch 50 = 50%
    assert lr_factor(749, **kw) == pytest.approx(0.1, rel=0, abs=1e-15)
    assert lr_factor(750, **kw) == pytest.approx(0.01, rel=0, abs=1e-15)  # epoch 75 = 75%
    assert lr_factor(999, milestones=(0.3,), lr_decay=0.5, **kw) == 0.5


def test_warmup_then_cosine():
    kw = dict(steps_per_epoch=10, epochs=10, schedule="cosine", warmup_epochs=2)
    assert [lr_factor(s, **kw) for s in (0, 9, 19)] == [0.05, 0.5, 1.0]  # (s + 1) / 20
    assert lr_factor(20, **kw) == 1.0  # cosine starts at its top after 20 warmup steps
    assert lr_factor(60, **kw) == pytest.approx(0.5, abs=1e-12)  # halfway through 80 steps
    assert lr_factor(100, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(5, steps_per_epoch=10, epochs=10, schedule="constant") == 1.0
    with pytest.raises(ValueError, match="schedule='linear' must be one of"):
        lr_factor(5, steps_per_epoch=10, epochs=10, schedule="linear")


# --------------------------------------------------------------------------- runs


def test_run_writes_every_output_and_keeps_masks(tmp_path):
    cfg = tiny(tmp_path, jacobian="init")
    result = train(cfg)
    run_dir = cfg.run_dir()
    assert result.status == "finished" and result.run_dir == run_dir and not result.skipped
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.csv", "final.json", "checkpoint.pt",
            "train.log"} <= names
    assert config_from_dict(json.loads((run_dir / "config.json").read_text())) == cfg
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    record = json.loads(lines[-1])
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
                "time"):
        assert isinstance(record[key], float), key
    csv_lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc,test_loss,"
                                   "test_acc,lr,time") and len(csv_lines) == 3
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "finished" and final["epochs_completed"] == 2
    assert final["test_acc"] == record["test_acc"] == result.final["test_acc"]
    assert final["global_step"] == 2 * STEPS_PER_EPOCH
    assert final["best"]["criterion"] == "val_acc"
    assert final["best"]["val_acc"] == max(json.loads(x)["val_acc"] for x in lines)
    assert set(final["jacobian_init"]) >= {"mean", "std", "min", "max"}
    log = (run_dir / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log and "finished" in log
    # pruned weights are still exactly zero after training
    kept = total = 0
    for name, module in result.model.named_modules():
        mask = getattr(module, "weight_orthosparse_mask", None)
        if mask is not None:
            assert torch.count_nonzero(module.weight[~mask]) == 0, name
            kept, total = kept + int(mask.sum()), total + mask.numel()
    # nonzero weights fit in the masks, whose density EOI's stop rule puts near the target 0.5
    assert final["density_nonzero"] <= kept / total and abs(kept / total - 0.5) < 0.05
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["progress"]["epoch"] == 2
    assert any(k.endswith("_orthosparse_mask") for k in ckpt["model"])


def test_same_seed_same_result_bitwise(tmp_path):
    a = train(tiny(tmp_path / "a"))
    b = train(tiny(tmp_path / "b"))
    assert strip_time(a.history) == strip_time(b.history)
    assert_same_weights(a.model, b.model)
    c = train(tiny(tmp_path / "c", seed=1))
    assert strip_time(c.history) != strip_time(a.history)


def test_global_random_state_of_the_caller_is_untouched(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(tiny(tmp_path, epochs=1))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])  # fp16: GradScaler state resumes too
def test_resume_after_a_stop_at_an_epoch_boundary_matches_the_straight_run(tmp_path, precision):
    straight = train(tiny(tmp_path / "straight", precision=precision))
    cfg = tiny(tmp_path / "split", precision=precision)
    first = train(cfg, stop_after=STEPS_PER_EPOCH)
    assert first.status == "stopped" and len(first.history) == 1
    assert not (cfg.run_dir() / "final.json").exists()
    resumed = train(cfg, resume=True)
    assert resumed.status == "finished"
    assert_same_weights(resumed.model, straight.model)
    assert strip_time(resumed.history) == strip_time(straight.history)
    assert resumed.final["test_acc"] == straight.final["test_acc"]
    assert len((cfg.run_dir() / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_after_a_kill_mid_epoch_matches_the_straight_run(tmp_path, monkeypatch):
    straight = train(tiny(tmp_path / "straight", epochs=3, augment="flip"))
    cfg = tiny(tmp_path / "killed", epochs=3, augment="flip", checkpoint_every=4)
    calls = {"n": 0}
    real = F.cross_entropy

    def dies_on_the_9th_training_step(logits, y, *args, **kwargs):
        if kwargs.get("reduction", "mean") == "mean":  # training loss (evaluation sums)
            calls["n"] += 1
            if calls["n"] == 9:
                raise KeyboardInterrupt("killed")
        return real(logits, y, *args, **kwargs)

    monkeypatch.setattr(train_module.F, "cross_entropy", dies_on_the_9th_training_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(train_module.F, "cross_entropy", real)
    assert "ERROR run ended by KeyboardInterrupt: killed" in (
        cfg.run_dir() / "train.log").read_text()
    ckpt = load_checkpoint(cfg.run_dir() / "checkpoint.pt")
    assert ckpt["progress"]["global_step"] == 8  # checkpoint_every=4: the last one at step 8
    assert ckpt["progress"]["step_in_epoch"] == 2  # 8 = 6 (epoch 1) + 2
    with pytest.raises(RunExistsError, match="holds an unfinished run; pass --resume"):
        train(cfg)
    resumed = train(cfg, resume=True)
    assert_same_weights(resumed.model, straight.model)
    assert strip_time(resumed.history) == strip_time(straight.history)


def test_finished_runs_are_found_not_retrained(tmp_path):
    cfg = tiny(tmp_path, epochs=1)
    first = train(cfg)
    again = train(cfg)
    assert again.skipped and again.model is None and again.status == "finished"
    assert again.final["test_acc"] == first.final["test_acc"]
    assert strip_time(again.history) == strip_time(first.history)
    forced = train(cfg, force=True)
    assert not forced.skipped and forced.final["test_acc"] == first.final["test_acc"]


def test_corrupt_checkpoint_on_resume_names_the_file(tmp_path):
    cfg = tiny(tmp_path)
    train(cfg, stop_after=2)
    (cfg.run_dir() / "checkpoint.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"checkpoint '.*checkpoint.pt' is corrupt"):
        train(cfg, resume=True)


def test_divergence_stops_with_a_message_and_keeps_the_log(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, epochs=3)
    real = F.cross_entropy
    calls = {"n": 0}

    def nan_in_epoch_two(logits, y, *args, **kwargs):
        loss = real(logits, y, *args, **kwargs)
        if kwargs.get("reduction", "mean") == "mean":
            calls["n"] += 1
            if calls["n"] == STEPS_PER_EPOCH + 3:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train_module.F, "cross_entropy", nan_in_epoch_two)
    result = train(cfg)
    assert result.status == "diverged"
    assert "training diverged: loss=nan at epoch 2, step 3/6" in result.message
    assert len(result.history) == 1
    final = json.loads((cfg.run_dir() / "final.json").read_text())
    assert final["status"] == "diverged" and final["epochs_completed"] == 1
    assert len((cfg.run_dir() / "metrics.jsonl").read_text().splitlines()) == 1
    assert "ERROR training diverged" in (cfg.run_dir() / "train.log").read_text()
    # the checkpoint is the last good state (end of epoch 1), not the diverged one
    assert load_checkpoint(cfg.run_dir() / "checkpoint.pt")["progress"]["global_step"] == 6


def test_a_huge_learning_rate_really_diverges(tmp_path):
    result = train(tiny(tmp_path, activation="linear", lr=1e30, nesterov=False, momentum=0.0,
                        epochs=2))
    assert result.status == "diverged"
    assert result.message.startswith("training diverged: loss=")


@pytest.mark.parametrize("overrides", [
    dict(optimizer="adam", schedule="cosine", warmup_epochs=0.5, grad_clip=1.0, lr=0.01),
    dict(optimizer="adamw", weight_decay=0.01, lr=0.01, schedule="constant"),
    dict(precision="bf16", epochs=1),
    dict(precision="fp16", epochs=1, grad_clip=0.5),
])
def test_optimizers_schedules_and_precisions_train(tmp_path, overrides):
    result = train(tiny(tmp_path, **overrides))
    assert result.status == "finished"
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    expected = {"bf16": "bfloat16", "fp16": "float16"}.get(overrides.get("precision"), "fp32")
    assert result.final["precision"] == expected


def test_learning_rate_logged_per_epoch_follows_the_schedule(tmp_path):
    result = train(tiny(tmp_path, epochs=4, lr=0.1))
    assert [r["lr"] for r in result.history] == pytest.approx([0.1, 0.1, 0.01, 0.001],
                                                              rel=1e-12)


def test_settings_a_model_does_not_take_are_rejected():
    cfg = TrainConfig(model="resnet20", width=32, activation=None)
    with pytest.raises(ValueError, match=r"width=32 does not apply to model 'resnet20' \(it "
                                         r"takes: .*\); leave width unset"):
        build_model(cfg, (3, 8, 8), 10)
    cfg = TrainConfig(model="mlp", depth=None, width=None, model_options=["width=8"])
    assert build_model(cfg, (1, 4, 4), 3).head.in_features == 8


def test_unknown_names_are_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="dataset='cifar11' is not a known dataset .*cifar10"):
        train(tiny(tmp_path, dataset="cifar11"))
    assert not any(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_cuda_mixed_precision_trains_keeps_masks_and_resumes(tmp_path, precision):
    straight = train(tiny(tmp_path / "a", device="cuda", precision=precision,
                          deterministic=True))
    assert straight.status == "finished"
    assert straight.final["precision"] in ("bfloat16", "float16")
    for module in straight.model.modules():
        mask = getattr(module, "weight_orthosparse_mask", None)
        if mask is not None:
            assert mask.is_cuda and torch.count_nonzero(module.weight[~mask]) == 0
    cfg = tiny(tmp_path / "b", device="cuda", precision=precision, deterministic=True)
    assert train(cfg, stop_after=3).status == "stopped"
    resumed = train(cfg, resume=True)
    assert_same_weights(resumed.model, straight.model)
    assert strip_time(resumed.history) == strip_time(straight.history)


# --------------------------------------------------------------------------- issue 16


def test_a_truncated_or_empty_final_json_names_the_file(tmp_path):
    cfg = tiny(tmp_path, epochs=1)
    train(cfg)
    final = cfg.run_dir() / "final.json"
    final.write_text('{"status": "fin')
    with pytest.raises(RunFileError, match=r"final.json' is corrupt"):
        load_run(cfg.run_dir())
    final.write_text("{}")
    with pytest.raises(RunFileError, match=r"final.json' is not a result orthosparse wrote"):
        load_run(cfg.run_dir())
    # without --resume: the error names the file and says how to rebuild it
    with pytest.raises(RunExistsError, match=r"final.json.*pass --resume to rebuild"):
        train(cfg)


@pytest.mark.parametrize("broken", ["final.json", "metrics.jsonl"])
def test_a_corrupt_result_with_a_complete_checkpoint_is_rebuilt_by_resume(tmp_path, broken):
    cfg = tiny(tmp_path)
    straight = train(cfg)
    (cfg.run_dir() / broken).write_bytes(b'{"epoch": 1, "train_lo\xff')
    result = train(cfg, resume=True)
    assert not result.skipped and result.status == "finished"
    assert result.final["test_acc"] == straight.final["test_acc"]
    assert strip_time(load_run(cfg.run_dir()).history) == strip_time(straight.history)
    assert "could not be read back" in (cfg.run_dir() / "train.log").read_text()


def test_a_corrupt_config_json_names_the_file(tmp_path):
    cfg = tiny(tmp_path, epochs=1)
    train(cfg)
    (cfg.run_dir() / "config.json").write_text("{not json")
    with pytest.raises(RunFileError, match=r"config.json' is corrupt"):
        train(cfg)
    with pytest.raises(RunFileError, match=r"config.json' is corrupt"):
        load_run(cfg.run_dir())


def test_a_checkpoint_of_another_version_is_refused(tmp_path):
    cfg = tiny(tmp_path)
    train(cfg, stop_after=3)
    path = cfg.run_dir() / "checkpoint.pt"
    state = load_checkpoint(path)
    save_checkpoint(path, {**state, "version": 99})
    with pytest.raises(CheckpointError, match=r"has version 99; this orthosparse reads version 1"):
        train(cfg, resume=True)


@pytest.mark.parametrize("where", ["model", "stored"])
def test_a_checkpoint_whose_masks_were_swapped_is_refused(tmp_path, where):
    cfg = tiny(tmp_path)
    train(cfg, stop_after=3)
    path = cfg.run_dir() / "checkpoint.pt"
    state = load_checkpoint(path)
    expected = state["mask_checksum"]
    if where == "model":  # every mask all-True: the run would train a denser network
        state["model"] = {k: torch.ones_like(v) if k.endswith("_mask") else v
                          for k, v in state["model"].items()}
    else:
        state["mask_checksum"] = "0" * 64
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=rf"holds masks with checksum (?!{expected[:16]})"
                                              rf"\w{{16}}, but this run's masks have checksum "
                                              rf"{expected[:16]} \(expected\)"):
        train(cfg, resume=True)
    assert not (cfg.run_dir() / "final.json").exists()


def test_stale_temp_files_are_removed_at_the_next_start(tmp_path):
    cfg = tiny(tmp_path)
    train(cfg, stop_after=3)
    run_dir = cfg.run_dir()
    stale = [".checkpoint.pt.k1ll3d_9.tmp", ".metrics.jsonl.tmp", ".config.json.abcd1234.tmp"]
    for name in stale:
        (run_dir / name).write_bytes(b"x" * 1000)
    (run_dir / ".someone-elses.tmp").write_text("kept")  # not a name orthosparse writes
    train(cfg, resume=True)
    left = {p.name for p in run_dir.iterdir()}
    assert not left & set(stale) and ".someone-elses.tmp" in left
    assert "removed 3 temporary file(s)" in (run_dir / "train.log").read_text()


def test_a_run_locked_by_another_process_is_refused_naming_the_holder(tmp_path):
    cfg = tiny(tmp_path)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True)
    fd = try_lock(run_dir)  # another holder: flock conflicts across open files
    if fd is None:
        pytest.skip("no fcntl.flock here (Windows): runs are not locked")
    try:
        with pytest.raises(RunLockedError, match=rf"being trained by another process \(pid "
                                                 rf"{os.getpid()} on host \S+ since"):
            train(cfg)
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        os.close(fd)
    assert train(cfg).status == "finished"  # released: the next start trains


@pytest.mark.parametrize("case", ["folder-at-checkpoint", "out-is-a-file", "link-at-log"])
def test_an_unusable_run_folder_is_refused_before_training(tmp_path, case):
    cfg = tiny(tmp_path / "out")
    run_dir = cfg.run_dir()
    if case == "out-is-a-file":
        (tmp_path / "out").write_text("a file")
        message = r"cannot create the run folder .*out. is a file, not a folder"
    else:
        run_dir.mkdir(parents=True)
        if case == "folder-at-checkpoint":
            (run_dir / "checkpoint.pt").mkdir()
            message = r"checkpoint.pt' is not a file but the run writes its checkpoint.pt there"
        else:
            (tmp_path / "elsewhere.log").write_text("precious")
            (run_dir / "train.log").symlink_to(tmp_path / "elsewhere.log")
            message = r"train.log' is a symbolic link; orthosparse never writes through links"
    with pytest.raises(RunDirError, match=message):
        train(cfg)
    if case != "out-is-a-file":
        assert not (run_dir / "metrics.jsonl").exists()
    if case == "link-at-log":
        assert (tmp_path / "elsewhere.log").read_text() == "precious"


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available"):
        train(tiny(tmp_path, device="cuda"))


# --------------------------------------------------------------------------- tensorboard

TB_EXPECTED = {"train/loss", "train/acc", "train/lr", "train/epoch_time_s", "val/loss", "val/acc",
               "test/loss", "test/acc", "jacobian/mean", "jacobian/std", "jacobian/min",
               "jacobian/max", "jacobian/condition_number"}


def test_tensorboard_tags_cover_every_logged_number_grouped_by_split():
    from orthosparse.lab.runs import JACOBIAN_KEYS, METRIC_KEYS

    tags = train_module.TENSORBOARD_TAGS
    assert set(tags) == set(METRIC_KEYS[1:]) | {f"jacobian_{k}" for k in JACOBIAN_KEYS}
    assert set(tags.values()) == TB_EXPECTED
    assert all(tag.split("/")[0] in ("train", "val", "test", "jacobian") for tag in tags.values())


def test_tensorboard_events_carry_the_grouped_tags_per_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny(tmp_path, tensorboard=True, jacobian="epoch", jacobian_examples=4))
    events = EventAccumulator(str(result.run_dir / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == TB_EXPECTED
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in result.history],
                                                   rel=1e-6)
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx(
        [r["val_acc"] for r in result.history], rel=1e-6)
    assert [e.value for e in events.Scalars("jacobian/mean")] == pytest.approx(
        [r["jacobian"]["mean"] for r in result.history], rel=1e-6)


def test_tensorboard_missing_is_silent_and_broken_is_a_warning(tmp_path, monkeypatch):
    import sys
    import types
    import warnings

    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not installed
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=r".*dead channels")
        result = train(tiny(tmp_path / "missing", tensorboard=True))
    assert result.final["status"] == "finished" and not (result.run_dir / "tb").exists()

    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("tensorboard ABI mismatch")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", Broken("torch.utils.tensorboard"))
    with pytest.warns(UserWarning, match=r"TensorBoard logging \(tensorboard=true\) needs "
                                         r"tensorboard, which failed to import \(RuntimeError: "
                                         r"tensorboard ABI mismatch\).*pip install "
                                         r"'orthosparse\[tensorboard\]'.*training goes on "
                                         r"without TensorBoard logs"):
        result = train(tiny(tmp_path / "broken", tensorboard=True))
    assert result.final["status"] == "finished" and not (result.run_dir / "tb").exists()
