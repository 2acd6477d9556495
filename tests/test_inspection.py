"""``orthosparse inspect``: tables, files, exact EOI spectra, agreement with training, density
sweeps, errors."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import warnings

import numpy as np
import pytest
import torch

from figure_checks import drawn, inside  # tests/figure_checks.py
from orthosparse.lab.config import config_fields, resolve_config
from orthosparse.lab.inspection import OUTPUT_FILES, inspect
from orthosparse.plotting import plot_jacobian_vs_density

TINY = ["--data", "digits", "--model", "mlp", "--depth", "4", "--width", "16",
        "--density", "0.25", "--device", "cpu", "--examples", "8"]
LAYERS = ["hidden.0.weight", "hidden.2.weight", "hidden.4.weight", "head.weight"]
SHAPES = [[16, 64], [16, 16], [16, 16], [10, 16]]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# TINY without --density, for --densities (uniform masks: SAO's buildable densities are exact).
SWEEP = ["--data", "digits", "--model", "mlp", "--depth", "3", "--width", "16", "--mask",
         "uniform", "--device", "cpu", "--examples", "8"]
SWEEP_OVERRIDES = {"dataset": "digits", "model": "mlp", "depth": 3, "width": 16,
                   "mask": "uniform", "device": "cpu", "progress": "none"}
SINGLE_FILES = ("singular_values", "signal_propagation", "json")
SWEEP_FILES = ("jacobian_vs_density", "jacobian_vs_density_md", "jacobian_vs_density_csv",
               "json")
SUMMARY = ("mean", "std", "min", "max", "condition_number")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small ops on a shared 2-core machine: one thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def read_json(out_dir):
    return json.loads((out_dir / OUTPUT_FILES["json"]).read_text("utf-8"))


def check_pngs(out_dir, keys=("singular_values", "signal_propagation")):
    for key in keys:
        data = (out_dir / OUTPUT_FILES[key]).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, key


def read_csv(out_dir):
    with (out_dir / OUTPUT_FILES["jacobian_vs_density_csv"]).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def table_rows(text):
    """The Markdown table's body rows as {init: [cell, ...]} (header row under key "init")."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|:"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def cell_text(mean, std, lo, hi):
    return f"{mean:.4g} ± {std:.2g} [{lo:.4g}, {hi:.4g}]"


def test_one_init_prints_the_layer_table_and_writes_plots_and_json(cli, capsys, tmp_path):
    code, out, err = cli("inspect", *TINY, "--init", "eoi", "--out", str(tmp_path))
    assert code == 0, err
    assert "== init eoi: mlp on digits, density 0.25" in out
    for name in LAYERS:
        assert name in out
    assert "Jacobian singular values (8 examples): mean" in out
    assert "max_orth_err" not in out  # the comparison table is for several inits only
    check_pngs(tmp_path)
    data = read_json(tmp_path)
    assert data["inits"] == ["eoi"] and data["examples"] == 8
    assert data["config"]["dataset"] == "digits" and data["config"]["depth"] == 4
    res = data["results"]["eoi"]
    assert [layer["name"] for layer in res["layers"]] == LAYERS
    assert [layer["shape"] for layer in res["layers"]] == SHAPES
    for layer in res["layers"]:  # EOI: exactly orthogonal under the mask (float32 weights)
        assert layer["orthogonality_error"] < 1e-5
        assert 0 < layer["density"] <= 1
    # Layer-output norms at 4 Linear layers (activation records come too).
    assert sum(r["kind"] == "layer" for r in res["propagation"]) == 4
    sv = np.array(res["singular_values"])
    assert sv.shape == (8, 10)  # 8 examples, min(10 logits, 64 pixels)
    assert np.all(np.diff(sv, axis=1) <= 0)  # each row descending
    jac = res["jacobian"]
    assert jac["mean"] == pytest.approx(sv.mean(), rel=1e-6)
    assert jac["std"] == pytest.approx(sv.std(), rel=1e-6, abs=1e-9)
    assert jac["min"] == pytest.approx(sv.min(), abs=1e-7)
    assert jac["max"] == pytest.approx(sv.max(), rel=1e-6)
    assert data["files"] == {k: str(tmp_path / OUTPUT_FILES[k]) for k in SINGLE_FILES}
    assert "density_sweep" not in data
    assert not (tmp_path / OUTPUT_FILES["jacobian_vs_density"]).exists()


