"""Signal propagation of a configured network at initialization.

For each requested initialization the network is built by
:func:`~orthosparse.lab.experiment.build_experiment`, the builder ``train`` uses (same config
layers, data, seeds, mask method and :func:`~orthosparse.sparsify.sparsify` call), then measured
with :func:`~orthosparse.diagnostics.inspect_model`: per-layer density, orthogonality error,
activation and gradient norm, and the summary of the input-output Jacobian's singular values on
the first ``examples`` test images (the batch training uses for its ``--jacobian`` records).
Several inits give one comparison table, their spectra in one picture (a panel per init, sharing
the x axis, so none hides another) and their norms versus depth overlaid. A network deeper than 20
layers prints its first and last 5 layers and the min / median / max of the ones between
(``inspect.json`` keeps them all). ``orthosparse inspect`` calls :func:`inspect`.

With ``densities`` (``--densities 0.05 0.1 0.5 1``) every init is measured at every density (same
seed and data batch in every cell) and the Jacobian summary is reported versus density: one table
(rows: init, columns: density, cells ``mean ± std [min, max]``), ``jacobian_vs_density.png`` (the
paper's signal-propagation figure), ``.md`` and ``.csv``. Cells an init cannot build (SAO at a
density its block construction does not reach) are ``n/a`` with the error recorded.

Dynamical isometry (all Jacobian singular values near 1, `Resurrecting the sigmoid in deep
learning through dynamical isometry` - Pennington et al. (2017), arXiv 1711.04735) is what EOI
builds exactly: `Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact
Orthogonal Initialization` - Nowak et al. (2024), arXiv 2406.01755. For a linear-activation MLP
with orthogonal layers of gain ``g`` whose widths never grow past the input nor shrink below the
outputs, ``J J^T = g^(2 depth) I``, so every singular value is ``g^depth``.

Example:
    >>> from orthosparse.lab.config import resolve_config
    >>> cfg = resolve_config("digits", overrides={"depth": 20, "activation": "linear"})
    >>> result = inspect(cfg, ["eoi", "kaiming"], out="inspect-digits")
    >>> result["results"]["eoi"]["jacobian"]["condition_number"]  # ~1.0
    >>> sweep = inspect(cfg, ["eoi", "orthogonal"], densities=[0.05, 0.1, 0.5, 1.0])
    >>> sweep["density_sweep"]["summary"]["eoi"][0]["mean"]  # gain**depth = 1.0 at any density
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._atomic import write_atomic
from .._checks import check_density, check_positive_int, density_off_target
from .config import TrainConfig, check_names, config_to_dict

__all__ = ["inspect", "check_densities", "OUTPUT_FILES"]

# What ``inspect(..., out=DIR)`` writes into DIR.
OUTPUT_FILES: dict[str, str] = {
    "json": "inspect.json",
    "singular_values": "singular_values.png",
    "signal_propagation": "signal_propagation.png",
    "jacobian_vs_density": "jacobian_vs_density.png",
    "jacobian_vs_density_md": "jacobian_vs_density.md",
    "jacobian_vs_density_csv": "jacobian_vs_density.csv",
}
# Written without ``densities`` / with ``densities`` (and inspect.json in both cases).
_SINGLE_FILES: tuple[str, ...] = ("singular_values", "signal_propagation")
_SWEEP_FILES: tuple[str, ...] = ("jacobian_vs_density", "jacobian_vs_density_md",
                                 "jacobian_vs_density_csv")
_SUMMARY_KEYS: tuple[str, ...] = ("mean", "std", "min", "max", "condition_number")
# The printed per-layer table of a network deeper than 4 * _LAYERS_SHOWN keeps its first and last
# _LAYERS_SHOWN layers and sums up the ones between (min / median / max per column);
# inspect.json keeps every layer.
_LAYERS_SHOWN = 5


def _json_safe(value: Any) -> Any:
    """Non-finite floats become ``None`` (strict JSON); tuples become lists; recurse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _check_inits(inits: Sequence[str] | str | None, config: TrainConfig) -> list[str]:
    """Return the init names as a list; unknown names raise the registry's error."""
    if inits is None:
        inits = [config.init]
    elif isinstance(inits, str):
        inits = [inits]
    if not isinstance(inits, Sequence) or not all(isinstance(i, str) for i in inits):
        raise TypeError(f"inits must be a sequence of init names (str), got {inits!r}")
    names = list(inits)
    if not names:
        raise ValueError("inits is empty: give at least one init name")
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"init {name!r} is given twice in inits={names}")
        seen.add(name)
        check_names(dataclasses.replace(config, init=name))  # unknown name: lists the valid ones
    return names


