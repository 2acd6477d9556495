"""Density-based mask methods: exact counts, ER/ERK against hand-solved budgets, maps, errors."""

from __future__ import annotations

import itertools
import math
import statistics
import time

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from orthosparse._layers import PrunableLayer, prunable_layers
from orthosparse.masks import (
    MASK_METHODS,
    apportion,
    compute_densities,
    compute_masks,
    density,
    density_map_counts,
    erk_densities,
    keep_count,
    layer_densities,
    list_mask_methods,
    random_masks,
    register_mask_method,
)

RANDOM_METHODS = ["uniform", "er", "erk", "uniform-skip"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conv_net() -> nn.Module:
    # input (batch, 3, 2, 2)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(2), nn.Conv1d(16, 4, 1), nn.Flatten(), nn.Linear(16, 32), nn.Tanh(),
        nn.Linear(32, 10),
    )


def counts_of(masks: dict[str, torch.Tensor]) -> list[int]:
    return [int(m.sum()) for m in masks.values()]


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_method():
    assert list_mask_methods() == sorted(
        ["dense", "uniform", "er", "erk", "uniform-skip", "snip", "grasp", "synflow", "nm"])


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown mask method 'magnitude'; choose one of: dense"):
        compute_masks("magnitude", conv_net(), 0.1)


def test_method_of_wrong_type():
    with pytest.raises(TypeError, match="method must be a mask method name or a mapping"):
        compute_masks(3, conv_net(), 0.1)


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'rounds' for mask method 'erk'; "
                                        r"its options are: erk_power_scale, dense_layers"):
        compute_masks("erk", conv_net(), 0.1, rounds=3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'x' for mask method 'uniform'; "
                                        r"its options are: \(none\)"):
        compute_masks("uniform", conv_net(), 0.1, x=1)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_density_out_of_range(bad):
    with pytest.raises(ValueError, match=r"density=.* must be in \(0, 1\]"):
        compute_masks("uniform", conv_net(), bad)


def test_density_wrong_type():
    with pytest.raises(TypeError, match="density must be a real number"):
        compute_masks("uniform", conv_net(), "0.5")


def test_bad_model_generator_loss_fn():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        compute_masks("uniform", [nn.Linear(2, 2)], 0.5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        compute_masks("uniform", conv_net(), 0.5, generator=0)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        compute_masks("uniform", conv_net(), 0.5, loss_fn="ce")


def test_layers_argument_is_validated():
    net, other = conv_net(), conv_net()
    with pytest.raises(ValueError, match="no prunable layers"):
        compute_masks("uniform", nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="no prunable layers"):
        compute_masks("uniform", net, 0.5, layers=[])
    with pytest.raises(ValueError, match=r"layer '0.weight' is not a parameter of the given model"):
        compute_masks("uniform", net, 0.5, layers=prunable_layers(other))
    first = prunable_layers(net)[0]
    with pytest.raises(ValueError, match=r"layer '0.weight' is listed twice"):
        compute_masks("uniform", net, 0.5, layers=[first, first])
    with pytest.raises(TypeError, match="layers must hold PrunableLayer entries"):
        compute_masks("uniform", net, 0.5, layers=["0.weight"])
    with pytest.raises(TypeError, match="layers must be a list of PrunableLayer"):
        compute_masks("uniform", net, 0.5, layers="0.weight")


# ----------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("method", ["dense", *RANDOM_METHODS])
def test_keys_shapes_dtype_and_weights_untouched(method):
    net = conv_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    d = 1.0 if method == "dense" else 0.5
    masks = compute_masks(method, net, d, generator=gen())
    names = [n for n, p in net.named_parameters() if p.dim() > 1]
    assert list(masks) == names
    for name, p in net.named_parameters():
        if name in masks:
            assert masks[name].shape == p.shape and masks[name].dtype == torch.bool
            assert masks[name].device == p.device
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("method", RANDOM_METHODS)
def test_same_seed_same_masks_other_seed_other_masks(method):
    net = conv_net()
    a = compute_masks(method, net, 0.6, generator=gen(1))
    b = compute_masks(method, net, 0.6, generator=gen(1))
    c = compute_masks(method, net, 0.6, generator=gen(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_masks_do_not_share_storage():
    net = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)])
    masks = compute_masks("uniform", net, 0.5, generator=gen())
    for m in masks.values():
        assert m.untyped_storage().nbytes() == m.numel()     # own storage, not a view of a batch