def test_three_inits_print_one_comparison_table_either_spelling(cli, capsys, tmp_path):
    inits = ["eoi", "orthogonal", "kaiming"]
    code, out, err = cli("inspect", *TINY, "--init", ",".join(inits),
                         "--out", str(tmp_path / "a"))
    assert code == 0, err
    for name in inits:
        assert f"== init {name}:" in out
    table = out[out.index("Jacobian singular values at init (pooled"):].splitlines()
    assert table[1].split() == ["init", "mean", "std", "min", "max", "cond", "max_orth_err"]
    assert [line.split()[0] for line in table[3:6]] == inits
    check_pngs(tmp_path / "a")
    first = read_json(tmp_path / "a")
    assert first["inits"] == inits and list(first["results"]) == inits
    # Masked dense orthogonal and Kaiming are not orthogonal under the mask; EOI is.
    orth = {name: max(la["orthogonality_error"] for la in first["results"][name]["layers"])
            for name in inits}
    assert orth["eoi"] < 1e-5 and orth["orthogonal"] > 0.1 and orth["kaiming"] > 0.1

    code, _, err = cli("inspect", *TINY, "--compare-inits", *inits,
                       "--out", str(tmp_path / "b"))
    assert code == 0, err
    second = read_json(tmp_path / "b")
    assert second["results"] == first["results"]  # same seeds: the very same numbers


def test_eoi_deep_linear_mlp_has_all_singular_values_gain_to_the_depth(cli, capsys, tmp_path):
    # Linear activations: J = W_20 ... W_1 does not depend on x. Widths 64 -> 16 -> ... -> 10
    # never grow nor fall below the 10 outputs, and each EOI layer has orthonormal rows times
    # gain, so J J^T = gain^40 I_10: every singular value is gain^20.
    depth, gain = 20, 1.1
    expected = gain**depth  # 6.7275
    code, _, err = cli("inspect", "--data", "digits", "--model", "mlp",
                       "--depth", str(depth), "--width", "16", "--activation", "linear",
                       "--density", "0.25", "--mask", "uniform", "--gain", str(gain),
                       "--device", "cpu", "--examples", "4", "--init", "eoi,kaiming",
                       "--out", str(tmp_path))
    assert code == 0, err
    data = read_json(tmp_path)
    eoi = np.array(data["results"]["eoi"]["singular_values"])
    kaiming = np.array(data["results"]["kaiming"]["singular_values"])
    assert eoi.shape == kaiming.shape == (4, 10)
    np.testing.assert_allclose(eoi, expected, rtol=1e-4, atol=0)
    # Masked Kaiming: a product of 20 sparse Gaussian matrices, spread over magnitudes.
    assert not np.allclose(kaiming, expected, rtol=0.1)
    assert kaiming.max() / max(kaiming.min(), 1e-300) > 10
    assert data["results"]["eoi"]["jacobian"]["condition_number"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("mask", "init"), [("snip", "kaiming"), ("erk", "eoi")])
def test_inspect_and_train_build_bit_identical_models_and_masks(tmp_path, monkeypatch, mask,
                                                                 init):
    # Both must build through experiment.build_experiment from the same RNG state: a hand copy
    # of the set-up in either (nothing captured) or a drifted stream (different tensors) fails.
    # SNIP reads the mask-data stream and scores the default init (global RNG); EOI draws from
    # the sparsify stream.
    import orthosparse.lab.experiment as experiment
    import orthosparse.lab.train as train_module

    built = {}
    real = experiment.build_experiment

    def spy(caller):
        def build(config, device, **kwargs):
            exp = real(config, device, **kwargs)
            built[caller] = ({k: v.clone() for k, v in exp.model.state_dict().items()},
                             {k: m.clone() for k, m in exp.masks.items()})
            return exp
        return build

    monkeypatch.setattr(train_module, "build_experiment", spy("train"))
    monkeypatch.setattr(experiment, "build_experiment", spy("inspect"))
    cfg = resolve_config(overrides={
        "dataset": "digits", "depth": 3, "width": 16, "activation": "tanh", "density": 0.3,
        "mask": mask, "init": init, "seed": 5, "device": "cpu", "batch_size": 256,
        "jacobian": "off", "progress": "none", "tensorboard": False,
        "out": str(tmp_path / "runs")})
    assert train_module.train(cfg, stop_after=1).status == "stopped"
    inspect(cfg, examples=2)
    assert set(built) == {"train", "inspect"}
    (train_state, train_masks), (inspect_state, inspect_masks) = built["train"], built["inspect"]
    assert list(train_state) == list(inspect_state)
    for key in train_state:
        assert torch.equal(train_state[key], inspect_state[key]), key
    assert list(train_masks) == list(inspect_masks) and len(train_masks) == 3
    for key in train_masks:
        assert torch.equal(train_masks[key], inspect_masks[key]), key
        assert 0 < train_masks[key].sum() < train_masks[key].numel(), key


