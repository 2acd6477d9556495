"""N:M structured EOI (docs/nm.md): reachable densities, and its cost next to plain EOI.

1. Reachable densities: for 2:4, 1:4 and 1:8 at 128x128, 128x256, 256x128 and 100x784 (out x in),
   the largest density the construction admits (``reachable_density``), the density it builds
   when asked for it, the most nonzeros in any group of M inputs, and ``max |W W^T - I|``
   (float64). With ``--naive`` also the density the naive construction stalls at: EOI's random
   pairs over all columns, every rotation that would put more than N nonzeros in a group of some
   row rejected, for ``--budget`` draws (docs/nm.md §5).
2. Speed: the median time of ``sparse_orthogonal`` with ``nm`` and without it (plain EOI) at the
   same density, 1024x1024 by default, on the default backend, and their ratio.

    python benchmarks/nm_speed.py                      # about 20 s on 2 CPU cores
    python benchmarks/nm_speed.py --naive --budget 50000
    options: --sizes N ..., --repeats N, --threads N (default 1; 0 = torch's default),
             --backend NAME
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import torch

from _common import median_time
from orthosparse.eoi import default_backend, reachable_density, sparse_orthogonal

PATTERNS = [(2, 4), (1, 4), (1, 8)]
SHAPES = [(128, 128), (128, 256), (256, 128), (100, 784)]


def naive_density(rows: int, cols: int, nm: tuple[int, int], target: float, budget: int,
                  seed: int = 0) -> float:
    """Density reached by EOI's stream with cap-breaking rotations rejected (support only).

    Works on ``W`` (out x in) directly: wide, a rotation merges two input columns (every row in
    either support gains both); tall, it merges two output rows. Stops at ``target`` or after
    ``budget`` draws.
    """
    n, m = nm
    rng = np.random.default_rng(seed)
    wide = rows <= cols
    r, c = min(rows, cols), max(rows, cols)
    support = np.zeros((r, c), dtype=bool)  # A: wide A = W, tall A = W^T
    support[np.arange(r), np.arange(r)] = True
    nnz, need = r, target * r * c
    for _ in range(budget):
        if nnz >= need:
            break
        i, j = rng.choice(c, size=2, replace=False)
        union = support[:, i] | support[:, j]
        if wide:  # rows of A are rows of W; columns i, j are inputs
            new = support.copy()
            new[:, i] = new[:, j] = union
            counts = new[union][:, [i - i % m + k for k in range(m)]].sum(axis=1)
            counts2 = new[union][:, [j - j % m + k for k in range(m)]].sum(axis=1)
            if counts.max(initial=0) > n or counts2.max(initial=0) > n:
                continue
        else:  # columns of A are rows of W (outputs): the union's groups along A's rows
            if union.reshape(-1, m).sum(axis=1).max() > n:
                continue
        support[:, i] = support[:, j] = union
        nnz = int(support.sum())
    return nnz / (r * c)


def reachable_table(naive: bool, budget: int) -> None:
    head = f"{'nm':>5} {'shape':>9} {'reachable':>9} {'built':>8} {'max/group':>9} {'|WWt-I|':>8}"
    print(head + (f" {'naive after ' + str(budget):>20}" if naive else ""))
    for nm in PATTERNS:
        for rows, cols in SHAPES:
            top = reachable_density(rows, cols, nm)
            w, mask = sparse_orthogonal(rows, cols, top, nm=nm, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(0))
            gram = w @ w.T if rows <= cols else w.T @ w
            err = (gram - torch.eye(min(rows, cols), dtype=torch.float64)).abs().max().item()
            worst = int(mask.reshape(rows, cols // nm[1], nm[1]).sum(-1).max())
            line = (f"{nm[0]}:{nm[1]:<3} {rows:>4}x{cols:<4} {top:>9.4f} "
                    f"{mask.double().mean().item():>8.4f} {worst:>9} {err:>8.1e}")
            if naive:
                line += f" {naive_density(rows, cols, nm, top, budget):>20.4f}"
            print(line, flush=True)


CASES = [((2, 4), 0.25), ((2, 4), 0.5), ((1, 4), 0.1), ((1, 4), 0.25), ((1, 8), 0.1),
         ((1, 8), 0.125)]  # (nm, density): below and at the reachable density N/M


def _build(size: int, density: float, nm: tuple[int, int] | None, backend: str):
    return sparse_orthogonal(size, size, density, nm=nm, backend=backend,
                             generator=torch.Generator().manual_seed(0))


def speed_table(sizes: list[int], repeats: int, backend: str) -> None:
    print(f"\nspeed, backend {backend!r}: median of {repeats} (seconds), ratio = N:M / plain")
    print(f"{'shape':>10} {'nm':>5} {'density':>8} {'plain EOI':>10} {'N:M EOI':>10} {'ratio':>6}")
    for size in sizes:
        for nm, density in CASES:
            plain, structured = (
                median_time(functools.partial(_build, size, density, pattern, backend), repeats,
                            warmup=True)
                for pattern in (None, nm))
            print(f"{size:>4}x{size:<5} {nm[0]}:{nm[1]:<3} {density:>8} {plain:>10.4f} "
                  f"{structured:>10.4f} {structured / plain:>6.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--naive", action="store_true")
    parser.add_argument("--budget", type=int, default=20000)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = default_backend() if args.backend == "auto" else args.backend
    reachable_table(args.naive, args.budget)
    speed_table(args.sizes, args.repeats, backend)


if __name__ == "__main__":
    main()