def test_default_generator_is_torch_global_rng():
    net = conv_net()
    torch.manual_seed(5)
    a = compute_masks("uniform", net, 0.3)
    torch.manual_seed(5)
    b = compute_masks("uniform", net, 0.3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dense_keeps_everything_and_warns_on_unused_density():
    net = conv_net()
    masks = compute_masks("dense", net, 1.0)
    assert all(bool(m.all()) for m in masks.values())
    with pytest.warns(UserWarning, match=r"mask method 'dense' keeps every weight; density=0.2"):
        masks = compute_masks("dense", net, 0.2)
    assert all(bool(m.all()) for m in masks.values())


# ----------------------------------------------------------------------------- uniform
@pytest.mark.parametrize("d", [0.05, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_uniform_exact_count_per_layer(d):
    net = conv_net()
    masks = compute_masks("uniform", net, d, generator=gen())
    for name, m in masks.items():
        n = m.numel()
        assert int(m.sum()) == math.floor(d * n + 0.5), name


def test_keep_count_rounds_half_up():
    assert keep_count(0.5, 3) == 2                  # 1.5 -> 2
    assert keep_count(0.5, 5) == 3                  # 2.5 -> 3 (Python's round gives 2)
    assert keep_count(0.25, 2) == 1
    assert keep_count(0.1, 30) == 3


def test_layer_collapse_warns():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 50))
    with pytest.warns(UserWarning, match=r"1 layer keeps 0 weights: '0.weight' \(of 4\); the "
                                         r"network is disconnected there \(layer collapse\)"):
        masks = compute_masks("uniform", net, 0.1, generator=gen())
    assert counts_of(masks) == [0, 10]


# ----------------------------------------------------------------------------- random positions
def test_random_positions_uniform_over_subsets():
    # 3000 layers of 6 weights; keep 2 (direct draw) and 4 (complement draw): every one of the
    # C(6, 2) = 15 subsets must be equally likely (chi-square, loose seeded threshold).
    layers = [PrunableLayer(f"l{i}.weight", f"l{i}", nn.Linear(3, 2)) for i in range(3000)]
    for k in (2, 4):
        masks = random_masks(layers, [k] * len(layers), gen(11))
        subsets = [tuple(torch.nonzero(m.reshape(-1)).flatten().tolist()) for m in masks.values()]
        assert all(len(s) == k for s in subsets)
        observed = [subsets.count(s) for s in itertools.combinations(range(6), k)]
        assert sum(observed) == len(layers)
        assert stats.chisquare(observed).pvalue > 1e-4


def test_random_positions_redraw_path(monkeypatch):
    # Force too few draws per attempt (1, 2, 4, ...) so rows are redrawn many times: counts must
    # stay exact and every position equally likely.
    monkeypatch.setattr(density, "_draws_needed", lambda n, k: 1)
    layers = [PrunableLayer(f"l{i}.weight", f"l{i}", nn.Linear(10, 1)) for i in range(2000)]
    counts = [i % 6 for i in range(2000)]                  # 0..5 of 10 weights
    with pytest.warns(UserWarning, match=r"334 layers keep 0 weights: 'l0.weight' \(of 10\), "
                                         r"'l6.weight' \(of 10\),"):
        masks = random_masks(layers, counts, gen(3))
    assert counts_of(masks) == counts
    freq = torch.stack([m.reshape(-1) for m, c in zip(masks.values(), counts, strict=True)
                         if c == 3])
    observed = freq.sum(0).tolist()                        # each position: expected 3/10
    assert stats.chisquare(observed).pvalue > 1e-4


def test_random_masks_errors():
    layers = prunable_layers(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="got 2 counts for 1 layers"):
        random_masks(layers, [1, 1])
    with pytest.raises(ValueError, match=r"count 5 for layer '0.weight' must be an int in "
                                         r"\[0, 4\]"):
        random_masks(layers, [5])
    with pytest.raises(ValueError, match=r"count -1 for layer '0.weight' must be an int"):
        random_masks(layers, [-1])
    with pytest.raises(ValueError, match=r"count 1.5 for layer '0.weight' must be an int"):
        random_masks(layers, [1.5])
    with pytest.raises(ValueError, match=r"count True for layer '0.weight' must be an int"):
        random_masks(layers, [True])


def test_apportion_largest_remainder():
    # floors 2, 3, 1 (=6); 2 extra go to the largest fractions 0.7 and 0.6 -> [2, 4, 2]
    assert apportion([2.2, 3.7, 1.6], [10, 10, 10], 8) == [2, 4, 2]
    # equal fractions: the earlier layer first
    assert apportion([1.5, 1.5, 1.5], [4, 4, 4], 5) == [2, 2, 1]
    # a full layer cannot take an extra weight
    assert apportion([4.0, 0.5, 0.5], [4, 4, 4], 5) == [4, 1, 0]


# ----------------------------------------------------------------------------- ER / ERK
def three_layer_mlp(sizes=(2, 50, 50, 3)) -> nn.Module:
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])