def check_densities(densities: object) -> list[float]:
    """Return the densities as a list of floats in (0, 1]; reject empty input and duplicates.

    Raises:
        TypeError: not a sequence of real numbers.
        ValueError: empty, a density outside (0, 1], or one given twice.
    """
    if isinstance(densities, (str, bytes, Mapping)) or not isinstance(densities, Iterable):
        raise TypeError(f"densities must be a sequence of floats in (0, 1], got "
                        f"{type(densities).__name__}: {densities!r}")
    values = [check_density(d, f"densities[{i}]") for i, d in enumerate(densities)]
    if not values:
        raise ValueError("densities is empty: give at least one density in (0, 1]")
    seen: set[float] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"density {value:g} is given twice in densities="
                             f"[{', '.join(f'{v:g}' for v in values)}]")
        seen.add(value)
    return values


def _load_batch(config: TrainConfig, examples: int, device: torch.device
                ) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Load the data and take the first ``examples`` test examples, as training does."""
    from .experiment import first_examples, load_splits

    splits = load_splits(config)
    inputs, targets = first_examples(splits, examples, device)
    if inputs.shape[0] < examples:
        split = "test" if len(splits.test) else "train"
        warnings.warn(f"examples={examples} but the {split} split of {config.dataset!r} has "
                      f"{inputs.shape[0]} examples; using {inputs.shape[0]}", stacklevel=3)
    return splits, inputs, targets


def _measure(cfg: TrainConfig, splits: Any, inputs: torch.Tensor, targets: torch.Tensor,
             after_data: Any, device: torch.device) -> tuple[Any, torch.Tensor]:
    """Build ``cfg``'s network as ``train`` does, from the global RNG state training has after
    loading the data; return (report, singular values)."""
    from ..diagnostics import inspect_model, jacobian_singular_values
    from .checkpoint import set_rng_state
    from .experiment import build_experiment
    from .runtime import run_scope

    with run_scope(cfg.seed, cfg.deterministic, cfg.threads):
        set_rng_state(after_data)
        model = build_experiment(cfg, device, splits=splits).model
        report = inspect_model(model, inputs, gain=cfg.gain, targets=targets, max_examples=None)
        sv = jacobian_singular_values(model, inputs).cpu()  # (n, min(out, in))
    return report, sv


def _entry(report: Any, sv: torch.Tensor) -> dict[str, Any]:
    """The per-init result: Jacobian summary, spectra, per-layer report, propagation records."""
    from ..diagnostics import summarize_singular_values

    return {
        "jacobian": summarize_singular_values(sv),
        "singular_values": sv.tolist(),
        "layers": [dataclasses.asdict(layer) for layer in report.layers],
        "propagation": [dataclasses.asdict(r) for r in report.propagation],
    }


def _layer_table(report: Any, shown: int = _LAYERS_SHOWN) -> str:
    """The per-layer table of an ``InspectReport`` for the terminal, collapsed for deep networks.

    Up to ``4 * shown`` layers, ``str(report)``. Above, the first and last ``shown`` layers, and
    between them one line naming how many layers were elided and three rows (``min``,
    ``median``, ``max``) of their density, orthogonality error, activation and gradient norm, in
    the table's columns: a 1000-layer MLP prints 19 lines per init instead of 1005.
    """
    layers = report.layers
    if len(layers) <= 4 * shown:
        return str(report)
    kept = layers[:shown] + layers[-shown:]
    lines = str(dataclasses.replace(report, layers=kept)).split("\n")
    head = 4  # two legend lines, the column heads, the rule
    middle = layers[shown:-shown]
    width = max([len("layer"), *(len(layer.name) for layer in kept)])  # as str(report) has it
    shapes = {"x".join(str(s) for s in layer.shape) for layer in middle}
    shape = shapes.pop() if len(shapes) == 1 else f"({len(shapes)} shapes)"
    summary = [f"... {len(middle)} layers elided ({middle[0].name} .. {middle[-1].name}); "
               f"over them:"]
    for stat, fn in (("min", min), ("median", statistics.median), ("max", max)):
        density, orth, act, grad = (fn([getattr(layer, key) for layer in middle]) for key in (
            "density", "orthogonality_error", "activation_norm", "gradient_norm"))
        summary.append(f"{'  ' + stat:<{width}}  {shape:<18} {density:>8.4f} {orth:>10.3e} "
                       f"{act:>10.3e} {grad:>10.3e}")
    return "\n".join([*lines[:head + shown], *summary, *lines[head + shown:]])


def _fmt(value: float) -> str:
    return f"{value:>10.4g}"


def _comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per init: Jacobian singular-value summary and the largest orthogonality error."""
    width = max(len("init"), *(len(name) for name in results))
    head = (f"{'init':<{width}}  {'mean':>10} {'std':>10} {'min':>10} {'max':>10} "
            f"{'cond':>10} {'max_orth_err':>12}")
    lines = ["Jacobian singular values at init (pooled over examples):", head, "-" * len(head)]
    for name, res in results.items():
        jac = res["jacobian"]
        orth = [layer["orthogonality_error"] for layer in res["layers"]]
        worst = max(orth) if orth else math.nan
        lines.append(f"{name:<{width}}  " + " ".join(_fmt(jac[k]) for k in _SUMMARY_KEYS)
                     + f" {worst:>12.3e}")
    return "\n".join(lines)


