"""EfficientNet-B0 in plain PyTorch (no torchvision): MBConv blocks with squeeze-and-excitation.

The network of `EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks` - Tan &
Le (2019), arXiv 1905.11946, Table 1, built block for block and parameter for parameter as the
reference B0 that `Sparser, Better, Deeper, Stronger` - Nowak et al. (2024), arXiv 2406.01755
trains on Tiny ImageNet (torchvision's ``efficientnet_b0(num_classes=200)``: random weights, dropout
0.2, stochastic depth 0.2). Same module layout, same parameter count (5,288,548 with 1000 classes,
4,263,748 with 200), same initialization; only the module names differ (``head`` is the output
layer, as in every model of the zoo).

    stem:   conv 3x3 stride 2, in_channels -> 32, BN, SiLU
    blocks: seven stages of MBConv blocks (table below)
    top:    conv 1x1 320 -> 1280, BN, SiLU
    global average pool, dropout, head = Linear(1280, num_classes)

An MBConv block with expand ratio ``e``, kernel ``k``, stride ``s`` maps ``c_in -> c_out``:

    expand:   conv 1x1 c_in -> e*c_in, BN, SiLU          (absent when e == 1)
    depthwise conv kxk stride s, groups = e*c_in, BN, SiLU
    squeeze-and-excitation: x * sigmoid(W2 silu(W1 mean_hw(x))), W1: e*c_in -> max(1, c_in // 4)
    project:  conv 1x1 e*c_in -> c_out, BN                (no activation)
    residual: out = x + drop_path(out) when s == 1 and c_in == c_out

Convs followed by BN have no bias; every conv has padding ``(k - 1) // 2``, so a stride-2 conv
maps ``s -> ceil(s / 2)`` and any input size >= 1x1 works (Tiny ImageNet's 64x64 -> 2x2 before the
pool). Stochastic depth drops a residual branch for whole examples in training with probability
``stochastic_depth * i / 16`` for the ``i``-th of the 16 blocks (0 for the first), and rescales the
kept ones by ``1 / (1 - p)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .._checks import check_positive_int

__all__ = ["Stage", "EFFICIENTNET_B0_STAGES", "ConvBNAct", "SqueezeExcite", "StochasticDepth",
           "MBConv", "EfficientNet", "efficientnet_b0"]


class Stage(NamedTuple):
    """One row of the stage table: ``repeats`` MBConv blocks, the first with ``stride``."""

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


# Tan & Le (2019) Table 1 (stages 2-8; stage 1 is the stem, stage 9 the 1x1 top conv and head).
# All expanded widths (96, 144, 240, 480, 672, 1152) are multiples of 8, so the reference's
# rounding of channels to multiples of 8 changes nothing at width multiplier 1.
EFFICIENTNET_B0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 32, 16, 1),
    Stage(6, 3, 2, 16, 24, 2),
    Stage(6, 5, 2, 24, 40, 2),
    Stage(6, 3, 2, 40, 80, 3),
    Stage(6, 5, 1, 80, 112, 3),
    Stage(6, 5, 2, 112, 192, 4),
    Stage(6, 3, 1, 192, 320, 1),
)


class ConvBNAct(nn.Sequential):
    """``conv (no bias, padding (k-1)//2) -> BatchNorm2d -> SiLU`` (``act=False``: no SiLU)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("conv", nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2,
                               groups=groups, bias=False)),
            ("bn", nn.BatchNorm2d(c_out)),
        ]
        if act:
            layers.append(("act", nn.SiLU()))
        super().__init__(OrderedDict(layers))