def test_erk_hand_solved_with_two_dense_fallbacks():
    # Shapes (50,2), (50,50), (3,50); raw = (sum of dims)/(prod of dims) = 0.52, 0.04, 53/150.
    # N = 100 + 2500 + 150 = 2750, density 0.2 -> budget 550 weights.
    # Pass 1: eps = 550 / (0.52*100 + 0.04*2500 + 53/150*150) = 550/205; eps*0.52 = 1.395 > 1:
    #         layer 0 dense.
    # Pass 2: eps = (550 - 100) / (100 + 53) = 2.941; eps * 53/150 = 1.039 > 1: layer 2 dense.
    # Pass 3: eps = (550 - 100 - 150) / 100 = 3; eps * 0.04 = 0.12 <= 1. Done.
    assert erk_densities([(50, 2), (50, 50), (3, 50)], 0.2) == pytest.approx([1, 0.12, 1],
                                                                               abs=1e-12)
    net = three_layer_mlp()
    masks = compute_masks("erk", net, 0.2, generator=gen())
    assert counts_of(masks) == [100, 300, 150]


def test_erk_without_dense_layers_hand_solved_and_apportioned():
    # Shapes (20,10), (20,20), (5,20): raw 0.15, 0.1, 0.25; N = 700; density 0.1 -> 70 weights.
    # eps = 70 / (0.15*200 + 0.1*400 + 0.25*100) = 70/95; all eps*raw < 1.
    eps = 70 / 95
    expected = [eps * 0.15, eps * 0.1, eps * 0.25]
    assert erk_densities([(20, 10), (20, 20), (5, 20)], 0.1) == pytest.approx(expected, rel=1e-12)
    # ideal counts 22.105, 29.474, 18.421: floors 69, the 1 extra goes to the largest fraction
    masks = compute_masks("erk", three_layer_mlp((10, 20, 20, 5)), 0.1, generator=gen())
    assert counts_of(masks) == [22, 30, 18]


def test_er_uses_channel_dims_erk_adds_kernel_dims():
    shapes = [(8, 3, 3, 3), (16, 8, 5, 5), (10, 64)]
    raw_erk = [(8 + 3 + 3 + 3) / (8 * 27), (16 + 8 + 5 + 5) / (16 * 8 * 25), 74 / 640]
    raw_er = [11 / 24, 24 / 128, 74 / 640]
    n = [216, 3200, 640]
    for raw, kernel in ((raw_erk, True), (raw_er, False)):
        eps = 0.05 * sum(n) / sum(r * m for r, m in zip(raw, n, strict=True))
        assert max(eps * r for r in raw) < 1                   # no dense fallback in this case
        got = erk_densities(shapes, 0.05, include_kernel=kernel)
        assert got == pytest.approx([eps * r for r in raw], rel=1e-12)


def test_erk_power_scale():
    shapes = [(20, 10), (20, 20), (5, 20)]
    raw = [0.15 ** 0.5, 0.1 ** 0.5, 0.25 ** 0.5]
    eps = 70 / (raw[0] * 200 + raw[1] * 400 + raw[2] * 100)
    assert erk_densities(shapes, 0.1, power_scale=0.5) == pytest.approx(
        [eps * r for r in raw], rel=1e-12)
    assert erk_densities(shapes, 0.1, power_scale=0) == pytest.approx([0.1] * 3, rel=1e-12)
    masks = compute_masks("erk", three_layer_mlp((10, 20, 20, 5)), 0.1, generator=gen(),
                          erk_power_scale=0.0)
    assert counts_of(masks) == [20, 40, 10]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_erk_power_scale_invalid(bad):
    with pytest.raises(ValueError, match=r"erk_power_scale=.* must be a finite number >= 0"):
        compute_masks("erk", conv_net(), 0.1, erk_power_scale=bad)
    with pytest.raises(TypeError, match=r"erk_power_scale must be a real number, got str"):
        compute_masks("er", conv_net(), 0.1, erk_power_scale="1")


