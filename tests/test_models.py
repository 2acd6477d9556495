"""Model zoo: every registered model runs forward/backward; architectures match their papers."""

from __future__ import annotations

import builtins
import math
import sys

import pytest
import torch
from torch import nn

from orthosparse._layers import prunable_layers
from orthosparse.models import (
    EFFICIENTNET_B0_STAGES,
    MLP,
    VanillaCNN,
    create_activation,
    create_model,
    list_activations,
    list_models,
    model_arguments,
)
from orthosparse.models.efficientnet import MBConv, SqueezeExcite, StochasticDepth

# Shallow settings for the deep-by-default models so the parametrized test stays fast; no
# stochastic depth, which may drop a whole block for all 4 examples and leave it no gradient.
SMALL = {"mlp": {"depth": 3, "width": 16}, "vanilla-cnn": {"depth": 4, "channels": 8},
         "vanilla-cnn-paper": {"depth": 4, "channels": 8},
         "efficientnet-b0": {"stochastic_depth": 0.0}}
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]  # digits, MNIST, CIFAR
FAMILY_MEMBERS = {"resnet32", "resnet56", "resnet110"}  # same code as resnet20, only deeper


def _build(name: str, input_shape, num_classes: int) -> nn.Module:
    return create_model(name, input_shape=input_shape, num_classes=num_classes,
                        **SMALL.get(name, {}))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_names():
    assert list_models() == sorted(["mlp", "vanilla-cnn", "vanilla-cnn-paper", "vgg16", "vgg-c",
                                    "resnet20", "resnet32", "resnet56", "resnet110",
                                    "efficientnet-b0"])


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_parameter_gets_gradient(name):
    torch.manual_seed(0)
    model = _build(name, (3, 8, 8), num_classes=7)
    x = torch.randn(4, 3, 8, 8)
    out = model(x)
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("name", [n for n in list_models() if n not in FAMILY_MEMBERS])
@pytest.mark.parametrize("shape", SHAPES, ids=["digits", "mnist", "cifar"])
def test_every_input_shape(name, shape):
    model = _build(name, shape, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_output_layer_is_head(name):
    layers = prunable_layers(_build(name, (3, 32, 32), 10))
    assert layers[-1].name == "head.weight"


def test_mlp_structure():
    model = MLP(784, 10, depth=7, width=100, activation="tanh")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == (
        [(784, 100)] + [(100, 100)] * 5 + [(100, 10)])
    # 784*100+100 + 5*(100*100+100) + 100*10+10
    assert sum(p.numel() for p in model.parameters()) == 130_010
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 6
    assert [layer.name for layer in prunable_layers(model)][:2] == ["hidden.0.weight",
                                                                   "hidden.2.weight"]
    single = MLP(64, 3, depth=1)
    assert isinstance(single.head, nn.Linear) and len(single.hidden) == 0


def test_mlp_flattens_images_and_checks_size():
    model = MLP(64, 10, depth=2, width=8)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), model(x.reshape(3, 64)))
    with pytest.raises(ValueError, match="expects 64 input features.*flattens to 784"):
        model(torch.randn(3, 1, 28, 28))


@pytest.mark.parametrize("name,expected", [
    ("linear", lambda x: x),
    ("tanh", torch.tanh),
    ("relu", lambda x: x.clamp_min(0)),
    ("hard_tanh", lambda x: x.clamp(-1, 1)),
    ("leaky_relu", lambda x: torch.where(x > 0, x, 0.01 * x)),
    # SELU constants from Klambauer et al. (2017), arXiv 1706.02515
    ("selu", lambda x: 1.0507009873554805 * torch.where(
        x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1))),
])
def test_activations(name, expected):
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    torch.testing.assert_close(create_activation(name)(x), expected(x), atol=1e-12, rtol=0)


def test_activation_registry():
    assert list_activations() == sorted(["linear", "tanh", "relu", "hard_tanh", "selu",
                                         "leaky_relu"])
    with pytest.raises(ValueError, match="unknown activation 'gelu'; choose one of: hard_tanh"):
        create_model("mlp", activation="gelu")


def test_vanilla_cnn_layout():
    model = VanillaCNN(3, 10, depth=6, channels=16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2), (1, 1), (1, 1), (1, 1)]
    assert all(c.padding_mode == "circular" and c.kernel_size == (3, 3) for c in convs)
    assert convs[0].in_channels == 3 and all(c.out_channels == 16 for c in convs)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for m in model.modules())
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 6  # tanh is the default
    # feature maps: 32 -> 32 -> 16 -> 8 ; 28 -> 14 -> 7 ; 8 -> 4 -> 2 ; 1 -> 1
    for size, final in ((32, 8), (28, 7), (8, 2), (1, 1)):
        assert model.features(torch.zeros(1, 3, size, size)).shape == (1, 16, final, final)


