"""Part 1b of docs/results.md: the saliency cells of the 7x100 MNIST grid before and after the
official mask protocol (docs/protocol.md), side by side, from the two sweeps' index.csv files.

    python results/compare_protocol.py [results/mnist-mlp-100]   # prints the Markdown tables
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
MASKS = ("snip", "grasp", "synflow")
INITS = ("orthogonal", "ai", "eoi")
COLUMNS = (("tanh", 0.05), ("tanh", 0.1), ("relu", 0.05), ("relu", 0.1))


def cells(sweep: Path) -> dict[tuple, list[float]]:
    out: dict[tuple, list[float]] = defaultdict(list)
    with open(sweep / "index.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["state"] != "finished":
                continue
            # index.csv lists only the keys that vary; the run's config.json has them all
            cfg = json.loads((sweep / row["run_dir"] / "config.json").read_text())
            if cfg["mask"] not in MASKS:
                continue
            key = (cfg["mask"], cfg["init"], cfg["activation"], float(cfg["density"]))
            out[key].append(100 * float(row["test_acc"]))
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}" + ("" if len(values) == 5 else
                                                          f" (n={len(values)})")


def table(before: dict, after: dict) -> list[str]:
    head = "| mask | init | " + " | ".join(f"{a}, d={d}: before -> after" for a, d in COLUMNS)
    lines = [head + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for mask in MASKS:
        for init in INITS:
            row = [f"{fmt(before.get((mask, init, a, d), []))} -> "
                   f"{fmt(after.get((mask, init, a, d), []))}" for a, d in COLUMNS]
            lines.append(f"| {mask} | {init} | " + " | ".join(row) + " |")
    return lines


def wins(data: dict) -> tuple[int, int, list[str]]:
    """Cells where EOI's mean beats AI's, cells where AI's beats EOI's, and the latter's names."""
    eoi_wins, ai_wins, where = 0, 0, []
    for mask in MASKS:
        for a, d in COLUMNS:
            e, i = data.get((mask, "eoi", a, d)), data.get((mask, "ai", a, d))
            if not e or not i:
                continue
            if statistics.mean(e) > statistics.mean(i):
                eoi_wins += 1
            else:
                ai_wins += 1
                where.append(f"{mask} {a} d={d}")
    return eoi_wins, ai_wins, where


def main(argv: list[str]) -> None:
    before = cells(HERE / "mnist-mlp")
    after = cells(HERE / "mnist-mlp-protocol")
    print("\n".join(table(before, after)))
    for name, data in (("before", before), ("after", after)):
        e, a, where = wins(data)
        print(f"\n{name}: EOI > AI in {e} of {e + a} saliency cells; AI >= EOI in: "
              f"{', '.join(where) or 'none'}")
    for extra in argv:
        data = cells(Path(extra))
        print(f"\n{extra}:")
        for key in sorted(data):
            print(f"  {key}: {fmt(data[key])}")
        e, a, where = wins(data)
        print(f"  EOI > AI in {e} of {e + a}; AI >= EOI in: {', '.join(where) or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1:])
