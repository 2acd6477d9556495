"""Record or check golden values: per preset, the mask checksum and the first steps' losses.

Each case trains one epoch of a preset on synthetic data shaped like the preset's dataset (no
download), a few small batches, so a restructuring can prove it kept behaviour:

    python tests/golden/record.py --write        # record tests/golden/presets.json
    python tests/golden/record.py                # compare against it (exit 1 on a difference)
    python tests/golden/record.py --only digits  # cases whose name starts with a prefix

``tests/test_golden.py`` checks the quick cases on every test run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILE = HERE / "presets.json"

# Input shapes of the presets' datasets, so models are built as the preset builds them.
SHAPES = {"digits": [1, 8, 8], "mnist": [1, 28, 28], "cifar10": [3, 32, 32]}
# Deep or wide models get smaller inputs (global pooling) and batches to stay seconds long.
SMALL = {"cnn-1000": ([3, 8, 8], 8), "vgg16": ([3, 32, 32], 16), "vgg": ([3, 32, 32], 16),
         "resnet110": ([3, 16, 16], 16), "resnet56": ([3, 16, 16], 16)}
QUICK = ("digits", "mlp/")


def cases() -> dict[str, dict]:
    """name -> (preset, overrides)."""
    out = {}
    for mask in ("uniform", "erk", "snip", "grasp", "synflow"):
        for init in ("eoi", "orthogonal", "kaiming", "sparse-kaiming", "ai"):
            out[f"digits/{mask}/{init}"] = ("digits", {"mask": mask, "init": init})
    out["digits/uniform/sao"] = ("digits", {"mask": "uniform", "init": "sao",
                                           "sparsify_options": ["fallback=true"]})
    for preset in ("mlp", "mlp-1000", "cnn-1000", "vgg", "vgg16", "resnet32", "resnet56",
                   "resnet110"):
        for init in ("eoi", "orthogonal"):
            out[f"{preset}/erk/{init}"] = (preset, {"mask": "erk", "init": init})
    return out


def run_case(preset: str, overrides: dict, out: str) -> dict:
    from orthosparse.lab.config import resolve_config
    from orthosparse.lab.presets import get_preset
    from orthosparse.lab.train import train

    dataset = get_preset(preset).overrides.get("dataset", "digits")
    shape, batch = SMALL.get(preset, (SHAPES[dataset], 32))
    data = [f"input_shape={json.dumps(shape)}", "num_classes=10", f"train_size={3 * batch}",
            "test_size=8"]
    cfg = resolve_config(preset=preset, overrides={
        **overrides, "dataset": "synthetic", "data_options": data, "epochs": 1,
        "batch_size": batch, "val_fraction": 0.0, "out": out, "progress": "none",
        "tensorboard": False, "threads": 1, "device": "cpu"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg)
    record = result.history[0]
    return {"mask_checksum": result.final["mask_checksum"],
            "train_loss": record["train_loss"], "test_loss": record["test_loss"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record instead of compare")
    parser.add_argument("--only", default="", help="only the cases whose name starts so")
    args = parser.parse_args(argv)
    stored = json.loads(FILE.read_text()) if FILE.exists() else {}
    got, bad = {}, []
    with tempfile.TemporaryDirectory() as out:
        for name, (preset, overrides) in cases().items():
            if not name.startswith(args.only):
                continue
            got[name] = run_case(preset, overrides, out)
            same = stored.get(name) == got[name]
            print(f"{'same' if same else 'DIFF'} {name} {got[name]}", flush=True)
            if not same:
                bad.append(name)
    if args.write:
        FILE.write_text(json.dumps({**stored, **got}, indent=1, sort_keys=True) + "\n")
        return 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
