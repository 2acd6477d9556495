"""Atomic checkpoint writes, weights_only loading, corrupt files, random-state round trips."""

from __future__ import annotations

import errno
import fractions
import os
import random

import numpy as np
import pytest
import torch

from orthosparse._atomic import AtomicWriteError, write_atomic
from orthosparse.lab.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from orthosparse.lab.runs import write_json, write_metrics


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3), "w_mask": torch.tensor([True])},
             "progress": {"epoch": 3, "lr": 0.1, "note": None}, "history": [{"a": 1.5}],
             "rng": rng_state()}
    assert save_checkpoint(path, state) == path
    # a plain weights_only load works: nothing but tensors and plain values is stored
    raw = torch.load(path, weights_only=True)
    assert torch.equal(raw["model"]["w"], state["model"]["w"])
    back = load_checkpoint(path)
    assert back["progress"] == {"epoch": 3, "lr": 0.1, "note": None}
    assert back["history"] == [{"a": 1.5}]
    assert back["model"]["w_mask"].dtype == torch.bool
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left


def test_crash_mid_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def torn_save(obj, fh, *args, **kwargs):  # writes half a file, then the process "dies"
        fh.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # temp file removed


def test_kill_before_rename_leaves_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1})

    def no_replace(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk vanished"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


@pytest.mark.parametrize("content", [b"", b"garbage bytes that are not a checkpoint", None])
def test_corrupt_checkpoint_error_names_the_path(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:  # a real checkpoint cut in half
        save_checkpoint(path, {"w": torch.randn(100, 100)})
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"checkpoint '.*bad.pt' is corrupt or unreadable"):
        load_checkpoint(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"

    torch.save({"obj": fractions.Fraction(1, 3)}, path)  # an arbitrary class: refused
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_not_a_dict_and_missing_file(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="checkpoint '.*missing.pt' does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002 (the global state is what is saved)
    random.seed(3)
    np.random.standard_normal()  # noqa: NPY002  (leaves a cached gaussian in numpy's state)
    random.gauss(0, 1)
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": rng_state()})
    expected = (torch.rand(5), np.random.standard_normal(3), np.random.rand(2),  # noqa: NPY002
                random.random(), random.gauss(0, 1))
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    set_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(5), np.random.standard_normal(3), np.random.rand(2),  # noqa: NPY002
           random.random(), random.gauss(0, 1))
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and np.array_equal(got[2], expected[2])
    assert got[3] == expected[3] and got[4] == expected[4]


def test_malformed_rng_entry_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="malformed random-state entry"):
        set_rng_state({"torch": torch.get_rng_state()})


# --------------------------------------------------------------------------- issue 16: writes


class _FullDisk:
    """A file object whose writes fail like a full disk (torch.save wraps that error)."""

    def __init__(self, fh):
        self.fh, self.written = fh, 0

    def write(self, data):
        self.written += len(data)
        if self.written > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.fh.write(data)

    def flush(self):
        self.fh.flush()


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_checkpoint_stays(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    big = {"w": torch.zeros(10_000)}
    with pytest.raises(AtomicWriteError) as info:
        write_atomic(path, lambda fh: torch.save(big, _FullDisk(fh)))
    message = str(info.value)
    assert "\n" not in message and info.value.errno == errno.ENOSPC
    assert "[Errno 28] No space left on device" in message  # not torch's "unexpected pos"
    assert repr(str(path)) in message and "is kept unchanged" in message
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("name", ["config.json", "final.json", "metrics.jsonl", "metrics.csv"])
def test_a_link_planted_at_a_temp_name_is_not_followed(tmp_path, name):
    run_dir, outside = tmp_path / "run", tmp_path / "outside.txt"
    run_dir.mkdir()
    outside.write_text("precious")
    (run_dir / f".{name}.tmp").symlink_to(outside)  # the fixed temp names written before
    (run_dir / name).symlink_to(outside)  # and the destination itself
    if name.startswith("metrics"):
        write_metrics(run_dir, [{"epoch": 1, "train_loss": 0.5}])
    else:
        write_json(run_dir / name, {"status": "finished"})
    assert outside.read_text() == "precious"
    assert not (run_dir / name).is_symlink() and (run_dir / name).stat().st_size > 0
    assert os.path.islink(run_dir / f".{name}.tmp")  # left alone (removed at the next start)


def test_a_directory_at_the_destination_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(AtomicWriteError, match=r"checkpoint.pt'.*Is a directory"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="file modes need POSIX")
def test_atomic_files_get_the_mode_open_would_give(tmp_path):
    from orthosparse._atomic import write_atomic
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "a.txt", lambda f: f.write(b"x"))
        assert path.stat().st_mode & 0o777 == 0o644       # not mkstemp's 0600
        os.umask(0o077)
        path = write_atomic(tmp_path / "b.txt", lambda f: f.write(b"x"))
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