def test_vanilla_cnn_padding_is_circular():
    # One conv whose only nonzero tap (row 1, col 0) is the identity: out[i, j] = x[i, j - 1]
    # with wrap-around, i.e. torch.roll by +1 along the width, exactly when padding is circular.
    model = VanillaCNN(2, 3, depth=1, channels=2, activation="linear")
    assert model.downsample == ()  # the default strides only the 2nd and 3rd convs
    conv = model.features[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 0] = torch.eye(2)
        conv.bias.zero_()
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(model.features(x), torch.roll(x, shifts=1, dims=-1),
                               atol=0, rtol=0)


def test_vgg16_structure():
    model = create_model("vgg16")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256,
                                               512, 512, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    # convs 1728+36864+73728+147456+294912+2*589824+1179648+5*2359296 = 14,710,464,
    # BN 2*(2*64+2*128+3*256+6*512) = 8,448, head 512*10+10 = 5,130
    assert sum(p.numel() for p in model.parameters()) == 14_724_042
    plain = create_model("vgg16", batch_norm=False, activation="selu", num_classes=100)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(c.bias is not None for c in plain.modules() if isinstance(c, nn.Conv2d))
    assert plain.head.out_features == 100
    assert sum(isinstance(m, nn.SELU) for m in plain.modules()) == 13


@pytest.mark.parametrize("name,depth", [("resnet20", 20), ("resnet32", 32), ("resnet56", 56),
                                        ("resnet110", 110)])
def test_resnet_depth(name, depth):
    model = create_model(name)
    weight_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weight_layers) == depth  # 6n + 2 with option A (no projection convs)


def test_resnet20_parameter_count():
    # He et al. (2016) Table 6: 0.27M. conv1 432 + bn 32; stage 1: 6*2304 + 6*32;
    # stage 2: 4608 + 5*9216 + 6*64; stage 3: 18432 + 5*36864 + 6*128; head 650.
    model = create_model("resnet20")
    assert sum(p.numel() for p in model.parameters()) == 269_722
    option_b = create_model("resnet20", shortcut="B")
    # two 1x1 projections (16*32 + 32*64) and their BatchNorms (2*32 + 2*64)
    assert sum(p.numel() for p in option_b.parameters()) == 269_722 + 2_560 + 192


def test_resnet_option_a_shortcut_pads_zeros():
    model = create_model("resnet20").eval()
    block = model.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (2, 32, 4, 4)
    torch.testing.assert_close(s[:, :16], x[:, :, ::2, ::2], atol=0, rtol=0)
    assert torch.equal(s[:, 16:], torch.zeros(2, 16, 4, 4))


def test_input_shape_translation():
    assert create_model("mlp", input_shape=(1, 8, 8)).in_features == 64
    shallow = create_model("vanilla-cnn", input_shape=(1, 28, 28), depth=2)
    assert shallow.in_channels == 1 and shallow.downsample == (1,)
    assert create_model("resnet20", input_shape=(1, 28, 28)).conv1.in_channels == 1
    assert create_model("mlp", input_shape=(1, 8, 8), in_features=64).in_features == 64
    with pytest.raises(ValueError, match=r"in_features=100 contradicts input_shape=\(1, 8, 8\)"):
        create_model("mlp", input_shape=(1, 8, 8), in_features=100)
    with pytest.raises(ValueError, match="input_shape=.* must be a sequence of positive ints"):
        create_model("mlp", input_shape=(1, 0, 8))


def test_model_arguments():
    args = model_arguments("mlp")
    assert args["depth"] == 7 and args["width"] == 100 and args["in_features"] == 784
    assert set(model_arguments("resnet56")) == {"in_channels", "num_classes", "shortcut",
                                                "activation"}


