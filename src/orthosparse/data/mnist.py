"""MNIST and Fashion-MNIST from IDX files in a user directory (plain or gzip); never downloads."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from .dataset import DataSplits, Normalize, build_splits, carve_test_split, check_test_fraction

__all__ = ["read_idx", "load_mnist", "load_fashion_mnist", "MNIST_STATS", "FASHION_MNIST_STATS"]

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE
# FORMAT"): magic = 0x00 0x00 <type> <ndim>, then ndim big-endian uint32 sizes, then the data.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# (mean, std) of the 60,000 training images scaled to [0, 1] (the usual constants).
MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# Deflate cannot compress better than about 1032:1, so a .gz file of n bytes holds at most
# ~1032 n bytes of data; a header claiming more is refused before decompressing anything.
_MAX_GZIP_RATIO = 1100
_CHUNK = 1 << 20


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _read_exact(fh, count: int, path: Path, what: str) -> bytearray:
    """Read exactly ``count`` bytes (decompressing at most that many), in 1 MiB chunks."""
    out = bytearray(count)
    view = memoryview(out)
    done = 0
    try:
        while done < count:
            n = fh.readinto(view[done:done + min(_CHUNK, count - done)])
            if not n:
                break
            done += n
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"corrupt gzip file {path}: {exc}") from exc
    if done < count:
        raise ValueError(f"corrupt IDX file {path}: {what} needs {count} bytes, found {done}")
    return out


def _read_some(fh, count: int, path: Path) -> bytes:
    try:
        return fh.read(count)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"corrupt gzip file {path}: {exc}") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array, checking the header strictly.

    The header must start with two zero bytes, a known type byte (0x08 uint8 ... 0x0E float64)
    and ndim >= 1; the data must be exactly ``prod(sizes) * itemsize`` bytes (no more, no less).
    A ``.gz`` file is decompressed as a stream: never more than the size its header gives plus
    one byte (a gzip bomb stops there), and a header claiming more data than the compressed
    file can hold is refused before any data is decompressed.

    Args:
        path: the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad magic number, unknown type, truncated or oversized data, corrupt gzip.

    Example:
        >>> read_idx("mnist/t10k-labels-idx1-ubyte.gz").shape
        (10000,)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    with _open(path) as fh:
        magic = _read_some(fh, 4, path)
        if len(magic) < 4:
            raise ValueError(f"corrupt IDX file {path}: {len(magic)} bytes, shorter than the "
                             f"4-byte magic number")
        zero0, zero1, type_code, ndim = magic[0], magic[1], magic[2], magic[3]
        if zero0 != 0 or zero1 != 0 or type_code not in _IDX_TYPES or ndim == 0:
            raise ValueError(
                f"corrupt IDX file {path}: magic number {magic.hex()} is not 0000<type><ndim> "
                f"with type in {{{', '.join(f'{t:02x}' for t in _IDX_TYPES)}}} and ndim >= 1"
            )
        header = 4 + 4 * ndim
        sizes = _read_some(fh, 4 * ndim, path)
        if len(sizes) < 4 * ndim:
            raise ValueError(f"corrupt IDX file {path}: header of {ndim} dims needs {header} "
                             f"bytes, file has {4 + len(sizes)}")
        shape = tuple(int(s) for s in np.frombuffer(sizes, dtype=">u4", count=ndim))
        dtype = np.dtype(_IDX_TYPES[type_code])
        expected = math.prod(shape) * dtype.itemsize
        stored = path.stat().st_size
        if path.suffix == ".gz" and expected > stored * _MAX_GZIP_RATIO:
            raise ValueError(f"corrupt IDX file {path}: header says shape {shape} of {dtype.name} "
                             f"({expected} data bytes), more than a {stored}-byte gzip file can "
                             f"hold")
        if path.suffix != ".gz" and stored - header != expected:
            raise ValueError(f"corrupt IDX file {path}: header says shape {shape} of {dtype.name} "
                             f"({expected} data bytes), found {stored - header} data bytes")
        data = _read_exact(fh, expected, path, f"shape {shape} of {dtype.name}")
        if _read_some(fh, 1, path):  # one byte past the header's size: never the whole bomb
            raise ValueError(f"corrupt IDX file {path}: header says shape {shape} of {dtype.name} "
                             f"({expected} data bytes), found more data after them")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _find(root: Path, stem: str, dataset: str) -> Path:
    """Locate ``stem`` or ``stem.gz`` in ``root`` or the torchvision layout ``root/*/raw``."""
    candidates = [root, root / "raw", *sorted(p / "raw" for p in root.glob("*") if p.is_dir())]
    for folder in candidates:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"{dataset}: {stem}[.gz] not found in {root} (also looked in {root}/raw and "
        f"{root}/*/raw); expected the official IDX files {', '.join(sum(_FILES.values(), ()))}"
    )


