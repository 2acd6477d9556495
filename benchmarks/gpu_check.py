"""One command for a lent GPU: the GPU tests, the GPU figures and their targets, in one table.

Sections (each in its own try/except, each timed, all under one deadline, ``--budget``):

  pytest    ``pytest -m gpu`` in a subprocess (passed/failed/skipped; its own timeout)
  eoi       EOI end to end (host scan, transfers, device passes; synchronized) at 4096^2 and
            16384^2, d=0.1, float32 and bfloat16, next to ``torch.nn.init.orthogonal_`` on the
            same GPU (medians of >= 5 after a warm-up); the time split into host scan, host
            collect and device passes (the compiled-layered route that ``auto`` takes on CUDA);
            the device masks against the CPU's for the same generator.
            Targets: 16384^2 d=0.1 <= 50 ms end to end and <= 0.1x orthogonal_.
  memory    peak GPU memory of the generator (``torch.cuda.max_memory_allocated``, reset
            before) against the output's size; target <= 3x for float32 outputs.
  sparsify  ``sparsify(mlp 1000 x 128, 0.125, erk, eoi)`` on the GPU, next to dense
            ``orthogonal_`` on every layer.
  nm24      2:4 EOI Linear layer through ``torch.sparse.to_sparse_semi_structured`` against the
            dense layer: forward and training step, side by side (N:M EOI: docs/nm.md).
  ddp       DDP over NCCL, 2 ranks (torch.multiprocessing spawn): masks identical on every rank,
            pruned weights still 0, weights identical; skipped with fewer than 2 GPUs.
  train     masked vs dense training step (MLP 7x100, MLP 1000x128 tanh, ResNet-32 on random
            CIFAR-shaped batches), eager and torch.compile, float32 and bf16 autocast; target
            masked/dense <= 1.05 (the method of benchmarks/train_overhead.py).

Writes ``gpu_check.md`` (the table, also printed), ``gpu_check.json`` (every number) and
``gpu_check_pytest.txt`` (the pytest log) into ``--out``, after every section, so a run cut
short still leaves what it measured. A target missed marks its row FAIL and its section
``fail``; an exception marks the section ``error`` (the others still run); a section that
would start past the deadline is ``skipped`` with the reason. Exit status 1 when a section
errored, else 0.

``--dry-run`` runs every section on the CPU at tiny sizes (well under a minute), so CI runs the
same code (tests/test_gpu_check.py): ``pytest --collect-only -m gpu`` instead of the GPU tests,
gloo instead of NCCL, the dense layer standing in for the semi-structured one, torch.compile with
the ``eager`` backend (dynamo only), one CPU thread. Its numbers say nothing about a GPU:
speed and memory verdicts read ``n/a``; the correctness checks are real.

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_check          # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check          # anywhere
    options: --budget SECONDS (480), --sections NAME ..., --repeats N (5), --device cuda:0
"""

from __future__ import annotations

import time

_T0 = time.monotonic()  # the budget counts from here, imports included

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
try:  # a fresh GPU machine has the working tree, not an installed package
    import orthosparse  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from _common import median_time, peak_extra_memory, sync  # noqa: E402

SECTIONS = ("pytest", "eoi", "memory", "sparsify", "nm24", "ddp", "train")
"""In running order: the correctness check first, the headline targets next, the long
torch.compile rows last (they get what is left)."""

CAPS = {"pytest": 150.0, "eoi": 120.0, "memory": 40.0, "sparsify": 60.0, "nm24": 45.0,
        "ddp": 90.0, "train": float("inf")}
"""Most seconds each section may take on a GPU (then it is interrupted; its rows so far stay)."""

MIN_START = 5.0  # a section or row starts only with this many seconds left
DENSITY = 0.1
EOI_TARGET_MS = 50.0
EOI_TARGET_RATIO = 0.1
MEMORY_TARGET = 3.0
STEP_TARGET = 1.05
DEAD_CHANNELS = r".*dead channels at initialization"
"""Sparse layers at density 0.1 leave some of the 784 inputs unread; the init schemes warn
(orthosparse.schemes); the check measures time, so it silences that warning."""


class Skip(Exception):
    """A section or row that cannot run here; the message is the reason."""


class TimeLimit(BaseException):
    """Raised by SIGALRM at a deadline (a BaseException, so no ``except Exception`` eats it)."""


# ---------------------------------------------------------------------------------- deadlines
_DEADLINES: list[float] = []
_CAN_ALARM = hasattr(signal, "setitimer")


def _on_alarm(signum, frame):  # noqa: ARG001
    raise TimeLimit("deadline reached")


