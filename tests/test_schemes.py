"""Initialization schemes: values, masks, biases, options and errors."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from orthosparse._layers import prunable_layers
from orthosparse.schemes import get_scheme, init_layers, list_inits, register_scheme
from orthosparse.sparsify import sparsify


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 8))


def make_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 10))


def random_masks(model: nn.Module, density: float = 0.3, seed: int = 1) -> dict:
    g = gen(seed)
    return {layer.name: torch.rand(layer.weight.shape, generator=g) < density
            for layer in prunable_layers(model)}


def weights(model: nn.Module) -> dict:
    return {layer.name: layer.weight.detach().clone() for layer in prunable_layers(model)}


def assert_orthogonal(w: torch.Tensor, gain: float, atol: float = 1e-5) -> None:
    """Rows orthonormal (wide) or columns orthonormal (tall), scaled by gain."""
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    eye = torch.eye(gram.shape[0], dtype=w.dtype)
    torch.testing.assert_close(gram, gain**2 * eye, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- registry
def test_registry_lists_all_schemes_and_rejects_unknown():
    names = list_inits()
    for name in ("eoi", "orthogonal", "kaiming", "sparse-kaiming", "none", "ai", "sao"):
        assert name in names
    assert names == sorted(names)
    with pytest.raises(ValueError, match=r"unknown init scheme 'eo'; choose one of: "
                                         r"ai, conv-orthogonal, eoi, kaiming"):
        init_layers("eo", make_mlp(), None)
    assert get_scheme("eoi").own_masks and not get_scheme("kaiming").own_masks
    assert get_scheme("eoi").options == ["center_density", "nm", "grouped", "structure"]
    assert get_scheme("orthogonal").options == ["conv", "grouped"]
    assert get_scheme("conv-orthogonal").options == ["grouped"]
    assert get_scheme("ai").options == ["iterations", "lr", "start", "conv"]


def test_register_scheme_from_another_module():
    calls = []

    @register_scheme("test-constant")
    def constant(layers, masks, densities, *, gain, generator, value=0.5):
        calls.append(dict(densities))
        for layer in layers:
            layer.weight.fill_(value * gain)
        return masks

    model = make_mlp()
    masks = random_masks(model)
    out = init_layers("test-constant", model, masks, gain=2.0, value=0.25)
    for name, w in weights(model).items():
        assert torch.equal(w, masks[name].float() * 0.5)  # filled, then masked
        assert torch.equal(out[name], masks[name])
    assert calls[0] == {n: int(m.sum()) / m.numel() for n, m in masks.items()}
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'valu' for init scheme "
                                        r"'test-constant'; its options are: value"):
        init_layers("test-constant", model, masks, valu=1)
    with pytest.raises(ValueError, match="'test-constant' is already registered"):
        register_scheme("test-constant", constant)

    @register_scheme("test-bad-shape")
    def bad(layers, masks, densities, *, gain, generator):
        return {layer.name: torch.ones(2, dtype=torch.bool) for layer in layers}

    with pytest.raises(ValueError, match=r"the masks returned by init scheme 'test-bad-shape'"
                                         r"\['0.weight'\] has shape \(2,\) but the parameter "
                                         r"'0.weight' has shape \(32, 16\)"):
        init_layers("test-bad-shape", model, masks)


# ----------------------------------------------------------------------------- eoi
@pytest.mark.parametrize("gain", [1.0, 1.0247])
def test_eoi_linear_orthogonal_with_own_positions(gain):
    model = make_mlp()
    given = random_masks(model, density=0.25)
    densities = {"0.weight": 0.25, "2.weight": 0.2, "4.weight": 0.5}
    out = init_layers("eoi", model, given, densities=densities, gain=gain, generator=gen())
    assert list(out) == ["0.weight", "2.weight", "4.weight"]
    for layer in prunable_layers(model):
        w, m = layer.weight.detach(), out[layer.name]
        assert m.dtype == torch.bool and m.shape == w.shape
        assert_orthogonal(w, gain)
        assert torch.equal(w != 0, m)  # the support is the mask
        rows, cols = w.shape
        # The stop rule keeps the closer of two consecutive rotations; one rotation adds at
        # most min(rows, cols) nonzeros.
        assert abs(int(m.sum()) - densities[layer.name] * w.numel()) <= min(rows, cols)
    assert not torch.equal(out["0.weight"], given["0.weight"])  # positions are EOI's own


def test_eoi_uses_mask_densities_and_is_deterministic():
    masks = random_masks(make_mlp(), density=0.3)
    a, b = make_mlp(), make_mlp()
    out_a = init_layers("eoi", a, masks, generator=gen(5))
    out_b = init_layers("eoi", b, masks, generator=gen(5))
    for name in masks:
        assert torch.equal(out_a[name], out_b[name])
        assert torch.equal(weights(a)[name], weights(b)[name])
        target = int(masks[name].sum())
        assert abs(int(out_a[name].sum()) - target) <= min(masks[name].shape)
    out_c = init_layers("eoi", make_mlp(), masks, generator=gen(6))
    assert not torch.equal(out_c["2.weight"], out_a["2.weight"])


def test_eoi_same_shape_layers_differ():
    model = nn.Sequential(*[nn.Linear(24, 24) for _ in range(4)])
    out = init_layers("eoi", model, None, densities={f"{i}.weight": 0.25 for i in range(4)},
                      generator=gen())
    masks = list(out.values())
    for i in range(4):
        assert_orthogonal(model[i].weight.detach(), 1.0)
        for j in range(i):
            assert not torch.equal(masks[i], masks[j])


def test_eoi_conv_delta_rule():
    model = make_cnn()
    density = 0.25
    out = init_layers("eoi", model, None, densities={"0.weight": density, "3.weight": density,
                                                     "6.weight": density}, generator=gen())
    for name in ("0.weight", "3.weight"):
        w = dict(model.named_parameters())[name].detach()
        mask = out[name]
        centre = w[:, :, 1, 1]  # (c_out, c_in)
        assert_orthogonal(centre, 1.0)
        off = w.clone()
        off[:, :, 1, 1] = 0
        assert torch.count_nonzero(off) == 0  # delta: every other tap is 0
        assert torch.all(mask[w != 0])  # nonzeros are kept
        assert int(mask.sum()) == math.floor(density * w.numel() + 0.5)  # exact mask density
        assert int(mask.sum()) > int(torch.count_nonzero(w))  # zero-valued trainable positions


def test_eoi_centre_density_option():
    model = nn.Sequential(nn.Conv2d(16, 16, 3))
    init_layers("eoi", model, None, densities={"0.weight": 0.04}, generator=gen(),
                center_density="more")
    centre = model[0].weight.detach()[:, :, 1, 1]
    # "more": d_H = min(d * 9, 1, sqrt(d)) = 0.2 instead of 0.04.
    assert abs(int(torch.count_nonzero(centre)) - 0.2 * 256) <= 16
    assert_orthogonal(centre, 1.0)


def test_eoi_floor_warning_names_the_layer():
    model = make_mlp()
    with pytest.warns(UserWarning, match=r"layer '2.weight': density=0.001 is below the "
                                         r"sparsest"):
        out = init_layers("eoi", model, None, densities={"0.weight": 0.5, "2.weight": 0.001,
                                                         "4.weight": 0.5}, generator=gen())
    assert int(out["2.weight"].sum()) == 32  # density 1/32: one entry per row


def test_eoi_needs_densities():
    with pytest.raises(ValueError, match="'eoi' needs per-layer densities: pass masks or "
                                         "densities"):
        init_layers("eoi", make_mlp(), None)


# ----------------------------------------------------------------------------- orthogonal
def test_orthogonal_is_dense_orthogonal_then_masked():
    dense, sparse = make_cnn(), make_cnn()
    init_layers("orthogonal", dense, None, gain=1.5, generator=gen(3))
    masks = random_masks(sparse)
    out = init_layers("orthogonal", sparse, masks, gain=1.5, generator=gen(3))
    for name, w in weights(dense).items():
        assert torch.equal(out[name], masks[name])
        assert torch.equal(weights(sparse)[name], w * masks[name])
        matrix = w if w.dim() == 2 else w[:, :, 1, 1]
        assert_orthogonal(matrix, 1.5)
        if w.dim() == 4:
            assert torch.count_nonzero(w) == torch.count_nonzero(matrix)  # delta-orthogonal


# ----------------------------------------------------------------------------- kaiming
def test_kaiming_matches_pytorch_default_then_masked():
    model = make_cnn()
    masks = random_masks(model)
    init_layers("kaiming", model, masks, gain=2.0, generator=gen(7))
    g = gen(7)
    for layer in prunable_layers(model):
        expected = torch.empty(layer.weight.shape)
        nn.init.kaiming_uniform_(expected, a=math.sqrt(5), generator=g)
        mask = masks[layer.name]
        assert torch.equal(layer.weight.detach(), 2.0 * expected * mask)
        fan_in = layer.weight[0].numel()
        assert layer.weight.abs().max() <= 2.0 / math.sqrt(fan_in)


# ----------------------------------------------------------------------------- sparse kaiming
@pytest.mark.parametrize("nonlinearity,g_nl", [("relu", math.sqrt(2.0)), ("tanh", 5.0 / 3.0)])
def test_sparse_kaiming_std_from_true_fan_in(nonlinearity, g_nl):
    model = nn.Sequential(nn.Linear(400, 300))
    g = gen(2)
    # Rows with very different fan-ins, and one row with none.
    probs = torch.linspace(0.02, 0.9, 300).unsqueeze(1).expand(300, 400)
    mask = torch.rand(300, 400, generator=g) < probs
    mask[7] = False
    init_layers("sparse-kaiming", model, {"0.weight": mask}, gain=1.3, generator=gen(4),
                nonlinearity=nonlinearity)
    w = model[0].weight.detach().double()
    fan_in = mask.sum(dim=1).double()  # (300,)
    assert torch.count_nonzero(w[7]) == 0
    assert torch.count_nonzero(w[~mask]) == 0
    keep = mask.clone()
    keep[7] = False
    z = (w * fan_in.clamp(min=1).sqrt().unsqueeze(1) / (1.3 * g_nl))[keep]
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-4
    # Per-row check on the widest and narrowest rows: empirical std within 15%.
    for row in (0, 299):
        values = w[row][mask[row]]
        expected = 1.3 * g_nl / math.sqrt(int(fan_in[row]))
        if values.numel() > 100:
            assert abs(values.std().item() / expected - 1) < 0.15


def test_sparse_kaiming_conv_fan_in_counts_kernel_taps():
    model = nn.Sequential(nn.Conv2d(4, 2, 3))
    mask = torch.zeros(2, 4, 3, 3, dtype=torch.bool)
    mask[0, :, 1, 1] = True  # fan-in 4
    mask[1] = True  # fan-in 36
    init_layers("sparse-kaiming", model, {"0.weight": mask}, generator=gen(), nonlinearity="relu")
    w = model[0].weight.detach()
    assert torch.count_nonzero(w[0]) == 4 and torch.count_nonzero(w[1]) == 36
    # Same standard normal draw scaled by sqrt(2)/sqrt(fan_in): recompute it by hand.
    draw = torch.empty(2, 4, 3, 3).normal_(0.0, 1.0, generator=gen())
    expected = draw * torch.tensor([math.sqrt(2 / 4), math.sqrt(2 / 36)]).view(2, 1, 1, 1)
    torch.testing.assert_close(w, expected * mask, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- none, biases
def test_none_keeps_values_and_biases():
    model = make_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = random_masks(model)
    init_layers("none", model, masks, generator=gen())
    for key, value in model.state_dict().items():
        expected = before[key] * masks[key] if key in masks else before[key]
        assert torch.equal(value, expected), key
    with pytest.raises(ValueError, match="init='none' keeps the model's biases; bias_std=0.1 "
                                         "must be 0"):
        init_layers("none", model, masks, bias_std=0.1)


def test_biases_zero_by_default_and_normal_with_bias_std():
    model = make_cnn()
    bn_before = {k: v.clone() for k, v in model[1].state_dict().items()}
    model[1].weight.data.fill_(3.0)  # normalization layers keep whatever they hold
    init_layers("kaiming", model, random_masks(model), generator=gen())
    for layer in prunable_layers(model):
        assert torch.count_nonzero(layer.module.bias) == 0
    assert torch.all(model[1].weight == 3.0)
    assert torch.equal(model[1].bias, bn_before["bias"])

    wide = nn.Sequential(nn.Linear(4, 3000))
    init_layers("eoi", wide, None, densities={"0.weight": 0.5}, bias_std=0.2, generator=gen())
    bias = wide[0].bias.detach().double().numpy()
    assert stats.kstest(bias / 0.2, "norm").pvalue > 1e-4


def test_dense_masks_when_none_given():
    model = make_mlp()
    out = init_layers("orthogonal", model, None, generator=gen())
    for name, w in weights(model).items():
        assert bool(out[name].all())
        assert_orthogonal(w, 1.0)


# ----------------------------------------------------------------------------- ai, sao
def test_ai_adapter_keeps_masks():
    model = make_mlp()
    masks = random_masks(model, density=0.5)
    out = init_layers("ai", model, masks, generator=gen(), iterations=3)
    for name, w in weights(model).items():
        assert torch.equal(out[name], masks[name])
        assert torch.count_nonzero(w[~masks[name]]) == 0
        assert torch.count_nonzero(w) > 0


def test_sao_adapter_own_positions():
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32))
    out = init_layers("sao", model, None, densities={"0.weight": 0.25, "2.weight": 0.125},
                      generator=gen(), activation="tanh")
    assert int(out["0.weight"].sum()) == 256 and int(out["2.weight"].sum()) == 128
    assert_orthogonal(model[0].weight.detach(), 1.0)


# ----------------------------------------------------------------------------- errors
def test_init_layers_errors():
    model = make_mlp()
    masks = random_masks(model)
    with pytest.raises(ValueError, match=r"gain=0.0 must be a finite number > 0"):
        init_layers("kaiming", model, masks, gain=0.0)
    with pytest.raises(TypeError, match="gain must be a real number"):
        init_layers("kaiming", model, masks, gain="1")
    with pytest.raises(ValueError, match=r"bias_std=-1.0 must be a finite number >= 0"):
        init_layers("kaiming", model, masks, bias_std=-1.0)
    with pytest.raises(ValueError, match=r"bias_std=nan"):
        init_layers("kaiming", model, masks, bias_std=float("nan"))
    short = dict(masks)
    del short["4.weight"]
    with pytest.raises(ValueError, match=r"masks must have one entry per layer; missing: "
                                         r"\['4.weight'\]"):
        init_layers("kaiming", model, short)
    bad = dict(masks, **{"2.weight": torch.ones(32, 16, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"masks\['2.weight'\] has shape \(32, 16\) but the "
                                         r"parameter '2.weight' has shape \(32, 32\)"):
        init_layers("kaiming", model, bad)
    with pytest.raises(TypeError, match=r"masks\['0.weight'\] must be a bool tensor"):
        init_layers("kaiming", model, dict(masks, **{"0.weight": torch.ones(32, 16)}))
    with pytest.raises(TypeError, match="masks must be a mapping"):
        init_layers("kaiming", model, [1])
    with pytest.raises(ValueError, match=r"densities\['0.weight'\]=1.5 must be in \(0, 1\]"):
        init_layers("eoi", model, None, densities={"0.weight": 1.5, "2.weight": 0.1,
                                                   "4.weight": 0.1})
    with pytest.raises(ValueError, match="densities must have one entry per layer"):
        init_layers("eoi", model, None, densities={"0.weight": 0.5})
    with pytest.raises(TypeError, match="layers must be a model or a list of PrunableLayer"):
        init_layers("eoi", "model", None)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        init_layers("kaiming", model, masks, generator=0)
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'center_density' for "
                                        r"init scheme 'kaiming'"):
        init_layers("kaiming", model, masks, center_density=0.5)


# ----------------------------------------------------------------------------- conv rules, groups
def make_grouped() -> nn.Module:
    """A stem conv, a depthwise 3x3 and a grouped 1x1 (EfficientNet-like)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Tanh(),
                         nn.Conv2d(8, 16, 1, groups=2))


