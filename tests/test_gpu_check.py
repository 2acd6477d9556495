"""benchmarks/gpu_check.py: the dry run (every section on the CPU), the deadline, the report."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch):
    """The script as a module (``benchmarks`` is no package: its folder goes on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("gpu_check")
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # a dry run sets one thread


def read(out: Path) -> tuple[dict, str]:
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def summary_rows(table: str) -> dict[str, list[str]]:
    """``section -> cells`` of the summary table (the first table of the report)."""
    rows = {}
    for line in table.split("\n## ")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("section",):
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_dry_run_reports_every_section(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data, table = read(tmp_path)
    assert table in proc.stdout  # the table is printed too
    assert data["meta"]["dry_run"] is True
    sections = data["sections"]
    rows = summary_rows(table)
    for name in ("pytest", "eoi", "memory", "sparsify", "nm24", "ddp", "train"):
        entry = sections[name]
        # on the CPU nothing errs, and every correctness check holds (speed targets are n/a)
        assert entry["status"] == "ok", (name, entry)
        assert entry["wall_s"] >= 0 and entry["rows"], name  # pytest: collected beside
        assert rows[name][1] == "ok", rows[name]
        assert f"## {name}" in table
        for row in entry["rows"]:
            assert row["verdict"] in ("PASS", "n/a", ""), (name, row)
            if row["perf"]:
                assert row["verdict"] in ("n/a", "")
    assert "ERROR" not in table and "FAIL" not in table
    eoi = {row["case"]: row for row in sections["eoi"]["rows"]}
    assert eoi["masks 256x256 device == CPU"]["values"]["same"] is True
    assert eoi["split 256x256 d=0.1 float32"]["values"]["scan_s"] > 0
    ddp = sections["ddp"]["rows"][-1]["values"]["reports"]
    assert [r["rank"] for r in ddp] == [0, 1] and {r["backend"] for r in ddp} == {"gloo"}
    assert sections["pytest"]["rows"][0]["values"]["collected"] > 0
    assert (tmp_path / "gpu_check_pytest.txt").exists()


def test_past_the_deadline_every_section_is_skipped_with_the_reason(gpu_check, tmp_path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--budget", "0.001"]) == 0
    data, table = read(tmp_path)
    assert set(data["sections"]) == set(gpu_check.SECTIONS)
    rows = summary_rows(table)
    for name, entry in data["sections"].items():
        assert entry["status"] == "skipped"
        assert entry["reason"].startswith("budget: 0 s left of --budget 0.001 s")
        assert rows[name][1] == "skipped" and "budget" in rows[name][4]


def test_sections_picks_a_subset_and_an_error_loses_no_other_section(gpu_check, tmp_path,
                                                                    monkeypatch):
    def broken(check, entry):
        entry["rows"].append(gpu_check._row("first row", "kept"))
        raise RuntimeError("planted failure")

    monkeypatch.setitem(gpu_check.RUNNERS, "eoi", broken)
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--sections", "eoi,memory",
                           "nm24"])
    assert code == 1  # a section errored
    data, table = read(tmp_path)
    sections = data["sections"]
    assert sections["eoi"]["status"] == "error"
    assert sections["eoi"]["reason"] == "RuntimeError: planted failure"
    assert "planted failure" in sections["eoi"]["traceback"]
    assert sections["eoi"]["rows"][0]["result"] == "kept"  # rows so far survive
    assert sections["memory"]["status"] == "ok" and sections["nm24"]["status"] == "ok"
    for name in ("pytest", "sparsify", "ddp", "train"):
        assert sections[name]["status"] == "skipped"
        assert sections[name]["reason"] == "not selected (--sections)"
    assert summary_rows(table)["eoi"][1] == "error"


def test_a_section_past_its_deadline_is_interrupted(gpu_check, tmp_path, monkeypatch):
    def slow(check, entry):
        entry["rows"].append(gpu_check._row("before", "kept"))
        time.sleep(30)

    monkeypatch.setitem(gpu_check.RUNNERS, "memory", slow)
    monkeypatch.setattr(gpu_check, "MIN_START", 0.1)
    monkeypatch.setattr(gpu_check, "_T0", time.monotonic())
    start = time.monotonic()
    gpu_check.main(["--dry-run", "--out", str(tmp_path), "--sections", "memory", "--budget",
                    "1.5"])
    assert time.monotonic() - start < 15
    entry = read(tmp_path)[0]["sections"]["memory"]
    assert entry["status"] == "error" and entry["reason"].startswith("interrupted after")
    assert entry["rows"][0]["result"] == "kept"


def test_time_limits_nest(gpu_check):
    with pytest.raises(gpu_check.TimeLimit):
        with gpu_check.time_limit(5.0):
            with gpu_check.time_limit(0.05):
                time.sleep(2)
    with gpu_check.time_limit(0.05):
        pass
    time.sleep(0.1)  # disarmed on exit: nothing fires later


@pytest.mark.parametrize("line, counts", [
    ("14 passed in 30.21s", {"passed": 14}),
    ("12 passed, 1 failed, 2 skipped, 1 error in 3.1s",
     {"passed": 12, "failed": 1, "skipped": 2, "error": 1}),
    ("===== 1 failed, 3 errors, 1223 deselected in 9.0s =====",
     {"failed": 1, "error": 3, "deselected": 1223}),
    ("no tests ran in 0.01s", {}),
])
def test_pytest_summary_is_parsed(gpu_check, line, counts):
    assert gpu_check.parse_pytest_summary(line) == counts


@pytest.mark.parametrize("argv, message", [
    (["--sections", "eoi", "gpu"], r"--sections: unknown 'gpu'; choose from pytest, eoi"),
    (["--budget", "0"], r"--budget=0.0 must be > 0 seconds"),
    (["--repeats", "3"], r"--repeats=3 must be >= 5"),
])
def test_bad_arguments_are_named(gpu_check, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--dry-run", "--out", str(tmp_path), *argv])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_without_cuda_the_real_run_points_to_the_dry_run(gpu_check, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", str(tmp_path)])
    assert "CUDA is not available here; --dry-run runs every section on the CPU" in \
        capsys.readouterr().err
