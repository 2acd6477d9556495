"""Command line: ``orthosparse <command>``; every command is one Python function.

    orthosparse demo                         # EOI vs baselines on a deep sparse MLP (~1 min, CPU)
    orthosparse presets [NAME]               # list presets / print one as TOML
    orthosparse train --preset mlp --density 0.05 --seed 1
    orthosparse train --config my.toml --lr 0.1 --resume

This is the package's only argparse module. :data:`COMMANDS` is the one table of commands: each
row names the command's help, the function adding its flags and the function it runs, which
turns the flags into a call of the lab function of the same name (``train`` ->
:func:`orthosparse.lab.train.train`, ``sweep`` -> :func:`orthosparse.lab.sweep.run_sweep`,
``report``, ``inspect``, ``demo``) and prints its result. The lab modules never import this one.

``train`` and ``inspect`` flags are generated from the fields of
:class:`~orthosparse.lab.config.TrainConfig` (help text included). A bad flag value found after
argparse is printed as ``orthosparse <command>: error: ...`` with exit code 2, and so is a
``ValueError``/``TypeError`` the lab function raises. Every error is one line (set
``ORTHOSPARSE_DEBUG=1`` for the traceback). Exit codes (:data:`EXIT_CODES`): 0 done, 1 a run
diverged or failed while running (a file could not be written: the last checkpoint is kept), 2
bad usage or input found before training (flags, config, output folder, corrupt run file), 3
the run is locked by another process, 130 interrupted (Ctrl-C; 143: SIGTERM), 141 the output
pipe was closed (``orthosparse presets | head -1``).

Adding a command: write the function in its lab module (plain Python, no argparse), then here a
``_x_flags(parser)``, a ``_run_x(args) -> exit code`` that calls it, and a row of
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import (
    GROUPS,
    check_names,
    config_fields,
    config_from_dict,
    config_to_toml,
    describe_type,
    field_type,
    parse_field,
    resolve_config,
    split_optional,
)
from .runs import (
    CHECKPOINT,
    AtomicWriteError,
    RunDirError,
    RunFileError,
    RunLockedError,
    read_json,
    silence_stdout,
)

__all__ = ["Command", "COMMANDS", "EXIT_CODES", "add_config_arguments", "add_source_arguments",
           "config_from_args", "build_parser", "main"]

PROG = "orthosparse"

EXIT_CODES: dict[int, str] = {
    0: "done (train: the run finished or already had a result; sweep: every run has a result)",
    1: "a run diverged or failed while running (e.g. a full disk: the last checkpoint is kept; "
       "continue with --resume); sweep: some runs failed",
    2: "bad usage or input, found before any training: a flag or config value, an unusable "
       "output folder, a corrupt run file, a checkpoint that is refused",
    3: "the run is being trained by another process (the message names it); nothing was done",
    130: "interrupted by Ctrl-C (SIGINT); the last checkpoint is kept, continue with --resume",
    141: "the output pipe was closed (e.g. `orthosparse presets | head -1`), 128 + SIGPIPE",
    143: "stopped by SIGTERM; the last checkpoint is kept, continue with --resume",
}
"""The exit codes of ``orthosparse`` and their meaning (README, "Exit codes")."""


@dataclass(frozen=True)
class Command:
    """One row of :data:`COMMANDS`.

    Attributes:
        help: the line ``orthosparse --help`` shows.
        flags: ``flags(parser)`` adds the command's arguments.
        run: ``run(args) -> exit code`` calls the command's lab function with the parsed flags.
        description, usage, epilog: the command's ``--help`` text (default: ``help``, argparse's
            usage line, none).
    """

    help: str
    flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""
    usage: str | None = None
    epilog: str | None = None


class _UsageError(Exception):
    """A bad flag value found after argparse; printed as ``prog: error: ...`` with exit code 2."""


# --------------------------------------------------------------------------- config flags


def _add(group: Any, name: str, **kwargs: Any) -> None:
    """Add ``--some-name``; ``--some_name`` is accepted too but not listed in the help."""
    dashed = name.replace("_", "-")
    group.add_argument(f"--{dashed}", **kwargs)
    if dashed != name:
        group.add_argument(f"--{name}", **{**kwargs, "help": argparse.SUPPRESS})


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--field`` flag per :class:`TrainConfig` field, grouped, with its help text.

    Flags default to "not given" (``argparse.SUPPRESS``) so only the flags a user types override
    the preset or TOML file; values are parsed by :func:`config_from_args`.
    """
    from .config import TrainConfig

    defaults = TrainConfig()
    groups = {g: parser.add_argument_group(f"{g} options") for g in GROUPS}
    for f in config_fields():
        hint = field_type(f.name)
        base, optional = split_optional(hint)
        default = getattr(defaults, f.name)
        shown = "none" if default is None else (
            ",".join(map(str, default)) if isinstance(default, list) else default)
        if isinstance(shown, bool):
            shown = str(shown).lower()
        help_text = f"{f.metadata['help']} [{describe_type(hint)}; default: {shown}]"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": help_text.replace("%", "%%")}
        origin = typing.get_origin(base)
        group = groups[f.metadata["group"]]
        if base is bool:
            _add(group, f.name, nargs="?", const="true", metavar="BOOL", **kwargs)
            group.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name,
                               action="store_const", const="false", default=argparse.SUPPRESS,
                               help=f"same as --{f.name.replace('_', '-')} false")
            continue
        if origin is list:
            kwargs.update(nargs="*", metavar=typing.get_args(base)[0].__name__.upper())
        elif origin is Literal:
            choices = [str(c) for c in typing.get_args(base)]
            kwargs.update(choices=choices, metavar="{" + ",".join(choices) + "}")
        else:
            kwargs.update(metavar=base.__name__.upper() + ("|none" if optional else ""))
        _add(group, f.name, **kwargs)
        if f.name == "dataset":  # `--data` alone would be ambiguous (--data-root, ...)
            group.add_argument("--data", **{**kwargs, "help": "same as --dataset"})


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Return the typed config overrides the user gave on the command line.

    Raises:
        _UsageError: a value that does not parse, naming the flag and what it takes.
    """
    overrides: dict[str, Any] = {}
    for f in config_fields():
        if not hasattr(args, f.name):
            continue
        try:
            overrides[f.name] = parse_field(f.name, getattr(args, f.name))
        except (TypeError, ValueError) as err:
            raise _UsageError(f"argument --{f.name.replace('_', '-')}: {err} (expected "
                              f"{describe_type(field_type(f.name))})") from None
    return overrides


def add_source_arguments(group: Any) -> None:
    """Add ``--preset NAME`` and ``--config FILE.toml``: where a command's config starts from."""
    from .presets import list_presets

    group.add_argument("--preset", choices=list_presets(), metavar="NAME",
                       help=f"start from a named experiment: {', '.join(list_presets())} "
                            f"(see `orthosparse presets`)")
    group.add_argument("--config", metavar="FILE.toml", help="TOML file with config keys, "
                       "applied after the preset (may name its own `preset = ...`)")