def centre(w: torch.Tensor) -> torch.Tensor:
    return w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))]


def test_conv_orthogonal_scheme_every_tap_then_masked():
    from orthosparse.init import conv_orthogonal_, orthogonal_

    model, masks = make_cnn(), random_masks(make_cnn(), 0.5)
    final = init_layers("conv-orthogonal", model, masks, gain=1.2, generator=gen(3))
    assert all(torch.equal(final[n], masks[n]) for n in masks)
    g = gen(3)  # the same draws, layer by layer: conv_orthogonal_ for convs, QR for Linear
    expected = [conv_orthogonal_(torch.empty(8, 3, 3, 3), 1.2, generator=g),
                conv_orthogonal_(torch.empty(16, 8, 3, 3), 1.2, generator=g),
                orthogonal_(torch.empty(10, 256), 1.2, generator=g)]
    for layer, w in zip(prunable_layers(model), expected, strict=True):
        torch.testing.assert_close(layer.weight.detach(), w * masks[layer.name])
    # the orthogonal scheme's conv option reaches the same weights
    other = make_cnn()
    init_layers("orthogonal", other, masks, gain=1.2, generator=gen(3), conv="conv-orthogonal")
    for a, b in zip(prunable_layers(model), prunable_layers(other), strict=True):
        assert torch.equal(a.weight, b.weight)