def test_python_function_matches_the_jacobian_training_records_at_init(tmp_path):
    from orthosparse.lab.train import train

    # SNIP reads batches from the mask-data stream and scores the default-initialized weights:
    # the model, mask and weights match training's only if everything is built the same way.
    cfg = resolve_config(overrides={
        "dataset": "digits", "depth": 3, "width": 16, "activation": "tanh", "density": 0.3,
        "mask": "snip", "init": "kaiming", "seed": 3, "device": "cpu", "epochs": 1,
        "batch_size": 256, "jacobian": "init", "jacobian_examples": 6, "progress": "none",
        "tensorboard": False, "out": str(tmp_path / "runs")})
    trained = train(cfg)
    result = inspect(cfg, out=None)  # inits default to [cfg.init], examples to 6
    assert result["inits"] == ["kaiming"] and result["examples"] == 6
    assert result["files"] == {}
    got = result["results"]["kaiming"]["jacobian"]
    for key, value in trained.final["jacobian_init"].items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert not (tmp_path / OUTPUT_FILES["json"]).exists()


def test_default_out_dir_and_quiet_progress(cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("inspect", *TINY, "--progress", "none", "--name", "tiny")
    assert code == 0, err
    assert out == ""
    assert (tmp_path / "runs" / "tiny-inspect" / OUTPUT_FILES["json"]).is_file()


def test_more_examples_than_the_test_split_warns_and_uses_all(tmp_path):
    cfg = resolve_config(overrides={
        "dataset": "synthetic", "data_options": ["input_shape=[1,4,4]", "train_size=32",
                                                 "test_size=5", "num_classes=3"],
        "depth": 2, "width": 8, "density": 0.5, "device": "cpu", "progress": "none"})
    with pytest.warns(UserWarning, match=r"examples=7 but the test split of 'synthetic' has 5 "
                                         r"examples; using 5"):
        result = inspect(cfg, "eoi", examples=7)
    assert result["examples"] == 5
    assert np.array(result["results"]["eoi"]["singular_values"]).shape == (5, 3)


def test_help_lists_config_flags_and_the_training_jacobian_flag(cli, capsys):
    code, out, _ = cli("inspect", "--help")
    assert code == 0
    for f in config_fields():
        assert f"--{f.name.replace('_', '-')}" in out, f.name
    for flag in ("--compare-inits", "--examples", "--preset", "--config", "--densities"):
        assert flag in out
    text = " ".join(out.split())
    assert "jacobian_vs_density.png/.md/.csv" in text
    assert "[--density D | --densities D [D ...]]" in text
    assert "orthosparse train --jacobian epoch" in text
    assert "several separated by commas" in text
    code, _, err = cli()
    assert code == 2 and "inspect" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--init", "eoi,bogus"], r"init='bogus' is not a known init; choose one of: ai, "
                              r"conv-orthogonal, eoi"),
    (["--compare-inits", "eoi", "orthgonal"], r"init='orthgonal' is not a known init \(did "
                                              r"you mean 'orthogonal'\?\)"),
    (["--density", "1.5"], r"density=1.5 must be in \(0, 1\]"),
    (["--density", "0"], r"density=0.0 must be in \(0, 1\]"),
    (["--density", "dense"], r"argument --density: density='dense' is not a number"),
    (["--init", "eoi,eoi"], r"init 'eoi' is given twice"),
    (["--init", "eoi,"], r"argument --init: 'eoi,' must be init names"),
    (["--init", "eoi", "--compare-inits", "kaiming"], r"--compare-inits: not allowed with --init"),
    (["--examples", "0"], r"argument --examples: 0 must be >= 1"),
    (["--mask", "nope"], r"mask='nope' is not a known mask"),
])
def test_bad_values_exit_2_naming_them(cli, capsys, tmp_path, argv, message):
    code, out, err = cli("inspect", *TINY, *argv, "--out", str(tmp_path))
    assert code == 2
    assert re.search(message, err), err
    assert not (tmp_path / OUTPUT_FILES["json"]).exists()


