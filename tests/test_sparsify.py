"""The one-call pipeline: mask method -> densities -> init -> fixed masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from orthosparse._layers import prunable_layers
from orthosparse.masks import compute_densities, compute_masks
from orthosparse.schemes import init_layers, list_inits
from orthosparse.sparse import density_report, get_masks
from orthosparse.sparsify import attach_optimizer, sparsify


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5))


def make_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def orthogonality_error(w: torch.Tensor) -> float:
    w = w.reshape(w.shape[0], -1) if w.dim() == 2 else w[:, :, w.shape[2] // 2, w.shape[3] // 2]
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return (gram - torch.eye(gram.shape[0])).abs().max().item()


def test_list_inits():
    assert {"eoi", "orthogonal", "kaiming", "sparse-kaiming", "none"} <= set(list_inits())


def test_sparsify_erk_eoi_mlp_end_to_end():
    model = make_mlp()
    params_before = {name: id(p) for name, p in model.named_parameters()}
    masks = sparsify(model, 0.1, mask="erk", init="eoi", generator=gen())
    names = ["0.weight", "2.weight", "4.weight", "6.weight"]
    assert list(masks) == names
    installed = get_masks(model)
    assert list(installed) == names
    for name, p in model.named_parameters():
        assert id(p) == params_before[name]
        if name in masks:
            assert torch.equal(installed[name], masks[name])
            assert torch.equal(p.detach() != 0, masks[name])  # EOI: support == mask
            assert orthogonality_error(p.detach()) < 1e-5
        else:
            assert torch.count_nonzero(p) == 0  # biases: zero by default
    total = sum(p.numel() for n, p in model.named_parameters() if n in masks)
    kept = sum(int(m.sum()) for m in masks.values())
    # ERK's total is exact; EOI may land each layer up to min(rows, cols) entries from its count.
    assert abs(kept - math.floor(0.1 * total + 0.5)) <= 20 + 64 + 64 + 5
    report = density_report(model)
    for row in report.rows:
        assert row.target is not None
        assert abs(row.kept - row.target * row.numel) <= min(row.shape)


def test_sparsify_kaiming_keeps_the_mask_method_counts_exactly():
    model = make_mlp()
    masks = sparsify(model, 0.1, mask="erk", init="kaiming", generator=gen())
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == math.floor(0.1 * total + 0.5)
    for row in density_report(model).rows:
        assert row.target == row.kept / row.numel  # init kept the mask method's masks


@pytest.mark.filterwarnings("ignore:layer .*SAO cannot build")
@pytest.mark.parametrize("init", ["eoi", "sao"])
@pytest.mark.parametrize("mask", ["uniform", "erk"])
def test_schemes_with_own_masks_get_densities_and_no_positions(mask, init):
    # The generator goes straight to the scheme: sparsify equals densities (no draw), then the
    # scheme from the same generator state, as if no mask position existed.
    a, b = make_mlp(), make_mlp()
    options = {"fallback": True} if init == "sao" else {}
    got = sparsify(a, 0.25, mask=mask, init=init, generator=gen(7), **options)
    densities = compute_densities(mask, b, 0.25)
    want = init_layers(init, b, None, densities=densities, generator=gen(7), **options)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert {row.name: row.target for row in density_report(a).rows} == densities


def test_schemes_keeping_masks_get_positions_first():
    a, b = make_mlp(), make_mlp()
    got = sparsify(a, 0.25, mask="erk", init="kaiming", generator=gen(7))
    generator = gen(7)
    want = init_layers("kaiming", b, compute_masks("erk", b, 0.25, generator=generator),
                       generator=generator)
    assert all(torch.equal(got[k], want[k]) for k in got)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_sparsify_is_deterministic_and_seed_dependent():
    a, b, c = make_mlp(), make_mlp(), make_mlp()
    ma = sparsify(a, 0.2, mask="uniform", init="eoi", generator=gen(3))
    mb = sparsify(b, 0.2, mask="uniform", init="eoi", generator=gen(3))
    mc = sparsify(c, 0.2, mask="uniform", init="eoi", generator=gen(4))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert not all(torch.equal(ma[k], mc[k]) for k in ma)


def test_training_after_sparsify_keeps_zeros():
    model = make_cnn()
    masks = sparsify(model, 0.2, mask="uniform", init="eoi", generator=gen(), gain=1.0,
                     bias_std=0.01)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                weight_decay=1e-4)
    attach_optimizer(optimizer, model)
    g = gen(9)
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8, generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name].detach()[~mask]) == 0
        assert torch.count_nonzero(params[name].grad[~mask]) == 0


def test_sparsify_conv_delta_and_bias_std():
    model = make_cnn()
    masks = sparsify(model, 0.3, mask="uniform", init="eoi", generator=gen(), bias_std=0.5)
    for name in ("0.weight", "2.weight"):
        w = dict(model.named_parameters())[name].detach()
        assert orthogonality_error(w) < 1e-5
        assert int(masks[name].sum()) == math.floor(0.3 * w.numel() + 0.5)
    assert torch.count_nonzero(model[0].bias) == 16  # N(0, 0.25) draws


def test_sparsify_snip_with_data():
    model = make_mlp()
    g = gen(1)
    data = [(torch.randn(8, 20, generator=g), torch.randint(0, 5, (8,), generator=g))]
    masks = sparsify(model, 0.1, mask="snip", init="orthogonal", data=data, generator=gen())
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == math.floor(0.1 * total + 0.5)
    with pytest.raises(ValueError, match="data"):
        sparsify(make_mlp(), 0.1, mask="snip", init="eoi")


def test_sparsify_density_map_without_density():
    model = make_mlp()
    masks = sparsify(model, None, mask={"*": 0.25, "6.weight": 1.0}, init="kaiming",
                     generator=gen())
    assert bool(masks["6.weight"].all())
    assert int(masks["2.weight"].sum()) == 1024


def test_sparsify_dense_mask_gives_dense_orthogonal():
    model = make_mlp()
    masks = sparsify(model, 1.0, mask="dense", init="orthogonal", generator=gen())
    assert all(bool(m.all()) for m in masks.values())
    for layer in prunable_layers(model):
        assert orthogonality_error(layer.weight.detach()) < 1e-5


# ----------------------------------------------------------------------------- exclude, options
def test_exclude_leaves_layers_untouched_and_warns_on_unused_patterns():
    model = make_mlp()
    head = model[6].weight.detach().clone()
    head_bias = model[6].bias.detach().clone()
    masks = sparsify(model, 0.2, mask="uniform", init="eoi", generator=gen(), exclude=["6"])
    assert list(masks) == ["0.weight", "2.weight", "4.weight"]
    assert torch.equal(model[6].weight, head) and torch.equal(model[6].bias, head_bias)
    assert "6.weight_orthosparse_mask" not in dict(model.named_buffers())
    with pytest.warns(UserWarning, match=r"exclude entry 'head\*' matches no prunable layer"):
        sparsify(make_mlp(), 0.2, mask="uniform", init="kaiming", exclude=("head*", "0"))
    with pytest.warns(UserWarning, match="exclude entry Conv2d matches no prunable layer"):
        sparsify(make_mlp(), 0.2, mask="uniform", init="kaiming", exclude=nn.Conv2d)
    cnn = make_cnn()
    masks = sparsify(cnn, 0.2, mask="uniform", init="kaiming", exclude=nn.Linear)
    assert list(masks) == ["0.weight", "2.weight"]
    with pytest.raises(ValueError, match=r"no prunable layers: .* left after exclude"):
        sparsify(make_mlp(), 0.2, exclude=nn.Linear)
    with pytest.raises(ValueError, match="no prunable layers"):
        sparsify(nn.Sequential(nn.Tanh()), 0.2)


def test_options_are_routed_to_mask_or_init():
    model = make_cnn()
    masks = sparsify(model, 0.1, mask="erk", init="eoi", generator=gen(), erk_power_scale=0.5,
                     center_density="more")
    assert list(masks) == ["0.weight", "2.weight", "6.weight"]
    same = make_cnn()
    sparsify(same, 0.1, mask="erk", init="eoi", generator=gen(), erk_power_scale=0.5)
    # "more" gives the centre taps more nonzeros than the default d_H = d.
    assert torch.count_nonzero(model[2].weight) > torch.count_nonzero(same[2].weight)
    with pytest.raises(TypeError, match=r"unknown option 'rounds': mask method 'erk' takes "
                                        r"erk_power_scale, dense_layers; init 'eoi' takes "
                                        r"center_density"):
        sparsify(make_cnn(), 0.1, mask="erk", init="eoi", rounds=3)


def test_resparsify_warns_and_replaces():
    model = make_mlp()
    sparsify(model, 0.2, mask="uniform", init="kaiming", generator=gen(1))
    with pytest.warns(UserWarning, match="already has fixed masks on 4 parameters"):
        masks = sparsify(model, 0.5, mask="uniform", init="kaiming", generator=gen(2))
    installed = get_masks(model)
    assert all(torch.equal(installed[k], masks[k]) for k in masks)
    assert abs(sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in
                                                               masks.values()) - 0.5) < 1e-3


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("density,error,match", [
    (0.0, ValueError, r"density=0.0 must be in \(0, 1\]"),
    (1.5, ValueError, r"density=1.5 must be in \(0, 1\]"),
    (float("nan"), ValueError, r"density=nan must be in \(0, 1\]"),
    ("0.1", TypeError, "density must be a real number"),
    (None, TypeError, "density must be a real number"),
])
def test_sparsify_bad_density(density, error, match):
    with pytest.raises(error, match=match):
        sparsify(make_mlp(), density)


def test_sparsify_bad_names_and_types():
    with pytest.raises(ValueError, match=r"unknown mask method 'erk2'; choose one of: dense, er, "
                                         r"erk"):
        sparsify(make_mlp(), 0.1, mask="erk2")
    with pytest.raises(ValueError, match=r"unknown init scheme 'eoii'; choose one of: "
                                         r"ai, conv-orthogonal, eoi"):
        sparsify(make_mlp(), 0.1, init="eoii")
    with pytest.raises(TypeError, match="mask must be a mask method name or a mapping"):
        sparsify(make_mlp(), 0.1, mask=3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sparsify("mlp", 0.1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sparsify(make_mlp(), 0.1, generator=1)
    model = make_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="unknown init scheme"):
        sparsify(model, 0.1, init="nope")
    with pytest.raises(ValueError, match=r"gain=-1.0 must be a finite number > 0"):
        sparsify(model, 0.1, gain=-1)
    with pytest.raises(ValueError, match=r"bias_std=-0.5 must be a finite number >= 0"):
        sparsify(model, 0.1, bias_std=-0.5)
    with pytest.raises(ValueError, match=r"init='none' keeps the model's biases; bias_std=0.1"):
        sparsify(model, 0.1, init="none", bias_std=0.1)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        sparsify(model, 0.1, loss_fn="ce")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sparsify_on_cuda_matches_cpu():
    cpu, gpu = make_cnn(), make_cnn().cuda()
    m_cpu = sparsify(cpu, 0.2, mask="erk", init="eoi", generator=gen(0))
    m_gpu = sparsify(gpu, 0.2, mask="erk", init="eoi", generator=gen(0))
    for name, mask in m_cpu.items():
        assert m_gpu[name].device.type == "cuda"
        assert torch.equal(m_gpu[name].cpu(), mask)  # draws are made on the CPU
        torch.testing.assert_close(gpu.get_parameter(name).detach().cpu(),
                                   cpu.get_parameter(name).detach(), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- score_weights
def snip_data(seed: int = 1) -> list:
    g = gen(seed)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g))]


def test_score_weights_current_scores_the_model_as_given():
    model = make_cnn()
    expected = compute_masks("snip", make_cnn_like(model), 0.2, data=snip_data())
    masks = sparsify(model, 0.2, mask="snip", init="kaiming", data=snip_data(), generator=gen())
    assert all(torch.equal(masks[n], expected[n]) for n in expected)


def make_cnn_like(model: nn.Module) -> nn.Module:
    clone = make_cnn()
    clone.load_state_dict(model.state_dict())
    return clone


def test_score_weights_scores_a_dense_draw_of_the_named_init():
    from orthosparse.init import conv_orthogonal_

    reference = make_cnn()
    init_layers("conv-orthogonal", reference, None, gain=1.1, generator=gen())
    expected = compute_masks("snip", reference, 0.2, data=snip_data())
    scored = {n: p.detach().clone() for n, p in reference.named_parameters()}
    assert (scored["0.weight"].abs().sum(dim=(0, 1)) > 0).all()  # every tap, not a delta
    # init == score_weights: the scored weights are kept (masked), not drawn again
    model = make_cnn()
    masks = sparsify(model, 0.2, mask="snip", init="conv-orthogonal", data=snip_data(),
                     gain=1.1, generator=gen(), score_weights="conv-orthogonal")
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.equal(masks[name], expected[name])
            assert torch.equal(p.detach(), scored[name] * masks[name])
    # init="none" keeps them as well; another init draws its own values after scoring
    kept = make_cnn()
    sparsify(kept, 0.2, mask="snip", init="none", data=snip_data(), gain=1.1, generator=gen(),
             score_weights="conv-orthogonal")
    assert torch.equal(kept[2].weight, model[2].weight)
    other = make_cnn()
    sparsify(other, 0.2, mask="snip", init="orthogonal", data=snip_data(), gain=1.1,
             generator=gen(), score_weights="conv-orthogonal", conv="conv-orthogonal")
    assert torch.equal(get_masks(other)["2.weight"], expected["2.weight"])
    assert not torch.equal(other[2].weight, model[2].weight)
    g = gen()
    init_layers("conv-orthogonal", make_cnn(), None, gain=1.1, generator=g)  # the scoring draw
    w = conv_orthogonal_(torch.empty(16, 3, 3, 3), 1.1, generator=g)  # then the init's own
    torch.testing.assert_close(other[0].weight.detach(), w * expected["0.weight"])


def test_score_weights_ai_current_starts_from_the_scored_weights():
    reference = make_cnn()
    init_layers("orthogonal", reference, None, generator=gen())
    expected = compute_masks("snip", reference, 0.3, data=snip_data())
    model = make_cnn()
    sparsify(model, 0.3, mask="snip", init="ai", data=snip_data(), generator=gen(),
             score_weights="orthogonal", start="current", iterations=0)
    assert torch.equal(model[0].weight, reference[0].weight * expected["0.weight"])


def test_score_weights_errors_and_exclude():
    with pytest.raises(ValueError, match=r"score_weights='eoi' must be one of: 'current', "
                                         r"'orthogonal', 'conv-orthogonal', 'kaiming'"):
        sparsify(make_cnn(), 0.2, score_weights="eoi")
    with pytest.raises(ValueError, match=r"grouped='x' for init scheme 'eoi' must be one of"):
        sparsify(make_cnn(), 0.2, init="eoi", score_weights="conv-orthogonal", grouped="x")
    model = make_cnn()
    head = model[6].weight.detach().clone()
    sparsify(model, 0.2, mask="snip", init="eoi", data=snip_data(), generator=gen(),
             score_weights="kaiming", exclude=["6"])
    assert torch.equal(model[6].weight, head)  # excluded layers are not re-initialized


# ----------------------------------------------------------------------------- grouped convs
def make_depthwise() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_sparsify_passes_each_convs_groups():
    model = make_depthwise()
    sparsify(model, 0.5, mask={"*": 0.5}, init="eoi", generator=gen())
    centre = model[2].weight.detach()[:, 0, 1, 1]
    torch.testing.assert_close(centre.abs(), torch.ones(8))  # every channel an isometry
    paper = make_depthwise()
    with pytest.warns(UserWarning, match=r"init 'eoi' leaves layer '2.weight' with dead "
                                         r"channels at initialization: \d+ of 8 output"):
        sparsify(paper, 0.5, mask={"*": 0.5}, init="eoi", generator=gen(), grouped="paper")
    assert (paper[2].weight.detach()[:, 0, 1, 1] == 0).any()
