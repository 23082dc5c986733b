"""Any folder of images, optionally with one class per first-level subfolder."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genface.data.base import ImageDataModule
from genface.data.datasets import FileImageDataset
from genface.data.ids import background_tag, content_key, make_dataset_id, path_key
from genface.data.images import IMAGE_EXTENSIONS, list_images, natural_key
from genface.data.labels import name_indices
from genface.data.splits import Split, check_fractions, fraction_tag, split_indices

_CROPS = {"center": "center", "none": None}


class ImageFolderDataModule(ImageDataModule):
    """Every image under ``root`` (recursively), split deterministically by ``seed``.

    Args:
        root: the folder; hidden files and folders (such as the default ``.genface_cache``) are skipped.
        labels: ``"none"``, or ``"subfolders"``: the first-level folders are the classes (split stratified).
        split_fractions: train, val, test fractions.
        crop: ``"center"``: cut the largest centred square before resizing; ``"none"``: squash to a square.
        **kwargs: the common arguments of :class:`~genface.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        root: str,
        resolution: int,
        labels: Literal["none", "subfolders"] = "none",
        split_fractions: Sequence[float] = (0.9, 0.05, 0.05),
        crop: str = "center",
        channels: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, **kwargs)
        if labels not in ("none", "subfolders"):
            raise ValueError(f"data.labels must be 'none' or 'subfolders', got {labels!r}")
        if crop not in _CROPS:
            raise ValueError(f"data.crop must be one of {list(_CROPS)}, got {crop!r}")
        self.root = Path(root).expanduser()
        self.labels, self.crop = labels, crop
        self.split_fractions = check_fractions(split_fractions)
        if labels == "subfolders":
            # The class list is needed now (num_classes), so the root must exist already.
            self._check_root()
            self.label_kind = "class"
            self.class_names = sorted(
                (p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=natural_key,
            )
            if not self.class_names:
                raise FileNotFoundError(
                    f"labels=subfolders but {self.root} has no subfolders; {self._layout()}"
                )
        else:
            self.label_kind = "none"
            self.class_names = []
        self.target_names = list(self.class_names)
        self._splits: dict[Split, tuple[list[Path], np.ndarray]] | None = None

    @cached_property
    def dataset_id(self) -> str:
        """Options, path and content of the folder: adding, removing or replacing an image changes it."""
        return make_dataset_id(
            f"folder_{self.root.name}",
            self.resolution,
            self.channels,
            f"crop{self.crop}",
            fraction_tag(self.split_fractions, self.seed),
            *background_tag(self.background),
            key=path_key(self.root),
            content=content_key(self.root, True),
        )

    def _layout(self) -> str:
        exts = "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        if self.labels == "subfolders":
            return f"expected {self.root}/<class name>/**/*.{{{exts}}}"
        return f"expected {self.root}/**/*.{{{exts}}}"

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist; {self._layout()}")

    def _default_cache_root(self) -> Path:
        return self.root / ".genface_cache"

    def _read_splits(self) -> dict[Split, tuple[list[Path], np.ndarray]]:
        if self._splits is None:
            self._check_root()
            images = list_images(self.root, recursive=True)
            if not images:
                raise FileNotFoundError(f"no images in {self.root}; {self._layout()}")
            if self.labels == "subfolders":
                loose = [p for p in images if p.parent == self.root]
                if loose:
                    raise ValueError(
                        f"labels=subfolders but {len(loose)} images lie directly in {self.root} (first: "
                        f"{loose[0].name}); move them into a class folder"
                    )
                classes = [p.relative_to(self.root).parts[0] for p in images]
                targets = np.array(name_indices(self.class_names, classes), dtype=np.int64)
                strata: np.ndarray | None = targets
            else:
                targets = np.zeros((len(images), 0), dtype=np.uint8)
                strata = None
            indices = split_indices(len(images), self.split_fractions, self.seed, strata)
            self._splits = {split: ([images[i] for i in idx], targets[idx]) for split, idx in indices.items()}
        return self._splits

    def _source_split(self, split: Split) -> FileImageDataset:
        paths, targets = self._read_splits()[split]
        return FileImageDataset(
            paths, targets, self.resolution, self.channels, _CROPS[self.crop], self.background
        )
