"""Command line: ``orthosparse <command>``; every command is one Python function.

    orthosparse demo                         # EOI vs baselines on a deep sparse MLP (~1 min, CPU)
    orthosparse presets [NAME]               # list presets / print one as TOML
    orthosparse train --preset mlp --density 0.05 --seed 1
    orthosparse train --config my.toml --lr 0.1 --resume

``train`` flags are generated from the fields of :class:`~orthosparse.lab.config.TrainConfig` (help
text included). Commands are a registry: another module adds one with
``COMMANDS.register("sweep", Command(...))``; the modules named in :data:`EXTENSIONS` are imported
(when present) before the parser is built.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .._registry import Registry
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

__all__ = ["Command", "COMMANDS", "EXTENSIONS", "add_config_arguments", "add_source_arguments",
           "config_from_args", "build_parser", "main"]

PROG = "orthosparse"


@dataclass(frozen=True)
class Command:
    """A subcommand: ``configure(parser)`` adds its flags, ``run(args) -> exit code`` runs it."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""
    usage: str | None = None


COMMANDS: Registry[Command] = Registry("command")

# Modules that register more commands (``sweep``, ``report``, ``inspect``), imported if present.
EXTENSIONS: tuple[str, ...] = ("orthosparse.lab.sweep", "orthosparse.lab.report",
                               "orthosparse.lab.inspection")


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


def _configure_train(parser: argparse.ArgumentParser) -> None:

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
        from pathlib import Path

        run_dir = Path(args.resume)
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise _UsageError(f"argument --resume: {str(run_dir)!r} is not a run directory (no "
                              f"config.json)")
        if args.preset or args.config:
            raise _UsageError("argument --resume RUN_DIR: the run's config.json is used; drop "
                              "--preset/--config")
        base = config_from_dict(json.loads(config_path.read_text("utf-8")),
                                where=f" (in {config_path})")
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
    result = train(config, resume=bool(args.resume), force=args.force, run_dir=run_dir,
                   stop_after=args.stop_after)
    if result.status == "diverged":
        print(f"{PROG} train: {result.message}", file=sys.stderr)
        return 1
    return 0


COMMANDS.register("train", Command(
    help="train one configured experiment (preset, TOML file and --key value overrides)",
    description="Train one experiment. Settings are layered: built-in defaults, then --preset, "
                "then --config FILE.toml, then the --key value flags below. Results go to "
                "<out>/<name>-<config hash>/ (config.json, metrics.jsonl/.csv, final.json, "
                "checkpoint.pt, train.log); a finished config is not trained again unless "
                "--force. Exit codes: 0 done, 1 diverged, 2 bad usage.",
    configure=_configure_train, run=_run_train,
    usage=f"{PROG} train [--preset NAME] [--config FILE.toml] [--resume [RUN_DIR]] [--force] "
          f"[--dry-run] [--KEY VALUE ...]"))


# --------------------------------------------------------------------------- presets


def _configure_presets(parser: argparse.ArgumentParser) -> None:
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


COMMANDS.register("presets", Command(
    help="list the experiment presets, or print one as TOML",
    configure=_configure_presets, run=_run_presets))


# --------------------------------------------------------------------------- demo


def _configure_demo(parser: argparse.ArgumentParser) -> None:
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


COMMANDS.register("demo", Command(
    help="EOI vs masked orthogonal and Kaiming inits on a deep sparse tanh MLP (digits, ~1 min "
         "on a CPU)",
    description="Train the same deep sparse tanh MLP on the bundled 8x8 digits with EOI and the "
                "baseline initializations (same density and mask), print a results table "
                "(test accuracy, loss, Jacobian singular values at init) and save a plot.",
    configure=_configure_demo, run=_run_demo))


# --------------------------------------------------------------------------- main


def _load_extensions() -> None:
    for module in EXTENSIONS:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``orthosparse`` parser with one subparser per registered command."""
    _load_extensions()
    parser = argparse.ArgumentParser(
        prog=PROG, description="Static sparse training with Exact Orthogonal Initialization "
        "(EOI). Start with `orthosparse demo`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS.names():
        command = COMMANDS.get(name)
        p = sub.add_parser(name, help=command.help, usage=command.usage,
                           description=command.description or command.help)
        command.configure(p)
        p.set_defaults(_command=name, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 run failed/diverged, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_command", None) is None:
        parser.print_help()
        print(f"\nTry `{PROG} demo` (about a minute on a CPU) or `{PROG} presets`.")
        return 0
    sub = args._parser
    try:
        return COMMANDS.get(args._command).run(args)
    except _UsageError as err:
        sub.error(str(err))  # exits with code 2
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as err:
        if os.environ.get("ORTHOSPARSE_DEBUG"):
            raise
        print(f"{sub.prog}: error: {err} (set ORTHOSPARSE_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{sub.prog}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0
