"""Tiny ImageNet (200 classes, 64x64) from the standard folder layout; needs Pillow."""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._atomic import write_atomic
from .._optional import import_optional
from .dataset import DataSplits, Normalize, build_splits

__all__ = ["load_tiny_imagenet", "IMAGENET_STATS"]

# Per-channel (mean, std) of ImageNet (Tiny ImageNet is a subset of it); use
# normalize="train" to recompute them on the Tiny ImageNet training split instead.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_SUFFIXES = {".jpeg", ".jpg", ".png"}


def _read_images(paths: list[Path]) -> torch.Tensor:
    Image = import_optional("PIL.Image", user="tiny-imagenet",
                            package="Pillow to decode the images", extra="data", pip_name="pillow")
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
        except OSError as exc:
            raise ValueError(f"tiny-imagenet: cannot decode image {path}: {exc}") from exc
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(f"tiny-imagenet: image {path} is {array.shape[1]}x{array.shape[0]}, "
                             f"expected {arrays[0].shape[1]}x{arrays[0].shape[0]} like "
                             f"{paths[0]}")
        arrays.append(array)
    stacked = np.stack(arrays)  # (N, H, W, 3)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


CACHE_DIR = ".orthosparse-cache"  # under the dataset root
_CACHE_FORMAT = 1


def _fingerprint(paths: list[Path], root: Path) -> str:
    """Hash of every image's path (relative to ``root``), size and modification time, in order."""
    digest = hashlib.sha256(f"tiny-imagenet cache {_CACHE_FORMAT}\n".encode())
    for path in paths:
        st = path.stat()
        digest.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _decoded(paths: list[Path], root: Path, tag: str, cache: bool) -> torch.Tensor:
    """The images of ``paths`` as uint8 (N, 3, H, W): read from the cache under ``root`` when it
    holds exactly these files (names, sizes, modification times), else decoded and cached.

    The cache is written atomically (:func:`orthosparse._atomic.write_atomic`) and read with
    ``torch.load(weights_only=True)``; a corrupt or unwritable cache only costs a warning and a
    decode, never the load.
    """
    if not cache:
        return _read_images(paths)
    folder = root / CACHE_DIR
    file = folder / f"{tag}-{_fingerprint(paths, root)}.pt"
    if file.is_file():
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError,
                ValueError, KeyError, AttributeError, ImportError, TypeError) as err:
            problem = f"{file} is corrupt or unreadable ({type(err).__name__})"
        else:
            if (isinstance(state, dict) and state.get("format") == _CACHE_FORMAT
                    and len(state.get("images", ())) == len(paths)):
                return state["images"]
            problem = f"{file} does not hold {len(paths)} images"
        warnings.warn(f"tiny-imagenet: ignoring the decoded-image cache ({problem}); decoding "
                      f"the images again", stacklevel=4)
    images = _read_images(paths)
    try:
        write_atomic(file, lambda fh: torch.save({"format": _CACHE_FORMAT, "images": images}, fh))
        for stale in folder.glob(f"{tag}-*.pt"):  # caches of an older version of the files
            if stale != file:
                stale.unlink(missing_ok=True)
    except OSError as err:
        warnings.warn(f"tiny-imagenet: cannot write the decoded-image cache {file} ({err}); the "
                      f"next load decodes the images again (cache=False skips the cache)",
                      stacklevel=4)
    return images


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"tiny-imagenet: folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _SUFFIXES)


def load_tiny_imagenet(
    root: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: Normalize = "standard",
    cache: bool = True,
) -> DataSplits:
    """Load Tiny ImageNet from ``root`` (or ``root/tiny-imagenet-200``); never downloads.

    Layout: ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` and
    ``val/val_annotations.txt`` (tab-separated ``file, wnid, bbox``), ``wnids.txt`` (class
    order; sorted ``train`` folder names when absent). The official test images have no labels,
    so the official **val** set is the test split here and ``val_fraction`` of the training
    images (seed ``seed``) the validation split. All images must have the same size (64x64);
    grayscale ones are converted to RGB. Normalization ``"standard"``: ImageNet's mean
    (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225). Recommended augmentation ``"crop-flip"``.
    Decoding 110,000 JPEGs takes about a minute; the result is held as uint8 (1.35 GB). With
    ``cache`` (the default) the decoded images are also written to ``root/.orthosparse-cache``
    (one file per split, the same 1.35 GB), which later loads read in seconds; the cache is keyed
    by every image's name, size and modification time, so changed files are decoded again.

    Raises:
        ValueError: ``root`` is None, an undecodable image, a bad annotation line (names it).
        FileNotFoundError: missing ``root``, folder or annotation file.
        ImportError: Pillow is not installed or fails to import (the ``data`` extra).
    """
    if not isinstance(cache, bool):
        raise TypeError(f"tiny-imagenet: cache={cache!r} must be True or False")
    if root is None:
        raise ValueError("tiny-imagenet needs root=<the tiny-imagenet-200 directory>; nothing "
                         "is downloaded")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"tiny-imagenet root directory {root} does not exist")
    if not (root / "train").is_dir() and (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"tiny-imagenet: {train_dir} does not exist; expected "
                                f"train/<wnid>/images/*.JPEG under {root}")
    wnids_file = root / "wnids.txt"
    if wnids_file.is_file():
        wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    else:
        wnids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not wnids:
        raise ValueError(f"tiny-imagenet: no classes found in {wnids_file} or {train_dir}")
    class_index = {w: i for i, w in enumerate(wnids)}

    train_paths, train_labels = [], []
    for wnid in wnids:
        paths = _images_in(train_dir / wnid / "images")
        if not paths:
            raise ValueError(f"tiny-imagenet: no images in {train_dir / wnid / 'images'}")
        train_paths += paths
        train_labels += [class_index[wnid]] * len(paths)

    annotations = val_dir / "val_annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"tiny-imagenet: {annotations} does not exist; expected lines "
                                f"'<file>\\t<wnid>\\t...' for val/images")
    test_paths, test_labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_index:
            raise ValueError(f"tiny-imagenet: {annotations} line {number} {line!r} does not "
                             f"name an image and a known wnid")
        path = val_dir / "images" / fields[0]
        if not path.is_file():
            raise FileNotFoundError(f"tiny-imagenet: {path} (from {annotations} line {number}) "
                                    f"does not exist")
        test_paths.append(path)
        test_labels.append(class_index[fields[1]])

    train = (_decoded(train_paths, root, "train", cache),
             torch.tensor(train_labels, dtype=torch.int64))
    test = (_decoded(test_paths, root, "val", cache), torch.tensor(test_labels, dtype=torch.int64))
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(f"tiny-imagenet: train images are {tuple(train[0].shape[1:])}, val "
                         f"images {tuple(test[0].shape[1:])}")
    return build_splits("tiny-imagenet", train, test, num_classes=len(wnids), scale=1 / 255,
                        standard=IMAGENET_STATS, val_fraction=val_fraction, seed=seed,
                        normalize=normalize, augment="crop-flip")
