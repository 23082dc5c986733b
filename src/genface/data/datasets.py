"""The Datasets behind every genface DataModule: items ``(image, target)`` read as uint8 pixels first.

Each dataset reads *uint8 (H, W, C) pixels* (:meth:`ImageDataset.read`) and converts them to float only in
``__getitem__``. That split is what lets ``genface prepare`` store exactly the pixels decoding yields, so a
cached split and a decoded split give bit-identical tensors.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from genface.data.images import DEFAULT_BACKGROUND, Crop, decode_image, to_pixels


class ImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]], ABC):
    """Items ``(image, target)``: image float32 (C, H, W) in [-1, 1]; target as its label kind needs.

    ``targets`` is int64 (N,) for class labels (-> ``torch.long`` scalar), uint8 (N, A) of 0/1 for
    attributes and (N, 0) for unlabelled data (-> float32 (A,)). Subclasses only implement :meth:`read`.
    """

    def __init__(self, targets: np.ndarray, hflip: bool = False) -> None:
        self.targets = targets
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.targets)

    @abstractmethod
    def read(self, index: int) -> np.ndarray:
        """uint8 (H, W, C) pixels of item ``index``, before augmentation."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.read(index)
        if self.hflip and torch.rand(()) < 0.5:
            pixels = pixels[:, ::-1]
        image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        target = self.targets[index]
        if self.targets.ndim == 1:
            return image, torch.tensor(int(target), dtype=torch.long)
        return image, torch.from_numpy(np.asarray(target, dtype=np.float32).copy())

    def with_hflip(self) -> ImageDataset:
        """A shallow copy that flips half of the images horizontally (train-time augmentation)."""
        flipped = copy.copy(self)
        flipped.hflip = True
        return flipped


class FileImageDataset(ImageDataset):
    """Image files decoded on access; a corrupt file raises :class:`CorruptImageError` naming it."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        targets: np.ndarray,
        resolution: int,
        channels: int,
        crop: Crop = None,
        background: Sequence[int] = DEFAULT_BACKGROUND,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} image paths but {len(targets)} targets")
        super().__init__(targets)
        self.paths = [str(p) for p in paths]
        self.resolution, self.channels, self.crop = resolution, channels, crop
        self.background = tuple(background)

    def read(self, index: int) -> np.ndarray:
        return decode_image(self.paths[index], self.resolution, self.channels, self.crop, self.background)


class ArrayImageDataset(ImageDataset):
    """In-memory uint8 images (N, h, w) or (N, h, w, c), resized per item (MNIST, digits)."""

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        resolution: int,
        channels: int,
        resample: Image.Resampling = Image.Resampling.BILINEAR,
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        super().__init__(targets)
        self.images = images
        self.resolution, self.channels, self.resample = resolution, channels, resample

    def read(self, index: int) -> np.ndarray:
        array = self.images[index]
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        return to_pixels(Image.fromarray(array), self.resolution, self.channels, self.resample)


class CachedImageDataset(ImageDataset):
    """A split of the prepared-array cache, memory-mapped lazily in each process that reads it.

    Opening lazily (and dropping the map when pickled) keeps spawned DataLoader workers from copying the
    whole array through a pickle.
    """

    def __init__(self, images_path: Path, targets: np.ndarray) -> None:
        super().__init__(targets)
        self.images_path = images_path
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return self._images

    def read(self, index: int) -> np.ndarray:
        return self.images[index]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None
        return state