@pytest.mark.parametrize("method", ["er", "erk", "uniform-skip"])
@pytest.mark.parametrize("d", [0.3, 0.45, 0.8, 1.0])
def test_overall_count_is_exact(method, d):
    net = conv_net()
    masks = compute_masks(method, net, d, generator=gen())
    total = sum(m.numel() for m in masks.values())
    assert sum(counts_of(masks)) == math.floor(d * total + 0.5)


def test_erk_many_layers_total_exact_and_dense_layers_full():
    net = three_layer_mlp((784,) + (128,) * 30 + (10,))
    masks = compute_masks("erk", net, 0.125, generator=gen())
    total = sum(m.numel() for m in masks.values())
    assert sum(counts_of(masks)) == math.floor(0.125 * total + 0.5)
    hidden = counts_of(masks)[1:-1]
    assert max(hidden) - min(hidden) <= 1                  # same shape, same density (+-1 weight)


def test_erk_dense_layers_option_and_feasible_range():
    net = three_layer_mlp((10, 20, 20, 5))                  # 200, 400, 100 weights
    masks = compute_masks("erk", net, 0.5, generator=gen(), dense_layers=["0.weight"])
    # layer 0 dense (200); 150 left: eps = 150 / (0.1*400 + 0.25*100) = 150/65, all below 1
    assert counts_of(masks)[0] == 200
    assert counts_of(masks)[1:] == [round(150 / 65 * 0.1 * 400), round(150 / 65 * 0.25 * 100)]
    with pytest.raises(ValueError, match=r"the dense layers \('0.weight', '2.weight'\) hold 300 of "
                                         r"700 weights, so density must be in \(0.428571, 1\]; "
                                         r"got density=0.4"):
        compute_masks("er", net, 0.4, generator=gen(), dense_layers=["0.weight", "2.*"])
    with pytest.raises(ValueError, match=r"so density must be in \[1, 1\]"):
        compute_masks("erk", net, 0.9, dense_layers="*")
    assert counts_of(compute_masks("erk", net, 1.0, dense_layers="*")) == [200, 400, 100]
    with pytest.raises(ValueError, match=r"dense_layers pattern\(s\) \['head\*'\] match no "
                                         r"prunable layer"):
        compute_masks("erk", net, 0.5, dense_layers=["head*"])
    with pytest.raises(TypeError, match="dense_layers must be a list of parameter names"):
        compute_masks("erk", net, 0.5, dense_layers=3)
    with pytest.raises(TypeError, match="dense_layers entries must be strings"):
        compute_masks("erk", net, 0.5, dense_layers=[nn.Linear])


def test_erk_densities_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"needs weight shapes .* got \(5,\)"):
        erk_densities([(5,)], 0.5)
    with pytest.raises(ValueError, match="dense has 1 entries for 2 layers"):
        erk_densities([(5, 5), (5, 5)], 0.5, dense=[True])


# ----------------------------------------------------------------------------- uniform-skip
def test_uniform_skip_first_last_dense_middle_uniform():
    net = three_layer_mlp((10, 20, 20, 20, 5))              # 200, 400, 400, 100 weights
    masks = compute_masks("uniform-skip", net, 0.5, generator=gen())
    # 550 of 1100: 300 dense, the middle 800 weights share 250 -> 125 each (density 0.3125)
    assert counts_of(masks) == [200, 125, 125, 100]
    assert layer_densities(masks) == {"0.weight": 1.0, "1.weight": 0.3125, "2.weight": 0.3125,
                                      "3.weight": 1.0}


def test_uniform_skip_infeasible():
    net = three_layer_mlp((10, 20, 20, 5))                  # 200 + 100 of 700 dense
    with pytest.raises(ValueError, match=r"uniform-skip keeps the first and last layers dense "
                                         r"\(300 of 700 weights\), so density must be in "
                                         r"\(0.428571, 1\]; got density=0.4"):
        compute_masks("uniform-skip", net, 0.4)
    one = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"density must be in \[1, 1\]"):
        compute_masks("uniform-skip", one, 0.5)
    assert counts_of(compute_masks("uniform-skip", one, 1.0)) == [16]