def test_python_errors():
    cfg = resolve_config(overrides={"device": "cpu", "progress": "none"})
    with pytest.raises(ValueError, match=r"init='xavier' is not a known init; choose one of: "):
        inspect(cfg, ["eoi", "xavier"])
    with pytest.raises(ValueError, match=r"inits is empty"):
        inspect(cfg, [])
    with pytest.raises(TypeError, match=r"inits must be a sequence of init names"):
        inspect(cfg, [1, 2])
    with pytest.raises(TypeError, match=r"config must be a TrainConfig, got dict"):
        inspect({"init": "eoi"})
    with pytest.raises(ValueError, match=r"examples=0"):
        inspect(cfg, examples=0)



# --------------------------------------------------------------------------- density sweeps


def test_density_sweep_writes_table_csv_png_and_matches_single_density_calls(cli, capsys, tmp_path):
    inits, densities = ["eoi", "orthogonal"], [0.1, 0.3, 0.6]
    code, out, err = cli("inspect", *SWEEP, "--init", ",".join(inits),
                         "--densities", *map(str, densities), "--out", str(tmp_path))
    assert code == 0, err
    check_pngs(tmp_path, keys=("jacobian_vs_density",))
    for key in ("singular_values", "signal_propagation"):  # per-density spectra: not drawn
        assert not (tmp_path / OUTPUT_FILES[key]).exists()
    rows = read_csv(tmp_path)
    assert list(rows[0]) == ["init", "density", "achieved_density", *SUMMARY, "error"]
    assert [(r["init"], float(r["density"])) for r in rows] == [
        (name, d) for name in inits for d in densities]
    data = read_json(tmp_path)
    assert data["files"] == {k: str(tmp_path / OUTPUT_FILES[k]) for k in SWEEP_FILES}
    sweep = data["density_sweep"]
    assert sweep["densities"] == densities and sweep["inits"] == inits
    printed = table_rows(out)
    assert printed == table_rows((tmp_path / OUTPUT_FILES["jacobian_vs_density_md"]).read_text(
        "utf-8"))
    assert printed["init"] == ["0.1", "0.3", "0.6"]
    # Oracle: the single-density path, one call per density (same seed, same data batch).
    for i, density in enumerate(densities):
        cfg = resolve_config(overrides={**SWEEP_OVERRIDES, "density": density})
        single = inspect(cfg, inits, examples=8)
        assert sweep["results"][i] == single["results"]
        for name in inits:
            want = single["results"][name]["jacobian"]
            row = next(r for r in rows if r["init"] == name and float(r["density"]) == density)
            cell = sweep["summary"][name][i]
            layers = single["results"][name]["layers"]
            sizes = [math.prod(layer["shape"]) for layer in layers]
            achieved = sum(lay["density"] * n for lay, n in zip(layers, sizes, strict=True)) / sum(
                sizes)
            assert cell == {"density": density, "achieved_density": pytest.approx(achieved),
                            **want}
            assert float(row["achieved_density"]) == pytest.approx(achieved)
            assert achieved == pytest.approx(density, rel=0.05)  # per-layer rounding only
            assert row["error"] == ""
            for key in SUMMARY:
                got = float(row[key])
                assert got == want[key] if want[key] is not None else math.isinf(got), key
            assert printed[name][i] == cell_text(*(want[k] for k in ("mean", "std", "min",
                                                                     "max")))
    assert data["results"] == sweep["results"][-1]  # `results`: the last density


