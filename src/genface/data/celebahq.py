"""CelebA-HQ: a folder of images (0.jpg ... 29999.jpg), optionally with CelebAMask-HQ's attribute file."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from genface.data.base import ImageDataModule
from genface.data.celeba import (
    CELEBA_ATTRIBUTES,
    read_attribute_file,
    read_attribute_names,
    reorder_columns,
    select_attributes,
)
from genface.data.datasets import FileImageDataset
from genface.data.ids import background_tag, content_key, make_dataset_id, path_key
from genface.data.images import list_images, natural_key
from genface.data.labels import name_indices
from genface.data.splits import Split, check_fractions, fraction_tag, split_indices

log = logging.getLogger(__name__)


class CelebAHQDataModule(ImageDataModule):
    """CelebA-HQ images split deterministically by ``seed``; attributes when ``attr_file`` is given.

    Args:
        root: folder of png/jpg images (any names; sorted naturally so 2.jpg comes before 10.jpg);
            non-square images are centre-cropped to a square before resizing.
        attr_file: ``CelebAMask-HQ-attribute-anno.txt`` (line 1 count, line 2 names, then
            ``0.jpg  1 -1 ...``); a relative path is taken relative to ``root``. None: no labels.
        split_fractions: train, val, test fractions of the sorted images.
        subset: use only the first ``subset`` images (natural order), ALL of them for training, as the
            DD-GAN latent-analysis study trained on a 5,000-image subset. Validation and test then take
            ``round(subset * fraction)`` images each from the images after the subset; a folder that holds
            only the subset lends them from the training images (logged: the validation loop then only
            watches losses, and real statistics over ``all`` count each file once).
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
        subset: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, **kwargs)
        if subset is not None and int(subset) < 1:
            raise ValueError(f"data.subset must be a positive number of images or null, got {subset}")
        self.subset = None if subset is None else int(subset)
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
        self._columns = np.array(name_indices(self.target_names, self.class_names), dtype=np.int64)
        self._splits: dict[Split, tuple[list[Path], np.ndarray]] | None = None

    @cached_property
    def dataset_id(self) -> str:
        """Options, paths and content (images, attribute file): any change to them changes it."""
        return make_dataset_id(
            "celebahq",
            self.resolution,
            self.channels,
            fraction_tag(self.split_fractions, self.seed),
            *([f"subset{self.subset}"] if self.subset else []),
            *background_tag(self.background),
            key=path_key(self.root, self.attr_path),
            content=content_key(self.root, False, self.attr_path),
        )

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
            if self.subset is None:
                indices = split_indices(len(images), self.split_fractions, self.seed)
            else:
                indices = self._subset_indices(len(images))
            self._splits = {split: ([images[i] for i in idx], targets[idx]) for split, idx in indices.items()}
        return self._splits

    def _subset_indices(self, available: int) -> dict[Split, np.ndarray]:
        """Train on the first ``subset`` images; val/test after them, or lent from them when there are none."""
        n = self.subset
        assert n is not None
        if n > available:
            raise ValueError(f"data.subset={n} but {self.root} holds {available} images; lower data.subset")
        n_val, n_test = (int(np.floor(f * n + 0.5)) for f in self.split_fractions[1:])
        if available - n >= n_val + n_test:
            rest = np.arange(n, n + n_val + n_test)
        else:
            log.info(
                "data.subset=%d: %s holds no %d further images for val/test; they are lent from the training "
                "images",
                n,
                self.root,
                n_val + n_test,
            )
            rest = np.sort(np.random.default_rng(self.seed).permutation(n)[: n_val + n_test])
        return {"train": np.arange(n), "val": rest[:n_val], "test": rest[n_val:]}

    def all_images(self) -> FileImageDataset:
        """Every image any split uses, each file once (``real_split=all``; lent val/test images overlap)."""
        splits = self._read_splits()
        rows = {path: target for paths, targets in splits.values() for path, target in zip(paths, targets)}
        paths = sorted(rows, key=lambda p: natural_key(p.name))
        targets = (
            np.stack([rows[p] for p in paths]) if paths else np.zeros((0, len(self.target_names)), np.uint8)
        )
        return FileImageDataset(
            paths,
            self._select_targets(targets),
            self.resolution,
            self.channels,
            crop="center",
            background=self.background,
        )

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
        return FileImageDataset(
            paths, targets, self.resolution, self.channels, crop="center", background=self.background
        )
