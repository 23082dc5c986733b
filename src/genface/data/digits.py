"""scikit-learn's handwritten digits: 1,797 real 8x8 images that ship with scikit-learn, so they need nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genface.data.base import ImageDataModule
from genface.data.datasets import ArrayImageDataset
from genface.data.ids import make_dataset_id
from genface.data.splits import Split, check_fractions, fraction_tag, split_indices


class DigitsDataModule(ImageDataModule):
    """``sklearn.datasets.load_digits`` resized bilinearly to ``resolution``; 10 classes, stratified split.

    Args:
        split_fractions: train, val, test fractions, applied per class with ``seed``.
        **kwargs: the common arguments of :class:`~genface.data.base.ImageDataModule`; caching needs
            ``cache_dir`` (there is no root folder, and the images are tiny).
    """

    def __init__(
        self,
        resolution: int = 32,
        channels: int = 1,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        **kwargs: Any,
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, **kwargs)
        self.split_fractions = check_fractions(split_fractions)
        self.label_kind = "class"
        self.class_names = [str(digit) for digit in range(10)]
        self.target_names = list(self.class_names)
        self.dataset_id = make_dataset_id(
            "digits", self.resolution, self.channels, fraction_tag(self.split_fractions, self.seed)
        )
        self._splits: dict[Split, tuple[np.ndarray, np.ndarray]] | None = None

    def _read_splits(self) -> dict[Split, tuple[np.ndarray, np.ndarray]]:
        if self._splits is None:
            from sklearn.datasets import load_digits  # imported lazily: scikit-learn is slow to import

            digits = load_digits()
            images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
            labels = digits.target.astype(np.int64)
            indices = split_indices(len(images), self.split_fractions, self.seed, strata=labels)
            self._splits = {split: (images[idx], labels[idx]) for split, idx in indices.items()}
        return self._splits

    def _source_split(self, split: Split) -> ArrayImageDataset:
        images, labels = self._read_splits()[split]
        return ArrayImageDataset(images, labels, self.resolution, self.channels)