def _plot(config: TrainConfig, spectra: dict[str, torch.Tensor], records: dict[str, list],
          out: Path, n: int) -> dict[str, str]:
    """Write the spectra (a panel per init) and the norms-versus-depth plot; return their
    paths."""
    from ..plotting import plot_signal_propagation, plot_singular_values

    title = (f"{config.model} on {config.dataset}, density {config.density:g} ({config.mask} "
             f"mask), gain {config.gain:g}, {n} examples")
    files: dict[str, str] = {}
    finite = {}
    for name, sv in spectra.items():
        if torch.isfinite(sv).all():
            finite[name] = sv
        else:
            warnings.warn(f"init {name!r}: the Jacobian is not finite (the network over- or "
                          f"underflows); its spectrum is left out of the histogram",
                          stacklevel=3)
    if finite:
        pooled = torch.cat([sv.flatten() for sv in finite.values()])
        positive = pooled[pooled > 0]
        # Spectra spread over orders of magnitude (Gaussian inits at depth) need a log axis; a
        # spectrum that collapsed to 0 is named in its own panel either way.
        log_x = positive.numel() > 0 and (positive.max() / positive.min()).item() > 10
        path = out / OUTPUT_FILES["singular_values"]
        with warnings.catch_warnings():  # the panels say which values a log axis cannot show
            warnings.filterwarnings("ignore", message=r"spectra\[.*values <= 0 cannot be shown")
            plot_singular_values(finite, log_x=log_x, path=path, title=(
                f"{config.model}, density {config.density:g} ({config.mask}), {n} examples"))
        files["singular_values"] = str(path)
    path = out / OUTPUT_FILES["signal_propagation"]
    plot_signal_propagation(records, kind="layer", title=title, path=path)
    files["signal_propagation"] = str(path)
    return files


