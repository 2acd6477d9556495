"""Command line: help, flag parsing and errors, presets, smoke runs of train/resume/demo."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import orthosparse
import orthosparse.lab
from orthosparse.lab.cli import COMMANDS
from orthosparse.lab.config import config_fields, resolve_config
from orthosparse.lab.presets import list_presets

TINY_FLAGS = [
    "--dataset", "synthetic", "--data-options", "input_shape=[1,4,4]", "train_size=64",
    "test_size=16", "num_classes=3", "--model", "mlp", "--depth", "3", "--width", "8",
    "--density", "0.5", "--mask", "uniform", "--batch-size", "16", "--epochs", "2",
    "--device", "cpu", "--progress", "epoch", "--no-tensorboard",
]


def test_cli_is_the_only_module_that_imports_argparse_or_the_cli():
    lab = Path(orthosparse.lab.__file__).parent
    offenders = {}
    for path in sorted(lab.glob("*.py")):
        if path.name == "cli.py":
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add("." * node.level + (node.module or ""))
                names.update(alias.name for alias in node.names if node.module is None)
        bad = sorted(n for n in names if n in ("argparse", "cli", ".cli", "orthosparse.lab.cli"))
        if bad:
            offenders[path.name] = bad
    assert offenders == {}
    assert sorted(COMMANDS) == ["demo", "inspect", "presets", "report", "sweep", "train"]


def test_no_arguments_prints_usage_and_exits_2(cli, capsys):
    code, out, err = cli()
    assert code == 2 and out == ""  # a bare command is a usage error, not a success
    assert "a command is required. Try `orthosparse demo`" in err
    for command in ("train", "demo", "presets"):
        assert command in err
    assert "Exit codes: 0 done; 1 a run diverged" in err


def test_version(cli, capsys):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"orthosparse {orthosparse.__version__}"


@pytest.mark.parametrize("argv", [["presets"], ["presets", "mlp"],
                                  ["train", "--preset", "mlp", "--dry-run"]])
def test_a_closed_output_pipe_is_quiet(argv):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (`| head` that ended)
    try:
        proc = subprocess.run([sys.executable, "-m", "orthosparse", *argv], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr  # 128 + SIGPIPE, as if killed by it
    assert proc.stderr == ""


@pytest.mark.parametrize("seed", ["-1", "9223372036854775808", "99999999999999999999999"])
def test_seed_out_of_range_is_refused_even_in_a_dry_run(cli, capsys, seed):
    code, out, err = cli("train", "--seed", seed, "--dry-run")
    assert code == 2 and out == ""
    assert f"seed={seed} must be an integer in [0, 2**63 - 1]" in err
    assert cli("train", "--seed", str(2**63 - 1), "--dry-run")[0] == 0


def test_corrupt_run_files_and_configs_name_the_file(cli, capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"lr": 0.1,')
    code, _, err = cli("train", "--resume", str(run_dir))
    assert code == 2 and f"{str(run_dir / 'config.json')!r} is corrupt" in err
    toml = tmp_path / "latin1.toml"
    toml.write_bytes("lr = 0.1  # caf\xe9\n".encode("latin-1"))
    code, _, err = cli("train", "--config", str(toml), "--dry-run")
    assert code == 2 and f"config file {str(toml)!r} is not UTF-8" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["file", "sys", "checkpoint-folder"])
def test_an_unusable_out_is_one_line_before_training(cli, capsys, tmp_path, case):
    if case == "file":
        out = tmp_path / "a-file"
        out.write_text("x")
        expected = "is a file, not a folder"
    elif case == "sys":
        out = Path("/sys/orthosparse-test")
        if not Path("/sys").is_dir():
            pytest.skip("no /sys here (not Linux)")
        expected = "cannot create the run folder '/sys/orthosparse-test"
    else:
        out = tmp_path / "out"
        cfg_dir = Path(cli("train", *TINY_FLAGS, "--out", str(out), "--dry-run")[1]
                       .splitlines()[0].split(": ", 1)[1])
        (cfg_dir / "checkpoint.pt").mkdir(parents=True)
        expected = "checkpoint.pt' is not a file but the run writes its checkpoint.pt there"
    code, stdout, err = cli("train", *TINY_FLAGS, "--out", str(out))
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert "epoch 1/2" not in stdout  # nothing was trained


def test_device_cuda_without_cuda_is_one_line(cli, capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = cli("train", *TINY_FLAGS[:-5], "--device", "cuda", "--progress", "none",
                       "--out", str(tmp_path))
    assert code == 2 and "device='cuda' but CUDA is not available" in err


def test_train_help_documents_every_config_field(cli, capsys):
    code, out, _ = cli("train", "--help")
    assert code == 0
    for f in config_fields():
        assert f"--{f.name.replace('_', '-')}" in out, f.name
    assert "fraction of the training set held out for validation" in out
    assert "--preset" in out and "--resume" in out and "--config" in out
    for sub in ("demo", "presets"):
        assert cli(sub, "--help")[0] == 0


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "orthosparse", "presets"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "cnn-1000"
    assert all(name in proc.stdout for name in list_presets())


def test_presets_listing_and_toml_output(cli, capsys, tmp_path):
    code, out, _ = cli("presets")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == list_presets()
    code, out, _ = cli("presets", "mlp-1000")
    assert code == 0 and "depth = 1000" in out and "gain = 1.0247" in out
    path = tmp_path / "p.toml"
    path.write_text(out)
    assert resolve_config(config_file=path) == resolve_config("mlp-1000")


@pytest.mark.parametrize("argv, message", [
    (["train", "--lr", "abc"], "argument --lr: lr='abc' is not a number"),
    (["train", "--epochs", "1.5"], "argument --epochs: epochs='1.5' is not an integer"),
    (["train", "--nesterov", "perhaps"], "argument --nesterov: nesterov='perhaps' is not a "
                                         "boolean"),
    (["train", "--optimizer", "lion"], "argument --optimizer: invalid choice: 'lion' "
                                       r"\(choose from 'sgd', 'adam', 'adamw'\)"),
    (["train", "--density", "2"], r"density=2.0 must be in \(0, 1\]"),
    (["train", "--preset", "mlp9"], "argument --preset: invalid choice: 'mlp9'"),
    (["train", "--dataset", "imagenet"], "dataset='imagenet' is not a known dataset"),
    (["train", "--model", "resnet18"], "model='resnet18' is not a known model"),
    (["train", "--augment", "rotate"], "augment='rotate' is not a known augment.*crop-flip"),
    (["train", "--init", "xavier"], "init='xavier' is not a known init"),
    (["train", "--mask", "random"], "mask='random' is not a known mask"),
    (["train", "--lrr", "0.1"], "unrecognized arguments: --lrr"),
    (["train", "--config", "missing.toml"], "config file 'missing.toml' does not exist"),
    (["train", "--resume", "nowhere"], "argument --resume: 'nowhere' is not a run directory"),
    (["train", "--stop-after", "0", "--epochs", "1"], "argument --stop-after: 0 must be >= 1"),
])
def test_bad_flags_exit_2_naming_the_flag(cli, capsys, argv, message):
    code, _, err = cli(*argv)
    assert code == 2
    assert re.search(message, err), err


def test_dry_run_prints_the_resolved_config(cli, capsys, tmp_path):
    code, out, _ = cli("train", "--preset", "vgg16", "--density", "0.05", "--out",
                       str(tmp_path), "--dry-run")
    assert code == 0
    cfg = resolve_config("vgg16", overrides={"density": 0.05, "out": str(tmp_path)})
    assert out.splitlines()[0] == f"# run directory: {cfg.run_dir()}"
    assert "density = 0.05" in out
    assert not any(tmp_path.iterdir())


def test_train_smoke_rerun_and_resume(cli, capsys, tmp_path):
    code, out, _ = cli("train", *TINY_FLAGS, "--out", str(tmp_path / "a"))
    assert code == 0 and "epoch 2/2" in out
    (run_dir,) = (tmp_path / "a").iterdir()
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "finished"
    code, out, _ = cli("train", *TINY_FLAGS, "--out", str(tmp_path / "a"))
    assert code == 0 and "already finished; not trained again" in out

    # stop after the first epoch (4 steps), then resume from the run directory
    code, out, _ = cli("train", *TINY_FLAGS, "--out", str(tmp_path / "b"),
                       "--stop-after", "4")
    assert code == 0 and "stopped after 4 steps" in out
    (split_dir,) = (tmp_path / "b").iterdir()
    code, _, err = cli("train", *TINY_FLAGS, "--out", str(tmp_path / "b"))
    assert code == 2 and "holds an unfinished run; pass --resume" in err
    code, out, _ = cli("train", "--resume", str(split_dir))
    assert code == 0 and "resuming" in out
    resumed = json.loads((split_dir / "final.json").read_text())
    assert resumed["test_acc"] == final["test_acc"] and resumed["test_loss"] == final["test_loss"]


def test_toml_config_file_with_overrides(cli, capsys, tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[data]\ndataset = "synthetic"\ndata_options = ["input_shape=[1,4,4]", '
                    '"train_size=32", "test_size=8"]\n[model]\ndepth = 2\nwidth = 8\n'
                    '[run]\nname = "exp"\ndevice = "cpu"\nprogress = "none"\n')
    code, _, err = cli("train", "--config", str(path), "--epochs", "1", "--out",
                       str(tmp_path / "runs"))
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("exp-")
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["depth"] == 2 and saved["dataset"] == "synthetic"


def test_demo_smoke(cli, capsys, tmp_path):
    code, out, _ = cli("demo", "--depth", "4", "--width", "16", "--epochs", "1",
                       "--out", str(tmp_path), "--inits", "eoi", "kaiming")
    assert code == 0
    assert "init" in out and "test acc" in out and "eoi" in out and "kaiming" in out
    data = json.loads((tmp_path / "demo.json").read_text())
    assert [r["init"] for r in data["rows"]] == ["eoi", "kaiming"]
    assert (tmp_path / "demo.png").stat().st_size > 1000
