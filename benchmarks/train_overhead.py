"""Cost of fixed masks in training, and time of one ``sparsify`` call on a 1000-layer MLP.

Part 1 - training-step overhead (target <= 1.05x). One step = forward + backward +
``SGD(momentum=0.9, nesterov=True, weight_decay=1e-4).step()``. The masked model has fixed masks
installed (``apply_masks``: mask buffers + gradient hooks); the dense one is a copy with the same
starting values and no masks, so both do the same dense arithmetic; the difference is the
machinery. Every repeat runs ``--steps`` dense
and ``--steps`` masked steps interleaved one by one (alternating which goes first), takes the
median step time of each and their ratio; the table shows medians over ``--repeats`` and the
range of the per-repeat ratios. The last column is the same ratio in process CPU time
(``time.process_time``), which ignores time the process spends descheduled: steadier on a
shared machine, meaningful with ``--threads 1`` on CPU (not for CUDA, where the GPU works).

Part 2 - ``sparsify(model, 0.125, mask="erk", init="eoi")`` on a 1000-layer width-128 MLP
(784 -> 128 x 999 -> 10), split into its stages, next to dense ``orthogonal_`` on every layer.

    python benchmarks/train_overhead.py                  # CPU (and CUDA when available)
    python benchmarks/train_overhead.py --repeats 9 --steps 50 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from _common import sync
from orthosparse._layers import prunable_layers
from orthosparse.masks import compute_masks
from orthosparse.schemes import init_layers
from orthosparse.sparse import apply_masks, remove_masks
from orthosparse.sparsify import sparsify


def mlp(depth: int, width: int, inputs: int, classes: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [inputs] + [width] * (depth - 1) + [classes]
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < depth - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def cifar_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def one_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """Run one training step; return (wall seconds, process CPU seconds)."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def step_overhead(name: str, make, input_shape: tuple[int, ...], batch: int, density: float,
                  device: torch.device, repeats: int, steps: int) -> dict[str, object]:
    torch.manual_seed(0)  # benchmark-side seeding only
    masked = make().to(device)
    g = torch.Generator().manual_seed(0)
    masks = {layer.name: torch.rand(layer.weight.shape, generator=g) < density
             for layer in prunable_layers(masked)}
    apply_masks(masked, masks)
    # The dense twin starts from the same (sparse) values, without the machinery: the two
    # differ only in the mask hooks, not in the numbers flowing through them.
    dense = remove_masks(copy.deepcopy(masked), bake=False)
    x = torch.randn(batch, *input_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    models = (dense, masked)
    opts = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, nesterov=True,
                            weight_decay=1e-4) for m in models]
    for _ in range(max(3, steps // 5)):  # warm-up: allocations, optimizer state
        for i in (0, 1):
            one_step(models[i], opts[i], x, y, device)
    dense_t, masked_t, ratios, cpu_ratios = [], [], [], []
    for _ in range(repeats):
        # Steps alternate dense/masked (and which goes first), so load changes on a shared
        # machine hit both alike; the per-step median drops interrupted steps.
        wall: tuple[list[float], list[float]] = ([], [])
        cpu: tuple[list[float], list[float]] = ([], [])
        for k in range(steps):
            for i in ((0, 1) if k % 2 == 0 else (1, 0)):
                w, c = one_step(models[i], opts[i], x, y, device)
                wall[i].append(w)
                cpu[i].append(c)
        d, m = statistics.median(wall[0]), statistics.median(wall[1])
        dense_t.append(d)
        masked_t.append(m)
        ratios.append(m / d)
        cpu_ratios.append(statistics.median(cpu[1]) / statistics.median(cpu[0]))
    for mask_name, mask in masks.items():  # sanity: the masked run really kept its zeros
        weight = masked.get_parameter(mask_name)
        assert torch.count_nonzero(weight.detach()[~mask.to(device)]) == 0, mask_name
    return {"case": name, "device": str(device), "batch": batch,
            "dense_ms": 1e3 * statistics.median(dense_t),
            "masked_ms": 1e3 * statistics.median(masked_t),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "cpu_ratio": statistics.median(cpu_ratios)}


def sparsify_timing(depth: int, width: int, density: float, repeats: int) -> list[dict]:
    """Median time of ``sparsify`` (and of its stages, and of dense ``orthogonal_``)."""
    total = "sparsify(erk, eoi) total"
    stages = ("  compute_masks erk", "  init_layers eoi", "  apply_masks")
    baseline = "dense orthogonal_ per layer"
    times: dict[str, list[float]] = {k: [] for k in (total, *stages, baseline)}
    for r in range(repeats):
        model = mlp(depth, width, 784)
        start = time.perf_counter()
        sparsify(model, density, mask="erk", init="eoi",
                 generator=torch.Generator().manual_seed(r))
        times[total].append(time.perf_counter() - start)

        model = mlp(depth, width, 784)  # the same work, stage by stage
        g = torch.Generator().manual_seed(r)
        layers = prunable_layers(model)
        t0 = time.perf_counter()
        masks = compute_masks("erk", model, density, layers=layers, generator=g)
        t1 = time.perf_counter()
        final = init_layers("eoi", layers, masks, generator=g)
        t2 = time.perf_counter()
        apply_masks(model, final)
        t3 = time.perf_counter()
        for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            times[key].append(value)

        model = mlp(depth, width, 784)
        g = torch.Generator().manual_seed(r)
        start = time.perf_counter()
        with torch.no_grad():
            for layer in prunable_layers(model):
                nn.init.orthogonal_(layer.weight, generator=g)
        times[baseline].append(time.perf_counter() - start)
    base = statistics.median(times[baseline])
    return [{"stage": k, "median_s": statistics.median(v),
             "vs_dense_orthogonal": statistics.median(v) / base} for k, v in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="repeats (median; >= 5)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per repeat")
    parser.add_argument("--density", type=float, default=0.1, help="mask density, part 1")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (both if CUDA)")
    parser.add_argument("--skip-sparsify", action="store_true", help="only part 1")
    parser.add_argument("--sparsify-repeats", type=int, default=5,
                        help="repeats of the 1000-layer sparsify timing (median)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is steadier on a busy box)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")
    devices = ([torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                        else [])) if args.device == "auto" \
        else [torch.device(args.device)]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"median of {args.repeats} repeats x {args.steps} steps, density {args.density}")
    print(f"{'case':<28} {'device':<7} {'batch':>5} {'dense ms':>9} {'masked ms':>10} "
          f"{'ratio':>6} {'[min, max]':>14} {'cpu-time ratio':>15}")
    cases = [("MLP 7x100, MNIST 784", lambda: mlp(7, 100, 784), (784,), 128),
             ("CNN 4 conv, CIFAR 3x32x32", cifar_cnn, (3, 32, 32), 32)]
    for device in devices:
        for name, make, shape, batch in cases:
            row = step_overhead(name, make, shape, batch, args.density, device, args.repeats,
                                args.steps)
            print(f"{row['case']:<28} {row['device']:<7} {row['batch']:>5} "
                  f"{row['dense_ms']:>9.3f} {row['masked_ms']:>10.3f} {row['ratio']:>6.3f} "
                  f"[{row['ratio_min']:.3f}, {row['ratio_max']:.3f}] "
                  f"{row['cpu_ratio']:>15.3f}")
    if args.skip_sparsify:
        return
    print()
    print(f"sparsify on a 1000-layer width-128 MLP (784 -> 128 x 999 -> 10), ERK 0.125, CPU, "
          f"median of {args.sparsify_repeats}")
    print(f"{'stage':<32} {'median s':>9} {'vs dense orthogonal_':>21}")
    for row in sparsify_timing(1000, 128, 0.125, args.sparsify_repeats):
        print(f"{row['stage']:<32} {row['median_s']:>9.3f} {row['vs_dense_orthogonal']:>21.2f}")


if __name__ == "__main__":
    main()