def _read_pair(root: Path, split: str, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    image_path = _find(root, _FILES[split][0], dataset)
    label_path = _find(root, _FILES[split][1], dataset)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{dataset}: {image_path} holds {images.dtype} of shape {images.shape}, "
                         f"expected uint8 of shape (N, 28, 28)")
    if labels.dtype != np.uint8 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{dataset}: {label_path} holds {labels.dtype} of shape {labels.shape}, "
                         f"expected uint8 of shape ({images.shape[0]},) to match {image_path}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{dataset}: {label_path} has label {int(labels.max())}, expected 0-9")
    return (torch.from_numpy(images.copy())[:, None],  # (N, 1, 28, 28) uint8
            torch.from_numpy(labels.astype(np.int64)))  # (N,)


def _load(dataset: str, stats, root, *, val_fraction: float, seed: int, normalize: Normalize,
          test_only_split: bool, test_fraction: float) -> DataSplits:
    if root is None:
        raise ValueError(f"{dataset} needs root=<directory with the IDX files "
                         f"{', '.join(sum(_FILES.values(), ()))} (optionally .gz)>; "
                         f"nothing is downloaded")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} root directory {root} does not exist; expected a "
                                f"directory with the IDX files")
    if not isinstance(test_only_split, bool):
        raise TypeError(f"test_only_split must be True or False, got {test_only_split!r}")
    if test_only_split:
        check_test_fraction(test_fraction)  # before reading anything
        train, test = carve_test_split(*_read_pair(root, "test", dataset), test_fraction)
    else:
        try:
            train = _read_pair(root, "train", dataset)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}. If only the t10k test files are available, split "
                                    f"them into train/val/test: on the command line "
                                    f"--data-options test_only_split=true (in Python "
                                    f"test_only_split=True)") from None
        test = _read_pair(root, "test", dataset)
    return build_splits(dataset, train, test, num_classes=10, scale=1 / 255, standard=stats,
                        val_fraction=val_fraction, seed=seed, normalize=normalize)


def load_mnist(
    root: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: Normalize = "standard",
    test_only_split: bool = False,
    test_fraction: float = 0.2,
) -> DataSplits:
    """Load MNIST (1x28x28, 10 classes) from IDX files in ``root``.

    Files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each raw or ``.gz``, in ``root``, ``root/raw`` or ``root/*/raw``.
    ``val_fraction`` of the training images (seed ``seed``) become the validation set.
    Normalization ``"standard"``: mean 0.1307, std 0.3081.

    With ``test_only_split=True`` only the 10,000 t10k images are read: ``test_fraction`` of
    them (a fixed split, seed ``TEST_SPLIT_SEED``) become the test set, ``val_fraction`` of the
    rest the validation set, the remainder the training set. Never done implicitly.

    Raises:
        ValueError: ``root`` is None, corrupt or unexpected IDX content (names the file).
        FileNotFoundError: missing ``root`` or file (names what was expected).

    Example:
        >>> splits = load_mnist("data/mnist-test", test_only_split=True)
        >>> len(splits.train), len(splits.val), len(splits.test)
        (7200, 800, 2000)
    """
    return _load("mnist", MNIST_STATS, root, val_fraction=val_fraction, seed=seed,
                 normalize=normalize, test_only_split=test_only_split, test_fraction=test_fraction)


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: Normalize = "standard",
    test_only_split: bool = False,
    test_fraction: float = 0.2,
) -> DataSplits:
    """Load Fashion-MNIST (same file names and format as MNIST); see :func:`load_mnist`.

    Normalization ``"standard"``: mean 0.2860, std 0.3530.
    """
    return _load("fashion-mnist", FASHION_MNIST_STATS, root, val_fraction=val_fraction, seed=seed,
                 normalize=normalize, test_only_split=test_only_split, test_fraction=test_fraction)