# --------------------------------------------------------------------------- train


def _train_flags(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run control")
    add_source_arguments(run)
    run.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                     help="continue an interrupted run from its checkpoint (the run directory "
                          "of this config, or RUN_DIR)")
    run.add_argument("--force", action="store_true",
                     help="delete earlier results of this config and train from scratch")
    run.add_argument("--stop-after", type=int, metavar="STEPS",
                     help="stop after this many optimizer steps (checkpoint kept; continue "
                          "with --resume), e.g. for time-limited jobs")
    run.add_argument("--dry-run", action="store_true",
                     help="print the resolved config (TOML) and the run directory, then exit")
    add_config_arguments(parser)


def _run_train(args: argparse.Namespace) -> int:
    from .train import train

    overrides = config_from_args(args)
    run_dir = None
    if isinstance(args.resume, str):
        run_dir = Path(args.resume)
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise _UsageError(f"argument --resume: {str(run_dir)!r} is not a run directory (no "
                              f"config.json)")
        if args.preset or args.config:
            raise _UsageError("argument --resume RUN_DIR: the run's config.json is used; drop "
                              "--preset/--config")
        data = read_json(config_path)
        if not isinstance(data, dict):
            raise RunFileError(f"run file {str(config_path)!r} holds a {type(data).__name__}, "
                               f"not a config")
        base = config_from_dict(data, where=f" (in {config_path})")
        config = config_from_dict(overrides, base)
    else:
        config = resolve_config(args.preset, args.config, overrides)
    check_names(config)
    if args.dry_run:
        print(f"# run directory: {run_dir or config.run_dir()}")
        print(config_to_toml(config))
        return 0
    if args.stop_after is not None and args.stop_after < 1:
        raise _UsageError(f"argument --stop-after: {args.stop_after} must be >= 1")
    try:
        result = train(config, resume=bool(args.resume), force=args.force, run_dir=run_dir,
                       stop_after=args.stop_after)
    except AtomicWriteError as err:  # during the run: say what is kept and how to go on
        if os.environ.get("ORTHOSPARSE_DEBUG"):
            raise
        checkpoint = Path(run_dir or config.run_dir()) / CHECKPOINT
        kept = (f"the last checkpoint {str(checkpoint)!r} is kept" if checkpoint.is_file() else
                "no checkpoint had been written yet")
        print(f"{PROG} train: error: {err}; {kept}: free space (or fix the folder) and rerun "
              f"with --resume", file=sys.stderr)
        return 1
    if result.status == "diverged":
        print(f"{PROG} train: {result.message}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- presets


def _presets_flags(parser: argparse.ArgumentParser) -> None:
    from .presets import list_presets

    parser.add_argument("name", nargs="?", choices=list_presets(), metavar="NAME",
                        help="print this preset's full config as TOML (usable with --config)")


def _run_presets(args: argparse.Namespace) -> int:
    from .presets import get_preset, list_presets

    if args.name is not None:
        print(f"# preset {args.name}: {get_preset(args.name).description}")
        print(config_to_toml(resolve_config(args.name)))
        return 0
    width = max(len(n) for n in list_presets())
    for name in list_presets():
        print(f"{name:<{width}}  {get_preset(name).description}")
    return 0


# --------------------------------------------------------------------------- demo


def _demo_flags(parser: argparse.ArgumentParser) -> None:
    from .demo import DEMO_DEFAULTS

    d = DEMO_DEFAULTS
    parser.add_argument("--out", default=d["out"], help=f"output directory [default: {d['out']}]")
    parser.add_argument("--depth", type=int, default=d["depth"],
                        help=f"MLP layers [default: {d['depth']}]")
    parser.add_argument("--width", type=int, default=d["width"],
                        help=f"MLP width [default: {d['width']}]")
    parser.add_argument("--density", type=float, default=d["density"],
                        help=f"weight density [default: {d['density']}]")
    parser.add_argument("--epochs", type=int, default=d["epochs"],
                        help=f"training epochs [default: {d['epochs']}]")
    parser.add_argument("--lr", type=float, default=d["lr"],
                        help=f"learning rate [default: {d['lr']}]")
    parser.add_argument("--seed", type=int, default=d["seed"],
                        help=f"random seed [default: {d['seed']}]")
    parser.add_argument("--inits", nargs="+", default=list(d["inits"]), metavar="INIT",
                        help=f"initializations to compare [default: {' '.join(d['inits'])}]")
    parser.add_argument("--force", action="store_true", help="retrain runs found in --out")
    parser.add_argument("--no-plot", dest="plot", action="store_false",
                        help="skip the PNG plot")


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    demo(out=args.out, depth=args.depth, width=args.width, density=args.density,
         epochs=args.epochs, lr=args.lr, seed=args.seed, inits=tuple(args.inits),
         force=args.force, plot=args.plot)
    return 0


# --------------------------------------------------------------------------- inspect


def _find_action(parser: argparse.ArgumentParser, option: str) -> argparse.Action:
    for action in parser._actions:  # argparse has no public lookup by option string
        if option in action.option_strings:
            return action
    raise AssertionError(f"{option} is not a flag of the parser")  # pragma: no cover


def _inspect_flags(parser: argparse.ArgumentParser) -> None:
    from ..schemes import list_inits

    run = parser.add_argument_group("inspect options")
    add_source_arguments(run)
    run.add_argument("--compare-inits", nargs="+", metavar="INIT",
                     help=f"initializations to compare in one table and one picture (same "
                          f"mask method, density and seed): {', '.join(list_inits())}; same as "
                          f"--init a,b,c")
    run.add_argument("--densities", nargs="+", type=float, metavar="D",
                     help="sweep these densities in (0, 1] instead of one --density: every init "
                          "at every density (same seed and data); prints a table (rows: init, "
                          "columns: density, cells mean ± std [min, max] of the Jacobian "
                          "singular values; n/a where an init cannot build a density) and "
                          "writes jacobian_vs_density.png/.md/.csv and inspect.json (no "
                          "singular_values.png/signal_propagation.png)")
    run.add_argument("--examples", type=int, metavar="N",
                     help="test examples for the norms and the Jacobian (default: "
                          "--jacobian-examples, 32 unless set)")
    add_config_arguments(parser)
    _find_action(parser, "--init").help = (
        f"initialization, or several separated by commas to compare them: "
        f"{', '.join(list_inits())} [default: the preset's, else eoi]")
    _find_action(parser, "--out").help = (
        "directory for inspect.json, singular_values.png and signal_propagation.png (with "
        "--densities: jacobian_vs_density.png/.md/.csv) [default: <out of the preset/TOML, "
        "else runs>/<name>-inspect]")


def _split_inits(words: Sequence[str], flag: str) -> list[str]:
    names = [w.strip() for word in words for w in word.split(",")]
    if not names or any(not w for w in names):
        raise _UsageError(f"argument {flag}: {','.join(words)!r} must be init names separated "
                          f"by commas or spaces, none empty")
    return names


def _run_inspect(args: argparse.Namespace) -> int:
    from .inspection import check_densities, inspect

    init_text = vars(args).pop("init", None)  # may list several inits: not a config value
    if init_text is not None and args.compare_inits is not None:
        raise _UsageError("argument --compare-inits: not allowed with --init; list the inits "
                          "in one of them")
    densities = args.densities
    if densities is not None:
        if hasattr(args, "density"):  # config flags are set only when typed
            raise _UsageError("argument --densities: not allowed with --density; list every "
                              "density in --densities")
        try:
            densities = check_densities(densities)
        except ValueError as err:
            raise _UsageError(f"argument --densities: {err}") from None
    overrides = config_from_args(args)
    out = overrides.pop("out", None)
    config = resolve_config(args.preset, args.config, overrides)
    if init_text is not None:
        inits = _split_inits([init_text], "--init")
    elif args.compare_inits is not None:
        inits = _split_inits(args.compare_inits, "--compare-inits")
    else:
        inits = None
    if args.examples is not None and args.examples < 1:
        raise _UsageError(f"argument --examples: {args.examples} must be >= 1")
    if out is None:
        out = Path(config.out) / f"{config.name}-inspect"
    inspect(config, inits, out=out, examples=args.examples, densities=densities)
    return 0


# --------------------------------------------------------------------------- sweep


def _sweep_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", metavar="GRID.toml|NAME",
                        help="sweep file or sweep preset name (omit to list the presets)")
    parser.add_argument("--jobs", "-j", type=int, default=1,
                        help="runs side by side (one GPU each when several are visible) "
                             "[default: 1]")
    parser.add_argument("--out", help="parent directory of the sweep directory [default: the "
                                      "file's [sweep] out, else sweeps]")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="fix a config key for every run, e.g. --set "
                        "epochs=1 (repeatable)")
    parser.add_argument("--skip-failed", action="store_true",
                        help="do not retry runs that failed before")
    parser.add_argument("--devices", help="comma-separated GPU ids to use (default: all "
                                          "visible)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="kill a run after this long and mark it failed")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs and their states; start nothing")
    parser.add_argument("--print", dest="print_toml", action="store_true",
                        help="print the sweep as a TOML file and exit")
    parser.add_argument("--report", action="store_true",
                        help="write the report (orthosparse report) when the sweep ends")
    from .executors import list_executors

    group = parser.add_argument_group(
        "executor", "where the runs execute (docs/cluster.md); each flag overrides the sweep "
                    "file's [executor.NAME] option named in brackets")
    group.add_argument("--executor", choices=list_executors(),
                       help="local: one subprocess per run here (--jobs); ray: Ray tasks on a "
                            "cluster or a local one, warm workers (extra ray); submitit: SLURM "
                            "job arrays, requeued on preemption (extra slurm) [default: the "
                            "file's [executor] name, else local]")
    group.add_argument("--address", help="ray: the cluster to connect to, e.g. auto or "
                                         "ray://head:10001 [address]")
    group.add_argument("--cpus-per-run", type=float, metavar="N",
                       help="ray, submitit: CPUs per run (per job with submitit), also its "
                            "thread count [cpus; default 1]")
    group.add_argument("--gpus-per-run", type=float, metavar="N",
                       help="ray, submitit: GPUs per run (per job with submitit) [gpus]")
    group.add_argument("--partition", help="submitit: SLURM partition [partition]")
    group.add_argument("--time-limit", type=int, metavar="MINUTES",
                       help="submitit: time limit of one job; a job that reaches it is "
                            "requeued and its runs resume [time; default 60]")
    group.add_argument("--array-parallelism", type=int, metavar="N",
                       help="submitit: jobs running at once [array_parallelism]")
    group.add_argument("--runs-per-job", type=int, metavar="N",
                       help="submitit: at most N runs per job, trained one after the "
                            "other in one process [runs_per_job; default 1]")
    group.add_argument("--cluster", choices=["slurm", "local", "debug"],
                       help="submitit: where jobs go [cluster; default: slurm when sbatch is "
                            "found, else local processes]")


