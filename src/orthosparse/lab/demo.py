"""The demo: EOI against masked orthogonal and Kaiming inits on a deep sparse tanh MLP (digits).

Same network, data, density, mask method, optimizer and seed; only the initialization changes.
A deep tanh MLP without residuals or normalization trains only if the signal keeps its size
through all layers: EOI's layers are exactly orthogonal (every Jacobian singular value of a
linear layer is ``gain``), while a dense orthogonal or Kaiming matrix with 7/8 of its entries
zeroed shrinks the signal by about ``sqrt(density)`` per layer; ``sparse-kaiming`` rescales by the
true fan-in, which keeps the signal's size only on average. The table reports what the runs
show, including the Jacobian singular values at initialization.

`Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
Initialization` - Nowak et al. (2024), arXiv 2406.01755.

Example:
    >>> result = demo(epochs=5)          # or `orthosparse demo` on the command line
    >>> print(result.table)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..paper import DEEP_TANH_BIAS_STD, DEEP_TANH_GAIN
from .config import TrainConfig
from .train import RunResult, train

__all__ = ["DEMO_DEFAULTS", "DemoRow", "DemoResult", "demo", "demo_config"]

# 1000-layer preset's edge-of-chaos tanh setting (sigma_w^2 = 1.05, sigma_b^2 = 2e-5), at a depth
# and width that train in about a minute on two CPU cores.
DEMO_DEFAULTS: dict[str, Any] = {
    "out": "runs/demo", "depth": 64, "width": 128, "density": 0.125, "epochs": 15,
    "lr": 0.01, "seed": 0, "inits": ("eoi", "orthogonal", "kaiming", "sparse-kaiming"),
}


@dataclass
class DemoRow:
    """One initialization's outcome."""

    init: str
    status: str
    test_acc: float | None
    test_loss: float | None
    best_test_acc: float | None
    train_loss: float | None
    jacobian_mean: float | None
    jacobian_std: float | None
    run_dir: str
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)


@dataclass
class DemoResult:
    """Rows in the order run, the printed table, the plot path (``None`` without matplotlib)."""

    rows: list[DemoRow]
    table: str
    plot: Path | None
    out: Path
    seconds: float


