"""EOI backends side by side: by default the compiled numba kernel and the array passes.

For each case, in one run: the median time of ``eoi_group_`` (one call per same-shape group) with
each backend named (``backend=``; default ``compiled`` and ``arrays``), the ratio of each to the
first (time / time of the first: ``arrays`` over ``compiled`` by default), and a check that each
gives the first one's masks and its values up to float32 rounding. Cases: single square layers
(128 to 4096), 1000 same-shape 128x128 layers (the 1000-layer MLP), and every conv/linear weight
of VGG-16 and ResNet-32 (same-shape layers grouped, as ``sparsify`` does).

Then the one-time cost in a fresh process (cache already written): importing orthosparse and the
first ``eoi_`` call on a 128x128 layer, with each backend (``ORTHOSPARSE_EOI_BACKEND``; numba
loads its compiled kernel on the first call).

    python benchmarks/eoi_backends.py            # about a minute on 2 CPU cores
    python benchmarks/eoi_backends.py --quick    # a few seconds
    options: --backends NAME ..., --sizes N ..., --repeats N, --threads N (default 1; 0 = torch's
             default), --no-models
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

from _common import eoi_by_shape, median_time
from orthosparse.eoi import list_backends
from orthosparse.eoi.backends import BACKEND_ENV


def cases(sizes: list[int], models: list[str]) -> list[tuple[str, list[torch.Tensor], float]]:
    from orthosparse.models import create_model

    out = [(f"{n}x{n}", [torch.empty(n, n)], 0.125) for n in sizes]
    out.append(("1000 x 128x128", [torch.empty(128, 128) for _ in range(1000)], 0.125))
    for name in models:
        model = create_model(name, in_channels=3, num_classes=10)
        weights = [p.data for p in model.parameters() if p.dim() > 1]
        out.append((f"{name} ({len(weights)} weights)", weights, 0.125))
    return out


def measure(backend: str, weights: list[torch.Tensor], density: float, repeats: int
            ) -> tuple[float, list[torch.Tensor], list[torch.Tensor]]:
    """(median seconds, masks, weights) of EOI on ``weights`` with ``backend``."""
    seconds = median_time(  # the warm-up loads the compiled kernel
        lambda: eoi_by_shape(weights, density, torch.Generator().manual_seed(0), backend),
        repeats, warmup=True)
    masks = eoi_by_shape(weights, density, torch.Generator().manual_seed(1), backend)
    return seconds, masks, [w.clone() for w in weights]


def cold_start(backend: str) -> tuple[float, float]:
    """(import orthosparse, first eoi_ on 128x128) seconds in a fresh process."""
    code = """
import time
t0 = time.perf_counter()
import torch, orthosparse
t1 = time.perf_counter()
orthosparse.eoi_(torch.empty(128, 128), 0.125, generator=torch.Generator().manual_seed(0))
print(t1 - t0, time.perf_counter() - t1)
"""
    env = dict(os.environ, **{BACKEND_ENV: backend})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=600)
    imp, first = out.stdout.split()
    return float(imp), float(first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes, no VGG-16")
    parser.add_argument("--backends", nargs="+", default=["compiled", "arrays"],
                        help="EOI backends to compare; ratios are to the first")
    parser.add_argument("--sizes", type=int, nargs="+", help="square layer sizes")
    parser.add_argument("--no-models", action="store_true", help="skip VGG-16 and ResNet-32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if args.threads < 0:
        parser.error(f"--threads={args.threads} must be >= 0 (0: torch's default)")
    for name in args.backends:
        if name not in list_backends():
            parser.error(f"--backends: unknown EOI backend {name!r}; choose from "
                         f"{', '.join(list_backends())}")
        if name not in list_backends(available_only=True):
            sys.exit(f"EOI backend {name!r} cannot run here (compiled: pip install numba, or "
                     f"the [fast] extra)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([128, 512, 2048] if args.quick else [128, 256, 512, 1024, 2048, 4096])
    models = [] if args.no_models else ["resnet32"] if args.quick else ["resnet32", "vgg16"]
    first, others = args.backends[0], args.backends[1:]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}; ratio = time / time of {first}")
    header = f"{'case':<26} {'density':>7} {first + ' s':>18}"
    for name in others:
        header += f" {name + ' s':>18} {'ratio':>6} same masks  max |dW|"
    print(header)
    for case, weights, density in cases(sizes, models):
        big = sum(w.numel() for w in weights) >= 10**7
        reps = max(3, args.repeats // 2) if big else args.repeats
        t_first, masks_first, w_first = measure(first, weights, density, reps)
        line = f"{case:<26} {density:>7g} {t_first:>18.3g}"
        for name in others:
            t, masks, w = measure(name, weights, density, reps)
            same = all(torch.equal(a, b) for a, b in zip(masks_first, masks, strict=True))
            diff = max((a - b).abs().max().item() for a, b in zip(w_first, w, strict=True))
            line += f" {t:>18.3g} {t / t_first:>6.2f} {str(same):<10}  {diff:.1e}"
        print(line, flush=True)
    print("\nfresh process (compiled kernel already cached on disk):")
    for name in args.backends:
        imp, first_call = cold_start(name)
        print(f"  {name:<18} import orthosparse {imp:6.2f} s, first eoi_ 128x128 "
              f"{first_call:6.3f} s")


if __name__ == "__main__":
    main()