_EXECUTOR_FLAGS = {"address": "address", "cpus_per_run": "cpus", "gpus_per_run": "gpus",
                   "partition": "partition", "time_limit": "time",
                   "array_parallelism": "array_parallelism", "runs_per_job": "runs_per_job",
                   "cluster": "cluster"}
"""``orthosparse sweep`` executor flag (argparse dest) -> executor option."""


def _executor_flags(args: argparse.Namespace) -> dict[str, Any]:
    options = {}
    for dest, key in _EXECUTOR_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            if key == "gpus" and float(value).is_integer():
                value = int(value)  # submitit takes whole GPUs
            options[key] = value
    return options


def _run_sweep(args: argparse.Namespace) -> int:
    from .presets import get_sweep, list_sweeps
    from .sweep import parse_overrides, run_sweep, sweep_to_toml

    if args.source is None:
        width = max(len(n) for n in list_sweeps())
        for name in list_sweeps():
            print(f"{name:<{width}}  {get_sweep(name).description}")
        return 0
    if args.print_toml:
        print(sweep_to_toml(args.source), end="")
        return 0
    overrides = parse_overrides(args.overrides)
    devices = [d for d in args.devices.split(",") if d.strip()] if args.devices else None
    result = run_sweep(args.source, jobs=args.jobs, out=args.out, overrides=overrides,
                       retry_failed=not args.skip_failed, devices=devices,
                       timeout=args.timeout, dry_run=args.dry_run, executor=args.executor,
                       executor_options=_executor_flags(args))
    if args.dry_run:
        print(f"# sweep directory: {result.sweep_dir}")
        keys = list(result.runs[0].values) if result.runs else []
        print("\t".join(["#", "state", *keys, "run dir"]))
        for run in result.runs:
            values = ["+".join(map(str, v)) if isinstance(v, list) else str(v)
                      for v in run.values.values()]
            print("\t".join([str(run.index), result.states[run.run_dir.name], *values,
                             str(run.run_dir)]))
        print(f"# {len(result.runs)} runs: " + ", ".join(
            f"{n} {s}" for s, n in sorted(result.counts.items())))
        return 0
    if result.interrupted:
        return 130
    if args.report:
        from .report import report

        report(result.sweep_dir)
    return 0 if result.complete else 1