def test_eoi_is_isometric_at_every_density_while_masked_orthogonal_collapses(cli, capsys, tmp_path):
    # Linear activations, widths 64 -> 16 -> ... -> 10: each EOI layer has orthonormal rows
    # times gain at any density, so J J^T = gain^(2 depth) I_10 and every singular value is
    # gain^depth. Dense orthogonal masked at density 0.1 keeps ~1.6 weights per row of a 16 x 16
    # layer: zero rows make J rank-deficient (measured: min <= 3e-12, max < 2e-3 for seeds 0-5);
    # at density 1 the mask keeps everything and it is exactly orthogonal again.
    depth, gain, densities = 8, 1.1, [0.1, 0.3, 1.0]
    expected = gain**depth  # 2.1436
    code, _, err = cli("inspect", *SWEEP, "--depth", str(depth), "--activation",
                       "linear", "--gain", str(gain), "--examples", "4",
                       "--init", "eoi,orthogonal", "--densities", *map(str, densities),
                       "--progress", "none", "--out", str(tmp_path))
    assert code == 0, err
    sweep = read_json(tmp_path)["density_sweep"]
    eoi, orth = sweep["summary"]["eoi"], sweep["summary"]["orthogonal"]
    assert [c["density"] for c in eoi] == [c["density"] for c in orth] == densities
    for i, cell in enumerate(eoi):
        for key in ("mean", "min", "max"):
            assert cell[key] == pytest.approx(expected, rel=1e-5), (cell["density"], key)
        assert cell["condition_number"] == pytest.approx(1.0, abs=1e-5)
        sv = np.array(sweep["results"][i]["eoi"]["singular_values"])
        assert sv.shape == (4, 10)
        np.testing.assert_allclose(sv, expected, rtol=1e-5, atol=0)
    assert orth[0]["min"] < 0.5 and orth[0]["max"] < 0.5
    assert orth[1]["max"] < expected / 2  # still far from isometric at 0.3
    assert orth[2]["min"] == pytest.approx(expected, rel=1e-5)
    assert orth[2]["max"] == pytest.approx(expected, rel=1e-5)


def test_a_density_an_init_cannot_build_is_n_a_with_its_error(cli, capsys, tmp_path):
    # SAO on a uniform mask: density 0.25 of the 10 x 16 head needs degree 4 (possible: 8, 16);
    # at 0.5 every layer is buildable (degrees 32/64, 8/16, 8/16).
    code, out, err = cli("inspect", *SWEEP, "--init", "eoi,sao",
                         "--sparsify-options", "sao:non_square=sparse",
                         "--densities", "0.25", "0.5", "--out", str(tmp_path))
    assert code == 0, err
    printed = table_rows(out)
    assert printed["sao"][0] == "n/a" and printed["sao"][1] != "n/a"
    assert "n/a" not in printed["eoi"]
    assert re.search(r"- sao at density 0\.25: layer 'head\.weight': SAO cannot build "
                     r"density=0\.25 for a weight of shape \(10, 16\)", out)
    data = read_json(tmp_path)
    sweep = data["density_sweep"]
    failed, built = sweep["summary"]["sao"]
    assert failed["density"] == 0.25 and "SAO cannot build density=0.25" in failed["error"]
    assert all(failed[k] is None for k in SUMMARY)
    assert "error" not in built and built["mean"] > 0
    assert list(sweep["results"][0]) == ["eoi"] and list(sweep["results"][1]) == ["eoi", "sao"]
    rows = {(r["init"], float(r["density"])): r for r in read_csv(tmp_path)}
    assert len(rows) == 4
    assert [rows["sao", 0.25][k] for k in SUMMARY] == [""] * 5
    assert rows["sao", 0.25]["error"] == failed["error"]
    assert rows["sao", 0.5]["error"] == "" and float(rows["sao", 0.5]["mean"]) == built["mean"]
    check_pngs(tmp_path, keys=("jacobian_vs_density",))


def test_sweep_with_no_buildable_cell_raises_and_other_errors_propagate(monkeypatch):
    cfg = resolve_config(overrides={**SWEEP_OVERRIDES,
                                    "sparsify_options": ["sao:non_square=sparse"]})
    with pytest.raises(ValueError, match=r"no \(init, density\) cell could be built; init 'sao' "
                                         r"at density 0\.25: layer 'head\.weight': SAO cannot"):
        inspect(cfg, "sao", densities=[0.25], examples=2)

    import orthosparse.lab.inspection as inspection

    def broken(cfg, *args, **kwargs):
        raise RuntimeError(f"out of memory at density {cfg.density}")

    monkeypatch.setattr(inspection, "_measure", broken)
    with pytest.raises(RuntimeError, match=r"out of memory at density 0\.5"):
        inspect(cfg, "eoi", densities=[0.5], examples=2)


