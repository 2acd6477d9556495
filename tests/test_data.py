"""Datasets and loaders: real MNIST test file, fake files in every supported format, errors."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from orthosparse.data import (
    InMemoryDataset,
    list_datasets,
    load_dataset,
    make_loader,
    random_crop_flip,
    random_flip,
    read_idx,
    restricted_unpickle,
)

HAS_PIL = importlib.util.find_spec("PIL") is not None
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _mnist_test_dir() -> Path | None:
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo.parent / "shared" / "data" / "mnist-test",
                      Path("/work/shared/data/mnist-test")):
        if (candidate / "t10k-images-idx3-ubyte.gz").is_file():
            return candidate
    return None


MNIST_DIR = _mnist_test_dir()
needs_mnist = pytest.mark.skipif(MNIST_DIR is None, reason="real MNIST test files not found")


def test_registry_names():
    assert list_datasets() == sorted(["digits", "mnist", "fashion-mnist", "cifar10", "cifar100",
                                      "tiny-imagenet", "synthetic"])


# ----------------------------------------------------------------------------- digits


def test_digits_splits_and_normalization():
    from sklearn.datasets import load_digits

    raw = load_digits()
    pixels = raw.data / 16.0  # (1797, 64) in [0, 1]
    splits = load_dataset("digits")
    # 1797 * 0.2 = 359.4 -> 359 test; 1438 * 0.1 = 143.8 -> 144 val; 1294 train
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1294, 144, 359)
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    assert splits.in_features == 64 and splits.in_channels == 1
    # the hard-coded constants are the statistics of the whole set
    assert abs(splits.mean[0] - pixels.mean()) < 1e-4
    assert abs(splits.std[0] - pixels.std()) < 1e-4
    x, y = splits.train[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (1, 8, 8)
    expected = (splits.train.images[0] / 16.0 - 0.3053) / 0.3760
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    # every image used exactly once: label counts add up to scikit-learn's
    labels = torch.cat([splits.train.labels, splits.val.labels, splits.test.labels])
    assert torch.bincount(labels).tolist() == np.bincount(raw.target).tolist()
    rows = torch.cat([s.images.reshape(-1, 64) for s in (splits.train, splits.val, splits.test)])
    assert torch.unique(rows, dim=0).shape[0] == np.unique(raw.data, axis=0).shape[0]


def test_test_split_does_not_depend_on_seed():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.val.labels, b.val.labels) or not torch.equal(a.val.images,
                                                                          b.val.images)
    c = load_dataset("digits", seed=0)
    assert torch.equal(a.val.images, c.val.images) and torch.equal(a.train.labels,
                                                                    c.train.labels)


def test_root_not_used_warns():
    with pytest.warns(UserWarning, match="dataset 'digits' reads no files; root='x' is not used"):
        load_dataset("digits", root="x")


# ----------------------------------------------------------------------------- real MNIST


@needs_mnist
def test_real_mnist_test_file():
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS


@needs_mnist
def test_real_mnist_test_only_split():
    splits = load_dataset("mnist", root=MNIST_DIR, test_only_split=True)
    # 10000 * 0.2 = 2000 test; 8000 * 0.1 = 800 val
    assert (len(splits.train), len(splits.val), len(splits.test)) == (7200, 800, 2000)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    labels = torch.cat([splits.train.labels, splits.val.labels, splits.test.labels])
    assert torch.bincount(labels).tolist() == MNIST_TEST_COUNTS
    x, _ = splits.test[5]
    torch.testing.assert_close(x, (splits.test.images[5].float() / 255 - 0.1307) / 0.3081)


@needs_mnist
def test_real_mnist_needs_explicit_test_only_split():
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*test_only_split=True"):
        load_dataset("mnist", root=MNIST_DIR)


# ----------------------------------------------------------------------------- fake IDX files


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", s)
                                                               for s in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_mnist(root: Path, n_train: int = 20, n_test: int = 10, gz: bool = False,
                 prefix: str = "") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (root / (prefix + name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / (prefix + name)).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_fake_mnist(tmp_path, gz, name):
    arrays = _write_mnist(tmp_path, gz=gz)
    splits = load_dataset(name, root=tmp_path, val_fraction=0.25, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 10)
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert splits.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # train + val are a partition of the 20 training images (labels 0..9 twice)
    labels = torch.cat([splits.train.labels, splits.val.labels]).sort().values
    assert labels.tolist() == sorted(arrays["train-labels-idx1-ubyte"].tolist())
    mean = 0.1307 if name == "mnist" else 0.2860
    assert splits.mean == (mean,)


def test_fake_mnist_torchvision_layout(tmp_path):
    _write_mnist(tmp_path / "MNIST" / "raw")
    assert len(load_dataset("mnist", root=tmp_path).test) == 10


@pytest.mark.parametrize("dtype,code", [(np.int32, 0x0C), (np.float64, 0x0E), (np.int16, 0x0B)])
def test_read_idx_other_types(tmp_path, dtype, code):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(array, code))
    out = read_idx(tmp_path / "a.idx")
    assert out.dtype == dtype and np.array_equal(out, array)


def test_idx_errors(tmp_path):
    good = _idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    path = tmp_path / "x-idx3-ubyte"
    with pytest.raises(FileNotFoundError, match="IDX file .*x-idx3-ubyte does not exist"):
        read_idx(path)
    path.write_bytes(b"\x00\x01" + good[2:])
    with pytest.raises(ValueError, match="corrupt IDX file .*x-idx3-ubyte: magic number 0001"):
        read_idx(path)
    path.write_bytes(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match="magic number 00000703"):
        read_idx(path)
    path.write_bytes(good[:-1])
    with pytest.raises(ValueError, match=r"shape \(2, 28, 28\) of uint8 \(1568 data bytes\), "
                                         r"found 1567"):
        read_idx(path)
    path.write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match="found 1569 data bytes"):
        read_idx(path)
    path.write_bytes(good[:10])
    with pytest.raises(ValueError, match="header of 3 dims needs 16 bytes, file has 10"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="shorter than the 4-byte magic number"):
        read_idx(path)
    gz = tmp_path / "y.gz"
    gz.write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match="corrupt gzip file .*y.gz"):
        read_idx(gz)


def test_mnist_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="mnist needs root="):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="mnist root directory .*nowhere does not exist"):
        load_dataset("mnist", root=tmp_path / "nowhere")
    arrays = _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[.gz\] not found in"):
        load_dataset("mnist", root=tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(_idx_bytes(arrays["t10k-labels-idx1-ubyte"][:9]))
    with pytest.raises(ValueError, match=r"expected uint8 of shape \(10,\) to match"):
        load_dataset("mnist", root=tmp_path)
    bad.write_bytes(_idx_bytes(np.full(10, 10, dtype=np.uint8)))
    with pytest.raises(ValueError, match="has label 10, expected 0-9"):
        load_dataset("mnist", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
        _idx_bytes(np.zeros((10, 28, 27), dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"shape \(10, 28, 27\), expected uint8 of shape"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(TypeError, match="test_only_split must be True or False"):
        load_dataset("mnist", root=tmp_path, test_only_split="yes")
    with pytest.raises(ValueError, match=r"test_fraction=1.0 must be in \(0, 1\)"):
        load_dataset("mnist", root=tmp_path, test_only_split=True, test_fraction=1.0)


# ----------------------------------------------------------------------------- CIFAR


def _cifar_arrays(n: int, num_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            rng.integers(0, num_labels, n).astype(np.int64))


def _write_cifar10(root: Path, fmt: str, n: int = 4) -> dict[str, tuple]:
    files = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = _cifar_arrays(n, 10, i)
        files[name] = (data, labels)
        if fmt == "python":
            # Python-2 style: bytes keys, protocol 2 (bytes go through _codecs.encode)
            batch = {b"batch_label": b"fake", b"data": data, b"labels": labels.tolist(),
                     b"filenames": [b"a.png"] * n}
            (root / name).write_bytes(pickle.dumps(batch, protocol=2))
        else:
            rows = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
            (root / f"{name}.bin").write_bytes(rows.tobytes())
    return files


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_fake_cifar10(tmp_path, fmt):
    folder = tmp_path / ("cifar-10-batches-py" if fmt == "python" else "cifar-10-batches-bin")
    folder.mkdir()
    files = _write_cifar10(folder, fmt)
    splits = load_dataset("cifar10", root=tmp_path, val_fraction=0.1)
    # 5 batches of 4 = 20 training images, round(2.0) = 2 held out
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 2, 4)
    assert splits.input_shape == (3, 32, 32) and splits.augment == "crop-flip"
    data, labels = files["test_batch"]
    images = splits.test.images
    assert images.dtype == torch.uint8
    for i, c, h, w in [(0, 0, 0, 0), (1, 2, 31, 5), (3, 1, 7, 30)]:
        assert images[i, c, h, w] == data[i, c * 1024 + h * 32 + w]  # channel-major rows
    assert splits.test.labels.tolist() == labels.tolist()
    x, _ = splits.test[1]
    expected = (images[1].double() / 255 - torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
                ) / torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]
    torch.testing.assert_close(x, expected.float())


def test_cifar10_python3_pickle_and_explicit_format(tmp_path):
    _write_cifar10(tmp_path, "binary")
    data, labels = _cifar_arrays(3, 10, 9)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(pickle.dumps({"data": data, "labels": labels.tolist()},
                                                   protocol=pickle.HIGHEST_PROTOCOL))
    assert len(load_dataset("cifar10", root=tmp_path, format="python").test) == 3
    assert len(load_dataset("cifar10", root=tmp_path, format="binary").test) == 4
    assert len(load_dataset("cifar10", root=tmp_path).test) == 3  # auto prefers python


@pytest.mark.parametrize("fmt", ["python", "binary"])
@pytest.mark.parametrize("label_mode,num_classes", [("fine", 100), ("coarse", 20)])
def test_fake_cifar100(tmp_path, fmt, label_mode, num_classes):
    stored = {}
    for i, name in enumerate(["train", "test"]):
        data, fine = _cifar_arrays(5, 100, i)
        coarse = fine // 5
        stored[name] = (fine, coarse)
        if fmt == "python":
            batch = {b"data": data, b"fine_labels": fine.tolist(),
                     b"coarse_labels": coarse.tolist()}
            (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
        else:
            rows = np.concatenate([coarse.astype(np.uint8)[:, None],
                                   fine.astype(np.uint8)[:, None], data], axis=1)
            (tmp_path / f"{name}.bin").write_bytes(rows.tobytes())
    splits = load_dataset("cifar100", root=tmp_path, val_fraction=0.2, label_mode=label_mode)
    assert splits.num_classes == num_classes
    fine, coarse = stored["test"]
    assert splits.test.labels.tolist() == (fine if label_mode == "fine" else coarse).tolist()
    assert splits.mean == (0.5071, 0.4865, 0.4409)


def _py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """Protocol-2 opcodes as Python 2's cPickle writes a CIFAR batch (str = BINSTRING, numpy 1.x
    module names), assembled by hand because Python 3 cannot write Python-2 strings."""

    def s(text: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING
        if len(text) < 256:
            return b"U" + bytes([len(text)]) + text
        return b"T" + struct.pack("<I", len(text)) + text

    def i(value: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", value)

    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0)
             + b"\x85" + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86" + dtype + b"\x89"
             + s(data.tobytes()) + b"tb")
    label_list = b"](" + b"".join(i(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"training batch 1 of 5") + s(b"data")
            + array + s(b"labels") + label_list + b"u.")


def test_cifar10_python2_pickle(tmp_path):
    data, labels = _cifar_arrays(3, 10, 0)
    data[0, :3] = [0, 128, 255]  # bytes >= 128 survive the latin-1 round trip
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(_py2_pickle(data, labels.tolist()))
    batch = restricted_unpickle(tmp_path / "test_batch")
    assert batch["batch_label"] == "training batch 1 of 5"
    assert batch["data"].dtype == np.uint8 and np.array_equal(batch["data"], data)
    splits = load_dataset("cifar10", root=tmp_path, val_fraction=0.0)
    assert splits.test.images.reshape(3, -1).tolist() == data.tolist()
    assert splits.test.labels.tolist() == labels.tolist() and len(splits.train) == 15


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_restricted_unpickle_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({"data": _Evil(marker)}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load .*data_batch_1: global "
                                         "(builtins|io).open is not allowed"):
        restricted_unpickle(evil)
    assert not marker.exists()
    (tmp_path / "p").write_bytes(pickle.dumps(np.float32, protocol=2))
    with pytest.raises(ValueError, match="global numpy.float32 is not allowed"):
        restricted_unpickle(tmp_path / "p")
    good = {"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "x": [1, "a", b"b", 2.5],
            "s": np.float64(1.5)}
    (tmp_path / "ok").write_bytes(pickle.dumps(good, protocol=2))
    out = restricted_unpickle(tmp_path / "ok")
    assert np.array_equal(out["data"], good["data"]) and out["x"] == good["x"]
    assert out["s"] == 1.5
    (tmp_path / "cut").write_bytes(pickle.dumps(good, protocol=2)[:-20])
    with pytest.raises(ValueError, match="corrupt pickle file .*cut"):
        restricted_unpickle(tmp_path / "cut")


def test_cifar_errors(tmp_path):
    with pytest.raises(ValueError, match="cifar10 needs root="):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="cifar10 root directory .*missing does not"):
        load_dataset("cifar10", root=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no CIFAR batches in .*looked for .*data_batch_1"):
        load_dataset("cifar10", root=tmp_path)
    _write_cifar10(tmp_path, "python")
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3 is missing"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="data_batch_3 holds a list, expected a dict"):
        load_dataset("cifar10", root=tmp_path)
    data, labels = _cifar_arrays(4, 10, 0)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({"data": data[:, :100],
                                                          "labels": labels.tolist()}))
    with pytest.raises(ValueError, match=r"'data' is uint8 \(4, 100\), expected uint8 of shape"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({"data": data,
                                                          "labels": [11, 0, 0, 0]}))
    with pytest.raises(ValueError, match=r"labels in .* span \[0, 11\], expected \[0, 9\]"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({"data": data}))
    with pytest.raises(ValueError, match="has keys \\['data'\\], expected 'data' and 'labels'"):
        load_dataset("cifar10", root=tmp_path)
    binary = tmp_path / "bin"
    binary.mkdir()
    _write_cifar10(binary, "binary")
    with (binary / "test_batch.bin").open("ab") as f:
        f.write(b"\x00" * 7)
    with pytest.raises(ValueError, match="corrupt CIFAR binary file .*test_batch.bin: 12299 "
                                         "bytes is not a positive multiple of the 3073-byte"):
        load_dataset("cifar10", root=binary)
    with pytest.raises(ValueError, match="format='zip' must be one of"):
        load_dataset("cifar10", root=binary, format="zip")
    with pytest.raises(ValueError, match="label_mode='medium' must be one of"):
        load_dataset("cifar100", root=binary, label_mode="medium")


# ----------------------------------------------------------------------------- Tiny ImageNet


def _write_tiny_imagenet(root: Path, size: int = 8) -> list[str]:
    from PIL import Image

    wnids = ["n02", "n01", "n03"]  # wnids.txt order defines the class index, not sorting
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for j in range(4):
            colour = (40 * k + 10, 200 - 40 * k, 60 + j)
            Image.new("RGB", (size, size), colour).save(folder / f"{wnid}_{j}.JPEG", quality=100)
    Image.new("L", (size, size), 128).save(root / "train" / "n01" / "images" / "n01_9.JPEG")
    val = root / "val" / "images"
    val.mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n03", "n02", "n01"]):
        k = wnids.index(wnid)
        Image.new("RGB", (size, size), (40 * k + 10, 200 - 40 * k, 60)).save(
            val / f"val_{i}.JPEG", quality=100)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t{size}\t{size}")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids


@pytest.mark.skipif(not HAS_PIL, reason="needs Pillow")
def test_fake_tiny_imagenet(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    _write_tiny_imagenet(root)
    splits = load_dataset("tiny-imagenet", root=tmp_path, val_fraction=0.25)
    # 3 classes * 4 images + 1 grayscale = 13 -> round(3.25) = 3 val, 10 train; 3 test
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 3, 3)
    assert splits.num_classes == 3 and splits.input_shape == (3, 8, 8)
    assert splits.test.labels.tolist() == [2, 0, 1]  # n03, n02, n01 in wnids.txt order
    for i, k in enumerate([2, 0, 1]):
        colour = torch.tensor([40 * k + 10, 200 - 40 * k, 60]).float()
        pixels = splits.test.images[i].float()  # (3, 8, 8)
        assert (pixels - colour[:, None, None]).abs().max() <= 3  # JPEG rounding
    everything = torch.cat([splits.train.images, splits.val.images]).float()
    gray = (everything - 128).abs().amax(dim=(1, 2, 3)) <= 3
    assert int(gray.sum()) == 1  # the grayscale image became RGB with equal channels


@pytest.mark.skipif(not HAS_PIL, reason="needs Pillow")
def test_tiny_imagenet_cache_skips_decoding_until_a_file_changes(tmp_path, monkeypatch):
    import os

    from PIL import Image

    from orthosparse.data import tiny_imagenet

    _write_tiny_imagenet(tmp_path)
    first = load_dataset("tiny-imagenet", root=tmp_path, val_fraction=0.25)
    cache = tmp_path / tiny_imagenet.CACHE_DIR
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["train", "val"]

    decoded = []
    read = tiny_imagenet._read_images
    monkeypatch.setattr(tiny_imagenet, "_read_images",
                        lambda paths: decoded.append(len(paths)) or read(paths))
    again = load_dataset("tiny-imagenet", root=tmp_path, val_fraction=0.25)
    assert decoded == []  # both splits came from the cache
    for a, b in ((first.train, again.train), (first.val, again.val), (first.test, again.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)

    image = tmp_path / "val" / "images" / "val_0.JPEG"  # a changed file is decoded again
    Image.new("RGB", (8, 8), (250, 0, 0)).save(image, quality=100)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    changed = load_dataset("tiny-imagenet", root=tmp_path, val_fraction=0.25)
    assert decoded == [3]  # only the val split (3 images)
    assert (changed.test.images[0].float().mean(dim=(1, 2)) - torch.tensor([250.0, 0, 0])
            ).abs().max() <= 3
    assert len(list(cache.glob("val-*.pt"))) == 1  # the stale cache was replaced

    for file in cache.glob("val-*.pt"):  # a corrupt cache: a warning and a decode
        file.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring the decoded-image cache .*corrupt"):
        load_dataset("tiny-imagenet", root=tmp_path, val_fraction=0.25)
    assert decoded == [3, 3]

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tiny_imagenet, "write_atomic", no_space)
    for file in cache.glob("train-*.pt"):
        file.unlink()
    with pytest.warns(UserWarning, match="cannot write the decoded-image cache .*No space"):
        unwritten = load_dataset("tiny-imagenet", root=tmp_path, val_fraction=0.25)
    assert torch.equal(unwritten.train.images, first.train.images)

    nocache = tmp_path / "other"
    _write_tiny_imagenet(nocache)
    load_dataset("tiny-imagenet", root=nocache, cache=False)
    assert not (nocache / tiny_imagenet.CACHE_DIR).exists()
    with pytest.raises(TypeError, match="cache='yes' must be True or False"):
        load_dataset("tiny-imagenet", root=nocache, cache="yes")


@pytest.mark.skipif(not HAS_PIL, reason="needs Pillow")
def test_tiny_imagenet_errors(tmp_path):
    from PIL import Image

    with pytest.raises(FileNotFoundError, match="tiny-imagenet: .*train does not exist"):
        load_dataset("tiny-imagenet", root=tmp_path)
    _write_tiny_imagenet(tmp_path)
    annotations = tmp_path / "val" / "val_annotations.txt"
    text = annotations.read_text()
    annotations.write_text(text + "val_9.JPEG\tn99\t0\t0\t8\t8\n")
    with pytest.raises(ValueError, match="val_annotations.txt line 4 .* known wnid"):
        load_dataset("tiny-imagenet", root=tmp_path)
    annotations.write_text(text + "val_9.JPEG\tn01\t0\t0\t8\t8\n")
    with pytest.raises(FileNotFoundError, match="val_9.JPEG .*line 4.* does not exist"):
        load_dataset("tiny-imagenet", root=tmp_path)
    annotations.write_text(text)
    Image.new("RGB", (9, 8)).save(tmp_path / "train" / "n03" / "images" / "z.JPEG")
    with pytest.raises(ValueError, match="image .*z.JPEG is 9x8, expected 8x8"):
        load_dataset("tiny-imagenet", root=tmp_path)
    (tmp_path / "train" / "n03" / "images" / "z.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode image .*z.JPEG"):
        load_dataset("tiny-imagenet", root=tmp_path)
    annotations.unlink()
    with pytest.raises(FileNotFoundError, match="val_annotations.txt does not exist"):
        load_dataset("tiny-imagenet", root=tmp_path)


# ----------------------------------------------------------------------------- synthetic, splits


def test_synthetic():
    a = load_dataset("synthetic", input_shape=(2, 4, 4), num_classes=3, train_size=30,
                     test_size=12, val_fraction=0.2)
    b = load_dataset("synthetic", input_shape=(2, 4, 4), num_classes=3, train_size=30,
                     test_size=12, val_fraction=0.2)
    c = load_dataset("synthetic", input_shape=(2, 4, 4), num_classes=3, train_size=30,
                     test_size=12, val_fraction=0.2, data_seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (24, 6, 12)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.test.images, c.test.images)
    assert torch.bincount(a.test.labels).tolist() == [4, 4, 4]
    assert torch.bincount(torch.cat([a.train.labels, a.val.labels])).tolist() == [10, 10, 10]
    x, y = a.test[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, a.test.images[0])  # standard normalization is the identity
    with pytest.raises(ValueError, match=r"input_shape=\(3, 4\) must be \(C, H, W\)"):
        load_dataset("synthetic", input_shape=(3, 4))
    with pytest.raises(TypeError, match="data_seed must be a non-negative int"):
        load_dataset("synthetic", data_seed=1.5)


def test_val_split():
    kw = dict(input_shape=(1, 2, 2), train_size=100, test_size=4)
    a = load_dataset("synthetic", seed=0, **kw)
    b = load_dataset("synthetic", seed=1, **kw)
    assert (len(a.train), len(a.val)) == (90, 10)
    assert not torch.equal(a.val.images, b.val.images)
    # train and val partition the 100 generated images
    both = torch.cat([a.train.images, a.val.images]).reshape(100, -1)
    assert torch.unique(both, dim=0).shape[0] == 100
    assert len(load_dataset("synthetic", val_fraction=0, **kw).val) == 0
    with pytest.warns(UserWarning, match="val fraction 0.001 of 100 examples rounds to 0"):
        load_dataset("synthetic", val_fraction=0.001, **kw)
    with pytest.raises(ValueError, match=r"val_fraction=1.0 must be in \[0, 1\)"):
        load_dataset("synthetic", val_fraction=1.0, **kw)
    with pytest.raises(ValueError, match=r"val_fraction=nan must be in \[0, 1\)"):
        load_dataset("synthetic", val_fraction=float("nan"), **kw)
    with pytest.raises(ValueError, match="seed=-1 must be >= 0"):
        load_dataset("synthetic", seed=-1, **kw)
    with pytest.raises(ValueError, match="val fraction 0.5 of 1 examples leaves no examples"):
        load_dataset("synthetic", val_fraction=0.5, input_shape=(1, 2, 2), train_size=1)
    assert len(load_dataset("synthetic", val_fraction=0.5, input_shape=(1, 2, 2),
                            train_size=3).val) == 2  # 1.5 rounds half up


def test_normalize_modes():
    kw = dict(input_shape=(3, 4, 4), train_size=200, test_size=10, noise=3.0)
    splits = load_dataset("synthetic", normalize="train", **kw)
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))]).double()
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), unbiased=False),
                               torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    digits = load_dataset("digits", normalize="none")
    assert digits.train[0][0].min() >= 0 and digits.train[0][0].max() <= 1
    assert digits.mean == (0.0,) and digits.std == (1.0,)
    with pytest.raises(ValueError, match="normalize='zscore' must be one of: standard, train"):
        load_dataset("digits", normalize="zscore")


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of: cifar10"):
        load_dataset("imagenet")
    with pytest.raises(TypeError, match="dataset 'digits' got unknown argument.*download.*"
                                        "it takes"):
        load_dataset("digits", download=True)


def test_in_memory_dataset_checks():
    with pytest.raises(ValueError, match=r"labels must be a \(2,\) tensor"):
        InMemoryDataset(torch.zeros(2, 1, 2, 2), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        InMemoryDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="mean has 3 values, images have 1 channels"):
        InMemoryDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64),
                        mean=[0, 0, 0])
    with pytest.raises(ValueError, match=r"std=\[0.0\] must be > 0"):
        InMemoryDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), std=[0])


# ----------------------------------------------------------------------------- loader


def _toy(n: int = 10) -> InMemoryDataset:
    images = torch.arange(n * 2 * 3 * 3, dtype=torch.uint8).reshape(n, 2, 3, 3)
    return InMemoryDataset(images, torch.arange(n) % 4, scale=1 / 255, mean=[0.5, 0.25],
                           std=[0.5, 0.25])


def test_loader_covers_every_example_once():
    ds = _toy(10)
    loader = make_loader(ds, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and batches[0][1].dtype == torch.int64
    # recover each example's index from its first normalized pixel: raw = index * 18
    raw = ((x[:, 0, 0, 0] * 0.5 + 0.5) * 255).round().long()
    assert sorted((raw // 18).tolist()) == list(range(10))
    assert (raw // 18 % 4).tolist() == torch.cat([b[1] for b in batches]).tolist()
    assert len(make_loader(ds, 4, shuffle=False, drop_last=True)) == 2
    ordered = torch.cat([b[1] for b in make_loader(ds, 3, shuffle=False)])
    assert ordered.tolist() == ds.labels.tolist()


def test_loader_is_reproducible():
    ds = _toy(16)

    def run(seed: int) -> list[torch.Tensor]:
        loader = make_loader(ds, 5, shuffle=True, augment="crop-flip",
                             generator=torch.Generator().manual_seed(seed))
        return [x for _ in range(2) for x, _ in loader]

    first, again, other = run(1), run(1), run(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert not torch.equal(first[0], first[4])  # the second pass reshuffles


def test_random_crop_flip_matches_hand_oracle():
    batch = torch.randint(1, 256, (6, 3, 5, 7), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    out = random_crop_flip(batch, torch.Generator().manual_seed(7), padding=2)
    g = torch.Generator().manual_seed(7)  # documented draw order: tops, lefts, flips
    tops = torch.randint(0, 5, (6,), generator=g).tolist()
    lefts = torch.randint(0, 5, (6,), generator=g).tolist()
    flips = (torch.rand(6, generator=g) < 0.5).tolist()
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    for b in range(6):
        for c in range(3):
            for i in range(5):
                for j in range(7):
                    jj = 6 - j if flips[b] else j
                    si, sj = i + tops[b] - 2, jj + lefts[b] - 2  # position in the original
                    inside = 0 <= si < 5 and 0 <= sj < 7
                    expected = int(batch[b, c, si, sj]) if inside else 0
                    assert int(out[b, c, i, j]) == expected


def test_random_flip():
    batch = torch.randn(64, 1, 2, 3)
    out = random_flip(batch, torch.Generator().manual_seed(0))
    same = (out == batch).flatten(1).all(1)
    flipped = (out == batch.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 10 < int(flipped.sum()) < 54


def test_loader_generic_dataset_and_custom_augment():
    xs, ys = torch.randn(7, 1, 2, 2), torch.arange(7)
    ds = torch.utils.data.TensorDataset(xs, ys)
    out = list(make_loader(ds, 3, shuffle=False, augment=lambda x, g: x * 2))
    torch.testing.assert_close(torch.cat([b[0] for b in out]), xs * 2)
    assert torch.cat([b[1] for b in out]).tolist() == list(range(7))
    batches = list(make_loader(_toy(4), 4, shuffle=False, device="cpu"))
    assert batches[0][0].device.type == "cpu"


def test_loader_errors():
    ds = _toy(4)
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        make_loader(ds, 0, shuffle=True)
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'; choose one of: "
                                         "crop-flip, flip, none"):
        make_loader(ds, 2, shuffle=True, augment="rotate")
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
        make_loader(ds, 2, shuffle=True, generator=0)
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        make_loader(ds, 2, shuffle=1)


# ----------------------------------------------------------------------------- issue 16


def _gzip_stream(header: bytes, zeros: int) -> bytes:
    """``header`` then ``zeros`` zero bytes, gzip-compressed chunk by chunk (a small bomb)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    parts = [comp.compress(header)]
    chunk = bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(comp.compress(chunk))
    parts.append(comp.flush())
    return b"".join(parts)


def test_a_gzip_bomb_is_refused_after_the_size_its_header_gives(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 10, 28, 28)  # 7,840 data bytes
    bomb = tmp_path / "t10k-images-idx3-ubyte.gz"
    bomb.write_bytes(_gzip_stream(header, 64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"shape \(10, 28, 28\) of uint8 \(7840 data "
                                             r"bytes\), found more data after them"):
            read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # never the 64 MiB: the stream stops one byte past the header's size


def test_a_header_claiming_more_than_the_gzip_file_can_hold_is_refused_at_once(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 60_000_000, 28, 28)  # 47 GB
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(header + bytes(1000)))
    with pytest.raises(ValueError, match=r"more than a \d+-byte gzip file can hold"):
        read_idx(path)


def test_the_test_only_split_hint_is_written_in_cli_syntax(tmp_path):
    _write_mnist(tmp_path)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError,
                       match="on the command line --data-options test_only_split=true"):
        load_dataset("mnist", root=tmp_path)
