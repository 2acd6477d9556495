"""CIFAR VGGs: VGG-16 (3x3 convs, five max-pools, one Linear head) and SNIP's VGG-C."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._checks import check_positive_int
from ._activations import Activation, create_activation
from ._common import check_bool, check_input_size

__all__ = ["VGG", "VGG16_CONFIG", "vgg16", "SNIPVGG", "VGG_C_CONFIG", "vgg_c"]

# Conv widths; "M" is a 2x2 max-pool. Configuration D of `Very Deep Convolutional Networks for
# Large-Scale Image Recognition` - Simonyan & Zisserman (2014), arXiv 1409.1556.
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


class VGG(nn.Module):
    """Build a CIFAR-style VGG: ``[conv3x3 -> (BN) -> act]`` blocks and max-pools, GAP, Linear.

    The CIFAR variant (as in the sparse-training literature): no 4096-wide classifier, a single
    ``head = Linear(512, num_classes)`` after the last pool. Choices stated here:

    - ``batch_norm=True`` by default (standard for VGG on CIFAR; without it VGG-16 trains poorly
      from scratch). Convs have no bias when followed by BatchNorm (it would be cancelled by the
      mean subtraction), and a bias otherwise.
    - Max-pools use ``ceil_mode=True``: identical to the usual pools for 32x32 input (32 -> 1),
      while small inputs never shrink to 0x0 (28 -> 14 -> 7 -> 4 -> 2 -> 1, 8 -> 4 -> 2 -> 1 -> 1
      -> 1). A global average pool before the head makes any input size work.

    Args:
        config: conv widths and ``"M"`` pools, e.g. :data:`VGG16_CONFIG`.
        in_channels: input channels (3 for CIFAR).
        num_classes: output size (10 or 100 for CIFAR).
        batch_norm: BatchNorm after every conv.
        activation: one of ``linear, tanh, relu, hard_tanh, selu, leaky_relu``.

    Raises:
        TypeError / ValueError: bad sizes, an unknown activation, a config entry that is neither
            a positive int nor ``"M"``, or a config without convs.

    Example:
        >>> model = VGG(VGG16_CONFIG, 3, 10, activation="relu")
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        config: Sequence[int | str] = VGG16_CONFIG,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        batch_norm: bool = True,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        check_bool(batch_norm, "batch_norm")
        create_activation(activation)  # validate the name before building anything
        layers: list[nn.Module] = []
        c_in = self.in_channels
        for entry in config:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            c_out = check_positive_int(entry, "VGG config entry")
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(create_activation(activation))
            c_in = c_out
        if not any(isinstance(m, nn.Conv2d) for m in layers):
            raise ValueError(f"VGG config={tuple(config)} has no conv layer")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"VGG expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        x = self.features(x)  # (B, 512, H/32, W/32) rounded up
        x = self.pool(x).flatten(1)  # (B, 512)
        return self.head(x)  # (B, num_classes)


def vgg16(
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    batch_norm: bool = True,
    activation: Activation = "relu",
) -> VGG:
    """Build VGG-16 (configuration D) for CIFAR; see :class:`VGG` for the stated choices.

    Example:
        >>> vgg16(num_classes=100, activation="tanh")(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 100])
    """
    return VGG(VGG16_CONFIG, in_channels, num_classes, batch_norm=batch_norm,
               activation=activation)


# VGG-C of `SNIP: Single-shot Network Pruning based on Connection Sensitivity` - Lee et al.
# (2019), arXiv 1810.02340 (Simonyan & Zisserman's configuration C, CIFAR-sized): an int is a 3x3
# conv with that many output channels, ``(k, c)`` a kxk conv, "M" a 2x2 max-pool. 13 convs: ten
# 3x3 and three 1x1 (the last conv of the 3rd, 4th and 5th blocks).
VGG_C_CONFIG: tuple[int | str | tuple[int, int], ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, (1, 256), "M", 512, 512, (1, 512), "M",
    512, 512, (1, 512), "M",
)


def _vgg_c_entry(entry: object) -> tuple[int, int] | None:
    """``(kernel, channels)`` of a config entry, ``None`` for a pool; raise on anything else."""
    if entry == "M":
        return None
    if isinstance(entry, tuple) and len(entry) == 2:
        return (check_positive_int(entry[0], "SNIPVGG config kernel size"),
                check_positive_int(entry[1], "SNIPVGG config channels"))
    if isinstance(entry, bool) or not isinstance(entry, int) or entry < 1:
        raise ValueError(f"SNIPVGG config entry {entry!r} must be a positive int (3x3 conv), a "
                         f"(kernel, channels) pair or 'M' (max-pool)")
    return 3, entry