@pytest.mark.parametrize(("argv", "message"), [
    (["--densities", "0"], r"argument --densities: densities\[0\]=0\.0 must be in \(0, 1\]"),
    (["--densities", "0.1", "1.5"], r"argument --densities: densities\[1\]=1\.5 must be in "
                                    r"\(0, 1\]"),
    (["--densities", "nan"], r"argument --densities: densities\[0\]=nan must be in \(0, 1\]"),
    (["--densities", "0.1", "0.5", "0.10"], r"argument --densities: density 0\.1 is given twice "
                                            r"in densities=\[0\.1, 0\.5, 0\.1\]"),
    (["--densities", "0.1", "--density", "0.5"], r"argument --densities: not allowed with "
                                                 r"--density"),
    (["--densities", "sparse"], r"argument --densities: invalid float value: 'sparse'"),
    (["--densities"], r"argument --densities: expected at least one argument"),
])
def test_bad_densities_exit_2_naming_them(cli, capsys, tmp_path, argv, message):
    code, _, err = cli("inspect", *SWEEP, *argv, "--out", str(tmp_path))
    assert code == 2
    assert re.search(message, err), err
    assert not (tmp_path / OUTPUT_FILES["json"]).exists()


def test_bad_densities_python_errors():
    cfg = resolve_config(overrides=SWEEP_OVERRIDES)
    with pytest.raises(ValueError, match=r"density 0\.5 is given twice in "
                                         r"densities=\[0\.5, 0\.5\]"):
        inspect(cfg, densities=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"densities\[1\]=-0\.1 must be in \(0, 1\]"):
        inspect(cfg, densities=(0.5, -0.1))
    with pytest.raises(ValueError, match=r"densities is empty"):
        inspect(cfg, densities=[])
    with pytest.raises(TypeError, match=r"densities must be a sequence of floats in \(0, 1\], "
                                        r"got float: 0\.5"):
        inspect(cfg, densities=0.5)
    with pytest.raises(TypeError, match=r"densities\[0\] must be a real number in \(0, 1\], "
                                        r"got str: '0\.5'"):
        inspect(cfg, densities=["0.5"])
    with pytest.raises(TypeError, match=r"densities must be a sequence of floats in \(0, 1\], "
                                        r"got str"):
        inspect(cfg, densities="0.5")