def test_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet18'; choose one of: "):
        create_model("resnet18")
    with pytest.raises(TypeError, match="model 'mlp' got unknown argument.*dropout.*it takes"):
        create_model("mlp", dropout=0.5)
    with pytest.raises(ValueError, match=r"depth=21 must be 6n \+ 2"):
        create_model("resnet20").__class__(depth=21)
    with pytest.raises(ValueError, match="shortcut='C' must be one of: 'A', 'B'"):
        create_model("resnet32", shortcut="C")
    with pytest.raises(ValueError, match="depth=0 must be a positive integer"):
        create_model("mlp", depth=0)
    with pytest.raises(TypeError, match="width must be a positive integer"):
        create_model("mlp", width=1.5)
    with pytest.raises(TypeError, match="bias must be True or False"):
        create_model("vanilla-cnn", bias=1)
    with pytest.raises(ValueError, match=r"downsample=\(1, 5\) must list distinct conv indices"):
        create_model("vanilla-cnn", depth=3, downsample=(1, 5))
    with pytest.raises(ValueError, match="VGG config=.* has no conv layer"):
        create_model("vgg16").__class__(config=("M",))
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 3, H, W\), got \(2, 1"):
        create_model("vgg16")(torch.zeros(2, 1, 32, 32))


def test_thousand_layer_mlp_builds_and_runs():
    model = create_model("mlp", input_shape=(1, 28, 28), depth=1000, width=128,
                         activation="tanh")
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1000
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_thousand_layer_cnn_builds_and_runs():
    model = create_model("vanilla-cnn", input_shape=(1, 8, 8), depth=1000, channels=4)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 1000
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.slow
def test_thousand_layer_cnn_full_width_cifar():
    model = create_model("vanilla-cnn", input_shape=(3, 32, 32), depth=1000, channels=128)
    # 1000 convs of 128x128x3x3 + bias (the first one 3 -> 128), head 128*10 + 10
    expected = 999 * (128 * 128 * 9 + 128) + (3 * 128 * 9 + 128) + 1290
    assert sum(p.numel() for p in model.parameters()) == expected
    assert math.isclose(expected / 1e6, 147.5, rel_tol=0.01)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


# ---- the paper's architectures (the official code's models; docs/protocol.md) ----------------

def test_vgg_c_structure():
    model = create_model("vgg-c", input_shape=(3, 32, 32), num_classes=10)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    # 13 convs = ten 3x3 + three 1x1, the 1x1 ones last in blocks 3, 4 and 5
    assert len(convs) == 13
    assert [c.kernel_size[0] for c in convs] == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512,
                                               512, 512, 512]
    assert all(c.padding == (1, 1) and c.stride == (1, 1) and c.bias is not None for c in convs)
    # every conv is followed by BatchNorm2d then ReLU; five 2x2 max-pools, floor mode
    kinds = [type(m) for m in model.features]
    for i, m in enumerate(model.features):
        if isinstance(m, nn.Conv2d):
            assert kinds[i + 1:i + 3] == [nn.BatchNorm2d, nn.ReLU]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.kernel_size == 2 and not p.ceil_mode for p in pools)
    # maps: 32 -> 16 -> 8 (1x1 with padding 1: 10) -> 5 (7) -> 3 (5) -> 2: 512*2*2 = 2048
    assert model.features(torch.zeros(2, 3, 32, 32)).shape == (2, 512, 2, 2)
    assert [type(m) for m in model.classifier] == [nn.Linear, nn.ReLU, nn.BatchNorm1d,
                                                   nn.Linear, nn.ReLU, nn.BatchNorm1d]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 512), (512, 512),
                                                                  (512, 10)]
    assert linears[-1] is model.head
    conv_params = sum(c.in_channels * c.out_channels * c.kernel_size[0] ** 2 + c.out_channels
                      for c in convs)
    # by hand, weights + biases: 3x3 convs 3->64 1792, 64->64 36928, 64->128 73856, 128->128
    # 147584, 128->256 295168, 256->256 590080, 256->512 1180160, three 512->512 2359808;
    # 1x1 convs 256->256 65792, two 512->512 262656
    assert conv_params == 1792 + 36928 + 73856 + 147584 + 295168 + 590080 + 1180160 \
        + 3 * 2359808 + 65792 + 2 * 262656 == 9_996_096
    bn2d = 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)  # 8,448
    fc = (2048 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10) + 2 * 2 * 512  # + BN1d
    assert _count(model) == conv_params + bn2d + fc == 11_323_466
    tanh = create_model("vgg-c", activation="tanh", num_classes=100)
    assert sum(isinstance(m, nn.Tanh) for m in tanh.modules()) == 15  # 13 convs + 2 hidden
    assert tanh.head.out_features == 100