class SNIPVGG(nn.Module):
    """Build SNIP's CIFAR VGG (VGG-C by default), the VGG of Nowak et al. (2024)'s experiments.

    Layout of `SNIP: Single-shot Network Pruning based on Connection Sensitivity` - Lee et al.
    (2019), arXiv 1810.02340, as the official code of `Sparser, Better, Deeper, Stronger` -
    Nowak et al. (2024), arXiv 2406.01755 builds it (``vgg-C``; docs/protocol.md):

        features: for every conv entry ``conv kxk (padding 1, with bias) -> BatchNorm2d -> act``,
            for every "M" a 2x2 max-pool (stride 2, floor);
        flatten (channel-major), then for every width in ``hidden``
            ``Linear -> act -> BatchNorm1d`` (BatchNorm in place of VGG's dropout);
        ``head``: Linear to ``num_classes``.

    Every conv has padding 1, the 1x1 ones too, so each 1x1 conv grows the map by 2 pixels: on
    32x32 input the maps are 32, 16, 8 (10 after the 1x1), 5 (7), 3 (5), 2, and the flattened
    features are 512 * 2 * 2 = 2048. The flattened size depends on the input size, hence
    ``input_size`` (``create_model(..., input_shape=...)`` passes it).

    Args:
        config: conv entries and "M" pools, e.g. :data:`VGG_C_CONFIG`.
        in_channels: input channels (3 for CIFAR).
        num_classes: output size.
        input_size: ``(H, W)`` of the input the model is built for.
        hidden: widths of the hidden Linear layers between the features and the head.
        activation: one of ``linear, tanh, relu, hard_tanh, selu, leaky_relu``.

    Raises:
        TypeError / ValueError: bad sizes, an unknown activation, a bad config entry, a config
            without convs, or an input size that a pool shrinks to nothing.

    Example:
        >>> model = SNIPVGG(VGG_C_CONFIG, 3, 10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        config: Sequence[int | str | tuple[int, int]] = VGG_C_CONFIG,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        input_size: Sequence[int] = (32, 32),
        hidden: Sequence[int] = (512, 512),
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.input_size = check_input_size(input_size)
        hidden = tuple(check_positive_int(h, "hidden width") for h in hidden)
        create_activation(activation)  # validate the name before building anything
        layers: list[nn.Module] = []
        c_in = self.in_channels
        h, w = self.input_size
        for entry in config:
            conv = _vgg_c_entry(entry)
            if conv is None:
                layers.append(nn.MaxPool2d(2, stride=2))
                h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise ValueError(f"input_size={self.input_size} is too small for config "
                                     f"{tuple(config)}: a max-pool shrinks the map to {h}x{w}")
                continue
            kernel, c_out = conv
            layers += [nn.Conv2d(c_in, c_out, kernel, padding=1), nn.BatchNorm2d(c_out),
                       create_activation(activation)]
            h, w = h + 3 - kernel, w + 3 - kernel  # padding 1 on each side
            if h < 1 or w < 1:
                raise ValueError(f"input_size={self.input_size} is too small for config "
                                 f"{tuple(config)}: a {kernel}x{kernel} conv shrinks the map "
                                 f"to {h}x{w}")
            c_in = c_out
        if not any(isinstance(m, nn.Conv2d) for m in layers):
            raise ValueError(f"SNIPVGG config={tuple(config)} has no conv layer")
        self.features = nn.Sequential(*layers)
        self.flat_features = c_in * h * w
        classifier: list[nn.Module] = []
        fan_in = self.flat_features
        for width in hidden:
            classifier += [nn.Linear(fan_in, width), create_activation(activation),
                           nn.BatchNorm1d(width)]
            fan_in = width
        self.classifier = nn.Sequential(*classifier)
        self.head = nn.Linear(fan_in, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != \
                self.input_size:
            raise ValueError(
                f"SNIPVGG expects input of shape (B, {self.in_channels}, "
                f"{self.input_size[0]}, {self.input_size[1]}), got {tuple(x.shape)}; build it "
                f"with input_size=(H, W) of your data"
            )
        x = self.features(x).flatten(1)  # (B, flat_features), 2048 for VGG-C on 32x32
        return self.head(self.classifier(x))  # (B, num_classes)


def vgg_c(
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: Sequence[int] = (32, 32),
    activation: Activation = "relu",
) -> SNIPVGG:
    """Build VGG-C (SNIP's CIFAR layout, the paper's VGG); see :class:`SNIPVGG`.

    Example:
        >>> vgg_c(activation="tanh")(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return SNIPVGG(VGG_C_CONFIG, in_channels, num_classes, input_size=input_size,
                   hidden=(512, 512), activation=activation)
