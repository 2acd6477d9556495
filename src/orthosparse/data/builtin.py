"""Datasets that need no files: scikit-learn's 8x8 digits and seeded synthetic data."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_positive_int
from .._optional import import_optional
from .dataset import DataSplits, Normalize, build_splits, carve_test_split, check_seed

__all__ = ["load_digits", "load_synthetic", "DIGITS_STATS"]

# Mean and std of all 1,797 digits images scaled to [0, 1] (pixel values 0..16 divided by 16).
DIGITS_STATS = ((0.3053,), (0.3760,))


def load_digits(
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: Normalize = "standard",
    test_fraction: float = 0.2,
) -> DataSplits:
    """Load the 1,797 8x8 handwritten digits bundled with scikit-learn (offline, 10 classes).

    Pixels (0..16) are scaled to [0, 1] and normalized with mean 0.3053, std 0.3760 (computed
    over the whole set). ``test_fraction`` of the images (fixed seed ``TEST_SPLIT_SEED``) form the
    test set, ``val_fraction`` of the rest (seed ``seed``) the validation set: 1,438 / 1,797
    remain for train + val with the default 0.2 (1,294 train, 144 val).

    Raises:
        ImportError: scikit-learn is not installed or fails to import (the ``data`` extra).

    Example:
        >>> splits = load_digits()
        >>> splits.input_shape, len(splits.test)
        ((1, 8, 8), 359)
    """
    sk_load_digits = import_optional("sklearn.datasets", "load_digits", user="dataset 'digits'",
                                     package="scikit-learn", extra="data",
                                     pip_name="scikit-learn")
    bunch = sk_load_digits()
    images = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8)  # (1797,1,8,8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)  # (1797,)
    train, test = carve_test_split(images, labels, test_fraction)
    return build_splits("digits", train, test, num_classes=10, scale=1 / 16,
                        standard=DIGITS_STATS, val_fraction=val_fraction, seed=seed,
                        normalize=normalize)


def load_synthetic(
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: Normalize = "standard",
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    train_size: int = 512,
    test_size: int = 128,
    noise: float = 1.0,
    data_seed: int = 0,
) -> DataSplits:
    """Generate a learnable Gaussian classification task (for tests and smoke runs).

    ``x = prototype[y] + noise * eps`` with ``prototype ~ N(0, I)`` per class and
    ``eps ~ N(0, I)``; labels cycle through the classes (balanced) in a random order. Draws from
    ``torch.Generator().manual_seed(data_seed)``: prototypes, train order, train noise, test order,
    test noise. ``seed`` only picks the validation hold-out. Normalization ``"standard"`` is the
    identity (mean 0, std 1).

    Raises:
        ValueError / TypeError: bad sizes, a negative ``noise``.

    Example:
        >>> splits = load_synthetic(input_shape=(1, 8, 8), num_classes=3)
        >>> splits.train[0][0].shape
        torch.Size([1, 8, 8])
    """
    shape = tuple(check_positive_int(s, "input_shape entry") for s in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape={tuple(input_shape)} must be (C, H, W)")
    num_classes = check_positive_int(num_classes, "num_classes")
    train_size = check_positive_int(train_size, "train_size")
    test_size = check_positive_int(test_size, "test_size")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise={noise!r} must be a float >= 0")
    g = torch.Generator().manual_seed(check_seed(data_seed, "data_seed"))
    prototypes = torch.randn(num_classes, *shape, generator=g)  # (K, C, H, W)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]  # (n,)
        x = prototypes[y] + noise * torch.randn(n, *shape, generator=g)  # (n, C, H, W)
        return x, y

    train, test = draw(train_size), draw(test_size)
    channels = shape[0]
    return build_splits("synthetic", train, test, num_classes=num_classes, scale=1.0,
                        standard=((0.0,) * channels, (1.0,) * channels),
                        val_fraction=val_fraction, seed=seed, normalize=normalize)