def demo_config(init: str, *, out: str | Path = DEMO_DEFAULTS["out"],
                depth: int = DEMO_DEFAULTS["depth"], width: int = DEMO_DEFAULTS["width"],
                density: float = DEMO_DEFAULTS["density"], epochs: int = DEMO_DEFAULTS["epochs"],
                lr: float = DEMO_DEFAULTS["lr"], seed: int = DEMO_DEFAULTS["seed"]
                ) -> TrainConfig:
    """Return the demo's config for one initialization (uniform mask: every layer at
    ``density``; SGD + Nesterov, batch 64, lr x0.1 at 50%/75%; the deep-tanh gain and bias std
    of :mod:`orthosparse.paper`)."""
    return TrainConfig(
        dataset="digits", model="mlp", depth=depth, width=width, activation="tanh",
        density=density, mask="uniform", init=init, gain=DEEP_TANH_GAIN,
        bias_std=DEEP_TANH_BIAS_STD,
        epochs=epochs, optimizer="sgd", lr=lr, momentum=0.9, nesterov=True, batch_size=64,
        weight_decay=1e-4, schedule="multistep", seed=seed, device="cpu", jacobian="init",
        jacobian_examples=32, out=str(out), name=f"demo-{init}", progress="none",
        tensorboard=False, threads=1,
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _row(init: str, result: RunResult) -> DemoRow:
    final = result.final
    jac = final.get("jacobian_init") or {}
    return DemoRow(
        init=init, status=result.status, test_acc=final.get("test_acc"),
        test_loss=final.get("test_loss"), best_test_acc=final.get("best_test_acc"),
        train_loss=final.get("train_loss"), jacobian_mean=jac.get("mean"),
        jacobian_std=jac.get("std"), run_dir=str(result.run_dir), history=result.history,
    )


def _table(rows: Sequence[DemoRow]) -> str:
    header = ("init", "test acc", "test loss", "best test acc", "train loss", "J sv mean",
              "J sv std", "status")
    body = [(r.init, _pct(r.test_acc), _num(r.test_loss), _pct(r.best_test_acc),
             _num(r.train_loss), _num(r.jacobian_mean, ".3g"), _num(r.jacobian_std, ".3g"),
             r.status) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def _plot(rows: Sequence[DemoRow], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]
    for k, r in enumerate(rows):
        epochs = [h["epoch"] for h in r.history]
        line, marker = styles[k % len(styles)]
        style = dict(ls=line, marker=marker, ms=4, label=r.init)
        ax_loss.plot(epochs, [h["train_loss"] for h in r.history], **style)
        ax_acc.plot(epochs, [(h["test_acc"] or 0) * 100 for h in r.history], **style)
    ax_loss.set(xlabel="epoch", ylabel="train loss (cross-entropy)", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def demo(*, out: str | Path = DEMO_DEFAULTS["out"], depth: int = DEMO_DEFAULTS["depth"],
         width: int = DEMO_DEFAULTS["width"], density: float = DEMO_DEFAULTS["density"],
         epochs: int = DEMO_DEFAULTS["epochs"], lr: float = DEMO_DEFAULTS["lr"],
         seed: int = DEMO_DEFAULTS["seed"], inits: Sequence[str] = DEMO_DEFAULTS["inits"],
         force: bool = False, plot: bool = True, verbose: bool = True) -> DemoResult:
    """Train a deep sparse tanh MLP on digits once per initialization; print and plot results.

    Writes ``<out>/demo-<init>-<hash>/`` per run (see :func:`orthosparse.lab.train.train`),
    ``<out>/demo.png`` (train loss and test accuracy per epoch) and ``<out>/demo.json``.
    Finished runs in ``out`` are reused unless ``force``.

    Raises:
        ValueError: a bad setting (the message names it) or an unknown initialization.

    Example:
        >>> demo(depth=32, epochs=5).rows[0].test_acc
    """
    if not inits:
        raise ValueError("inits is empty; give at least one initialization, e.g. ('eoi',)")
    out = Path(out)
    start = time.time()
    configs = [demo_config(i, out=out, depth=depth, width=width, density=density,
                           epochs=epochs, lr=lr, seed=seed) for i in inits]
    title = (f"digits, {depth}-layer tanh MLP, width {width}, density {density} (uniform mask), "
             f"{epochs} epochs")
    if verbose:
        print(f"orthosparse demo: {title}")
    rows = []
    for k, (init, cfg) in enumerate(zip(inits, configs, strict=True), 1):
        tick = time.time()
        result = train(cfg, force=force)
        row = _row(init, result)
        rows.append(row)
        if verbose:
            note = " (found, not retrained)" if result.skipped else ""
            print(f"[{k}/{len(inits)}] {init:<14} test acc {_pct(row.test_acc):>6}  test loss "
                  f"{_num(row.test_loss)}  {time.time() - tick:5.1f}s  {result.status}{note}")
    table = _table(rows)
    out.mkdir(parents=True, exist_ok=True)
    plot_path = _plot(rows, out / "demo.png", title) if plot else None
    seconds = time.time() - start
    (out / "demo.json").write_text(json.dumps(
        {"title": title, "seconds": seconds,
         "rows": [{k: v for k, v in asdict(r).items() if k != "history"} for r in rows]},
        indent=2) + "\n", encoding="utf-8")
    if verbose:
        print()
        print(table)
        print()
        if plot_path is not None:
            print(f"plot: {plot_path}")
        print(f"runs: {out}/  ({seconds:.0f} s)")
    return DemoResult(rows, table, plot_path, out, seconds)