def test_orthogonal_conv_option_default_is_delta():
    a, b = make_cnn(), make_cnn()
    init_layers("orthogonal", a, None, generator=gen(1))
    init_layers("orthogonal", b, None, generator=gen(1), conv="delta")
    assert torch.equal(a[0].weight, b[0].weight)
    assert int((a[0].weight.abs().sum(dim=(0, 1)) > 0).sum()) == 1  # centre tap only
    init_layers("orthogonal", b, None, generator=gen(1), conv="flat")
    assert_orthogonal(b[3].weight.detach().reshape(16, -1), 1.0)


def test_eoi_grouped_blocks_by_default_paper_by_name():
    model = make_grouped()
    densities = {layer.name: 0.5 for layer in prunable_layers(model)}
    with pytest.warns(UserWarning, match=r"init 'eoi' leaves layer '0.weight'"):  # 3 -> 8, tall
        init_layers("eoi", model, None, densities=densities, generator=gen())
    torch.testing.assert_close(centre(model[2].weight).abs().flatten(), torch.ones(8))
    for block in centre(model[4].weight).detach().reshape(2, 8, 4):  # two (8, 4) blocks
        assert_orthogonal(block, 1.0)
    paper = make_grouped()
    with pytest.warns(UserWarning, match=r"init 'eoi' leaves layer '2.weight' with dead "
                                         r"channels at initialization: \d+ of 8 output "
                                         r"channels have all-zero weights"):
        init_layers("eoi", paper, None, densities=densities, generator=gen(), grouped="paper")
    assert (centre(paper[2].weight).flatten() == 0).any()
    assert_orthogonal(centre(paper[2].weight).detach(), 1.0)  # one (8, 1) unit column