def test_plot_jacobian_vs_density_curves_bands_and_n_a_legend():
    sweep = {"densities": [0.5, 0.1], "inits": ["eoi", "sao", "dead"], "summary": {
        "eoi": [{"density": 0.5, "mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0},
                {"density": 0.1, "mean": 2.0, "std": 0.5, "min": 0.5, "max": 4.0}],
        "sao": [{"density": 0.5, "mean": 1.5, "std": 0.1, "min": 1.0, "max": 2.0},
                {"density": 0.1, "mean": None, "error": "SAO cannot build density=0.1"}],
        "dead": [{"density": 0.5, "error": "no"}, {"density": 0.1, "error": "no"}]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # errors are in the legend, not warnings
        fig = plot_jacobian_vs_density(sweep)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["eoi", "sao (n/a at 0.1)", "dead (n/a at 0.1, 0.5)", "isometry"]
    np.testing.assert_array_equal(lines["eoi"].get_xdata(), [0.1, 0.5])  # sorted by density
    np.testing.assert_array_equal(lines["eoi"].get_ydata(), [2.0, 1.0])
    np.testing.assert_array_equal(lines["sao (n/a at 0.1)"].get_xdata(), [0.5])
    assert lines["isometry"].get_linestyle() == "--"
    np.testing.assert_array_equal(lines["isometry"].get_ydata(), [1.0, 1.0])
    band = ax.collections[0].get_paths()[0].vertices  # eoi's min-max band
    assert band[:, 1].min() == 0.5 and band[:, 1].max() == 4.0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.5"]

    sweep["summary"]["eoi"][1]["mean"] = math.inf
    with pytest.warns(UserWarning, match=r"init 'eoi' at density 0\.1: mean singular value inf "
                                         r"is not finite and positive; left out"):
        plot_jacobian_vs_density(sweep)
    with pytest.raises(ValueError, match=r"no init has a finite positive mean"):
        plot_jacobian_vs_density({"densities": [0.1], "summary": {"sao": [
            {"density": 0.1, "error": "no"}]}})
    with pytest.raises(ValueError, match=r"sweep must be a mapping with a 'summary'"):
        plot_jacobian_vs_density([1, 2])
    with pytest.raises(ValueError, match=r"sweep has no inits or no densities"):
        plot_jacobian_vs_density({"densities": [], "summary": {"eoi": []}})
    with pytest.raises(ValueError, match=r"every cell needs a 'density'"):
        plot_jacobian_vs_density({"densities": [0.1], "summary": {"eoi": [{"mean": 1.0}]}})


def test_scoped_sparsify_option_reaches_only_its_init(cli, capsys, tmp_path):
    # SAO cannot build the 64->16 first layer of this MLP without its dense fallback; EOI takes
    # no `fallback` option. `sao:fallback=true` serves one comparison of both.
    argv = ("inspect", "--preset", "digits", "--depth", "3", "--width", "16", "--mask",
            "uniform", "--density", "0.25", "--examples", "8", "--progress", "none",
            "--init", "eoi,sao", "--out", str(tmp_path))
    code, _, err = cli(*argv, "--sparsify-options", "fallback=true")
    assert code == 2 and "unknown option 'fallback'" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SAO's dense-fallback warning
        code, _, err = cli(*argv, "--sparsify-options", "sao:fallback=true")
    assert code == 0, err
    assert set(read_json(tmp_path)["results"]) == {"eoi", "sao"}


def test_sweep_flags_cells_whose_achieved_density_differs(cli, capsys, tmp_path):
    # SAO's dense fallback (the 64->16 first layer) lifts the achieved density above 0.3.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = cli("inspect", "--preset", "digits", "--depth", "3", "--width",
                             "16", "--mask", "uniform", "--examples", "8", "--init", "eoi,sao",
                             "--sparsify-options", "sao:fallback=true", "sao:non_square=sparse",
                             "--densities", "0.25",
                             "--out", str(tmp_path))
    assert code == 0, err
    cells = read_json(tmp_path)["density_sweep"]["summary"]
    assert cells["eoi"][0]["achieved_density"] == pytest.approx(0.25, rel=0.05)
    assert cells["sao"][0]["achieved_density"] > 0.3
    sao_row = next(line for line in out.splitlines() if line.startswith("| sao"))
    eoi_row = next(line for line in out.splitlines() if line.startswith("| eoi"))
    assert re.search(r"\(density 0\.3\d*\)", sao_row) and "(density" not in eoi_row


# --------------------------------------------------------------------------- readable output


def test_a_deep_mlp_prints_its_first_and_last_layers_and_sums_up_the_rest(capsys):
    cfg = resolve_config("digits", overrides={"depth": 200, "width": 8, "device": "cpu"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead-channel warnings of the narrow layers
        result = inspect(cfg, ["eoi", "orthogonal", "kaiming"], examples=4)
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 100  # 3,000 lines before
    names = [f"hidden.{2 * i}.weight" for i in range(199)] + ["head.weight"]
    for init in ("eoi", "orthogonal", "kaiming"):
        layers = result["results"][init]["layers"]
        assert [layer["name"] for layer in layers] == names  # inspect.json keeps them all
        middle = layers[5:-5]
        for stat, fn in (("min", min), ("median", statistics.median), ("max", max)):
            d, o, a, g = (fn([layer[k] for layer in middle]) for k in (
                "density", "orthogonality_error", "activation_norm", "gradient_norm"))
            row = (f"  {stat:<{len('hidden.396.weight') - 2}}  {'8x8':<18} {d:>8.4f} {o:>10.3e} "
                   f"{a:>10.3e} {g:>10.3e}")
            assert row in out.splitlines(), row
    table = out.split("== init eoi")[1].split("== init orthogonal")[0].splitlines()
    shown = [line.split()[0] for line in table if line.startswith(("hidden.", "head."))]
    assert shown == names[:5] + names[-5:]
    assert out.count("... 190 layers elided (hidden.10.weight .. hidden.388.weight); over "
                     "them:") == 3


def test_singular_value_panels_show_every_init_and_name_an_all_zero_spectrum(tmp_path):
    from orthosparse.plotting import plot_singular_values

    spectra = {"eoi": torch.linspace(0.03, 0.14, 320), "orthogonal": torch.zeros(320),
               "kaiming": torch.zeros(320)}  # a 100-layer MLP at density 0.05
    fig = plot_singular_values(spectra, path=tmp_path / "sv.png")
    assert (tmp_path / "sv.png").read_bytes()[:8] == PNG_MAGIC
    drawn(fig)
    renderer = fig.canvas.get_renderer()
    assert len(fig.axes) == 3  # one panel per init, one x axis
    assert fig.axes[0].get_shared_x_axes().joined(fig.axes[0], fig.axes[2])
    for ax, (name, values) in zip(fig.axes, spectra.items(), strict=True):
        (hist,) = ax.patches
        box = hist.get_window_extent(renderer)
        assert box.width > 1 and box.height > 1, name  # drawn, not hidden behind another
        assert inside(box, ax.bbox), name
        texts = [t.get_text() for t in ax.texts]
        assert texts[0] == name
        assert ("all 320 singular values are 0" in texts) == bool((values == 0).all())
        if (values == 0).all():  # every value in the first bin: a bar of height 1 (fraction)
            assert hist.get_path().vertices[:, 1].max() == pytest.approx(1.0)
    with pytest.warns(UserWarning, match=r"spectra\['orthogonal'\]: 320 of 320 values <= 0"):
        fig = plot_singular_values({"eoi": torch.logspace(-3, 0, 50), "orthogonal":
                                    torch.zeros(320)}, log_x=True)
    assert fig.axes[1].get_xscale() == "log"
    assert "all 320 singular values are 0 (not shown on a log axis)" in [
        t.get_text() for t in fig.axes[1].texts]
    with pytest.raises(ValueError, match=r"layout='grid' must be one of 'panels', 'overlay'"):
        plot_singular_values(spectra, layout="grid")
    # a log axis over one decade labels minor ticks too (3x10^-1, 4x10^-1): none may touch
    fig = drawn(plot_singular_values({"eoi": torch.logspace(-1.22, -0.15, 320)}, log_x=True))
    ax, renderer = fig.axes[-1], fig.canvas.get_renderer()
    lo, hi = ax.get_xlim()
    shown = sorted((t.get_position()[0], t.get_window_extent(renderer))
                   for t in [*ax.get_xticklabels(), *ax.get_xticklabels(minor=True)]
                   if t.get_visible() and t.get_text() and lo <= t.get_position()[0] <= hi)
    assert len(shown) >= 3
    assert min(b.x0 - a.x1 for (_, a), (_, b) in zip(shown, shown[1:], strict=False)) >= 2.0


def test_jacobian_vs_density_marks_dense_fallback_cells_and_keeps_equal_inits_apart(tmp_path):
    cell = {"std": 0.06, "min": 0.18, "max": 0.46}
    sweep = {"densities": [0.03, 0.0625, 0.25], "inits": ["eoi", "sao"], "summary": {
        "eoi": [{"density": d, "mean": 0.3, "achieved_density": d, **cell}
                for d in (0.03, 0.0625, 0.25)],
        "sao": [{"density": 0.03, "mean": 0.3, "achieved_density": 1.0, **cell},  # fell back
                {"density": 0.0625, "mean": 0.3, "achieved_density": 0.0625, **cell},
                {"density": 0.25, "mean": 0.3, "achieved_density": 0.345, **cell}]}}
    fig = plot_jacobian_vs_density(sweep, tmp_path / "j.png")
    assert (tmp_path / "j.png").read_bytes()[:8] == PNG_MAGIC
    drawn(fig)
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    eoi, sao, hollow = lines["eoi"], lines["sao"], lines["_sao fell back"]
    assert (eoi.get_marker(), eoi.get_linestyle()) != (sao.get_marker(), sao.get_linestyle())
    assert list(sao.get_markevery()) == [1]  # filled marker only where the density was reached
    np.testing.assert_array_equal(hollow.get_xdata(), [0.03, 0.25])
    assert hollow.get_marker() == sao.get_marker() and hollow.get_markerfacecolor() == "white"
    assert sorted(t.get_text() for t in ax.texts) == ["d=0.34", "d=1"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "eoi", "sao", "isometry", "fell back to dense: layers left dense, d = achieved density"]
    assert inside(legend.get_window_extent(renderer), fig.bbox)
    # equal means: drawn at least 5 points apart; data at their densities
    xy = np.column_stack([eoi.get_xdata(), eoi.get_ydata()])
    np.testing.assert_array_equal(xy[:, 0], sao.get_xdata())
    gap = sao.get_transform().transform(xy)[:, 0] - eoi.get_transform().transform(xy)[:, 0]
    assert gap.min() >= 5 / 72 * fig.dpi - 1e-6
    labels = [(t.get_text(), t.get_window_extent(renderer))
              for t in [*ax.get_xticklabels(), *ax.get_xticklabels(minor=True)] if t.get_text()]
    assert [text for text, _ in labels] == ["0.03", "0.0625", "0.25"]
    assert not any(a.x0 < b.x1 and b.x0 < a.x1 for i, (_, a) in enumerate(labels)
                   for _, b in labels[i + 1:])
