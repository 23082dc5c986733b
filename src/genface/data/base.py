"""What every genface DataModule shares: global-batch dataloaders, splits read from the prepared-array cache
or decoded, and the checks of the common settings.

The pieces it is built from live beside it: :mod:`genface.data.images` (finding and decoding image files),
:mod:`genface.data.datasets` (the item format), :mod:`genface.data.splits` and :mod:`genface.data.ids`
(dataset ids, which key the caches).
"""

from __future__ import annotations

import inspect
import logging
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from genface.data import cache
from genface.data.datasets import CachedImageDataset, ImageDataset
from genface.data.ids import earlier_versions
from genface.data.images import DEFAULT_BACKGROUND, check_background
from genface.data.splits import REAL_SPLITS, SPLITS, Split

log = logging.getLogger(__name__)

LabelKind = Literal["none", "class", "attributes"]
_STAGE_SPLITS: dict[str | None, tuple[Split, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": (),
    None: SPLITS,
}


def positive_int(value: Any, key: str, minimum: int = 1) -> int:
    """`value` as a whole number >= `minimum`, or an error naming the config `key` (not int()'s bare message)."""
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {number}")
    return number


def real_images(datamodule: Any, split: str) -> Dataset:
    """The un-augmented items of ``split`` of a genface DataModule; ``all`` chains train, val and test
    (or is the DataModule's own ``all_images()`` where splits may share files)."""
    if split not in REAL_SPLITS:
        raise ValueError(f"real_split={split!r} is not allowed; allowed: {', '.join(REAL_SPLITS)}")
    if split != "all":
        return datamodule.split_dataset(split)
    if callable(getattr(datamodule, "all_images", None)):
        return datamodule.all_images()
    parts = [datamodule.split_dataset(s) for s in SPLITS]
    return ConcatDataset([p for p in parts if len(p)])


class GlobalBatchLoaders:
    """Dataloaders of a genface DataModule: `batch_size` is the GLOBAL batch, each rank loads
    `batch_size // world_size`; shuffled, last-dropped train batches; pinned memory on CUDA. Needs
    `batch_size`, `num_workers`, `dataset_id`, `trainer` and `split_dataset(split, augment=False)`."""

    @property
    def per_rank_batch_size(self) -> int:
        """``batch_size // world_size``; a global batch the world size does not divide is an error."""
        world_size = int(self.trainer.world_size) if self.trainer is not None else 1
        if self.batch_size % world_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is the global batch and must be divisible by the world size "
                f"{world_size} (devices x nodes); use a multiple of {world_size}"
            )
        return self.batch_size // world_size

    def _pin_memory(self) -> bool:
        if self.trainer is not None:
            return isinstance(getattr(self.trainer, "accelerator", None), CUDAAccelerator)
        return torch.cuda.is_available()

    def _loader(self, dataset: ImageDataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.per_rank_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # batches ready ahead per worker (PyTorch's default is 2): absorbs step-time jitter on a GPU at
            # the cost of num_workers x 4 float32 batches of host memory
            prefetch_factor=4 if self.num_workers > 0 else None,
            pin_memory=self._pin_memory(),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.split_dataset("train", augment=True)
        if len(dataset) < self.per_rank_batch_size:
            raise ValueError(
                f"{self.dataset_id}: the train split has {len(dataset)} samples, fewer than the per-rank batch "
                f"of {self.per_rank_batch_size} (data.batch_size={self.batch_size}); drop_last would leave no batch"
            )
        return self._loader(dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("val"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("test"), train=False)


class ImageDataModule(GlobalBatchLoaders, pl.LightningDataModule, metaclass=ABCMeta):
    """Base of every genface DataModule.

    Subclasses set ``label_kind``, ``class_names``, ``target_names`` and ``dataset_id`` in ``__init__``
    without reading the dataset (an attribute-file header at most), because configs and models read them
    before any data is loaded, and implement :meth:`_source_split`. Folder datasets whose id hashes the
    folder's content (:func:`content_key`) make ``dataset_id`` a ``functools.cached_property`` instead, so
    that building the DataModule stays free and the walk happens once, on first use.

    Args:
        resolution: side of the square images, in pixels.
        channels: 1 (RGB converted to L) or 3 (grey repeated).
        batch_size: the GLOBAL batch; each rank loads ``batch_size // world_size``.
        num_workers: DataLoader workers (also used to decode in parallel in :meth:`prepare_cache`).
        cache_dir: where prepared arrays live; ``None`` -> ``<root>/.genface_cache`` for datasets with a
            root folder, no cache for the others.
        use_cache: read a complete prepared cache automatically when there is one.
        hflip: random horizontal flips of training images.
        seed: seed of random splits (and whatever else a dataset randomises).
        background: R, G, B levels that transparent pixels are composited on (``DEFAULT_BACKGROUND``: white).
    """

    resolution: int
    channels: int
    label_kind: LabelKind
    #: class names / selected attribute names / [] -- what the targets of items mean.
    class_names: list[str]
    #: names of all target columns stored in the cache (attributes before selection).
    target_names: list[str]
    dataset_id: str

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        use_cache: bool = True,
        hflip: bool = False,
        seed: int = 0,
        background: Sequence[int] = DEFAULT_BACKGROUND,
    ) -> None:
        super().__init__()
        # Checkpoints keep the arguments that rebuild this DataModule: drop those an intermediate class
        # fixes for its subclass (SynthFaces passes crop=None to CelebA but accepts no crop).
        accepted = {
            *inspect.signature(type(self).__init__).parameters,
            *inspect.signature(ImageDataModule.__init__).parameters,
        }
        chain = {
            name
            for klass in type(self).__mro__
            if issubclass(klass, ImageDataModule)
            for name in inspect.signature(klass.__init__).parameters
        }
        self.save_hyperparameters(ignore=sorted(chain - accepted), logger=False)
        if channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {channels}")
        self.resolution, self.channels = positive_int(resolution, "data.resolution"), int(channels)
        self.batch_size = positive_int(batch_size, "data.batch_size")
        self.num_workers = positive_int(num_workers, "data.num_workers", minimum=0)
        self.cache_dir = cache_dir
        self.use_cache, self.hflip, self.seed = bool(use_cache), bool(hflip), int(seed)
        self.background = check_background(background)
        self._datasets: dict[Split, ImageDataset] = {}
        self._prepared = False
        self._content_change_noted = False

    @property
    def num_classes(self) -> int:
        """Number of classes (class labels), of selected attributes (attributes), or 0 (none)."""
        return len(self.class_names)

    # -------------------------------------------------------------------------------- subclass hooks

    @abstractmethod
    def _source_split(self, split: Split) -> ImageDataset:
        """The split decoded from the original data, with targets for all ``target_names``."""

    def _select_targets(self, targets: np.ndarray) -> np.ndarray:
        """Restrict all-column targets to the ones items return (attribute subsets override this)."""
        return targets

    def _default_cache_root(self) -> Path | None:
        """Where caches go when ``cache_dir`` is None; None for datasets without a root folder."""
        return None

    # ---------------------------------------------------------------------------------------- splits

    @property
    def cache_path(self) -> Path | None:
        """This dataset's prepared-array directory, or None when there is nowhere to put one."""
        base = Path(self.cache_dir).expanduser() if self.cache_dir else self._default_cache_root()
        return None if base is None else base / self.dataset_id

    def _cache_is_complete(self) -> bool:
        path = self.cache_path
        return path is not None and cache.is_complete(path, self.resolution, self.channels, self.target_names)

    def _note_content_change(self) -> None:
        """Log (once) that arrays prepared from an earlier content of this dataset's folder exist: they are
        not used, because the files changed since (the dataset id hashes the folder's content)."""
        path = self.cache_path
        if self._content_change_noted or path is None:
            return
        self._content_change_noted = True
        for old in earlier_versions(path):
            log.warning(
                "%s: the dataset's files changed since the prepared arrays %s were written; those are not used "
                "(delete them to free the disk) and %s is the cache of the current files (`genface prepare` "
                "writes it)",
                self.dataset_id,
                old,
                path,
            )

    def _ensure_prepared(self) -> None:
        """Run ``prepare_data`` once when used without a Trainer (e.g. ``genface sample``).

        Under a Trainer, Lightning already ran it on rank 0 before ``setup``; without one only rank 0 does
        the work, so DDP ranks never race to write the same files.
        """
        if self._prepared or self.trainer is not None:
            return
        if rank_zero_only.rank == 0:
            self.prepare_data()
        self._prepared = True

    def split_dataset(self, split: Split, augment: bool = False) -> ImageDataset:
        """One split, from the prepared cache when ``use_cache`` and it is complete, else decoded.

        ``augment`` adds the train-time augmentation (``hflip``); datasets for statistics such as FID
        reference features should leave it off.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._datasets:
            path = self.cache_path
            if self.use_cache and path is not None and self._cache_is_complete():
                images_path, _ = cache.split_files(path, split)
                log.info("%s %s: reading prepared arrays %s", self.dataset_id, split, images_path)
                dataset: ImageDataset = CachedImageDataset(images_path, cache.load_targets(path, split))
            else:
                if self.use_cache:
                    self._note_content_change()
                self._ensure_prepared()
                dataset = self._source_split(split)
            dataset.targets = self._select_targets(dataset.targets)
            self._datasets[split] = dataset
        dataset = self._datasets[split]
        return dataset.with_hflip() if augment and self.hflip else dataset

    def setup(self, stage: str | None = None) -> None:
        for split in _STAGE_SPLITS[stage]:
            self.split_dataset(split)

    # ----------------------------------------------------------------------------------------- cache

    def prepare_cache(self, progress: bool = True, overwrite: bool = False) -> list[Path]:
        """Decode + resize every split once into the uint8 cache (``genface prepare``).

        Returns the cache's files. A complete cache is kept unless ``overwrite``.
        """
        path = self.cache_path
        if path is None:
            raise ValueError(
                f"{self.dataset_id} has no root folder to keep prepared arrays in: set data.cache_dir to prepare it"
            )
        if not overwrite and self._cache_is_complete():
            log.info("%s: prepared arrays already complete in %s", self.dataset_id, path)
            return cache.cached_files(path)
        self._note_content_change()
        self._ensure_prepared()
        sources = {split: self._source_split(split) for split in SPLITS}
        files = cache.write(
            path,
            self.dataset_id,
            sources,
            self.resolution,
            self.channels,
            self.target_names,
            num_workers=self.num_workers,
            progress=progress,
        )
        self._datasets.clear()
        return files