def test_orthogonal_schemes_grouped_option():
    model = make_grouped()
    init_layers("orthogonal", model, None, generator=gen())
    torch.testing.assert_close(centre(model[2].weight).abs().flatten(), torch.ones(8))
    init_layers("conv-orthogonal", model, None, generator=gen(), grouped="paper")
    assert (model[2].weight.reshape(8, 9) != 0).sum(dim=1).min() > 1  # one (8, 1) kernel


@pytest.mark.parametrize("scheme,option,value,allowed", [
    ("eoi", "grouped", "depthwise", "'blocks', 'paper'"),
    ("orthogonal", "conv", "xiao", "'delta', 'conv-orthogonal', 'flat'"),
    ("conv-orthogonal", "grouped", 1, "'blocks', 'paper'"),
    ("ai", "conv", "orthogonal", "'flat', 'delta', 'conv-orthogonal'"),
])
def test_option_choices_checked_before_any_work(scheme, option, value, allowed):
    model = make_cnn()
    before = weights(model)
    with pytest.raises(ValueError, match=rf"{option}={value!r} for init scheme '{scheme}' must "
                                         rf"be one of: {allowed}"):
        init_layers(scheme, model, random_masks(model), **{option: value})
    assert all(torch.equal(before[n], w) for n, w in weights(model).items())


