"""The 50-run digits grid on the local executor and on Ray (warm workers), side by side.

Both run the same grid (``digits-grid``: 5 inits x 2 densities x 5 seeds, 5 epochs) with the
same concurrency ``--jobs J`` and one CPU thread per run (``threads=1``, so results are
comparable bitwise): ``local`` starts ``J`` subprocesses at a time, one per run (``orthosparse
train --resume RUN_DIR``: Python, torch and the data loaded again for every run); ``ray``
starts a local Ray cluster with ``J`` CPUs and runs one task per run in Ray's reused worker
processes (:func:`orthosparse.lab.executors.run_one`). ``submitit`` (its local executor, ``J``
jobs of ``runs / J`` runs each) can be added with ``--executors local ray submitit``.

Printed: wall time, runs per minute (the Ray row's time includes ``ray.init``), the median
per-run time the workers report, and whether every index row (wall times aside) equals the
local executor's.

Usage:
    python benchmarks/sweep_executors.py [--jobs 2] [--runs 50] [--epochs 5] [--quick]
        [--executors local ray [submitit]] [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from orthosparse.lab.sweep import load_sweep, run_sweep

SWEEP = "digits-grid"


def grid(runs: int, epochs: int):
    """``digits-grid`` cut to ``runs`` runs (a multiple of its 10 runs per seed)."""
    spec = load_sweep(SWEEP)
    per_seed = len(spec.grid["init"]) * len(spec.grid["density"])
    if runs < per_seed or runs % per_seed:
        raise SystemExit(f"--runs {runs} must be a positive multiple of {per_seed}")
    return dataclasses.replace(spec, grid={**spec.grid, "seed": list(range(runs // per_seed)),
                                           "epochs": [epochs]})


def run(name: str, spec, out: Path, jobs: int) -> dict:
    overrides = {"threads": 1, "progress": "none"}
    t0 = time.perf_counter()
    init = 0.0
    if name == "local":
        result = run_sweep(spec, out=out, jobs=jobs, overrides=overrides, echo=False)
    elif name == "ray":
        import ray

        ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
        init = time.perf_counter() - t0
        try:
            result = run_sweep(spec, out=out, overrides=overrides, echo=False, executor="ray",
                               executor_options={"cpus": 1})
        finally:
            ray.shutdown()
    else:
        runs = len(spec.grid["seed"]) * len(spec.grid["init"]) * len(spec.grid["density"])
        result = run_sweep(spec, out=out, overrides=overrides, echo=False, executor="submitit",
                           executor_options={"cluster": "local", "array_parallelism": jobs,
                                             "runs_per_job": -(-runs // jobs)})
    seconds = time.perf_counter() - t0
    assert result.complete, result.counts
    rows = json.loads((result.sweep_dir / "index.json").read_text())
    return {"seconds": seconds, "init": init, "runs": len(rows),
            "per_run": statistics.median(row["wall_time"] for row in rows),
            "rows": [{k: v for k, v in row.items() if k != "wall_time"} for row in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once [2]")
    parser.add_argument("--runs", type=int, default=50, help="runs (a multiple of 10) [50]")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run [5]")
    parser.add_argument("--quick", action="store_true", help="10 runs of 2 epochs")
    parser.add_argument("--executors", nargs="+", default=["local", "ray"],
                        choices=["local", "ray", "submitit"])
    parser.add_argument("--out", type=Path, help="where the sweeps go [a temporary folder]")
    parser.add_argument("--keep", action="store_true", help="keep the sweep folders")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.epochs = 10, 2
    spec = grid(args.runs, args.epochs)
    out = args.out or Path(tempfile.mkdtemp(prefix="sweep-executors-"))
    found = {}
    try:
        for name in args.executors:
            found[name] = run(name, spec, out / name, args.jobs)
            print(f"{name}: {found[name]['seconds']:.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    base = found[args.executors[0]]["rows"]
    print(f"\n{args.runs} runs of digits ({args.epochs} epochs), {args.jobs} at a time, "
          f"1 thread each\n")
    print("| executor | wall time (s) | runs / minute | median run (s, wall_time) | "
          "start-up (s) | same results |")
    print("|---|---|---|---|---|---|")
    for name, r in found.items():
        print(f"| {name} | {r['seconds']:.1f} | {60 * r['runs'] / r['seconds']:.1f} | "
              f"{r['per_run']:.2f} | {r['init']:.1f} | "
              f"{'yes' if r['rows'] == base else 'NO'} |")


if __name__ == "__main__":
    main()