def test_vgg_c_input_sizes():
    # the 1x1 convs' padding grows small maps again: digits 8 -> 4 -> 2 (4) -> 2 (4) -> 2 (4)
    # -> 2 and MNIST 28 -> 14 -> 7 (9) -> 4 (6) -> 3 (5) -> 2 both flatten to 2048 too
    for size in (8, 28, 32):
        model = create_model("vgg-c", input_shape=(1, size, size))
        assert model.classifier[0].in_features == 2048
    assert create_model("vgg-c", input_shape=(3, 64, 64)).classifier[0].in_features == 512 * 9
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 3, 32, 32\), got "
                                         r"\(2, 3, 28, 28\); build it with input_size"):
        create_model("vgg-c")(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"input_size=\(1, 1\) is too small.*max-pool shrinks"):
        create_model("vgg-c", input_shape=(3, 1, 1))
    with pytest.raises(ValueError, match="input_size=32 must be a pair"):
        create_model("vgg-c", input_size=32)
    with pytest.raises(ValueError, match=r"model 'vgg-c': input_size=\(28, 28\) contradicts "
                                         r"input_shape=\(3, 32, 32\)"):
        create_model("vgg-c", input_shape=(3, 32, 32), input_size=(28, 28))
    cls = create_model("vgg-c").__class__
    with pytest.raises(ValueError, match=r"config entry \(1, 2, 3\) must be a positive int"):
        cls(config=(64, (1, 2, 3)))
    with pytest.raises(ValueError, match="has no conv layer"):
        cls(config=("M",))


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_resnet_option_b_is_the_official_shortcut(depth):
    n = (depth - 2) // 6
    model = create_model(f"resnet{depth}", shortcut="B")
    weight_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weight_layers) == depth + 2  # 6n + 2 plus the two projections
    projections = [b.shortcut for b in model.modules() if hasattr(b, "shortcut")
                   and isinstance(b.shortcut, nn.Sequential)]
    assert len(projections) == 2  # the first block of stages 2 and 3; identity elsewhere
    for proj, (c_in, c_out) in zip(projections, [(16, 32), (32, 64)], strict=True):
        conv, bn = proj
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (
            c_in, c_out, (1, 1), (2, 2))
        assert conv.bias is None and bn.num_features == c_out
    # by hand: stem 3*16*9 + BN 32; stage 1: 2n convs 16*16*9 + 2n BN(16); stage 2: 16*32*9
    # + (2n-1) * 32*32*9 + 2n BN(32); stage 3 likewise with 64; head 64*10 + 10; projections
    # 16*32 + 32*64 and their BN 2*32 + 2*64
    expected = (432 + 32 + 2 * n * (2304 + 32) + 4608 + (2 * n - 1) * 9216 + 2 * n * 64
                + 18432 + (2 * n - 1) * 36864 + 2 * n * 128 + 650 + 2560 + 192)
    assert _count(model) == expected
    x = torch.randn(2, 16, 8, 8)
    block = model.layer2[0].eval()
    torch.testing.assert_close(block.shortcut(x), block.shortcut[1](block.shortcut[0](x)))


