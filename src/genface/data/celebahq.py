"""CelebA-HQ: a folder of images (0.jpg ... 29999.jpg), optionally with CelebAMask-HQ's attribute file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genface.data.base import (
    FileImageDataset,
    ImageDataModule,
    Split,
    check_fractions,
    fraction_tag,
    list_images,
    make_dataset_id,
    path_key,
    split_indices,
)
from genface.data.celeba import (
    CELEBA_ATTRIBUTES,
    read_attribute_file,
    read_attribute_names,
    reorder_columns,
    select_attributes,
)


class CelebAHQDataModule(ImageDataModule):
    """CelebA-HQ images split deterministically by ``seed``; attributes when ``attr_file`` is given.

    Args:
        root: folder of png/jpg images (any names; sorted naturally so 2.jpg comes before 10.jpg);
            non-square images are centre-cropped to a square before resizing.
        attr_file: ``CelebAMask-HQ-attribute-anno.txt`` (line 1 count, line 2 names, then
            ``0.jpg  1 -1 ...``); a relative path is taken relative to ``root``. None: no labels.
        split_fractions: train, val, test fractions of the sorted images.
        attributes: attribute targets (needs ``attr_file``); None for all of the file's.
        **kwargs: the common arguments of :class:`~genface.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        root: str,
        resolution: int = 128,
        attr_file: str | None = None,
        split_fractions: Sequence[float] = (0.9, 0.05, 0.05),
        attributes: list[str] | None = None,
        channels: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, **kwargs)
        self.root = Path(root).expanduser()
        self.attr_path = None if attr_file is None else self.root / Path(attr_file).expanduser()
        self.split_fractions = check_fractions(split_fractions)
        if self.attr_path is None:
            if attributes is not None:
                raise ValueError("data.attributes needs data.attr_file (the CelebAMask-HQ attribute file)")
            self.label_kind = "none"
            self.target_names = []
        else:
            self.label_kind = "attributes"
            # CelebAMask-HQ uses CelebA's 40 names; a missing file is reported when data is read.
            is_file = self.attr_path.is_file()
            self.target_names = read_attribute_names(self.attr_path) if is_file else list(CELEBA_ATTRIBUTES)
        self.class_names = select_attributes(self.target_names, attributes) if self.attr_path else []
        self._columns = np.array([self.target_names.index(name) for name in self.class_names], dtype=np.int64)
        self.dataset_id = make_dataset_id(
            "celebahq",
            self.resolution,
            self.channels,
            fraction_tag(self.split_fractions, self.seed),
            key=path_key(self.root, self.attr_path),
        )
        self._splits: dict[Split, tuple[list[Path], np.ndarray]] | None = None

    def _default_cache_root(self) -> Path:
        return self.root / ".genface_cache"

    def _select_targets(self, targets: np.ndarray) -> np.ndarray:
        return targets[:, self._columns]

    def _layout(self) -> str:
        attr = f" and the attribute file {self.attr_path}" if self.attr_path else ""
        return f"expected {self.root}/<images>.jpg|png (e.g. 0.jpg ... 29999.jpg){attr}"

    def _read_splits(self) -> dict[Split, tuple[list[Path], np.ndarray]]:
        if self._splits is None:
            if not self.root.is_dir():
                raise FileNotFoundError(f"CelebA-HQ root {self.root} does not exist; {self._layout()}")
            images = list_images(self.root, recursive=False)
            if not images:
                raise FileNotFoundError(f"no images in {self.root}; {self._layout()}")
            targets = self._read_targets(images)
            indices = split_indices(len(images), self.split_fractions, self.seed)
            self._splits = {split: ([images[i] for i in idx], targets[idx]) for split, idx in indices.items()}
        return self._splits

    def _read_targets(self, images: list[Path]) -> np.ndarray:
        """All-attribute targets in image order; every image needs a line in the attribute file."""
        if self.attr_path is None:
            return np.zeros((len(images), 0), dtype=np.uint8)
        if not self.attr_path.is_file():
            raise FileNotFoundError(f"attribute file {self.attr_path} does not exist; {self._layout()}")
        names, files, values = read_attribute_file(self.attr_path)
        values = reorder_columns(self.attr_path, names, values, self.target_names)
        row_of = {name: row for row, name in enumerate(files)}
        unlabelled = [p.name for p in images if p.name not in row_of]
        if unlabelled:
            raise ValueError(
                f"{len(unlabelled)} images in {self.root} have no line in {self.attr_path} (first: {unlabelled[:3]})"
            )
        return values[np.array([row_of[p.name] for p in images], dtype=np.int64)]

    def _source_split(self, split: Split) -> FileImageDataset:
        paths, targets = self._read_splits()[split]
        return FileImageDataset(paths, targets, self.resolution, self.channels, crop="center")
