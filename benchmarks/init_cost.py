"""Cost of sparse initializations side by side: EOI, SAO, AI (1,000 SGD steps), dense orthogonal.

Part 1, one square layer ``n x n`` (sizes 128..4096, densities 0.05..0.5): the median wall time
of ``repeats`` runs of each initializer and the orthogonality error it reaches,
``||W W^T - I||_F / sqrt(n)`` of the masked weight.

Part 2, whole paper models (7x100 MLP, 1000-layer MLP, VGG-16, ResNet-32), every Linear/Conv
weight at one density: ``eoi`` (same-shape layers batched with ``eoi_group_``), ``sao``
(``sao_layers_``, ``fallback=True``: layers SAO cannot build, e.g. 784->100 or the 3-channel stem,
become dense orthogonal; the count is shown), ``ai`` (uniform random mask with the exact count,
orthogonal start, 1,000 steps of lr 0.1) and dense ``orthogonal``. The error column is the mean
over layers; convs are reduced to their centre tap (delta-orthogonal kernels), except for AI,
whose objective is the flattened ``c_out x c_in*k*k`` matrix, which is what its column shows.

AI's 1,000 steps are two dense matmuls each, the same work every step. When 1,000 steps are
estimated to take more than ``--ai-budget`` seconds (per layer cell; 5x that per model) the time
is extrapolated, ``t = t(0) + 1000 * (t(k) - t(0)) / k`` from ``k`` measured steps filling the
budget (marked ``*``; the error column is then ``-``, and in part 1 the extrapolated cost, which
does not depend on the density, is measured once per size). Otherwise the full 1,000 steps are
timed and their error is shown.

Densities SAO cannot build (``degree = density * n`` must divide ``n``) print ``n/a``: that is
the method's restriction, not a failure of the benchmark.

    python benchmarks/init_cost.py            # about 5 minutes on 2 CPU cores
    python benchmarks/init_cost.py --quick    # about 30 seconds
    options: --repeats N (>= 3), --threads N (default 1; 0 = torch's default), --ai-budget S,
             --sizes ..., --densities ..., --no-models, --plot PATH, --backend NAME (EOI)

One thread by default: every method gets the same single core, and timings stay stable when
other processes share the machine (two OpenMP threads on two busy cores can be 10x slower).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from _common import eoi_by_shape, median_time
from orthosparse._checks import keep_count
from orthosparse._layers import prunable_layers
from orthosparse.baselines import approximate_isometry_, sao_, sao_degrees, sao_layers_
from orthosparse.diagnostics import orthogonality_error
from orthosparse.eoi import default_backend
from orthosparse.init import eoi_, orthogonal_

AI_ITERATIONS = 1000
METHODS = ("eoi", "sao", "ai", "orthogonal")


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def uniform_mask(shape: tuple[int, ...], density: float, generator: torch.Generator
                 ) -> torch.Tensor:
    """Exactly ``keep_count(density, numel)`` kept positions (the masks' rounding, halves up),
    uniformly at random."""
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[: keep_count(density, numel)]] = True
    return mask.view(shape)


def time_ai(run: Callable[[int], object], repeats: int, budget: float
            ) -> tuple[float, bool]:
    """Median time of ``AI_ITERATIONS`` steps of ``run(k)``; (seconds, extrapolated?).

    If the full run is estimated to fit in ``budget`` seconds it is measured; otherwise
    ``t(0) + AI_ITERATIONS * (t(k) - t(0)) / k`` with ``k`` steps filling about ``budget``.
    """
    t0 = median_time(lambda: run(0), repeats)
    t1 = median_time(lambda: run(1), repeats)
    step = max(t1 - t0, 1e-6)
    if AI_ITERATIONS * step <= budget:
        return median_time(lambda: run(AI_ITERATIONS), repeats), False
    k = max(1, min(AI_ITERATIONS - 1, int(budget / step)))
    tk = t1 if k == 1 else median_time(lambda: run(k), repeats)
    return t0 + AI_ITERATIONS * max(tk - t0, 0.0) / k, True


# --------------------------------------------------------------------------- part 1: one layer


def bench_layers(sizes: list[int], densities: list[float], repeats: int, budget: float,
                 seed: int, backend: str = "auto") -> list[dict]:
    rows = []
    for n in sizes:
        w = torch.empty(n, n)
        gen = torch.Generator().manual_seed(seed)
        t_orth = median_time(lambda: orthogonal_(w, generator=gen), repeats)  # noqa: B023
        err_orth = orthogonality_error(w)
        shared_ai = None  # AI's cost does not depend on the density when it is extrapolated
        for d in densities:
            row = {"n": n, "density": d, "orthogonal": t_orth, "err_orthogonal": err_orth}
            masks = []
            row["eoi"] = median_time(
                lambda: masks.append(eoi_(w, d, generator=gen, backend=backend)),  # noqa: B023
                repeats)
            row["err_eoi"] = orthogonality_error(w, masks[-1])
            degree = d * n
            if degree == round(degree) and round(degree) in sao_degrees((n, n)):
                row["sao"] = median_time(
                    lambda: masks.append(sao_(w, d, generator=gen)), repeats)  # noqa: B023
                row["err_sao"] = orthogonality_error(w, masks[-1])
            else:
                row["sao"] = row["err_sao"] = None
            mask = uniform_mask((n, n), d, gen)

            def run_ai(k, mask=mask):
                approximate_isometry_([w], [mask], iterations=k, generator=gen)  # noqa: B023

            if shared_ai is None:
                row["ai"], row["ai_extrapolated"] = time_ai(run_ai, repeats, budget)
                if row["ai_extrapolated"]:
                    shared_ai = row["ai"]
            else:
                row["ai"], row["ai_extrapolated"] = shared_ai, True
            row["err_ai"] = None
            if not row["ai_extrapolated"]:
                run_ai(AI_ITERATIONS)
                row["err_ai"] = orthogonality_error(w, mask)
            rows.append(row)
            progress(f"layer n={n} density={d:g} done")
    return rows


# --------------------------------------------------------------------------- part 2: models


def build_models(quick: bool) -> list[tuple[str, nn.Module, float, str, int]]:
    """(name, model, density, SAO activation) for each paper model.

    SAO uses its plain construction everywhere, also in the ReLU nets: the mirrored one costs the
    same, and its centre matrix ``[[M, -M], [-M, M]]`` is orthogonal only in the looks-linear
    sense, which the error column could not show.
    """
    from orthosparse.models import create_model

    specs = [("mlp 7x100", dict(name="mlp", depth=7, width=100, in_features=784,
                                num_classes=10, activation="tanh"), 0.1, "tanh"),
             ("resnet32", dict(name="resnet32", in_channels=3, num_classes=10), 0.125, "tanh")]
    if not quick:
        specs[1:1] = [
            ("mlp 1000x128", dict(name="mlp", depth=1000, width=128, in_features=784,
                                  num_classes=10, activation="tanh"), 0.125, "tanh"),
            ("vgg16", dict(name="vgg16", in_channels=3, num_classes=10), 0.125, "tanh"),
        ]
    out = []
    for label, kw, density, act in specs:
        kw = dict(kw)
        out.append((label, create_model(kw.pop("name"), **kw), density, act))
    return out


def init_model(method: str, weights: list[torch.Tensor], density: float, activation: str,
               gen: torch.Generator, ai_steps: int = AI_ITERATIONS,
               ai_masks: list[torch.Tensor] | None = None, backend: str = "auto"
               ) -> tuple[list[torch.Tensor], int]:
    """Initialize ``weights`` with ``method``; return (masks, layers SAO left dense)."""
    if method == "orthogonal":
        for w in weights:
            orthogonal_(w, generator=gen)
        return [torch.ones(w.shape, dtype=torch.bool) for w in weights], 0
    if method == "eoi":
        return eoi_by_shape(weights, density, gen, backend), 0
    if method == "sao":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            masks = sao_layers_(weights, [density] * len(weights), generator=gen,
                                activation=activation, fallback=True)
        return masks, sum("dense orthogonal" in str(c.message) for c in caught)
    assert method == "ai" and ai_masks is not None
    approximate_isometry_(weights, ai_masks, iterations=ai_steps, generator=gen)
    return ai_masks, 0


def bench_models(quick: bool, repeats: int, budget: float, seed: int, backend: str = "auto"
                 ) -> list[dict]:
    rows = []
    for label, model, density, act in build_models(quick):
        weights = [layer.weight.data for layer in prunable_layers(model)]
        gen = torch.Generator().manual_seed(seed)
        ai_masks = [uniform_mask(tuple(w.shape), density, gen) for w in weights]
        row = {"model": label, "layers": len(weights), "density": density}
        for method in METHODS:
            if method == "ai":
                def run(k):
                    return init_model("ai", weights, density, act, gen, k, ai_masks)  # noqa: B023

                row["ai"], row["ai_extrapolated"] = time_ai(run, repeats, budget)
                if not row["ai_extrapolated"]:
                    run(AI_ITERATIONS)
                masks, dense = ai_masks, 0
            else:
                result = []
                row[method] = median_time(
                    lambda: result.append(  # noqa: B023
                        init_model(method, weights, density, act, gen,  # noqa: B023
                                   backend=backend)),
                    repeats)
                masks, dense = result[-1]
            if method == "sao":
                row["sao_dense_layers"] = dense
                row["sao_density"] = (sum(int(m.sum()) for m in masks)
                                      / sum(m.numel() for m in masks))
            if method == "ai" and row["ai_extrapolated"]:
                row["err_ai"] = None
                continue
            conv = "flat" if method == "ai" else "center"
            errs = [orthogonality_error(w, m, conv=conv) for w, m in zip(weights, masks,
                                                                        strict=True)]
            row[f"err_{method}"] = statistics.fmean(errs)
            progress(f"{label}: {method} done")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- output


def fmt_time(t: float | None, extrapolated: bool = False) -> str:
    if t is None:
        return "n/a"
    return f"{t:.3g}{'*' if extrapolated else ''}"


def fmt_err(e: float | None) -> str:
    return "-" if e is None else f"{e:.1e}"


def print_table(header: list[str], lines: list[list[str]]) -> None:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for line in lines:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


def report_layers(rows: list[dict]) -> None:
    header = ["n", "density", "eoi s", "sao s", "ai s", "orth s", "eoi/orth", "err eoi",
              "err sao", "err ai", "err orth"]
    lines = [[str(r["n"]), f"{r['density']:g}", fmt_time(r["eoi"]), fmt_time(r["sao"]),
              fmt_time(r["ai"], r["ai_extrapolated"]), fmt_time(r["orthogonal"]),
              f"{r['eoi'] / r['orthogonal']:.2f}", fmt_err(r["err_eoi"]), fmt_err(r["err_sao"]),
              fmt_err(r["err_ai"]), fmt_err(r["err_orthogonal"])] for r in rows]
    print_table(header, lines)


def report_models(rows: list[dict]) -> None:
    header = ["model", "layers", "density", "eoi s", "sao s", "ai s", "orth s", "err eoi",
              "err sao", "err ai", "err orth", "sao dense layers", "sao density"]
    lines = [[r["model"], str(r["layers"]), f"{r['density']:g}", fmt_time(r["eoi"]),
              fmt_time(r["sao"]), fmt_time(r["ai"], r["ai_extrapolated"]),
              fmt_time(r["orthogonal"]), fmt_err(r["err_eoi"]), fmt_err(r["err_sao"]),
              fmt_err(r["err_ai"]), fmt_err(r["err_orthogonal"]), str(r["sao_dense_layers"]),
              f"{r['sao_density']:.4f}"] for r in rows]
    print_table(header, lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    densities = sorted({r["density"] for r in rows})
    styles = dict(zip(densities, ["-", "--", ":", "-."] * 4, strict=False))
    colors = {"eoi": "C0", "sao": "C1", "ai": "C2", "orthogonal": "C3"}
    for method in METHODS:
        for d in densities if method in ("eoi", "sao") else densities[:1]:
            pts = [r for r in rows if r["density"] == d and r[method]]
            if not pts:
                continue
            label = {"ai": f"ai, {AI_ITERATIONS} steps (open marker: extrapolated)",
                     "orthogonal": "dense orthogonal"}.get(method, f"{method} d={d:g}")
            ax.plot([r["n"] for r in pts], [r[method] for r in pts],
                    styles[d] if method in ("eoi", "sao") else "-", color=colors[method],
                    label=label)
            for r in pts:
                hollow = method == "ai" and r["ai_extrapolated"]
                ax.plot(r["n"], r[method], "o", color=colors[method],
                        markerfacecolor="white" if hollow else colors[method])
    ax.set(xscale="log", yscale="log", xlabel="layer size n (n x n)", ylabel="seconds (median)",
           title="Initialization time of one layer")
    ax.set_xticks(sorted({r["n"] for r in rows}), [str(n) for n in sorted({r["n"] for r in rows})])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 30 seconds: small sizes only")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median)")
    parser.add_argument("--sizes", type=int, nargs="+", help="layer sizes (default by mode)")
    parser.add_argument("--densities", type=float, nargs="+", help="layer densities")
    parser.add_argument("--no-models", action="store_true", help="skip part 2 (whole models)")
    parser.add_argument("--plot", type=Path, default=Path("init_cost.png"), help="PNG path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto",
                        help="EOI backend (orthosparse.eoi.list_backends(); default auto)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every method (default 1: stable on a shared "
                        "machine; 0 = torch's default)")
    parser.add_argument("--ai-budget", type=float, help="seconds of AI steps per cell before "
                        "its time is extrapolated (default 1, --quick 0.2)")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error(f"--repeats={args.repeats} must be >= 3 (median of at least 3 runs)")
    if args.threads < 0:
        parser.error(f"--threads={args.threads} must be >= 0 (0: torch's default)")
    sizes = args.sizes or ([128, 256, 512] if args.quick else [128, 256, 512, 1024, 2048, 4096])
    densities = args.densities or ([0.05, 0.125, 0.5] if args.quick
                                   else [0.05, 0.125, 0.25, 0.5])
    budget = args.ai_budget or (0.2 if args.quick else 1.0)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    backend = default_backend() if args.backend == "auto" else args.backend
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, EOI backend "
          f"{backend}, median of {args.repeats} runs; * = AI time extrapolated from a few steps")
    eoi_(torch.empty(8, 8), 0.5, backend=args.backend)  # load the compiled kernel before timing
    start = time.perf_counter()
    print("\n== one n x n layer ==")
    layer_rows = bench_layers(sizes, densities, args.repeats, budget, args.seed, args.backend)
    report_layers(layer_rows)
    if not args.no_models:
        print("\n== whole models (every Linear/Conv weight at the density shown) ==")
        report_models(bench_models(args.quick, args.repeats, 5 * budget, args.seed,
                                   args.backend))
    plot(layer_rows, args.plot)
    print(f"\nplot: {args.plot}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