def _sweep_cell(summary: Mapping[str, float] | None, density: float,
                error: str | None, achieved: float | None = None) -> dict[str, Any]:
    """One (init, density) cell: the Jacobian summary and the achieved mask density over the
    prunable layers, or None numbers and the error."""
    cell: dict[str, Any] = {"density": density, "achieved_density": achieved}
    cell.update({k: None if summary is None else summary[k] for k in _SUMMARY_KEYS})
    if error is not None:
        cell["error"] = error
    return cell


def _fmt_cell(cell: Mapping[str, Any]) -> str:
    if cell.get("error") is not None:
        return "n/a"
    text = f"{cell['mean']:.4g} ± {cell['std']:.2g} [{cell['min']:.4g}, {cell['max']:.4g}]"
    achieved = cell.get("achieved_density")
    if achieved is not None and density_off_target(achieved, cell["density"]):
        text += f" (density {achieved:.3g})"  # e.g. SAO's dense fallback layers
    return text


def _achieved_density(report: Any) -> float:
    """Mask density over all measured layers, weighted by their sizes."""
    sizes = [math.prod(layer.shape) for layer in report.layers]
    return sum(layer.density * n for layer, n in zip(report.layers, sizes, strict=True)) / sum(
        sizes)


def _sweep_table(sweep: Mapping[str, Any], heading: str) -> str:
    """Markdown table, rows: init, columns: density, cells ``mean ± std [min, max]``."""
    densities, summary = sweep["densities"], sweep["summary"]
    rows = [["init"] + [f"{d:g}" for d in densities]]
    rows += [[name] + [_fmt_cell(c) for c in summary[name]] for name in sweep["inits"]]
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                 for j, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if j == 0 else "-" * (w + 1) + ":"
                          for j, w in enumerate(widths)) + "|"
    lines = [heading, "", line(rows[0]), rule, *(line(r) for r in rows[1:])]
    if any("(density " in cell for row in rows[1:] for cell in row):
        lines += ["", "(density x): the achieved mask density differs from the column's by more "
                      "than 10% (layers an init could not build at that density were left "
                      "dense, e.g. SAO with fallback=true)"]
    failed = [(name, c) for name in sweep["inits"] for c in summary[name]
              if c.get("error") is not None]
    if failed:
        lines += ["", "n/a: the init cannot build that density:"]
        lines += [f"- {name} at density {c['density']:g}: {c['error']}" for name, c in failed]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def _write_sweep_csv(sweep: Mapping[str, Any], path: Path) -> None:
    """One row per (init, density): the summary numbers, or empty numbers and the error."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["init", "density", "achieved_density", *_SUMMARY_KEYS, "error"])
    for name in sweep["inits"]:
        for c in sweep["summary"][name]:
            achieved = c.get("achieved_density")
            writer.writerow([name, repr(c["density"]),
                             "" if achieved is None else repr(float(achieved)),
                             *("" if c[k] is None else repr(float(c[k]))
                               for k in _SUMMARY_KEYS), c.get("error") or ""])
    _write_text(path, buf.getvalue())


def _write_json(result: dict[str, Any], out_dir: Path) -> None:
    _write_text(out_dir / OUTPUT_FILES["json"], json.dumps(_json_safe(result), indent=1) + "\n")


def inspect(config: TrainConfig, inits: Sequence[str] | str | None = None, *,
            out: str | os.PathLike | None = None, examples: int | None = None,
            densities: Sequence[float] | None = None) -> dict[str, Any]:
    """Measure the signal propagation of the configured network at init, for one or more inits.

    For each init (``dataclasses.replace(config, init=name)``) the model, masks and weights are
    built by :func:`orthosparse.lab.experiment.build_experiment`, as
    :func:`orthosparse.lab.train.train` builds them, and
    :func:`orthosparse.diagnostics.inspect_model` measures per-layer density, orthogonality error
    ``||W W^T - gain^2 I||_F / sqrt(r)``, activation and gradient norms (cross-entropy on the
    test labels) and the pooled singular values ``sigma(d logits(x_b) / d x_b)`` of the
    per-example Jacobians. Tables are printed unless ``config.progress == "none"``.

    With ``densities`` every (init, density) cell is measured the same way on
    ``dataclasses.replace(config, density=d, init=name)`` (``config.density`` is not used), with
    the same seed and data batch in every cell: the signal-propagation-versus-density figure of
    `Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
    Initialization` - Nowak et al. (2024), arXiv 2406.01755. A cell whose init raises
    ``ValueError`` (SAO cannot build every density) is recorded with its ``error`` and shown as
    ``n/a``; other exceptions propagate. The per-layer reports are not printed (one line per
    cell instead), and the per-density spectra pictures are not drawn.

    Args:
        config: the resolved configuration (``resolve_config``); ``config.init`` is used when
            ``inits`` is None.
        inits: init names to compare (:func:`orthosparse.schemes.list_inits`), or one name.
        out: directory for ``inspect.json`` (everything returned) and the pictures: without
            ``densities``, ``singular_values.png`` (the spectra, a panel per init) and
            ``signal_propagation.png`` (norms versus depth); with ``densities``,
            ``jacobian_vs_density.png``/``.md``/``.csv`` (the summary versus density as a
            picture, a Markdown table, one CSV row per init and density). None writes nothing.
        examples: number of test examples for norms and the Jacobian (default:
            ``config.jacobian_examples``, the batch training records its Jacobian on).
        densities: densities in (0, 1] to sweep, each once (kept in the given order).

    Returns:
        A JSON-ready dict (non-finite numbers as None): ``config``, ``inits``, ``examples``,
        ``results[init]`` with ``jacobian`` (mean, std, min, max, condition_number),
        ``singular_values`` (one list per example, descending), ``layers`` and ``propagation``,
        and ``files`` (paths written). With ``densities``, ``results`` is that of the last
        density (inits that failed there are absent), and ``density_sweep`` holds
        ``densities``, ``inits``, ``summary[init]`` (one cell per density: ``density``, mean,
        std, min, max, condition_number; a failed cell has None numbers and ``error``) and
        ``results`` (one ``{init: result}`` per density, failed cells absent).

    Raises:
        TypeError: config, inits or densities of the wrong type.
        ValueError: an unknown init/dataset/model/mask name (listing the valid ones), a bad value
            (a density outside (0, 1], a density given twice), a setting the model does not take,
            or, with ``densities``, no cell that could be built.

    Example:
        >>> inspect(resolve_config("digits"), ["eoi", "orthogonal", "kaiming"], out="figs")
        >>> inspect(resolve_config("digits"), ["eoi", "sao"], densities=[0.1, 0.5], out="sweep")
    """
    from .checkpoint import rng_state
    from .runtime import resolve_device, run_scope

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    names = _check_inits(inits, config)
    sweep_densities = None if densities is None else check_densities(densities)
    examples = check_positive_int(config.jacobian_examples if examples is None else examples,
                                  "examples")
    out_dir = None if out is None else Path(out)
    echo = print if config.progress != "none" else (lambda *a, **k: None)
    device = resolve_device(config.device)

    with run_scope(config.seed, config.deterministic, config.threads):
        splits, inputs, targets = _load_batch(config, examples, device)
        after_data = rng_state()  # every cell starts from the global state training has here
    n = inputs.shape[0]
    if sweep_densities is not None:
        return _sweep(config, names, sweep_densities, splits, inputs, targets, after_data,
                      device, out_dir, echo)

    results: dict[str, dict[str, Any]] = {}
    spectra: dict[str, torch.Tensor] = {}
    records: dict[str, list] = {}
    for name in names:
        cfg = dataclasses.replace(config, init=name)
        report, sv = _measure(cfg, splits, inputs, targets, after_data, device)
        spectra[name] = sv
        records[name] = report.propagation
        results[name] = _entry(report, sv)
        echo(f"== init {name}: {cfg.model} on {cfg.dataset}, density {cfg.density:g} "
             f"({cfg.mask} mask), seed {cfg.seed}, device {device}")
        echo(_layer_table(report))
        echo()
    if len(names) > 1:
        echo(_comparison_table(results))
        echo()
    result: dict[str, Any] = {
        "config": config_to_dict(config), "inits": names, "examples": n,
        "results": results, "files": {},
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = _plot(config, spectra, records, out_dir, n)
        files["json"] = str(out_dir / OUTPUT_FILES["json"])
        result["files"] = files
        _write_json(result, out_dir)
        for key in (*_SINGLE_FILES, "json"):
            if key in files:
                echo(f"wrote {files[key]}")
    return _json_safe(result)


def _sweep(config: TrainConfig, names: list[str], densities: list[float], splits: Any,
           inputs: torch.Tensor, targets: torch.Tensor, after_data: Any, device: torch.device,
           out_dir: Path | None, echo: Any) -> dict[str, Any]:
    """The ``densities`` branch of :func:`inspect`: every init at every density."""
    from ..diagnostics import summarize_singular_values

    n = inputs.shape[0]
    echo(f"== {config.model} on {config.dataset} ({config.mask} mask), gain {config.gain:g}, "
         f"seed {config.seed}, device {device}, {n} examples: {len(names)} inits x "
         f"{len(densities)} densities")
    summary: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    per_density: list[dict[str, dict[str, Any]]] = []
    for density in densities:
        results: dict[str, dict[str, Any]] = {}
        for name in names:
            cfg = dataclasses.replace(config, density=density, init=name)
            try:
                report, sv = _measure(cfg, splits, inputs, targets, after_data, device)
            except ValueError as err:  # e.g. SAO cannot build this density for some layer
                summary[name].append(_sweep_cell(None, density, f"{err}"))
                echo(f"density {density:g}, init {name}: n/a ({err})")
                continue
            results[name] = _entry(report, sv)
            cell = _sweep_cell(summarize_singular_values(sv), density, None,
                               _achieved_density(report))
            summary[name].append(cell)
            echo(f"density {density:g}, init {name}: Jacobian singular values {_fmt_cell(cell)}")
        per_density.append(results)
    if not any(per_density):
        first = summary[names[0]][0]
        raise ValueError(f"no (init, density) cell could be built; init {names[0]!r} at density "
                         f"{first['density']:g}: {first['error']}")
    sweep = {"densities": densities, "inits": names, "summary": summary,
             "results": per_density}
    table = _sweep_table(sweep, f"Jacobian singular values at init versus density: mean ± std "
                                f"[min, max] over {n} examples ({config.model} on "
                                f"{config.dataset}, {config.mask} mask, gain {config.gain:g})")
    echo()
    echo(table)
    echo()
    result: dict[str, Any] = {
        "config": config_to_dict(config), "inits": names, "examples": n,
        "results": per_density[-1], "files": {}, "density_sweep": sweep,
    }
    if out_dir is not None:
        from ..plotting import plot_jacobian_vs_density

        out_dir.mkdir(parents=True, exist_ok=True)
        files = {key: str(out_dir / OUTPUT_FILES[key]) for key in (*_SWEEP_FILES, "json")}
        plot_jacobian_vs_density(sweep, files["jacobian_vs_density"], title=(
            f"{config.model} on {config.dataset}, {config.mask} mask, gain {config.gain:g}, "
            f"{n} examples"))
        _write_text(Path(files["jacobian_vs_density_md"]), table + "\n")
        _write_sweep_csv(sweep, Path(files["jacobian_vs_density_csv"]))
        result["files"] = files
        _write_json(result, out_dir)
        for key in (*_SWEEP_FILES, "json"):
            echo(f"wrote {files[key]}")
    return _json_safe(result)
