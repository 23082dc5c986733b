"""Writers of tiny on-disk datasets (CelebA layout, CelebA-HQ folders, MNIST idx files) for data tests."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from genface.data.celeba import CELEBA_ATTRIBUTES


def random_image(rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A smooth random image (noise upsampled), so resizing has something to average."""
    w, h = size
    small = rng.integers(0, 256, size=(max(h // 4, 1), max(w // 4, 1), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).convert(mode)


def write_celeba_folder(
    root: Path,
    k: int = 12,
    size: tuple[int, int] = (24, 30),
    ext: str = "png",
    attributes: Sequence[str] = CELEBA_ATTRIBUTES,
    partition: Sequence[int] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """k random ``size`` (w, h) images plus attribute and partition files; returns the 0/1 values (k, A)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "img_align_celeba"
    image_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.{ext}" for i in range(k)]
    for name in names:
        random_image(rng, size).save(image_dir / name)
    values = rng.integers(0, 2, size=(k, len(attributes)), dtype=np.uint8)
    lines = [str(k), " ".join(attributes)]
    lines += [name + " " + " ".join("1" if v else "-1" for v in row) for name, row in zip(names, values)]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    if partition is None:  # 2/3 train, 1/6 val, 1/6 test, contiguous like CelebA
        n_train, n_val = (2 * k) // 3, k // 6
        partition = [0] * n_train + [1] * n_val + [2] * (k - n_train - n_val)
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, s in zip(names, partition)))
    return values


def write_image_folder(
    root: Path, names: Sequence[str], size: tuple[int, int] = (20, 20), seed: int = 0
) -> None:
    """Random images at the relative paths ``names`` (format from the extension)."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        random_image(rng, size).save(path)


def write_mnist_idx(raw: Path, n_train: int = 12, n_test: int = 6, gz: bool = True, seed: int = 0) -> dict:
    """torchvision-layout idx files with random 28x28 digits; returns the arrays written."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        blobs = {
            f"{prefix}-images-idx3-ubyte": bytes.fromhex("00000803") + _dims(n, 28, 28) + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": bytes.fromhex("00000801") + _dims(n) + labels.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)
        out[prefix] = (images, labels)
    return out


def _dims(*dims: int) -> bytes:
    return b"".join(d.to_bytes(4, "big") for d in dims)
