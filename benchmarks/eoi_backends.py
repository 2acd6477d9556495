"""EOI's two CPU implementations side by side: the compiled numba kernel and the pure-Python paths.

For each case, in one run: the median time of ``eoi_group_`` (one call per same-shape group) with
``ORTHOSPARSE_NUMBA=1`` (numba) and ``=0`` (numpy/torch array passes), their ratio, and a check
that both give the same masks and values equal up to float32 rounding. Cases: single square
layers (128 to 4096), 1000 same-shape 128x128 layers (the 1000-layer MLP), and every conv/linear
weight of VGG-16 and ResNet-32 (same-shape layers grouped, as ``sparsify`` does).

Then the one-time cost in a fresh process (cache already written): importing orthosparse and the
first ``eoi_`` call on a 128x128 layer, with each backend (numba loads its compiled kernel on the
first call).

    python benchmarks/eoi_backends.py            # about a minute on 2 CPU cores
    python benchmarks/eoi_backends.py --quick    # a few seconds
    options: --repeats N, --threads N (default 1; 0 = torch's default)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys

import torch

from _common import eoi_by_shape, median_time
from orthosparse.eoi.generator import NUMBA_ENV, backend


def cases(quick: bool) -> list[tuple[str, list[torch.Tensor], float]]:
    from orthosparse.models import create_model

    sizes = [128, 512, 2048] if quick else [128, 256, 512, 1024, 2048, 4096]
    out = [(f"{n}x{n}", [torch.empty(n, n)], 0.125) for n in sizes]
    out.append(("1000 x 128x128", [torch.empty(128, 128) for _ in range(1000)], 0.125))
    models = [("resnet32", dict(in_channels=3, num_classes=10))]
    if not quick:
        models.append(("vgg16", dict(in_channels=3, num_classes=10)))
    for name, kw in models:
        model = create_model(name, **kw)
        weights = [p.data for p in model.parameters() if p.dim() > 1]
        out.append((f"{name} ({len(weights)} weights)", weights, 0.125))
    return out


@contextlib.contextmanager
def backend_set(value: str):
    """``ORTHOSPARSE_NUMBA=value`` inside the block (EOI reads it on every call)."""
    old = os.environ.get(NUMBA_ENV)
    os.environ[NUMBA_ENV] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[NUMBA_ENV]
        else:
            os.environ[NUMBA_ENV] = old


def measure(value: str, weights: list[torch.Tensor], density: float, repeats: int
            ) -> tuple[float, list[torch.Tensor], list[torch.Tensor]]:
    """(median seconds, masks, weights) of EOI on ``weights`` with backend ``value``."""
    with backend_set(value):
        seconds = median_time(  # the warm-up loads the compiled kernel
            lambda: eoi_by_shape(weights, density, torch.Generator().manual_seed(0)), repeats,
            warmup=True)
        masks = eoi_by_shape(weights, density, torch.Generator().manual_seed(1))
    return seconds, masks, [w.clone() for w in weights]


def cold_start(value: str) -> tuple[float, float]:
    """(import orthosparse, first eoi_ on 128x128) seconds in a fresh process."""
    code = """
import time
t0 = time.perf_counter()
import torch, orthosparse
t1 = time.perf_counter()
orthosparse.eoi_(torch.empty(128, 128), 0.125, generator=torch.Generator().manual_seed(0))
print(t1 - t0, time.perf_counter() - t1)
"""
    env = dict(os.environ, **{NUMBA_ENV: value})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=600)
    imp, first = out.stdout.split()
    return float(imp), float(first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes, no VGG-16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if args.threads < 0:
        parser.error(f"--threads={args.threads} must be >= 0 (0: torch's default)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with backend_set("1"):
        found = backend()
    if found != "numba":
        sys.exit("numba is not installed: pip install numba (or the [fast] extra)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}; ratio = python / numba")
    print(f"{'case':<26} {'density':>7} {'numba s':>10} {'python s':>10} {'ratio':>7}  "
          f"same masks  max |dW|")
    for name, weights, density in cases(args.quick):
        big = sum(w.numel() for w in weights) >= 10**7
        reps = max(3, args.repeats // 2) if big else args.repeats
        t_numba, masks_numba, w_numba = measure("1", weights, density, reps)
        t_python, masks_python, w_python = measure("0", weights, density, reps)
        same = all(torch.equal(a, b) for a, b in zip(masks_numba, masks_python, strict=True))
        diff = max((a - b).abs().max().item() for a, b in zip(w_numba, w_python, strict=True))
        print(f"{name:<26} {density:>7g} {t_numba:>10.3g} {t_python:>10.3g} "
              f"{t_python / t_numba:>7.2f}  {str(same):<10}  {diff:.1e}", flush=True)
    print("\nfresh process (compiled kernel already cached on disk):")
    for value, label in (("1", "numba"), ("0", "python")):
        imp, first = cold_start(value)
        print(f"  {label:<6} import orthosparse {imp:6.2f} s, first eoi_ 128x128 {first:6.3f} s")


if __name__ == "__main__":
    main()