# --------------------------------------------------------------------------- report


def _report_flags(parser: argparse.ArgumentParser) -> None:
    from .report import METRICS

    parser.add_argument("path", metavar="RUN_OR_SWEEP_DIR",
                        help="a run directory, a sweep directory or a directory of runs")
    parser.add_argument("--out", help="report directory [default: PATH/report]")
    parser.add_argument("--metric", default="test_acc", choices=list(METRICS),
                        help="final.json value to tabulate [default: test_acc]")
    parser.add_argument("--rows", help="comma-separated keys for the rows [default: the "
                                       "varying method keys (mask, init, ...)]")
    parser.add_argument("--cols", help="comma-separated keys for the columns [default: the "
                                       "varying settings (density, activation, ...)]")
    parser.add_argument("--no-plots", dest="plots", action="store_false",
                        help="write the tables only")


def _run_report(args: argparse.Namespace) -> int:
    from .report import report

    def keys(text: str | None) -> list[str] | None:
        return None if text is None else [k.strip() for k in text.split(",") if k.strip()]

    result = report(args.path, out=args.out, metric=args.metric, rows=keys(args.rows),
                    cols=keys(args.cols), plots=args.plots)
    print(result.table.to_markdown(), end="")
    print(f"\nwrote {', '.join(str(p) for p in result.files.values())}")
    return 0