def test_ai_conv_option_reaches_the_start():
    from orthosparse.init import conv_orthogonal_

    model = make_cnn()
    masks = {n: torch.ones_like(m) for n, m in random_masks(model).items()}
    init_layers("ai", model, masks, generator=gen(2), iterations=0, conv="conv-orthogonal")
    torch.testing.assert_close(model[0].weight.detach(),
                               conv_orthogonal_(torch.empty(8, 3, 3, 3), generator=gen(2)))


# ----------------------------------------------------------------------------- dead channels
def test_dead_channels_warning_names_layer_counts_and_indices():
    from orthosparse.schemes import dead_channels

    model = make_mlp()
    masks = {n: torch.ones_like(m) for n, m in random_masks(model).items()}
    masks["2.weight"][[3, 5]] = False  # two output rows of layer 2 pruned away
    masks["4.weight"][:, 7] = False  # input 7 of the last layer never read
    with pytest.warns(UserWarning) as record:
        init_layers("orthogonal", model, masks, generator=gen())
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert messages[0] == ("init 'orthogonal' leaves layer '2.weight' with dead channels at "
                           "initialization: 2 of 32 output channels have all-zero weights "
                           "[3, 5] (2 with no trainable weight)")
    assert messages[1].startswith("init 'orthogonal' leaves layer '4.weight' with dead channels "
                                  "at initialization: 1 of 32 input channels are read by no "
                                  "nonzero weight [7] (1 with no trainable weight)")
    assert record[0].filename == __file__  # points at the caller
    w = torch.zeros(4, 2, 3, 3)
    w[0, 1, 0, 0] = 1.0
    out, inp = dead_channels(w, groups=2)  # Conv2d(4, 4, 3, groups=2)
    assert out.tolist() == [1, 2, 3] and inp.tolist() == [0, 2, 3]