# ----------------------------------------------------------------------------- density maps
def test_density_map_names_globs_and_precedence():
    net = three_layer_mlp((10, 20, 20, 5))
    masks = compute_masks({"1.weight": 0.25, "*": 0.5}, net, None, generator=gen())
    assert counts_of(masks) == [100, 100, 50]
    masks = compute_masks({"0.weight": 1.0, "[12].weight": 0.1}, net, None, generator=gen())
    assert counts_of(masks) == [200, 40, 10]


def test_density_map_errors():
    net = three_layer_mlp((10, 20, 20, 5))
    with pytest.raises(ValueError, match=r"does not cover layer\(s\) 1.weight, 2.weight"):
        compute_masks({"0.weight": 0.5}, net, None)
    with pytest.raises(ValueError, match=r"key\(s\) \['fc.weight'\] match no prunable layer"):
        compute_masks({"*": 0.5, "fc.weight": 0.1}, net, None)
    with pytest.raises(ValueError, match=r"layer '0.weight' matches patterns with different"):
        compute_masks({"*": 0.5, "0.*": 0.1}, net, None)
    with pytest.raises(ValueError, match=r"density\['\*'\]=0 must be in \(0, 1\]"):
        compute_masks({"*": 0}, net, None)
    with pytest.raises(TypeError, match=r"density\['\*'\] must be a real number"):
        compute_masks({"*": "0.5"}, net, None)
    with pytest.raises(TypeError, match="density map keys must be parameter names"):
        compute_masks({0: 0.5}, net, None)
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'rounds' for a per-layer density"):
        compute_masks({"*": 0.5}, net, None, rounds=2)
    with pytest.raises(ValueError, match=r"density=2 must be in \(0, 1\]"):
        compute_masks({"*": 0.5}, net, 2)


def test_density_map_warns_when_overall_density_disagrees():
    net = three_layer_mlp((10, 20, 20, 5))
    with pytest.warns(UserWarning, match=r"density=0.1 differs from the per-layer map's overall "
                                         r"density 0.5; the map is used"):
        masks = compute_masks({"*": 0.5}, net, 0.1, generator=gen())
    assert counts_of(masks) == [100, 200, 50]


# ----------------------------------------------------------------------------- densities alone
DENSITY_CASES = [("dense", 1.0, {}), ("uniform", 0.3, {}), ("er", 0.3, {}), ("erk", 0.3, {}),
                 ("erk", 0.3, {"erk_power_scale": 0.5, "dense_layers": ["0.weight"]}),
                 ("uniform-skip", 0.6, {}), ({"0.weight": 0.5, "*": 0.2}, None, {})]


@pytest.mark.parametrize(("method", "d", "options"), DENSITY_CASES)
def test_densities_equal_those_of_the_masks_and_draw_nothing(method, d, options):
    # the oracle: the kept fractions of the masks compute_masks draws
    net = conv_net()
    expected = layer_densities(compute_masks(method, net, d, generator=gen(4), **options))
    torch.manual_seed(9)
    state = torch.get_rng_state().clone()
    got = compute_densities(method, net, d, **options)
    assert got == expected                                   # exact: count / numel both sides
    assert list(got) == list(expected)                       # layer order
    assert torch.equal(torch.get_rng_state(), state)         # no position was drawn


def test_density_map_counts_without_positions():
    net = three_layer_mlp((10, 20, 20, 5))
    layers = prunable_layers(net)
    assert density_map_counts({"1.weight": 0.25, "*": 0.5}, layers) == [100, 100, 50]
    with pytest.warns(UserWarning, match=r"density=0.1 differs from the per-layer map"):
        density_map_counts({"*": 0.5}, layers, 0.1)


def test_densities_validate_like_masks():
    net = conv_net()
    with pytest.raises(ValueError, match=r"density=0.0 must be in \(0, 1\]"):
        compute_densities("erk", net, 0.0)
    with pytest.raises(ValueError, match=r"unknown mask method 'magnitude'"):
        compute_densities("magnitude", net, 0.1)
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'rounds' for mask method 'erk'"):
        compute_densities("erk", net, 0.1, rounds=3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        compute_densities("erk", "net", 0.1)


def test_densities_warn_on_layer_collapse():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 50))
    with pytest.warns(UserWarning, match=r"1 layer keeps 0 weights: '0.weight' \(of 4\)"):
        assert compute_densities("uniform", net, 0.1) == {"0.weight": 0.0, "1.weight": 0.1}