# --------------------------------------------------------------------------- the table

COMMANDS: dict[str, Command] = {
    "demo": Command(
        help="EOI vs masked orthogonal and Kaiming inits on a deep sparse tanh MLP (digits, ~1 "
             "min on a CPU)",
        description="Train the same deep sparse tanh MLP on the bundled 8x8 digits with EOI and "
                    "the baseline initializations (same density and mask), print a results "
                    "table (test accuracy, loss, Jacobian singular values at init) and save a "
                    "plot.",
        flags=_demo_flags, run=_run_demo),
    "inspect": Command(
        help="print per-layer and Jacobian diagnostics of the initialized network; plot "
             "spectra and norms versus depth, comparing inits",
        description="Build the configured network as `train` does (preset, TOML file and --key "
                    "value flags; mask, density, seed), initialize it with each requested init, "
                    "and print per layer the mask density, orthogonality error ||W W^T - gain^2 "
                    "I||_F / sqrt(r), activation and gradient norms, then the singular values "
                    "of the input-output Jacobian (mean, std, min, max, condition number). "
                    "Several inits (--init eoi,orthogonal,kaiming or --compare-inits eoi "
                    "orthogonal kaiming) give a comparison table and plots (singular values: one "
                    "panel per init; signal propagation: overlaid). Deep networks print their "
                    "first and last 5 layers and min/median/max of the rest. Writes "
                    "inspect.json, singular_values.png and signal_propagation.png to --out. "
                    "--densities 0.05 0.1 0.5 1 measures every init at every density instead "
                    "and gives the Jacobian summary versus density: one table and "
                    "jacobian_vs_density.png/.md/.csv. Training-only settings (optimizer, "
                    "epochs, ...) are accepted and change nothing here; --progress none prints "
                    "nothing.",
        usage=f"{PROG} inspect [--preset NAME] [--config FILE.toml] [--init INIT[,INIT...] | "
              f"--compare-inits INIT [INIT ...]] [--density D | --densities D [D ...]] "
              f"[--examples N] [--out DIR] [--KEY VALUE ...]",
        epilog="Training records the same Jacobian summary (mean, std, min, max, condition "
               "number on the first --jacobian-examples test images): `orthosparse train "
               "--jacobian epoch` measures it at init and after every epoch (`--jacobian init`: "
               "at init only) into metrics.jsonl/.csv and final.json.",
        flags=_inspect_flags, run=_run_inspect),
    "presets": Command(
        help="list the experiment presets, or print one as TOML",
        flags=_presets_flags, run=_run_presets),
    "report": Command(
        help="results tables (mean ± std over seeds; Markdown, CSV) and plots of runs or a "
             "sweep",
        description="Tabulate the runs under RUN_OR_SWEEP_DIR (mean ± std over seeds, best of "
                    "each column in bold) as Markdown and CSV, list every run with its config "
                    "hash and directory, and plot accuracy versus density, training loss curves "
                    "and Jacobian singular values (PNG) into PATH/report/.",
        flags=_report_flags, run=_run_report),
    "sweep": Command(
        help="run a grid of experiments (TOML sweep file or preset), N at a time, here, on "
             "Ray or on SLURM; restartable",
        description="Expand a grid (any config key may be a list), run each run in its own "
                    "process, --jobs at a time (one GPU each when several are visible), or on "
                    "a Ray cluster (--executor ray) or SLURM (--executor submitit), skip runs "
                    "that have results, resume killed runs from their checkpoint and record "
                    "failed runs' tracebacks (failed.json) and carry on. Every executor uses "
                    "the same run folders. Rerun the same command to continue an interrupted "
                    "sweep. Exit codes: 0 every run has a result, 1 some failed, 2 bad usage, "
                    "130 interrupted.",
        usage=f"{PROG} sweep [GRID.toml|NAME] [--jobs N] [--out DIR] [--set KEY=VALUE] "
              f"[--skip-failed] [--dry-run] [--print] [--report] [--executor "
              f"local|ray|submitit] [executor flags]",
        flags=_sweep_flags, run=_run_sweep),
    "train": Command(
        help="train one configured experiment (preset, TOML file and --key value overrides)",
        description="Train one experiment. Settings are layered: built-in defaults, then "
                    "--preset, then --config FILE.toml, then the --key value flags below. "
                    "Results go to <out>/<name>-<config hash>/ (config.json, metrics.jsonl/.csv, "
                    "final.json, checkpoint.pt, train.log); a finished config is not trained "
                    "again unless --force. Exit codes: 0 done, 1 diverged, 2 bad usage.",
        usage=f"{PROG} train [--preset NAME] [--config FILE.toml] [--resume [RUN_DIR]] "
              f"[--force] [--dry-run] [--KEY VALUE ...]",
        flags=_train_flags, run=_run_train),
}
"""``orthosparse <name>`` -> its :class:`Command`; listed in ``orthosparse --help`` by name."""


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Return the ``orthosparse`` parser with one subparser per row of :data:`COMMANDS`."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="Static sparse training with Exact Orthogonal Initialization "
        "(EOI). Start with `orthosparse demo`.",
        epilog="Exit codes: " + "; ".join(f"{code} {text.split(' (')[0].split(';')[0]}"
                                          for code, text in EXIT_CODES.items()) + ".")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(COMMANDS):
        command = COMMANDS[name]
        p = sub.add_parser(name, help=command.help, usage=command.usage,
                           description=command.description or command.help,
                           epilog=command.epilog)
        command.flags(p)
        p.set_defaults(_command=name, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (:data:`EXIT_CODES`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "_command", None) is None:  # a bare `orthosparse`: usage, not success
            parser.print_help(sys.stderr)
            print(f"\n{PROG}: error: a command is required. Try `{PROG} demo` (about a minute "
                  f"on a CPU) or `{PROG} presets`.", file=sys.stderr)
            return 2
        with _sigterm_interrupts():
            code = _run_command(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # `orthosparse presets | head -1`: the reader is gone, quietly
        silence_stdout()
        return 141


def _run_command(args: argparse.Namespace) -> int:
    sub = args._parser
    debug = bool(os.environ.get("ORTHOSPARSE_DEBUG"))
    hint = " (set ORTHOSPARSE_DEBUG=1 for a traceback)"
    try:
        return COMMANDS[args._command].run(args)
    except _UsageError as err:
        sub.error(str(err))  # exits with code 2
    except BrokenPipeError:
        raise
    except RunLockedError as err:
        print(f"{sub.prog}: error: {err}", file=sys.stderr)
        return 3
    except RunDirError as err:  # found before training: the folder cannot be used
        if debug:
            raise
        print(f"{sub.prog}: error: {err}{hint}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as err:
        if debug:
            raise
        print(f"{sub.prog}: error: {err}{hint}", file=sys.stderr)
        return 2
    except OSError as err:  # a file that could not be read or written while running
        if debug:
            raise
        print(f"{sub.prog}: error: {err}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        name = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"
        print(f"\n{sub.prog}: {name}; the last checkpoint is kept, continue with --resume",
              file=sys.stderr)
        return 128 + int(signum)
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that a run ends the same way (checkpoint kept)."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Terminated` for the command (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise _Terminated(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