class SqueezeExcite(nn.Module):
    """Rescale channels by ``sigmoid(expand(silu(reduce(mean_hw(x)))))`` (Hu et al. 2018).

    ``reduce`` and ``expand`` are 1x1 convs with biases: ``channels -> squeeze -> channels``.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        scale = torch.sigmoid(self.expand(self.act(self.reduce(scale))))  # (B, C, 1, 1)
        return x * scale


class StochasticDepth(nn.Module):
    """Zero the input for whole examples with probability ``p`` in training, scale the rest.

    `Deep Networks with Stochastic Depth` - Huang et al. (2016), arXiv 1603.09382, per-example
    ("row") mode: ``x * b / (1 - p)`` with ``b ~ Bernoulli(1 - p)`` drawn per example from the
    global torch RNG (like ``nn.Dropout``). The identity in eval mode or when ``p == 0``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"stochastic depth p={p} must be in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        noise = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, ..)
        return x * noise / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation (the module docstring's layout)."""

    def __init__(self, c_in: int, c_out: int, *, expand_ratio: int, kernel: int, stride: int,
                 drop_path: float) -> None:
        super().__init__()
        hidden = c_in * expand_ratio
        self.expand = ConvBNAct(c_in, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride=stride, groups=hidden)
        self.se = SqueezeExcite(hidden, max(1, c_in // 4))
        self.project = ConvBNAct(hidden, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out
        self.drop_path = StochasticDepth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))  # (B, c_out, H', W')
        if self.residual:
            out = x + self.drop_path(out)
        return out


class EfficientNet(nn.Module):
    """Build an EfficientNet from a stage table; see the module docstring for the layout.

    Weights start as the reference's: convs Kaiming-normal with ``fan_out`` and zero biases,
    BatchNorm weight 1 and bias 0, the head uniform in ``+-1/sqrt(num_classes)`` with zero bias.

    Args:
        stages: the stage table, e.g. :data:`EFFICIENTNET_B0_STAGES`; each stage's
            ``in_channels`` must equal the previous stage's ``out_channels``.
        in_channels: input channels (3 for RGB).
        num_classes: output size (200 for Tiny ImageNet).
        dropout: dropout probability before the head, in [0, 1).
        stochastic_depth: largest drop probability of a residual branch, in [0, 1).
        last_channels: width of the 1x1 top conv; ``None`` means 4x the last stage's output.

    Raises:
        TypeError / ValueError: bad sizes or probabilities, an empty or inconsistent table.

    Example:
        >>> model = EfficientNet(EFFICIENTNET_B0_STAGES, num_classes=200)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 200])
    """

    def __init__(
        self,
        stages: Sequence[Stage] = EFFICIENTNET_B0_STAGES,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        dropout: float = 0.2,
        stochastic_depth: float = 0.2,
        last_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        dropout = _check_probability(dropout, "dropout")
        stochastic_depth = _check_probability(stochastic_depth, "stochastic_depth")
        stages = tuple(Stage(*s) for s in stages)
        if not stages:
            raise ValueError("stages is empty; an EfficientNet needs at least one stage")
        for i, stage in enumerate(stages):
            for field, value in stage._asdict().items():
                check_positive_int(value, f"stages[{i}].{field}")
            if i and stage.in_channels != stages[i - 1].out_channels:
                raise ValueError(f"stages[{i}].in_channels={stage.in_channels} must equal "
                                 f"stages[{i - 1}].out_channels={stages[i - 1].out_channels}")
        self.stages = stages
        last = 4 * stages[-1].out_channels if last_channels is None else last_channels
        last = check_positive_int(last, "last_channels")

        self.stem = ConvBNAct(self.in_channels, stages[0].in_channels, 3, stride=2)
        total = sum(s.repeats for s in stages)
        index = 0
        built = []
        for stage in stages:
            blocks = []
            for r in range(stage.repeats):
                c_in = stage.in_channels if r == 0 else stage.out_channels
                blocks.append(MBConv(c_in, stage.out_channels, expand_ratio=stage.expand_ratio,
                                     kernel=stage.kernel, stride=stage.stride if r == 0 else 1,
                                     drop_path=stochastic_depth * index / total))
                index += 1
            built.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*built)
        self.top = ConvBNAct(stages[-1].out_channels, last, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(last, self.num_classes)
        self._init_reference()

    @torch.no_grad()
    def _init_reference(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"EfficientNet expects input of shape (B, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        x = self.top(self.blocks(self.stem(x)))  # (B, 1280, H/32, W/32) rounded up
        x = self.pool(x).flatten(1)  # (B, 1280)
        return self.head(self.dropout(x))  # (B, num_classes)


def _check_probability(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value} must be in [0, 1)")
    return float(value)


def efficientnet_b0(
    *, in_channels: int = 3, num_classes: int = 10, dropout: float = 0.2,
    stochastic_depth: float = 0.2,
) -> EfficientNet:
    """Build a randomly initialized EfficientNet-B0 (the reference B0's blocks, sizes and init).

    `EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks` - Tan & Le (2019),
    arXiv 1905.11946. Pure PyTorch; nothing is downloaded, no pretrained weights exist here.

    Args:
        in_channels: input channels (the stem conv takes them).
        num_classes: output size (200 for Tiny ImageNet).
        dropout: dropout before the head, in [0, 1); 0.2 as the reference B0.
        stochastic_depth: largest drop-path probability, in [0, 1); 0.2 as the reference B0.

    Raises:
        TypeError / ValueError: bad sizes or probabilities.

    Example:
        >>> efficientnet_b0(num_classes=200)(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 200])
    """
    return EfficientNet(EFFICIENTNET_B0_STAGES, in_channels, num_classes, dropout=dropout,
                        stochastic_depth=stochastic_depth)
