"""Config layering (defaults -> preset -> TOML -> overrides), parsing, validation, hashing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import pytest

from orthosparse.lab.config import (
    HASH_SCHEMA,
    NOT_HASHED,
    TrainConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    config_to_toml,
    hashed_values,
    options_dict,
    parse_field,
    resolve_config,
)
from orthosparse.lab.presets import PAPER_PROTOCOL, get_preset, list_presets


def write(tmp_path, text, name="cfg.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- layering


def test_defaults_are_the_declared_ones():
    cfg = TrainConfig()
    assert cfg.dataset == "digits" and cfg.optimizer == "sgd" and cfg.milestones == [0.5, 0.75]
    assert cfg.grad_clip is None and cfg.nesterov is True


def test_layers_apply_in_order_preset_then_file_then_overrides(tmp_path):
    path = write(tmp_path, 'lr = 0.5\nepochs = 3\n[optim]\nweight_decay = 0.0\n')
    cfg = resolve_config("mlp", path, {"epochs": 7})
    assert cfg.dataset == "mnist" and cfg.depth == 7 and cfg.width == 100  # preset
    assert cfg.lr == 0.5 and cfg.weight_decay == 0.0  # file beats preset (0.01, 1e-4)
    assert cfg.epochs == 7  # override beats file (3) and preset (100)
    assert cfg.name == "mlp"  # run name defaults to the preset name


def test_toml_may_name_its_preset(tmp_path):
    path = write(tmp_path, 'preset = "mlp-1000"\ndensity = 0.25\n')
    cfg = resolve_config(None, path)
    assert (cfg.depth, cfg.width, cfg.density, cfg.gain) == (1000, 128, 0.25, 1.0247)
    with pytest.raises(ValueError, match="preset 'mlp' conflicts with preset = 'mlp-1000'"):
        resolve_config("mlp", path)


def test_string_overrides_are_parsed_like_the_command_line():
    cfg = resolve_config(None, None, {"lr": "0.1", "nesterov": "false", "milestones": "0.3,0.9",
                                      "grad-clip": "none", "exclude": ["head", "hidden.0"]})
    assert cfg.lr == 0.1 and cfg.nesterov is False and cfg.milestones == [0.3, 0.9]
    assert cfg.grad_clip is None and cfg.exclude == ["head", "hidden.0"]


def test_ints_are_accepted_for_floats_but_not_bools_for_ints():
    assert config_from_dict({"lr": 1}).lr == 1.0
    assert isinstance(config_from_dict({"lr": 1}).lr, float)
    with pytest.raises(TypeError, match="epochs=True must be an integer, got bool"):
        config_from_dict({"epochs": True})
    with pytest.raises(TypeError, match=r"lr='0.1' must be a number, got str"):
        TrainConfig(lr="0.1")


# --------------------------------------------------------------------------- errors


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key 'lrr'.*did you mean 'lr'\?"):
        resolve_config(overrides={"lrr": 0.1})
    path = write(tmp_path, "[optim]\nmomentun = 0.5\n")
    with pytest.raises(ValueError, match=r"'momentun' in \[optim\].*cfg.toml.*'momentum'"):
        resolve_config(config_file=path)


def test_key_in_the_wrong_table_is_named(tmp_path):
    path = write(tmp_path, "[data]\nlr = 0.5\n")
    with pytest.raises(ValueError, match=r"'lr'.*belongs in \[optim\], not \[data\]"):
        resolve_config(config_file=path)


def test_literal_choices_are_validated():
    with pytest.raises(ValueError, match="optimizer='rmsprop' is not allowed; choose one of: "
                                         "sgd, adam, adamw"):
        resolve_config(overrides={"optimizer": "rmsprop"})
    with pytest.raises(ValueError, match="schedule='step' is not allowed; choose one of: "
                                         "multistep, cosine, constant"):
        parse_field("schedule", "step")


@pytest.mark.parametrize("key, value, message", [
    ("density", 0.0, r"density=0.0 must be in \(0, 1\]"),
    ("density", 1.5, r"density=1.5 must be in \(0, 1\]"),
    ("lr", -1.0, "lr=-1.0 must be > 0"),
    ("lr", float("nan"), "lr=nan must be a finite number"),
    ("epochs", 0, r"epochs=0 must be a positive integer \(>= 1\)"),
    ("val_fraction", 1.0, r"val_fraction=1.0 must be in \[0, 1\)"),
    ("milestones", [0.75, 0.5], r"milestones=\[0.75, 0.5\] must be increasing"),
    ("milestones", [0.5, 1.0], "must be increasing fractions of the epochs in"),
    ("betas", [0.9], r"betas=\[0.9\] must be two numbers"),
    ("grad_clip", 0.0, "grad_clip=0.0 must be > 0 or none"),
    ("warmup_epochs", 30.0, r"warmup_epochs=30.0 must be in \[0, epochs=20\]"),
    ("momentum", 1.0, r"momentum=1.0 must be in \[0, 1\)"),
    ("name", "a/b", "name='a/b' must be a non-empty file name without slashes"),
    ("data_options", ["size"], "data_options entry 'size' must look like key=value"),
])
def test_bad_values_name_the_field_and_the_allowed_range(key, value, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(overrides={key: value})


def test_nesterov_without_momentum_is_rejected():
    with pytest.raises(ValueError, match="nesterov=true needs momentum > 0"):
        resolve_config(overrides={"momentum": 0.0})
    assert resolve_config(overrides={"momentum": 0.0, "nesterov": False}).momentum == 0.0


@pytest.mark.parametrize("key, text, message", [
    ("lr", "fast", "lr='fast' is not a number"),
    ("epochs", "2.5", "epochs='2.5' is not an integer"),
    ("nesterov", "maybe", "nesterov='maybe' is not a boolean; use true or false"),
    ("depth", "ten", "depth='ten' is not an integer"),
    ("lr", ["0.1", "0.2"], "lr takes one value, got 2"),
])
def test_parse_errors_name_the_field(key, text, message):
    with pytest.raises(ValueError, match=message):
        parse_field(key, text)


def test_parse_field_values():
    assert parse_field("nesterov", "off") is False
    assert parse_field("deterministic", "YES") is True
    assert parse_field("depth", "none") is None
    assert parse_field("depth", "12") == 12
    assert parse_field("milestones", ["0.25", "0.5,0.75"]) == [0.25, 0.5, 0.75]
    assert parse_field("exclude", []) == []
    assert parse_field("data_options", ["input_shape=[1,4,4],train_size=8", 'a="x,y"']) == [
        "input_shape=[1,4,4]", "train_size=8", 'a="x,y"']


def test_bad_toml_and_missing_file_name_the_path(tmp_path):
    path = write(tmp_path, "lr = = 1\n", "broken.toml")
    with pytest.raises(ValueError, match=r"config file '.*broken.toml' is not valid TOML"):
        resolve_config(config_file=path)
    with pytest.raises(FileNotFoundError, match="config file '.*nope.toml' does not exist"):
        resolve_config(config_file=tmp_path / "nope.toml")


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown preset 'mlp2'; choose one of: cnn-1000, "
                                         "digits, efficientnet, mlp, mlp-1000"):
        resolve_config("mlp2")


def test_options_dict_reads_json_values_else_text():
    assert options_dict(["train_size=64", "input_shape=[1, 8, 8]", "mode=coarse", "b=false"]) \
        == {"train_size": 64, "input_shape": [1, 8, 8], "mode": "coarse", "b": False}
    with pytest.raises(ValueError, match="opts sets 'a' twice"):
        options_dict(["a=1", "a=2"], "opts")


# --------------------------------------------------------------------------- presets


def test_presets_cover_every_row_of_the_paper_table():
    # Each paper preset's settings are held to docs/protocol.md by tests/test_protocol.py.
    assert set(list_presets()) >= {"digits", "mlp", "mlp-1000", "cnn-1000", "vgg", "vgg16",
                                   "resnet32", "resnet56", "resnet110", "efficientnet"}
    assert dict(PAPER_PROTOCOL)["momentum"] == 0.9
    assert get_preset("digits").overrides["dataset"] == "digits"


def test_every_preset_resolves_and_round_trips_through_toml(tmp_path):
    for name in list_presets():
        cfg = resolve_config(name)
        path = write(tmp_path, config_to_toml(cfg), f"{name}.toml")
        assert resolve_config(config_file=path) == cfg, name


def test_help_text_lists_the_registered_names():
    from orthosparse.data import list_augmentations, list_datasets
    from orthosparse.masks import list_mask_methods
    from orthosparse.models import list_models
    from orthosparse.schemes import list_inits

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}
    for key, names in (("dataset", list_datasets()), ("model", list_models()),
                       ("mask", list_mask_methods()), ("init", list_inits()),
                       ("augment", list_augmentations())):
        assert names, key
        for name in names:
            assert name in helps[key], (key, name)


# --------------------------------------------------------------------------- hash and JSON


def test_hash_ignores_display_fields_and_tracks_the_rest():
    base = TrainConfig()
    assert set(NOT_HASHED) <= {f.name for f in dataclasses.fields(TrainConfig)}
    same = dataclasses.replace(base, out="elsewhere", name="x", progress="none",
                               tensorboard=False, eval_batch_size=7, checkpoint_every=3)
    assert config_hash(same) == config_hash(base)
    for key, value in (("seed", 1), ("lr", 0.051), ("init", "kaiming"), ("exclude", ["head"])):
        assert config_hash(dataclasses.replace(base, **{key: value})) != config_hash(base), key
    assert len(config_hash(base)) == 10 and int(config_hash(base), 16) >= 0
    assert base.run_dir().name == f"run-{config_hash(base)}"


def test_hash_covers_only_what_differs_from_the_defaults_plus_the_schema():
    cfg = TrainConfig(lr=0.1, seed=3, exclude=["head"], progress="none")
    assert hashed_values(TrainConfig()) == {}
    assert hashed_values(cfg) == {"lr": 0.1, "seed": 3, "exclude": ["head"]}
    expected = hashlib.sha256(json.dumps(
        {"changed": {"exclude": ["head"], "lr": 0.1, "seed": 3}, "schema": HASH_SCHEMA},
        sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]
    assert config_hash(cfg) == expected
    # Setting a field to its default value is the same run as leaving it out.
    assert config_hash(TrainConfig(lr=0.05, mask="erk")) == config_hash(TrainConfig())


def test_hash_changes_with_the_schema_version(monkeypatch):
    configs = [TrainConfig(), TrainConfig(lr=0.1)]
    before = [config_hash(cfg) for cfg in configs]
    monkeypatch.setattr("orthosparse.lab.config.HASH_SCHEMA", HASH_SCHEMA + 1)
    after = [config_hash(cfg) for cfg in configs]
    assert all(a != b for a, b in zip(before, after, strict=True))


@dataclasses.dataclass
class _WithNewField(TrainConfig):
    """TrainConfig plus a field added later, whose default keeps the old behaviour."""

    label_smoothing: float = dataclasses.field(
        default=0.0, metadata={"help": "label smoothing", "group": "optim"})

    def __post_init__(self) -> None:  # the field is not in TrainConfig's type table
        pass


def test_a_new_field_at_its_default_renames_no_run():
    for overrides in ({}, {"lr": 0.1, "seed": 2}, {"init": "orthogonal", "exclude": ["head"]}):
        old, new = TrainConfig(**overrides), _WithNewField(**overrides)
        assert config_hash(new) == config_hash(old), overrides
        assert new.run_dir() == old.run_dir()
        moved = _WithNewField(**overrides, label_smoothing=0.1)
        assert config_hash(moved) != config_hash(old), overrides


def test_json_round_trip_is_exact():
    cfg = resolve_config("cnn-1000", overrides={"grad_clip": 1.0, "exclude": ["head"]})
    text = json.dumps(config_to_dict(cfg))
    assert config_from_dict(json.loads(text)) == cfg


def test_scoped_sparsify_options_apply_to_their_init_or_mask_only():
    from orthosparse.lab.config import check_names, sparsify_options_for

    items = ["sao:fallback=true", "eoi:center_density=more", "ai:iterations=5", "x=a:b"]
    for init, expected in [("sao", {"fallback": True, "x": "a:b"}),
                           ("eoi", {"center_density": "more", "x": "a:b"}),
                           ("ai", {"iterations": 5, "x": "a:b"})]:
        cfg = resolve_config(None, None, {"init": init, "sparsify_options": items})
        assert sparsify_options_for(cfg) == expected
    cfg = resolve_config(None, None, {"mask": "snip", "sparsify_options": ["snip:rounds=3"]})
    assert sparsify_options_for(cfg) == {"rounds": 3}
    with pytest.raises(ValueError, match="scope\\(s\\) soa name no init or mask method"):
        check_names(resolve_config(None, None, {"sparsify_options": ["soa:fallback=true"]}))
    with pytest.raises(ValueError, match="sets 'fallback' twice"):
        resolve_config(None, None, {"sparsify_options": ["sao:fallback=true", "fallback=false"]})


# --------------------------------------------------------------------------- issue 16


@pytest.mark.parametrize("seed", [-1, 2**63, 10**23])
def test_seeds_outside_0_to_2_63_are_refused(seed):
    with pytest.raises(ValueError, match=rf"seed={seed} must be an integer in \[0, 2\*\*63 - 1\]"):
        TrainConfig(seed=seed)
    assert TrainConfig(seed=2**63 - 1).seed == 2**63 - 1


@pytest.mark.parametrize("gain, error, message", [
    (0.0, ValueError, "gain=0.0 must be a finite number > 0"),
    (float("nan"), ValueError, "gain=nan must be a finite number > 0"),
    (float("inf"), ValueError, "gain=inf must be a finite number > 0"),
    (True, TypeError, "gain=True must be a number"),
])
def test_the_config_gain_follows_the_core_rule(gain, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(gain=gain)


def test_a_toml_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"config file '{re.escape(str(path))}' is not UTF-8 "
                                         rf"text .* byte b'\\xe9' at offset 11"):
        resolve_config(config_file=path)