@pytest.mark.parametrize("scheme", ["eoi", "orthogonal", "conv-orthogonal", "kaiming",
                                    "sparse-kaiming", "none", "ai"])
def test_no_dead_channel_warning_for_dense_or_ordinary_layers(scheme):
    import warnings

    model = make_cnn()
    masks = {n: torch.ones_like(m) for n, m in random_masks(model).items()}
    options = {"iterations": 2} if scheme == "ai" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        init_layers(scheme, model, masks, generator=gen(), **options)


def test_eoi_structure_kernels_keeps_whole_kernels_of_the_centre_matrix():
    # The official EIS variant (docs/protocol.md): the mask is every tap of each kernel (o, i)
    # whose centre entry H[o, i] is nonzero; H is exactly orthogonal at the layer's density.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, 32, 3),
                        nn.Flatten(), nn.Linear(32, 10))
    masks = sparsify(net, 0.25, mask="uniform", init="eoi", structure="kernels",
                     generator=torch.Generator().manual_seed(3))
    for i in (0, 2):
        w, m = net[i].weight, masks[f"{i}.weight"]
        centre = w[:, :, 1, 1]                                             # (c_out, c_in)
        assert torch.equal(m, (centre != 0)[:, :, None, None].expand_as(m))
        # H at the layer's density (EOI stops at the first rotation that reaches it)
        assert round(0.25 * centre.numel()) <= int(m[:, :, 0, 0].sum()) < 0.3 * centre.numel()
        gram = centre @ centre.T if centre.shape[0] <= centre.shape[1] else centre.T @ centre
        torch.testing.assert_close(gram, torch.eye(min(centre.shape)), atol=1e-6, rtol=0)
        assert torch.count_nonzero(w[:, :, 0, 0]) == 0                     # delta kernel
    # Linear layers keep EOI's own mask.
    assert torch.equal(masks["4.weight"], net[4].weight != 0)
    with pytest.raises(ValueError, match=r"center_density='more' must be None or 'same'"):
        sparsify(net, 0.25, mask="uniform", init="eoi", structure="kernels",
                 center_density="more")
    with pytest.raises(ValueError, match=r"structure='kernel'"):
        sparsify(net, 0.25, mask="uniform", init="eoi", structure="kernel")