def _arm() -> None:
    if _DEADLINES:
        signal.setitimer(signal.ITIMER_REAL, max(1e-3, min(_DEADLINES) - time.monotonic()))
    else:
        signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeLimit` in this (main) thread after ``seconds``; limits nest (the
    earliest deadline fires first, and the innermost ``except TimeLimit`` handles it)."""
    if not _CAN_ALARM or threading.current_thread() is not threading.main_thread() \
            or seconds == float("inf"):
        yield
        return
    if not _DEADLINES:
        signal.signal(signal.SIGALRM, _on_alarm)
    _DEADLINES.append(time.monotonic() + seconds)
    _arm()
    try:
        yield
    finally:
        _DEADLINES.pop()
        _arm()


# ---------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Plan:
    """What to run: the GPU sizes, or tiny CPU sizes for ``--dry-run``."""

    device: torch.device
    dry: bool
    repeats: int
    eoi_sizes: tuple[int, ...]  # the last one carries the targets
    deep_depth: int  # the 1000-layer MLP (width 128, tanh)
    sparsify_repeats: int
    resnet: str
    image: tuple[int, int, int]
    batch: int
    steps: int  # training steps per repeat (each model)
    train_repeats: int
    compile_backend: str
    compile_row_cap: float
    nm_features: int
    nm_tokens: int
    ddp_steps: int
    pytest_timeout: float

    @staticmethod
    def make(device: torch.device, dry: bool, repeats: int) -> Plan:
        if dry:
            return Plan(device, True, repeats, (64, 256), 12, 3, "resnet20", (3, 8, 8), 8, 2, 3,
                        "eager", 60.0, 64, 32, 2, 60.0)
        return Plan(device, False, repeats, (4096, 16384), 1000, 3, "resnet32", (3, 32, 32), 128,
                    20, 5, "inductor", 150.0, 4096, 8192, 5, CAPS["pytest"])

    @property
    def target_n(self) -> int:
        return self.eoi_sizes[-1]


# ---------------------------------------------------------------------------------- the run
def _row(case: str, result: str, target: str = "", verdict: str = "", *, perf: bool = False,
         **values) -> dict:
    """One line of a section's table; ``perf``: the verdict is a speed or memory target (a dry
    run reports it as ``n/a``: tiny CPU sizes say nothing about a GPU)."""
    return {"case": case, "result": result, "target": target, "verdict": verdict,
            "perf": perf, "values": values}


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


class Check:
    """Runs the sections under one deadline and writes the table and the numbers."""

    def __init__(self, plan: Plan, out: Path, budget: float, chosen: tuple[str, ...]):
        self.plan, self.out, self.budget = plan, out, budget
        self.deadline = _T0 + budget
        self.chosen = chosen
        self.sections: dict[str, dict] = {}
        self.pytest_proc: subprocess.Popen | None = None  # a dry run's, started first
        self.pytest_started = 0.0
        self.meta = _meta(plan, budget)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, fn: Callable[[Check, dict], None]) -> None:
        entry = {"status": "running", "wall_s": 0.0, "reason": "", "rows": []}
        self.sections[name] = entry
        start = time.monotonic()
        if name not in self.chosen:
            entry.update(status="skipped", reason="not selected (--sections)")
        elif self.left() < MIN_START:
            entry.update(status="skipped", reason=f"budget: {max(0.0, self.left()):.0f} s left "
                                                  f"of --budget {self.budget:g} s")
        else:
            cap = CAPS[name] if not self.plan.dry else float("inf")
            limit = min(cap, self.left())
            print(f"[{time.monotonic() - _T0:6.1f} s] {name} ...", flush=True)
            try:
                with time_limit(limit):
                    fn(self, entry)
            except Skip as why:
                entry.update(status="skipped", reason=str(why))
            except TimeLimit:
                entry.update(status="error", reason=f"interrupted after {limit:.0f} s (its cap "
                                                    f"or the budget); rows so far are kept")
            except Exception as err:
                entry.update(status="error", reason=f"{type(err).__name__}: {err}",
                             traceback=traceback.format_exc())
            if self.plan.dry:
                for row in entry["rows"]:
                    if row["perf"] and row["verdict"] in ("PASS", "FAIL"):
                        row["values"]["dry_run_verdict"] = row["verdict"]
                        row["verdict"] = "n/a"
            if entry["status"] == "running":
                verdicts = [r["verdict"] for r in entry["rows"]]
                entry["status"] = ("error" if "ERROR" in verdicts else
                                   "fail" if "FAIL" in verdicts else "ok")
        entry["wall_s"] = round(time.monotonic() - start, 2)
        print(f"[{time.monotonic() - _T0:6.1f} s] {name}: {entry['status']} "
              f"({entry['wall_s']:.1f} s) {entry['reason']}", flush=True)
        self.write()

    def write(self) -> None:
        self.meta["total_s"] = round(time.monotonic() - _T0, 2)
        data = {"meta": self.meta, "sections": self.sections}
        (self.out / "gpu_check.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(render(data))


def _meta(plan: Plan, budget: float) -> dict:
    from orthosparse.eoi import default_backend
    from orthosparse.eoi.backends import load_compiled

    meta = {"dry_run": plan.dry, "device": str(plan.device), "torch": torch.__version__,
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
            "budget_s": budget, "repeats": plan.repeats}
    if plan.device.type == "cuda":
        props = torch.cuda.get_device_properties(plan.device)
        meta.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpus_visible=torch.cuda.device_count(), cuda=torch.version.cuda)
    try:
        meta["eoi_backend"] = default_backend(plan.device)
    except Exception as err:  # a broken environment variable: every EOI row will say it too
        meta["eoi_backend"] = f"{type(err).__name__}: {err}"
    module, why = load_compiled()
    meta["numba"] = module.numba.__version__ if module is not None else f"no ({why})"
    return meta


def render(data: dict) -> str:
    """The Markdown report: the summary (one row per section), then each section's rows."""
    meta, sections = data["meta"], data["sections"]
    lines = ["# orthosparse GPU check", ""]
    if meta["dry_run"]:
        lines += ["**Dry run**: every section on the CPU at tiny sizes, to exercise the code; "
                  "its numbers say nothing about a GPU, so speed and memory targets read n/a "
                  "(the correctness checks are real).", ""]
    where = meta.get("gpu", "CPU") + (f" (sm {meta['capability']}, CUDA {meta['cuda']})"
                                      if "gpu" in meta else "")
    lines += [f"{where}; torch {meta['torch']}, Python {meta['python']}, EOI backend "
              f"{meta['eoi_backend']}, numba {meta['numba']}; budget {meta['budget_s']:g} s, "
              f"took {meta.get('total_s', 0):.0f} s.", "",
              "| section | status | wall s | checks | note |", "|---|---|---|---|---|"]
    for name in SECTIONS:
        entry = sections.get(name, {"status": "not run", "wall_s": 0.0, "reason": "",
                                    "rows": []})
        verdicts = [r["verdict"] for r in entry["rows"] if r["verdict"]]
        checks = ", ".join(f"{verdicts.count(v)} {v}" for v in ("PASS", "FAIL", "ERROR", "n/a")
                           if v in verdicts) or "-"
        note = entry["reason"] or entry.get("note", "")
        lines.append(f"| {name} | {entry['status']} | {entry['wall_s']:.1f} | {checks} | "
                     f"{_cell(note)} |")
    for name in SECTIONS:
        entry = sections.get(name)
        if not entry or not entry["rows"]:
            continue
        lines += ["", f"## {name}", "", "| case | result | target | verdict |",
                  "|---|---|---|---|"]
        for r in entry["rows"]:
            lines.append(f"| {_cell(r['case'])} | {_cell(r['result'])} | {_cell(r['target'])} | "
                         f"{r['verdict']} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------- pytest
_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def parse_pytest_summary(line: str) -> dict[str, int]:
    """Counts in pytest's last line, e.g. ``"12 passed, 1 failed, 2 skipped in 3.1s"`` ->
    ``{"passed": 12, "failed": 1, "skipped": 2}`` (``errors`` counted as ``error``)."""
    counts: dict[str, int] = {}
    for number, kind in _COUNTS.findall(line):
        key = "error" if kind.startswith("error") else kind
        counts[key] = counts.get(key, 0) + int(number)
    return counts


def start_pytest(dry: bool) -> subprocess.Popen:
    """``pytest -m gpu`` (a dry run: ``--collect-only``) in a subprocess, output in a pipe."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu", "tests"]
    cmd += ["--collect-only", "-q"] if dry else ["-q", "-rfEs"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def section_pytest(ck: Check, entry: dict) -> None:
    # a dry run starts the collection at the beginning and reads it here, at the end
    proc = ck.pytest_proc or start_pytest(ck.plan.dry)
    timeout = max(1.0, min(ck.plan.pytest_timeout, ck.left()) - 3.0)
    entry["note"] = ("collect-only: the GPU tests skip without CUDA" if ck.plan.dry else "")
    log = ck.out / "gpu_check_pytest.txt"
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
        log.write_text(text)
        entry["rows"].append(_row("pytest -m gpu", f"timed out after {timeout:.0f} s (log: "
                                  f"{log.name})", "all pass", "ERROR"))
        return
    finally:
        if proc.poll() is None:  # interrupted by the deadline
            proc.kill()
            proc.wait()
    log.write_text(text)
    if ck.pytest_proc is not None:
        entry["note"] += (f"; ran beside the other sections, "
                          f"{time.monotonic() - ck.pytest_started:.0f} s")
    tail = [line for line in text.strip().splitlines() if line.strip()][-1:] or [""]
    if ck.plan.dry:
        found = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
        n = int(found.group(1)) if found else 0
        ok = proc.returncode == 0 and n > 0
        entry["rows"].append(_row("pytest --collect-only -m gpu", f"{n} GPU tests collected",
                                  "> 0 collected", _verdict(ok), collected=n,
                                  returncode=proc.returncode))
        return
    counts = parse_pytest_summary(tail[0])
    failed = counts.get("failed", 0) + counts.get("error", 0)
    ok = proc.returncode == 0 and failed == 0 and counts.get("passed", 0) > 0
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "error",
                                                             "skipped"))
    entry["rows"].append(_row("pytest -m gpu", summary, "all pass, none skipped on a GPU",
                              _verdict(ok and counts.get("skipped", 0) == 0),
                              returncode=proc.returncode, **counts))
    entry["note"] = summary


# ---------------------------------------------------------------------------------- eoi
def _orthogonal_time(w: torch.Tensor, repeats: int, device: torch.device
                     ) -> tuple[float, str]:
    """Median time of ``orthogonal_(w)``; for a dtype QR does not take (bfloat16), the time of
    ``orthogonal_`` on a float32 buffer plus the cast, with a note saying so."""
    try:
        return median_time(lambda: nn.init.orthogonal_(w), repeats, warmup=True,
                           device=device), ""
    except (RuntimeError, NotImplementedError) as err:
        buf = torch.empty(w.shape, device=device)
        seconds = median_time(lambda: w.copy_(nn.init.orthogonal_(buf)), repeats, warmup=True,
                              device=device)
        return seconds, f"orthogonal_ in float32 then cast ({str(err).splitlines()[0][:80]})"


def layered_split(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> dict:
    """Median seconds of the compiled-layered route's stages (what ``auto`` runs on CUDA):
    ``scan`` (numba on the host, draws included), ``collect`` (host), ``device`` (layer order,
    host-to-device copies and the torch passes, synchronized), ``cast`` (the copy into the
    output dtype). Mirrors :func:`orthosparse.eoi.compiled.build_layered`."""
    from orthosparse.eoi import arrays
    from orthosparse.eoi.backends import load_compiled
    from orthosparse.eoi.generator import draws_for
    from orthosparse.eoi.problem import make_problem

    compiled, why = load_compiled()
    if compiled is None:
        raise Skip(why)
    problem = make_problem(n, n, DENSITY, dtype=dtype, device=device)

    def once(seed: int) -> tuple[float, ...]:
        t0 = time.perf_counter()
        draws = draws_for(problem, torch.Generator().manual_seed(seed))
        _, levels = compiled._run(problem, draws, np.zeros((problem.n_mat, problem.c, 0)))
        t1 = time.perf_counter()
        gi, gj, theta, level = arrays.collect(draws, problem.c, [(lv >= 0, lv) for lv in levels])
        t2 = time.perf_counter()
        weight, _ = arrays.apply_layers(problem, gi, gj, theta, level)
        sync(device)
        t3 = time.perf_counter()
        torch.empty((n, n), dtype=dtype, device=device).copy_(weight[0])
        sync(device)
        return t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3

    once(0)  # warm-up
    runs = [once(seed) for seed in range(repeats)]
    return {k: statistics.median(r[i] for r in runs)
            for i, k in enumerate(("scan", "collect", "device", "cast"))}


def section_eoi(ck: Check, entry: dict) -> None:
    from orthosparse import eoi_
    from orthosparse.eoi import default_backend

    plan, dev = ck.plan, ck.plan.device
    backend = default_backend(dev)
    entry["note"] = f"backend auto = {backend}"
    for n in plan.eoi_sizes:
        target = n == plan.target_n
        for dtype in (torch.float32, torch.bfloat16):
            tag = f"{n}x{n} d={DENSITY} {str(dtype).removeprefix('torch.')}"
            w = torch.empty(n, n, device=dev, dtype=dtype)
            g = torch.Generator().manual_seed(0)
            t_eoi = median_time(lambda w=w, g=g: eoi_(w, DENSITY, generator=g), plan.repeats,
                                warmup=True, device=dev)
            t_orth, note = _orthogonal_time(w, plan.repeats, dev)
            ratio = t_eoi / t_orth
            ok = t_eoi * 1e3 <= EOI_TARGET_MS and ratio <= EOI_TARGET_RATIO
            entry["rows"].append(_row(
                f"EOI {tag}", f"{t_eoi * 1e3:.1f} ms; orthogonal_ {t_orth * 1e3:.1f} ms; ratio "
                f"{ratio:.3f}" + (f" ({note})" if note else ""),
                f"<= {EOI_TARGET_MS:g} ms and <= {EOI_TARGET_RATIO:g}x" if target else "info",
                _verdict(ok) if target else "", perf=True, eoi_s=t_eoi, orthogonal_s=t_orth,
                ratio=ratio, n=n, dtype=str(dtype)))
            try:
                s = layered_split(n, dtype, dev, plan.repeats)
            except Skip as why:
                entry["rows"].append(_row(f"split {tag}", f"n/a: {why}"))
            else:
                host, device_s = s["scan"] + s["collect"], s["device"]
                entry["rows"].append(_row(
                    f"split {tag}", f"host scan {s['scan'] * 1e3:.1f} ms + collect "
                    f"{s['collect'] * 1e3:.1f} ms; device (order, copies, passes) "
                    f"{device_s * 1e3:.1f} ms; cast {s['cast'] * 1e3:.1f} ms: "
                    + ("host dominates" if host > device_s else "device dominates"),
                    "info (compiled-layered route)", "", host_share=host / (host + device_s),
                    **{f"{k}_s": v for k, v in s.items()}))
            del w
    # The device masks against the CPU's, same generator; the CPU run at the largest size costs
    # seconds, so it runs only with time to spare (else the row says where it stopped).
    for n in plan.eoi_sizes:
        if n == plan.target_n and ck.left() < 90 and not plan.dry:
            entry["rows"].append(_row(f"masks {n}x{n} device == CPU", "not compared: under 90 s "
                                      f"left; compared at {plan.eoi_sizes[0]} only"))
            continue
        w_dev = torch.empty(n, n, device=dev)
        m_dev = eoi_(w_dev, DENSITY, generator=torch.Generator().manual_seed(0))
        w_b16 = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
        m_b16 = eoi_(w_b16, DENSITY, generator=torch.Generator().manual_seed(0))
        w_cpu = torch.empty(n, n)
        m_cpu = eoi_(w_cpu, DENSITY, generator=torch.Generator().manual_seed(0),
                     backend="auto")
        same = torch.equal(m_dev.cpu(), m_cpu) and torch.equal(m_b16.cpu(), m_cpu)
        diff = (w_dev.cpu() - w_cpu).abs().max().item()
        entry["rows"].append(_row(
            f"masks {n}x{n} device == CPU", f"identical: {same}; float32 values max |dW| "
            f"{diff:.1e} (CPU backend {default_backend('cpu')})", "identical (fp32 and bf16)",
            _verdict(same), same=same, max_abs_diff=diff))
        del w_dev, w_b16


# ---------------------------------------------------------------------------------- memory
def section_memory(ck: Check, entry: dict) -> None:
    from orthosparse import eoi_

    dev = ck.plan.device
    for n in ck.plan.eoi_sizes:
        for dtype in (torch.float32, torch.bfloat16):
            w = torch.empty(n, n, device=dev, dtype=dtype)
            g = torch.Generator().manual_seed(0)
            eoi_(torch.empty(64, 64, device=dev, dtype=dtype), 0.5, generator=g)  # warm
            extra = peak_extra_memory(lambda w=w, g=g: eoi_(w, DENSITY, generator=g), dev)
            size = w.numel() * w.element_size()
            fp32 = dtype == torch.float32
            case = f"peak extra {n}x{n} {str(dtype).removeprefix('torch.')}"
            if extra is None:
                entry["rows"].append(_row(case, "not measurable here"))
                continue
            ratio = extra / size
            entry["rows"].append(_row(
                case, f"{extra / 2**20:.1f} MiB = {ratio:.2f}x the output ({size / 2**20:.0f} "
                f"MiB)" + ("" if fp32 else "; computed in float32"),
                f"<= {MEMORY_TARGET:g}x" if fp32 else "info", _verdict(ratio <= MEMORY_TARGET)
                if fp32 else "", perf=True, extra_bytes=extra, output_bytes=size, ratio=ratio))
            del w
    entry["note"] = ("torch.cuda.max_memory_allocated" if dev.type == "cuda" else
                     "CPU: peak resident memory (VmHWM)")


# ---------------------------------------------------------------------------------- sparsify
def _deep_mlp(depth: int) -> nn.Module:
    from orthosparse.models import create_model

    return create_model("mlp", depth=depth, width=128, activation="tanh")


def section_sparsify(ck: Check, entry: dict) -> None:
    from orthosparse import sparsify
    from orthosparse._layers import prunable_layers

    plan, dev = ck.plan, ck.plan.device
    reps = plan.sparsify_repeats
    models = [_deep_mlp(plan.deep_depth).to(dev) for _ in range(reps + 1)]
    times = []
    for r, model in enumerate(models):  # the first is the warm-up
        sync(dev)
        start = time.perf_counter()
        sparsify(model, 0.125, mask="erk", init="eoi", generator=torch.Generator().manual_seed(r))
        sync(dev)
        times.append(time.perf_counter() - start)
    t_sparsify = statistics.median(times[1:])
    model = models[0]
    dense = []
    for _ in range(reps):
        sync(dev)
        start = time.perf_counter()
        with torch.no_grad():
            for layer in prunable_layers(model):
                nn.init.orthogonal_(layer.weight)
        sync(dev)
        dense.append(time.perf_counter() - start)
    t_dense = statistics.median(dense)
    entry["rows"].append(_row(
        f"sparsify mlp {plan.deep_depth}x128 erk 0.125 eoi",
        f"{t_sparsify:.3f} s (median of {reps}, first call {times[0]:.3f} s); dense "
        f"orthogonal_ per layer {t_dense:.3f} s ({t_sparsify / t_dense:.2f}x)", "info", "",
        sparsify_s=t_sparsify, first_s=times[0], dense_orthogonal_s=t_dense))


# ---------------------------------------------------------------------------------- nm24
def _nm_builder() -> tuple[Callable[[torch.Tensor, float, torch.Generator], torch.Tensor], str]:
    """EOI with ``nm=(2, 4)`` into a weight, through ``eoi_`` when it takes ``nm``, else through
    ``orthosparse.eoi.sparse_orthogonal``; :class:`Skip` when neither does."""
    import orthosparse
    from orthosparse.eoi import sparse_orthogonal

    if "nm" in inspect.signature(orthosparse.eoi_).parameters:
        return (lambda w, d, g: orthosparse.eoi_(w, d, generator=g, nm=(2, 4))), \
            "orthosparse.eoi_(nm=(2, 4))"
    if "nm" in inspect.signature(sparse_orthogonal).parameters:
        def build(w: torch.Tensor, d: float, g: torch.Generator) -> torch.Tensor:
            weight, mask = sparse_orthogonal(*w.shape, d, generator=g, nm=(2, 4),
                                             device=w.device)
            with torch.no_grad():
                w.copy_(weight)
            return mask
        return build, "orthosparse.eoi.sparse_orthogonal(nm=(2, 4)) (eoi_ takes no nm=)"
    raise Skip("neither orthosparse.eoi_ nor orthosparse.eoi.sparse_orthogonal takes nm=")


def section_nm24(ck: Check, entry: dict) -> None:
    from orthosparse.eoi import reachable_density, satisfies_nm

    plan, dev = ck.plan, ck.plan.device
    build, how = _nm_builder()
    feats, tokens = plan.nm_features, plan.nm_tokens
    density = min(0.5, reachable_density(feats, feats, (2, 4)))
    dense = nn.Linear(feats, feats, bias=False, device=dev)
    mask = build(dense.weight, density, torch.Generator().manual_seed(0))
    w32 = dense.weight.detach()
    eye_err = (w32 @ w32.T - torch.eye(feats, device=dev)).abs().max().item()
    ok = satisfies_nm(mask.cpu(), (2, 4))
    entry["rows"].append(_row(f"2:4 EOI {feats}x{feats} d={density:g}", f"via {how}; 2:4 holds: "
                              f"{ok}; max |W W^T - I| {eye_err:.1e}", "2:4 in every group",
                              _verdict(ok), max_orthogonality_error=eye_err))
    dense = dense.to(torch.bfloat16)
    if dev.type == "cuda":
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        stand_in = ""

        def convert(w: torch.Tensor) -> torch.Tensor:
            nonlocal stand_in
            try:
                return to_sparse_semi_structured(w)
            except Exception as err:  # no cuSPARSELt: try the CUTLASS kernels
                SparseSemiStructuredTensor._FORCE_CUTLASS = True
                stand_in = (f" (CUTLASS: the default failed with {type(err).__name__}: "
                            f"{str(err).splitlines()[0][:80]})")
                return to_sparse_semi_structured(w)
    else:
        def convert(w: torch.Tensor) -> torch.Tensor:
            return w.detach().clone()

        stand_in = " (no CUDA: the dense layer stands in for the semi-structured one)"
    sparse = copy.deepcopy(dense)
    sparse.weight = nn.Parameter(convert(dense.weight.detach()), requires_grad=False)
    x = torch.randn(tokens, feats, device=dev, dtype=torch.bfloat16)
    case = f"forward {tokens}x{feats} bf16"
    with torch.no_grad():
        y_d = dense(x)
        t_d = median_time(lambda: dense(x), plan.repeats, warmup=True, device=dev)
        try:
            y_s = sparse(x)
            t_s = median_time(lambda: sparse(x), plan.repeats, warmup=True, device=dev)
        except Exception as err:
            entry["rows"].append(_row(case, f"dense {t_d * 1e3:.3f} ms; 2:4 failed: "
                                      f"{type(err).__name__}: {str(err).splitlines()[0][:160]}",
                                      "runs", "FAIL", dense_s=t_d))
            return
    rel = ((y_s.float() - y_d.float()).abs().max() / y_d.float().abs().max()).item()
    entry["rows"].append(_row(
        case, f"dense {t_d * 1e3:.3f} ms; 2:4 {t_s * 1e3:.3f} ms; "
        f"speed-up {t_d / t_s:.2f}x; max rel diff {rel:.1e}{stand_in}", "info", "",
        dense_s=t_d, sparse_s=t_s, rel_diff=rel))

    def train_step(layer: nn.Module, inputs: torch.Tensor) -> None:
        layer(inputs).float().square().mean().backward()
        inputs.grad = None
        layer.weight.grad = None

    def timed(layer: nn.Module) -> float:
        return median_time(lambda: train_step(layer, xg), plan.repeats, warmup=True, device=dev)

    # a semi-structured weight cannot take a gradient (it stays frozen): the dense layer is
    # timed both ways, with its weight's gradient and frozen like the 2:4 one
    case = f"train step {tokens}x{feats} bf16"
    xg = x.clone().requires_grad_(True)
    t_full = timed(dense)
    dense.weight.requires_grad_(False)
    t_frozen = timed(dense)
    dense.weight.requires_grad_(True)
    text = (f"dense {t_full * 1e3:.3f} ms (weight and input grads), {t_frozen * 1e3:.3f} ms "
            f"(frozen weight); ")
    try:  # the gradient to the input goes through the semi-structured weight
        t_s = timed(sparse)
    except Exception as err:
        entry["rows"].append(_row(case, text + f"2:4 not supported: {type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:160]}", "info", "",
                                  dense_s=t_full, dense_frozen_s=t_frozen))
        return
    entry["rows"].append(_row(
        case, text + f"2:4 {t_s * 1e3:.3f} ms (frozen weight): {t_frozen / t_s:.2f}x the "
        f"frozen dense" + stand_in, "info", "", dense_s=t_full, dense_frozen_s=t_frozen,
        sparse_s=t_s))


# ---------------------------------------------------------------------------------- ddp
def _ddp_worker(rank: int, world: int, port: int, folder: str, kind: str, steps: int) -> None:
    """One rank: sparsify the same MLP from one seed, wrap it (masks compared across ranks),
    train a few steps on shards of one global batch, report checksums to ``folder``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=DEAD_CHANNELS)
    from orthosparse import sparsify
    from orthosparse.lab.distributed import (
        init_distributed,
        shard,
        shutdown_distributed,
        wrap_model,
    )
    from orthosparse.models import create_model
    from orthosparse.sparse import get_masks, mask_checksum

    ctx = init_distributed(kind)
    assert ctx is not None and ctx.world_size == world
    torch.manual_seed(rank)  # different starting weights per rank: DDP must broadcast rank 0's
    model = create_model("mlp", depth=7, width=100).to(ctx.device)
    sparsify(model, DENSITY, mask="erk", init="eoi", generator=torch.Generator().manual_seed(0))
    ddp, checksum = wrap_model(model, ctx)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    batch = 32
    start = time.perf_counter()
    for _ in range(steps):
        x = torch.randn(batch, 784, generator=g).to(ctx.device)
        y = torch.randint(0, 10, (batch,), generator=g).to(ctx.device)
        xs, ys = shard(x, ctx), shard(y, ctx)
        loss = F.cross_entropy(ddp(xs), ys, reduction="sum") * world / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(ctx.device)
    seconds = time.perf_counter() - start
    masks = get_masks(model)
    zeros = all(int(torch.count_nonzero(model.get_parameter(n).detach()[~m])) == 0
                for n, m in masks.items())
    flat = torch.cat([p.detach().float().cpu().reshape(-1) for p in model.parameters()])
    report = {"rank": rank, "backend": ctx.backend, "device": str(ctx.device),
              "mask_checksum": checksum, "mask_checksum_after": mask_checksum(model),
              "weights_sha": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
              "pruned_zero": zeros, "steps": steps, "seconds": seconds}
    Path(folder, f"rank{rank}.json").write_text(json.dumps(report))
    shutdown_distributed(ctx)


def section_ddp(ck: Check, entry: dict) -> None:
    import torch.multiprocessing as mp

    from orthosparse.lab.distributed import find_free_port

    plan = ck.plan
    if plan.dry:
        kind, name = "cpu", "gloo (dry run: CPU)"
    else:
        count = torch.cuda.device_count()
        if count < 2:
            raise Skip(f"{count} CUDA device{'' if count == 1 else 's'} visible; DDP over NCCL "
                       f"needs 2 (2 ranks)")
        kind, name = "cuda", "NCCL"
    world = 2
    with tempfile.TemporaryDirectory() as folder:
        procs = mp.start_processes(_ddp_worker, args=(world, find_free_port(), folder, kind,
                                                      plan.ddp_steps),
                                   nprocs=world, join=False, start_method="spawn")
        try:
            while not procs.join(timeout=1.0):
                pass
        finally:
            for p in procs.processes:
                if p.is_alive():
                    p.terminate()
        reports = [json.loads(Path(folder, f"rank{r}.json").read_text()) for r in range(world)]
    same_masks = len({r["mask_checksum"] for r in reports} |
                     {r["mask_checksum_after"] for r in reports}) == 1
    same_weights = len({r["weights_sha"] for r in reports}) == 1
    zeros = all(r["pruned_zero"] for r in reports)
    entry["note"] = f"{world} ranks over {name}"
    entry["rows"] += [
        _row(f"masks on {world} ranks", f"identical before and after {plan.ddp_steps} steps: "
             f"{same_masks} ({reports[0]['mask_checksum'][:12]})", "identical",
             _verdict(same_masks)),
        _row("pruned weights after training", f"still 0 on every rank: {zeros}", "all 0",
             _verdict(zeros)),
        _row("weights across ranks", f"identical: {same_weights}; {plan.ddp_steps} steps in "
             f"{max(r['seconds'] for r in reports):.2f} s", "identical", _verdict(same_weights),
             reports=reports),
    ]


# ---------------------------------------------------------------------------------- train
def _one_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              amp: torch.dtype | None, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with (torch.autocast(device.type, dtype=amp) if amp is not None
          else contextlib.nullcontext()):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    sync(device)
    return time.perf_counter() - start


def step_ratio(pair: tuple[nn.Module, nn.Module], opts, x, y, amp, plan: Plan) -> dict:
    """Median dense and masked step times (interleaved, alternating which goes first) and the
    median of the per-repeat ratios masked/dense, as in benchmarks/train_overhead.py."""
    dev = plan.device
    for _ in range(3):  # warm-up: compilation, allocations, optimizer state
        for i in (0, 1):
            _one_step(pair[i], opts[i], x, y, amp, dev)
    dense_t, masked_t, ratios = [], [], []
    for _ in range(plan.train_repeats):
        wall: tuple[list[float], list[float]] = ([], [])
        for k in range(plan.steps):
            for i in ((0, 1) if k % 2 == 0 else (1, 0)):
                wall[i].append(_one_step(pair[i], opts[i], x, y, amp, dev))
        d, m = statistics.median(wall[0]), statistics.median(wall[1])
        dense_t.append(d)
        masked_t.append(m)
        ratios.append(m / d)
    return {"dense_ms": 1e3 * statistics.median(dense_t),
            "masked_ms": 1e3 * statistics.median(masked_t), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def section_train(ck: Check, entry: dict) -> None:
    from orthosparse import sparsify
    from orthosparse.models import create_model
    from orthosparse.sparse import get_masks, remove_masks

    plan, dev = ck.plan, ck.plan.device
    specs = [("MLP 7x100", lambda: create_model("mlp", depth=7, width=100), (784,)),
             (f"MLP {plan.deep_depth}x128 tanh", lambda: _deep_mlp(plan.deep_depth), (784,)),
             (f"{plan.resnet} CIFAR", lambda: create_model(plan.resnet), plan.image)]
    pairs = {}
    for name, make, shape in specs:
        torch.manual_seed(0)  # benchmark-side seeding only
        masked = make().to(dev)
        sparsify(masked, DENSITY, mask="erk", init="eoi",
                 generator=torch.Generator().manual_seed(0))
        dense = remove_masks(copy.deepcopy(masked), bake=False)  # same values, no machinery
        x = torch.randn(plan.batch, *shape, device=dev)
        y = torch.randint(0, 10, (plan.batch,), device=dev)
        pairs[name] = (dense, masked, x, y)
    entry["note"] = (f"batch {plan.batch}, median of {plan.train_repeats} x {plan.steps} steps, "
                     f"density {DENSITY}, compile backend {plan.compile_backend}")
    rows = [(mode, name, amp) for mode in ("eager", "compile") for name, _, _ in specs
            for amp in (None, torch.bfloat16)]
    # eager first, then compile: the cheap models first, the deep MLP gets what is left
    rows.sort(key=lambda r: (r[0] == "compile", r[0] == "compile" and "tanh" in r[1]))
    for mode, name, amp in rows:
        dtype = "bf16 autocast" if amp else "fp32"
        case = f"{name} {mode} {dtype}"
        need = MIN_START if plan.dry else 45.0 if mode == "compile" else 15.0
        if ck.left() < need:
            entry["rows"].append(_row(case, f"skipped: budget ({ck.left():.0f} s left)"))
            continue
        dense, masked, x, y = pairs[name]
        models = (dense, masked)
        if mode == "compile":
            torch._dynamo.reset()
            models = tuple(torch.compile(m, backend=plan.compile_backend) for m in models)
        opts = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, nesterov=True,
                                weight_decay=1e-4) for m in (dense, masked)]
        limit = min(plan.compile_row_cap if mode == "compile" else 120.0, ck.left() - 2)
        start = time.monotonic()
        try:
            with time_limit(limit):
                r = step_ratio(models, opts, x, y, amp, plan)
        except TimeLimit:  # a compile too long for what is left: reported, not an error
            entry["rows"].append(_row(case, f"interrupted after {limit:.0f} s (compilation and "
                                      f"steps did not fit its cap or the budget)"))
            continue
        except Exception as err:
            entry["rows"].append(_row(case, f"{type(err).__name__}: "
                                      f"{str(err).splitlines()[0][:200]}", "", "ERROR"))
            continue
        wall = time.monotonic() - start
        entry["rows"].append(_row(
            case, f"dense {r['dense_ms']:.3f} ms, masked {r['masked_ms']:.3f} ms, ratio "
            f"{r['ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}] ({wall:.0f} s)",
            f"<= {STEP_TARGET:g}", _verdict(r["ratio"] <= STEP_TARGET), perf=True, wall_s=wall,
            **r))
    zeros = all(int(torch.count_nonzero(masked.get_parameter(n).detach()[~m])) == 0
                for _, masked, _, _ in pairs.values() for n, m in get_masks(masked).items())
    entry["rows"].append(_row("pruned weights after every row", f"still 0: {zeros}", "all 0",
                              _verdict(zeros)))


# ---------------------------------------------------------------------------------- main
RUNNERS = {"pytest": section_pytest, "eoi": section_eoi, "memory": section_memory,
           "sparsify": section_sparsify, "nm24": section_nm24, "ddp": section_ddp,
           "train": section_train}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for the report")
    parser.add_argument("--dry-run", action="store_true",
                        help="every section on the CPU at tiny sizes (CI)")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for the whole run, imports included (default 480)")
    parser.add_argument("--sections", nargs="+", metavar="NAME",
                        help=f"run only these, of: {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median; >= 5)")
    parser.add_argument("--device", default="cuda", help="the CUDA device (default cuda)")
    args = parser.parse_args(argv)
    if not args.budget > 0:
        parser.error(f"--budget={args.budget} must be > 0 seconds")
    if args.repeats < 5:
        parser.error(f"--repeats={args.repeats} must be >= 5 (medians of at least 5)")
    names = [n for item in args.sections or SECTIONS for n in item.split(",") if n]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(map(repr, unknown))}; choose from "
                     f"{', '.join(SECTIONS)}")
    args.sections = tuple(names)
    if args.dry_run:
        args.device = "cpu"
    elif not torch.cuda.is_available():
        parser.error("CUDA is not available here; --dry-run runs every section on the CPU")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as err:
            parser.error(f"--device={args.device!r}: {err}")
        if device.type != "cuda":
            parser.error(f"--device={args.device!r} must be a CUDA device (or use --dry-run)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=DEAD_CHANNELS)
    if args.dry_run:  # tiny sizes: one thread is faster, and steadier on a shared CI machine
        torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = Plan.make(device, args.dry_run, args.repeats)
    check = Check(plan, args.out, args.budget, args.sections)
    order = list(SECTIONS)
    if plan.dry and "pytest" in args.sections and check.left() > MIN_START:
        # collecting takes seconds of imports: on a second core while the sections run
        check.pytest_proc, check.pytest_started = start_pytest(dry=True), time.monotonic()
        order.append(order.pop(order.index("pytest")))
    try:
        for name in order:
            check.run(name, RUNNERS[name])
    finally:
        if check.pytest_proc is not None and check.pytest_proc.poll() is None:
            check.pytest_proc.kill()
            check.pytest_proc.wait()
    check.write()
    print()
    print((args.out / "gpu_check.md").read_text(), end="", flush=True)
    return 1 if any(e["status"] == "error" for e in check.sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