def test_vanilla_cnn_paper_layout():
    # the official --depth 1000: 3 + (1000 - 6) = 997 convs; thin channels keep it fast
    model = create_model("vanilla-cnn-paper", input_shape=(3, 32, 32), channels=4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 997 and model.depth == 997
    assert [c.stride for c in convs[:4]] == [(1, 1), (2, 2), (2, 2), (1, 1)]
    assert all(c.stride == (1, 1) for c in convs[3:])
    assert all(c.padding_mode == "circular" and c.padding == (1, 1) and c.kernel_size == (3, 3)
               and c.bias is not None for c in convs)
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 997
    assert isinstance(model.pool, nn.AvgPool2d) and model.pool.kernel_size == 2
    assert model.pool.stride == 2
    assert (model.head.in_features, model.head.out_features) == (4 * 4 * 4, 10)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for m in model.modules())
    # full width: 32 -> 16 -> 8, 2x2 pool -> 4: head Linear(128 * 4 * 4 = 2048, 10)
    wide = create_model("vanilla-cnn-paper", input_shape=(3, 32, 32), depth=3)
    assert (wide.head.in_features, wide.head.out_features) == (2048, 10)
    # 3 convs of 3x3 with bias (3->128, then 128->128) and the head
    assert _count(wide) == (3 * 128 * 9 + 128) + 2 * (128 * 128 * 9 + 128) + 2048 * 10 + 10
    out = wide(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_vanilla_cnn_pool_option():
    default = create_model("vanilla-cnn", input_shape=(3, 32, 32), depth=3, channels=8)
    assert default.pool_mode == "global" and isinstance(default.pool, nn.AdaptiveAvgPool2d)
    assert default.head.in_features == 8
    default(torch.zeros(1, 3, 20, 20))  # global pooling takes any size
    avg2 = create_model("vanilla-cnn", input_shape=(1, 28, 28), depth=3, channels=8,
                        pool="avg2")
    assert avg2.head.in_features == 8 * 3 * 3  # 28 -> 14 -> 7, pool -> 3
    with pytest.raises(ValueError, match=r"pool='avg2'\) expects input of shape \(B, 1, 28, "
                                         r"28\), got \(1, 1, 32, 32\)"):
        avg2(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="pool='max' must be one of: 'global', 'avg2'"):
        create_model("vanilla-cnn", pool="max")
    with pytest.raises(ValueError, match=r"input_size=\(2, 2\) is too small for pool='avg2'"):
        create_model("vanilla-cnn", input_shape=(3, 2, 2), depth=3, pool="avg2")


@pytest.mark.slow
def test_vanilla_cnn_paper_full_width_cifar():
    model = create_model("vanilla-cnn-paper", input_shape=(3, 32, 32))
    expected = 996 * (128 * 128 * 9 + 128) + (3 * 128 * 9 + 128) + 2048 * 10 + 10
    assert _count(model) == expected
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


# ---- EfficientNet-B0 (pure PyTorch) -----------------------------------------------------------

# Tan & Le (2019) Table 1: (expand ratio, kernel, stride, in, out, repeats), written out here
B0_TABLE = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
            (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
            (6, 3, 1, 192, 320, 1)]


def _b0_parameters_by_hand(num_classes: int) -> int:
    total = 3 * 32 * 9 + 2 * 32  # stem conv (no bias) + BN
    for e, k, _, c_in, c_out, repeats in B0_TABLE:
        for r in range(repeats):
            cin = c_in if r == 0 else c_out
            h = cin * e
            if e != 1:
                total += cin * h + 2 * h  # expand 1x1 + BN
            total += h * k * k + 2 * h  # depthwise + BN
            s = max(1, cin // 4)
            total += h * s + s + s * h + h  # squeeze-and-excitation (convs with bias)
            total += h * c_out + 2 * c_out  # project 1x1 + BN
    total += 320 * 1280 + 2 * 1280  # top conv + BN
    return total + 1280 * num_classes + num_classes


def test_efficientnet_b0_parameter_count_matches_reference():
    # torchvision's EfficientNet_B0_Weights meta: num_params 5,288,548 (1000 classes)
    assert _b0_parameters_by_hand(1000) == 5_288_548
    assert _count(create_model("efficientnet-b0", num_classes=1000)) == 5_288_548
    tiny = create_model("efficientnet-b0", input_shape=(3, 64, 64), num_classes=200)
    assert _count(tiny) == _b0_parameters_by_hand(200) == 4_263_748


def test_efficientnet_b0_block_structure():
    model = create_model("efficientnet-b0", num_classes=200)
    assert [tuple(s) for s in EFFICIENTNET_B0_STAGES] == B0_TABLE
    assert [len(stage) for stage in model.blocks] == [1, 2, 2, 3, 3, 4, 1]
    blocks = [b for b in model.modules() if isinstance(b, MBConv)]
    assert len(blocks) == 16
    rows = [row for row in B0_TABLE for _ in range(row[5])]
    firsts = {sum(r[5] for r in B0_TABLE[:i]) for i in range(len(B0_TABLE))}
    for i, (block, (e, k, stride, c_in, c_out, _)) in enumerate(zip(blocks, rows, strict=True)):
        cin = c_in if i in firsts else c_out
        dw = block.depthwise.conv
        assert (dw.in_channels, dw.groups, dw.kernel_size, dw.padding) == (
            cin * e, cin * e, (k, k), ((k - 1) // 2,) * 2)
        assert dw.stride == ((stride,) * 2 if i in firsts else (1, 1))
        assert isinstance(block.expand, nn.Identity) == (e == 1)
        assert isinstance(block.se, SqueezeExcite)
        assert block.se.reduce.out_channels == max(1, cin // 4)
        assert block.project.conv.out_channels == c_out and not hasattr(block.project, "act")
        assert block.residual == (i not in firsts or (stride == 1 and c_in == c_out))
        assert block.drop_path.p == pytest.approx(0.2 * i / 16)  # linear in the block index
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 4 + 15 * 5 + 1  # stem, block 1 without expand, 15 blocks, top
    assert all(c.bias is None for c in convs if c.kernel_size != (1, 1) or c.groups > 1)
    # stem; block 1: depthwise + SE; 15 blocks: expand + depthwise + SE; top
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 1 + 2 + 15 * 3 + 1
    assert model.dropout.p == 0.2 and model.head.in_features == 1280
    assert model.stem.conv.stride == (2, 2) and model.top.conv.out_channels == 1280


def test_efficientnet_b0_tiny_imagenet_forward_and_init():
    torch.manual_seed(0)
    model = create_model("efficientnet-b0", input_shape=(3, 64, 64), num_classes=200).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.top(model.blocks(model.stem(x))).shape == (2, 1280, 2, 2)  # 64 / 32
    out = model(x)
    assert out.shape == (2, 200) and torch.isfinite(out).all()
    # the reference init: Kaiming-normal fan_out convs, unit BN, head uniform +-1/sqrt(200)
    top = model.top.conv.weight  # (1280, 320, 1, 1): std sqrt(2 / 1280)
    assert abs(top.std().item() / math.sqrt(2 / 1280) - 1) < 0.02
    assert model.head.weight.abs().max() <= 1 / math.sqrt(200)
    assert model.head.weight.abs().max() > 0.95 / math.sqrt(200)
    assert torch.equal(model.head.bias, torch.zeros(200))
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in model.modules()
               if isinstance(m, nn.BatchNorm2d))
    gray = create_model("efficientnet-b0", input_shape=(1, 28, 28), num_classes=10).eval()
    assert gray.stem.conv.in_channels == 1 and gray(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_stochastic_depth():
    drop = StochasticDepth(0.25)
    x = torch.ones(4000, 3, 2, 2)
    assert drop.eval()(x) is x
    torch.manual_seed(0)
    y = drop.train()(x)
    per_example = y.flatten(1)
    assert torch.equal(per_example.amin(1), per_example.amax(1))  # whole examples
    assert set(per_example[:, 0].tolist()) == {0.0, torch.tensor(1 / 0.75).item()}
    kept = (per_example[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 4000)  # 4 binomial standard errors
    with pytest.raises(ValueError, match=r"stochastic_depth=1.0 must be in \[0, 1\)"):
        create_model("efficientnet-b0", stochastic_depth=1.0)
    with pytest.raises(ValueError, match=r"dropout=-0.1 must be in \[0, 1\)"):
        create_model("efficientnet-b0", dropout=-0.1)
    with pytest.raises(TypeError, match="dropout must be a float"):
        create_model("efficientnet-b0", dropout="0.2")


def _failing_import(monkeypatch, prefix: str, error: Exception) -> None:
    """Make every ``import prefix...`` raise ``error`` (a broken install, not a missing one)."""
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == prefix or name.startswith(prefix + "."):
            raise error
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", fake)


def test_efficientnet_needs_no_torchvision(monkeypatch):
    # torchvision's CPU wheel can install and then fail at import with a RuntimeError
    _failing_import(monkeypatch, "torchvision",
                    RuntimeError("operator torchvision::nms does not exist"))
    model = create_model("efficientnet-b0", input_shape=(3, 64, 64), num_classes=200)
    assert _count(model) == 4_263_748


# The data loaders' optional imports (tests kept with the models': one guard rule for both).
def test_digits_import_guard_catches_any_exception(monkeypatch):
    from orthosparse.data import load_digits

    _failing_import(monkeypatch, "sklearn", RuntimeError("numpy ABI mismatch"))
    with pytest.raises(ImportError, match=r"dataset 'digits' needs scikit-learn, which failed to "
                                          r"import \(RuntimeError: numpy ABI mismatch\); install "
                                          r"the data extra: pip install 'orthosparse\[data\]'"):
        load_digits()


def test_tiny_imagenet_import_guard_catches_any_exception(monkeypatch, tmp_path):
    from orthosparse.data.tiny_imagenet import _read_images

    _failing_import(monkeypatch, "PIL", OSError("libjpeg.so.8: cannot open shared object"))
    with pytest.raises(ImportError, match=r"tiny-imagenet needs Pillow .* failed to import "
                                          r"\(OSError: libjpeg.*pip install 'orthosparse\[data\]'"):
        _read_images([tmp_path / "a.JPEG"])