def test_options_only_the_scoring_scheme_takes_reach_it():
    # The EfficientNet preset's grouped="paper" must reach the conv-orthogonal scoring draw under
    # init="ai" or "none", which do not take it (docs/protocol.md, section 2).
    from orthosparse.init import conv_orthogonal_

    def scored(**options):
        net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
        sparsify(net, 1.0, mask="dense", init="none", score_weights="conv-orthogonal",
                 generator=gen(5), **options)
        return net[0].weight.detach()

    expected = conv_orthogonal_(torch.empty(4, 1, 3, 3), generator=gen(5), groups=1)
    torch.testing.assert_close(scored(grouped="paper"), expected, atol=0, rtol=0)
    assert not torch.equal(scored(), expected)  # default: one exact block per group
    with pytest.raises(TypeError, match="unknown option 'groupd'"):
        scored(groupd="paper")


def test_eoi_gives_a_layer_pruned_entirely_its_floor_with_a_warning():
    # What SynFlow or SNIP can hand over (layer collapse); the official code's
    # orthogonal_with_density(n, m, 0) builds the sparsest orthogonal matrix (docs/protocol.md).
    net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(6, 8), nn.Tanh(),
                        nn.Conv2d(4, 4, 3))
    with pytest.warns(UserWarning, match=r"the mask method left 2 layer\(s\) with density 0 "
                                         r"\('2.weight', '4.weight'\); EOI gives them its floor"):
        masks = get_scheme("eoi").fn(prunable_layers(net), None,
                                     {"0.weight": 0.5, "2.weight": 0.0, "4.weight": 0.0},
                                     gain=1.0, generator=gen())
    w = net[2].weight.detach()                                             # (8, 6): tall
    assert int(masks["2.weight"].sum()) == 6                               # one per column
    torch.testing.assert_close(w.T @ w, torch.eye(6), atol=1e-6, rtol=0)
    centre = net[4].weight.detach()[:, :, 1, 1]
    assert int(masks["4.weight"].sum()) == 4                               # the centre only
    torch.testing.assert_close(centre @ centre.T, torch.eye(4), atol=1e-6, rtol=0)