# ----------------------------------------------------------------------------- registering
@pytest.fixture
def scratch_method():
    names = []
    yield names
    for name in names:
        MASK_METHODS._items.pop(name, None)


def test_register_a_random_method(scratch_method):
    scratch_method.append("test-half")

    @register_mask_method("test-half")
    def half(layers, density, *, plus: int = 0):
        return [layer.weight.numel() // 2 + plus for layer in layers]

    net = three_layer_mlp((4, 4, 4, 4))
    assert "test-half" in list_mask_methods()
    assert counts_of(compute_masks("test-half", net, 0.5, generator=gen(), plus=1)) == [9, 9, 9]
    assert compute_densities("test-half", net, 0.5) == {f"{i}.weight": 0.5 for i in range(3)}
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'minus' for mask method "
                                        r"'test-half'; its options are: plus"):
        compute_masks("test-half", net, 0.5, minus=1)
    with pytest.raises(ValueError, match=r"count 17 for layer '0.weight' must be an int in "
                                         r"\[0, 16\]"):
        compute_densities("test-half", net, 0.5, plus=9)
    with pytest.raises(ValueError, match=r"mask method 'test-half' is already registered"):
        register_mask_method("test-half", half)


def test_register_rejects_non_callables():
    with pytest.raises(TypeError, match="mask method 'x' must be callable, got int"):
        register_mask_method("x", 3)
    assert "x" not in list_mask_methods()


# ----------------------------------------------------------------------------- layer_densities
def test_layer_densities():
    masks = {"a": torch.tensor([[True, False], [False, False]]), "b": torch.ones(3, dtype=bool)}
    assert layer_densities(masks) == {"a": 0.25, "b": 1.0}
    with pytest.raises(TypeError, match="mask 'a' must be a torch.Tensor"):
        layer_densities({"a": [True]})
    with pytest.raises(ValueError, match=r"mask 'a' is empty \(shape \(0,\)\)"):
        layer_densities({"a": torch.zeros(0, dtype=bool)})


# ----------------------------------------------------------------------------- speed and GPU
@pytest.mark.slow
def test_erk_1000_layer_mlp_is_fast():
    net = nn.Sequential(nn.Linear(784, 128), *[nn.Linear(128, 128) for _ in range(998)],
                        nn.Linear(128, 10))
    layers = prunable_layers(net)
    times = []
    for seed in range(5):
        start = time.perf_counter()
        masks = compute_masks("erk", net, 0.125, layers=layers, generator=gen(seed))
        times.append(time.perf_counter() - start)
    total = sum(m.numel() for m in masks.values())
    assert sum(counts_of(masks)) == math.floor(0.125 * total + 0.5)
    assert statistics.median(times) < 1.0      # ~0.1 s single-threaded; loose for shared CI


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_follow_the_weights_to_cuda():
    net = conv_net().cuda()
    cpu = compute_masks("erk", conv_net(), 0.3, generator=gen())
    masks = compute_masks("erk", net, 0.3, generator=gen())
    assert all(m.device.type == "cuda" for m in masks.values())
    assert all(torch.equal(masks[k].cpu(), cpu[k]) for k in masks)


def test_global_rng_untouched_when_a_generator_is_given():
    # library code never seeds globally: the numpy and torch global states are untouched
    net = conv_net()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 (reading the legacy global state)
    torch_state = torch.get_rng_state().clone()
    compute_masks("erk", net, 0.3, generator=gen())
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_uniform_skip_budget_middle_is_the_official_uni_skip():
    # Official uni_skip (docs/protocol.md): middle layers at the density itself, ends dense on top.
    net = three_layer_mlp((10, 20, 20, 20, 5))              # 200, 400, 400, 100 weights
    masks = compute_masks("uniform-skip", net, 0.1, budget="middle", generator=gen())
    assert counts_of(masks) == [200, 40, 40, 100]            # 380 of 1100, not 110
    # No feasibility bound: the ends do not come out of the budget.
    assert counts_of(compute_masks("uniform-skip", net, 0.01, budget="middle",
                                   generator=gen())) == [200, 4, 4, 100]
    with pytest.raises(ValueError, match=r"uniform-skip: budget='total' must be one of: "
                                         r"'network', 'middle'"):
        compute_masks("uniform-skip", net, 0.1, budget="total")
