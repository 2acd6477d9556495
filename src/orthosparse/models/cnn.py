"""Deep vanilla CNN: a plain stack of 3x3 circular convolutions, no normalization, no residuals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .._checks import check_positive_int
from ._activations import Activation, create_activation
from ._common import check_bool, check_choice, check_input_size

__all__ = ["VanillaCNN", "Pool", "vanilla_cnn_paper"]

Pool = Literal["global", "avg2"]
_POOLS: tuple[str, ...] = ("global", "avg2")


class VanillaCNN(nn.Module):
    """Build a vanilla CNN of any depth (hundreds to thousands of layers).

    Layout after `Dynamical Isometry and a Mean Field Theory of CNNs: How to Train 10,000-Layer
    Vanilla Convolutional Neural Networks` - Xiao et al. (2018), arXiv 1806.05393, as used by
    `Sparser, Better, Deeper, Stronger` - Nowak et al. (2024), arXiv 2406.01755 (~1000 layers,
    128 channels, CIFAR-10):

        conv_0: in_channels -> channels, then ``depth - 1`` convs channels -> channels;
        every conv is 3x3, padding 1 in circular mode, followed by the activation;
        the convs listed in ``downsample`` (default: the 2nd and 3rd) have stride 2, the rest 1;
        ``pool="global"``: global average pooling, then ``head = Linear(channels, num_classes)``;
        ``pool="avg2"``: a 2x2 average pool (stride 2), flatten, then one Linear ``head`` on
        ``channels * H/8 * W/8`` features (2048 on 32x32 CIFAR with 128 channels), the layout
        of the paper's official CNN (see :func:`vanilla_cnn_paper`).

    Circular padding makes every stride-1 conv a circular convolution (no border effects: every
    pixel sees the same operator), the setting of Xiao et al.'s orthogonal-kernel theory; a
    delta-orthogonal kernel then maps each pixel's channel vector by an orthogonal matrix.
    A 3x3 conv with padding 1 maps a spatial size ``s`` to ``floor((s - 1) / stride) + 1 >= 1``,
    so the feature map never vanishes: 32x32 CIFAR -> 8x8, 28x28 MNIST -> 7x7, 8x8 digits -> 2x2
    with the default two stride-2 layers.

    Args:
        in_channels: input channels (3 for CIFAR, 1 for MNIST and digits).
        num_classes: output size.
        depth: number of conv layers (the head not counted); any value >= 1.
        channels: width of every conv layer.
        activation: one of ``linear, tanh, relu, hard_tanh, selu, leaky_relu``.
        downsample: indices of the conv layers with stride 2 (each < depth); ``None`` means
            the 2nd and 3rd convs, those of them that exist (``depth`` 1: none, 2: the 2nd).
        bias: whether convs and head have biases.
        pool: ``"global"`` or ``"avg2"`` (above).
        input_size: ``(H, W)`` of the input; used by ``pool="avg2"`` only, where the head's
            size depends on it (``create_model(..., input_shape=...)`` passes it), and checked
            by ``forward`` then.

    Raises:
        TypeError / ValueError: bad sizes, an unknown activation or pool, a ``downsample`` index
            outside ``[0, depth)`` or repeated, an input size the 2x2 pool shrinks to nothing.

    Example:
        >>> model = VanillaCNN(3, 10, depth=1000, channels=128, activation="tanh")
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        depth: int = 1000,
        channels: int = 128,
        activation: Activation = "tanh",
        downsample: Sequence[int] | None = None,
        bias: bool = True,
        pool: Pool = "global",
        input_size: Sequence[int] = (32, 32),
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.depth = check_positive_int(depth, "depth")
        self.channels = check_positive_int(channels, "channels")
        check_bool(bias, "bias")
        self.pool_mode = check_choice(pool, "pool", _POOLS)
        self.input_size = check_input_size(input_size)
        create_activation(activation)  # validate the name before building anything
        strided = tuple(i for i in (1, 2) if i < self.depth) if downsample is None \
            else tuple(downsample)
        for index in strided:
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"downsample entries must be ints, got {index!r}")
        bad = [i for i in strided if not 0 <= i < self.depth]
        if bad or len(set(strided)) != len(strided):
            raise ValueError(
                f"downsample={strided} must list distinct conv indices in [0, depth={self.depth})"
            )
        self.downsample = strided
        layers: list[nn.Module] = []
        c_in = self.in_channels
        for i in range(self.depth):
            stride = 2 if i in strided else 1
            conv = nn.Conv2d(c_in, self.channels, 3, stride=stride, padding=1,
                             padding_mode="circular", bias=bias)
            layers += [conv, create_activation(activation)]
            c_in = self.channels
        self.features = nn.Sequential(*layers)
        if self.pool_mode == "global":
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(self.channels, self.num_classes, bias=bias)
            return
        h, w = self.input_size
        for _ in strided:  # a 3x3 conv with padding 1 and stride 2: s -> floor((s-1)/2)+1
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        h, w = h // 2, w // 2  # the 2x2 average pool
        if h < 1 or w < 1:
            raise ValueError(f"input_size={self.input_size} is too small for pool='avg2': the "
                             f"2x2 pool after the strided convs leaves a {h}x{w} map")
        self.pool = nn.AvgPool2d(2, stride=2)
        self.head = nn.Linear(self.channels * h * w, self.num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"VanillaCNN expects input of shape (B, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if self.pool_mode == "avg2" and tuple(x.shape[2:]) != self.input_size:
            raise ValueError(
                f"VanillaCNN(pool='avg2') expects input of shape (B, {self.in_channels}, "
                f"{self.input_size[0]}, {self.input_size[1]}), got {tuple(x.shape)}; build it "
                f"with input_size=(H, W) of your data"
            )
        x = self.features(x)  # (B, channels, H', W')
        x = self.pool(x).flatten(1)  # (B, channels) global; (B, channels * H'/2 * W'/2) avg2
        return self.head(x)  # (B, num_classes)


def vanilla_cnn_paper(
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    depth: int = 997,
    channels: int = 128,
    activation: Activation = "tanh",
    input_size: Sequence[int] = (32, 32),
    bias: bool = True,
) -> VanillaCNN:
    """Build the deep CNN of the paper's official code: 997 circular 3x3 convs, avg-pool, Linear.

    `Sparser, Better, Deeper, Stronger` - Nowak et al. (2024), arXiv 2406.01755, "1000-layer"
    CIFAR-10 CNN (docs/protocol.md): the official ``--depth 1000`` builds ``3 + (1000 - 6) = 997``
    convs, every one 3x3 with circular padding 1 and a bias, followed by the activation; the 2nd
    and 3rd have stride 2 (32 -> 16 -> 8); then a 2x2 average pool (8 -> 4), flatten and
    ``head = Linear(128 * 4 * 4 = 2048, num_classes)``. This is
    ``VanillaCNN(depth=997, channels=128, pool="avg2")``; ``depth`` counts the convs.

    Example:
        >>> model = vanilla_cnn_paper(depth=10, channels=8)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return VanillaCNN(in_channels, num_classes, depth=depth, channels=channels,
                      activation=activation, downsample=None, bias=bias, pool="avg2",
                      input_size=input_size)
