"""CIFAR ResNets of depth 6n+2 (ResNet-20/32/56/110) with option A or B shortcuts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int
from ._activations import Activation, create_activation
from ._common import check_choice

__all__ = ["Shortcut", "BasicBlock", "CIFARResNet", "resnet20", "resnet32", "resnet56",
           "resnet110"]

Shortcut = Literal["A", "B"]
_SHORTCUTS: tuple[str, ...] = ("A", "B")


class _ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and append zero channels (no parameters)."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C, ceil(H/s), ceil(W/s))
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # (B, C + extra, H', W')


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut: ``act(bn2(conv2(act(bn1(conv1(x))))) + s(x))``."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, shortcut: Shortcut, activation: Activation
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = create_activation(activation)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = create_activation(activation)
        self.shortcut: nn.Module
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _ZeroPadShortcut(stride, planes - in_planes)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))  # (B, planes, H', W')
        out = self.bn2(self.conv2(out))  # (B, planes, H', W')
        return self.act2(out + self.shortcut(x))


class CIFARResNet(nn.Module):
    """Build the CIFAR ResNet of `Deep Residual Learning for Image Recognition` - He et al. (2016).

    arXiv 1512.03385, Sec. 4.2: a 3x3 conv with 16 channels, then three stages of ``n`` basic
    blocks with 16, 32, 64 channels (the first block of stages 2 and 3 has stride 2), global
    average pooling and a Linear ``head``: ``depth = 6n + 2`` weight layers (20, 32, 44, 56, 110).

    Shortcuts where the shape changes: ``"A"`` (He et al.'s CIFAR choice, the default)
    subsamples and pads the extra channels with zeros, no parameters; ``"B"`` uses a 1x1 conv
    with stride 2 and a BatchNorm (no bias), the shortcut of the official code of `Sparser,
    Better, Deeper, Stronger` - Nowak et al. (2024), arXiv 2406.01755 (docs/protocol.md), which
    adds two prunable 1x1 convs (``layer2.0.shortcut.0``, ``layer3.0.shortcut.0``).
    Identity everywhere else.

    Args:
        depth: ``6n + 2`` with ``n >= 1``.
        in_channels: input channels (3 for CIFAR).
        num_classes: output size.
        shortcut: ``"A"`` or ``"B"``.
        activation: one of ``linear, tanh, relu, hard_tanh, selu, leaky_relu``.

    Raises:
        ValueError: ``depth`` not of the form 6n+2, unknown shortcut or activation.

    Example:
        >>> model = CIFARResNet(56, 3, 10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 20,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        shortcut: Shortcut = "A",
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        depth = check_positive_int(depth, "depth")
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth={depth} must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110)")
        self.depth = depth
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.shortcut = check_choice(shortcut, "shortcut", _SHORTCUTS)
        create_activation(activation)  # validate the name before building anything
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(self.in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = create_activation(activation)
        stages = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if b == 0 else 1, shortcut,
                                         activation))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CIFARResNet expects input of shape (B, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        x = self.act1(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, H/4, W/4) rounded up
        x = self.pool(x).flatten(1)  # (B, 64)
        return self.head(x)  # (B, num_classes)


def _make(depth: int) -> Callable[..., CIFARResNet]:
    def build(
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        shortcut: Shortcut = "A",
        activation: Activation = "relu",
    ) -> CIFARResNet:
        return CIFARResNet(depth, in_channels, num_classes, shortcut=shortcut,
                           activation=activation)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"Build the CIFAR ResNet-{depth} (n = {(depth - 2) // 6}); see CIFARResNet."
    return build


resnet20 = _make(20)
resnet32 = _make(32)
resnet56 = _make(56)
resnet110 = _make(110)
