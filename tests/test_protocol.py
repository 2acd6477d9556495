"""docs/protocol.md is the source of truth for the paper presets: hold them to its tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orthosparse.lab.config import resolve_config
from orthosparse.lab.presets import get_preset, list_sweeps
from orthosparse.lab.sweep import expand_sweep

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
_PRESET = re.compile(r"^### Preset `([^`]+)`", re.M)
_CELL = re.compile(r"^`(.*)`$")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def preset_tables() -> dict[str, dict[str, object]]:
    """``{preset: {field: value}}`` from the per-preset tables (third column, JSON)."""
    text = DOC.read_text()
    heads = list(_PRESET.finditer(text))
    tables: dict[str, dict[str, object]] = {}
    for i, head in enumerate(heads):
        body = text[head.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        body = body.split("\n## ", 1)[0]
        rows: dict[str, object] = {}
        for line in body.splitlines():
            if not line.startswith("| `"):
                continue
            cells = _cells(line)
            key, value = _CELL.match(cells[0]), _CELL.match(cells[2])
            assert key and value, f"docs/protocol.md: malformed row {line!r}"
            assert key.group(1) not in rows, f"{head.group(1)}: {key.group(1)} twice"
            rows[key.group(1)] = json.loads(value.group(1))
        tables[head.group(1)] = rows
    return tables


def sweep_table() -> dict[str, int]:
    """``{sweep: runs}`` from section 4."""
    out = {}
    for line in DOC.read_text().splitlines():
        cells = _cells(line) if line.startswith("| `paper-") else []
        if len(cells) == 5 and cells[3] == "`runs`":
            out[cells[0].strip("`")] = int(cells[4].strip("`"))
    return out


TABLES = preset_tables()
PAPER_PRESETS = ["mlp", "mlp-1000", "cnn-1000", "vgg", "resnet32", "resnet56", "resnet110",
                 "efficientnet"]


def test_every_paper_preset_has_a_table():
    assert sorted(TABLES) == sorted(PAPER_PRESETS)


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_preset_is_its_table(name):
    cfg = resolve_config(name)
    for key, value in TABLES[name].items():
        assert getattr(cfg, key) == value, f"preset {name}: {key}={getattr(cfg, key)!r}, " \
                                           f"docs/protocol.md says {value!r}"


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_table_covers_every_setting_of_the_preset(name):
    # The common protocol (section 1) is checked once below; every other override has a row.
    common = {"optimizer", "momentum", "nesterov", "batch_size", "schedule", "milestones",
              "lr_decay", "val_fraction"}
    missing = set(get_preset(name).overrides) - common - set(TABLES[name])
    assert not missing, f"preset {name} sets {sorted(missing)} with no row in docs/protocol.md"


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_common_protocol_of_section_1(name):
    cfg = resolve_config(name)
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.batch_size, cfg.schedule,
            cfg.milestones, cfg.lr_decay, cfg.val_fraction) == (
        "sgd", 0.9, True, 128, "multistep", [0.5, 0.75], 0.1, 0.1)


def test_sweeps_have_the_specs_run_counts_and_seeds():
    table = sweep_table()
    assert sorted(table) == sorted(n for n in list_sweeps() if n.startswith("paper-"))
    for name, runs in table.items():
        expanded = expand_sweep(name, sweep_dir="unused")
        assert len(expanded) == runs, name
        assert {r.config.seed for r in expanded} == {1, 2, 3, 4, 5}, name


def test_deep_cnn_sweep_has_the_structured_and_skip_variants():
    runs = [r.config for r in expand_sweep("paper-cnn-1000", sweep_dir="unused")]
    variants = {(c.mask, c.init, tuple(o for o in c.sparsify_options
                                       if o.startswith(("uniform-skip", "eoi:", "orthogonal:",
                                                        "sao:"))))
                for c in runs}
    assert ("uniform-skip", "eoi", ("uniform-skip:budget=middle",)) in variants
    assert ("uniform-skip", "eoi", ("uniform-skip:budget=middle", "eoi:structure=kernels")) \
        in variants
    assert ("erk", "eoi", ("eoi:structure=kernels",)) in variants
    assert ("dense", "orthogonal", ("orthogonal:conv=delta",)) in variants
    assert ("uniform", "sao", ("sao:non_square=dense", "sao:blocks=official")) in variants
    assert len(variants) == 15 + 3 + 2
