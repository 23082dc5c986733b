"""What every genface DataModule shares: the item format, splits, dataloaders and the prepared-array cache.

Each dataset reads *uint8 (H, W, C) pixels* first (:meth:`ImageDataset.read`) and converts them to float
only in ``__getitem__``. That split is what lets ``genface prepare`` store exactly the pixels decoding
yields, so a cached split and a decoded split give bit-identical tensors.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import os
import re
from abc import ABC, ABCMeta, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from genface.data import cache

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
#: Where metrics may take real images from: one split, or ``all`` of them (pytorch-fid's protocol, which
#: scores against a whole folder, e.g. the DD-GAN reference FID on its CelebA-HQ subset).
REAL_SPLITS: tuple[str, ...] = (*SPLITS, "all")
LabelKind = Literal["none", "class", "attributes"]
#: ``int``: centred square of that many pixels; ``"center"``: the largest centred square; ``None``: no crop.
Crop = int | Literal["center"] | None
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: ``data.background``: the colour transparent pixels are composited on. White, as viewers show them and as
#: cut-out face sets are usually delivered; CelebA-style JPEGs have no alpha, so their pixels do not change.
DEFAULT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
_STAGE_SPLITS: dict[str | None, tuple[Split, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": (),
    None: SPLITS,
}


class CorruptImageError(OSError):
    """An image file that cannot be decoded; the message names the file."""


# --------------------------------------------------------------------------------------------- pixels


def _open_image(path: str | Path) -> Image.Image:
    """Open and fully decode ``path``; PIL decodes lazily, so errors only show up at ``load()``."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CorruptImageError(f"cannot decode image file {path}: {err}") from err
    try:
        img.load()
    except Exception as err:
        img.close()
        raise CorruptImageError(f"cannot decode image file {path}: {err}") from err
    return img


def _crop(img: Image.Image, crop: Crop, path: str | Path) -> Image.Image:
    if crop is None:
        return img
    w, h = img.size
    side = min(w, h) if crop == "center" else int(crop)
    if side > min(w, h):
        raise ValueError(f"crop of {side} px is larger than image {path} ({w}x{h}); lower data.crop")
    # Same rounding as torchvision's CenterCrop.
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    return img.crop((left, top, left + side, top + side))


def check_background(background: Sequence[int]) -> tuple[int, int, int]:
    """Validate ``data.background``: three 0-255 levels (R, G, B)."""
    levels = tuple(int(v) for v in background)
    if len(levels) != 3 or not all(0 <= v <= 255 for v in levels):
        raise ValueError(f"data.background must be three levels 0-255 (R, G, B), got {list(background)}")
    return levels  # type: ignore[return-value]


def flatten_image(img: Image.Image, background: Sequence[int] = DEFAULT_BACKGROUND) -> Image.Image:
    """8-bit pixels without alpha: 16-bit grey scaled (65535 -> 255), transparency composited on ``background``.

    PIL's ``convert("L"/"RGB")`` clips 16-bit levels (a 16-bit grey PNG turns almost white) and drops alpha
    (showing whatever colour transparent pixels happen to store).
    """
    if img.mode.startswith("I;16"):
        levels = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.rint(levels).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        backdrop = Image.new("RGBA", img.size, (*background, 255))
        img = Image.alpha_composite(backdrop, img.convert("RGBA")).convert("RGB")
    return img


def to_pixels(
    img: Image.Image,
    resolution: int,
    channels: int,
    resample: Image.Resampling,
    background: Sequence[int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Flatten (:func:`flatten_image`), convert to L (1 channel) or RGB (grey repeated) and resize to a
    square; returns uint8 (H, W, C)."""
    img = flatten_image(img, background).convert("L" if channels == 1 else "RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), resample)
    pixels = np.asarray(img)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def decode_image(
    path: str | Path,
    resolution: int,
    channels: int,
    crop: Crop = None,
    background: Sequence[int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Decode an image file, crop, resize (bicubic, antialiased when shrinking) -> uint8 (H, W, C)."""
    with _open_image(path) as img:
        return to_pixels(_crop(img, crop, path), resolution, channels, Image.Resampling.BICUBIC, background)


# ------------------------------------------------------------------------------------------- datasets


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


# ------------------------------------------------------------------------------------------- helpers


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders ``2.jpg`` before ``10.jpg``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def _image_entries(directory: Path, recursive: bool) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """``(path relative to directory, entry)`` of every image file, in no particular order.

    One ``os.scandir`` per folder; hidden files and folders (such as ``.genface_cache``) are skipped and
    symlinked folders are not entered, as ``Path.rglob`` does.
    """
    pending = [(str(directory), "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        pending.append((entry.path, f"{prefix}{entry.name}/"))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                    yield prefix + entry.name, entry


def list_images(directory: Path, recursive: bool) -> list[Path]:
    """Image files under ``directory`` (hidden files and folders skipped), naturally sorted."""
    found = sorted(_image_entries(directory, recursive), key=lambda item: natural_key(item[0]))
    return [directory / relative for relative, _ in found]


def content_key(directory: Path, recursive: bool, *files: Path | None) -> str:
    """Hash of the image files under ``directory`` and of ``files``: names, sizes and modification times.

    Part of the dataset id of folder datasets, so that prepared arrays and FID statistics of an earlier
    content are not found. Cheap enough for CelebA's 200k images: one ``os.scandir`` walk and one ``stat``
    per file, no file is opened. A missing folder or file hashes as missing (ids exist before the data).
    """

    def row(name: str, stat: os.stat_result) -> str:
        return f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}"

    if directory.is_dir():
        rows = sorted(row(relative, entry.stat()) for relative, entry in _image_entries(directory, recursive))
    else:
        rows = ["missing folder"]
    for path in files:
        if path is not None:
            rows.append(row(path.name, path.stat()) if path.exists() else f"{path.name}\0missing")
    return hashlib.sha1("\n".join(rows).encode()).hexdigest()


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


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``data.split_fractions`` (train, val, test): three non-negative numbers summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise ValueError(
            f"data.split_fractions must be three non-negative numbers (train, val, test) summing to 1 with "
            f"train > 0, got {list(fractions)}"
        )
    return values  # type: ignore[return-value]


def _split_counts(m: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    n_val, n_test = (int(np.floor(f * m + 0.5)) for f in fractions[1:])
    if m >= 3:  # tiny sets: still give every requested split at least one item
        n_val, n_test = max(n_val, int(fractions[1] > 0)), max(n_test, int(fractions[2] > 0))
    return n_val, n_test


def split_indices(
    n: int, fractions: tuple[float, float, float], seed: int, strata: np.ndarray | None = None
) -> dict[Split, np.ndarray]:
    """Deterministic random split of ``range(n)``; with ``strata`` each stratum is split separately.

    Indices come back sorted, so every split keeps the source order (file order, class order).
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == c) for c in np.unique(strata)]
    parts: dict[Split, list[np.ndarray]] = {split: [] for split in SPLITS}
    for group in groups:
        group = rng.permutation(group)
        n_val, n_test = _split_counts(len(group), fractions)
        parts["val"].append(group[:n_val])
        parts["test"].append(group[n_val : n_val + n_test])
        parts["train"].append(group[n_val + n_test :])
    out = {split: np.sort(np.concatenate(p)).astype(np.int64) for split, p in parts.items()}
    if len(out["train"]) == 0:
        raise ValueError(
            f"{n} images are too few for data.split_fractions={list(fractions)}: no training images"
        )
    return out


def path_key(*paths: str | Path | None) -> str:
    """Absolute, symlink-resolved form of ``paths``, hashed into dataset ids so two roots never collide."""
    return "|".join(str(Path(p).expanduser().resolve()) for p in paths if p is not None)


def make_dataset_id(
    name: str, resolution: int, channels: int, *options: str, key: str | None = None, content: str | None = None
) -> str:
    """``name-<res>px-<rgb|grey>-<options>-<hash of key>-c<content>``: readable, distinct per pixel content.

    ``key`` names the source (:func:`path_key`), ``content`` is its :func:`content_key`: kept apart so that
    arrays prepared from an earlier content of the same folder can be recognised (:func:`earlier_versions`).
    """
    parts = [name, f"{resolution}px", "rgb" if channels == 3 else "grey", *options]
    if key:
        parts.append(hashlib.sha1(key.encode()).hexdigest()[:8])
    if content:
        parts.append(f"c{content[:8]}")
    return "-".join(parts)


_CONTENT_TAGGED = re.compile(r"(.+)-c[0-9a-f]{8}")


def earlier_versions(cache_path: Path) -> list[Path]:
    """Prepared-array directories beside ``cache_path`` that differ from it only in the content hash."""
    match = _CONTENT_TAGGED.fullmatch(cache_path.name)
    if match is None or not cache_path.parent.is_dir():
        return []
    return sorted(
        Path(entry.path)
        for entry in os.scandir(cache_path.parent)
        if entry.name != cache_path.name
        and (other := _CONTENT_TAGGED.fullmatch(entry.name)) is not None
        and other[1] == match[1]
    )


def background_tag(background: Sequence[int]) -> list[str]:
    """Dataset-id option for a non-default ``data.background`` (it changes the pixels of transparent images)."""
    levels = check_background(background)
    return [] if levels == DEFAULT_BACKGROUND else ["bg" + "-".join(map(str, levels))]


def fraction_tag(fractions: Sequence[float], seed: int) -> str:
    """Id fragment for seeded random splits (they decide which images land in which cached split)."""
    return "split" + "-".join(f"{f:g}" for f in fractions) + f"-seed{seed}"


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


# ---------------------------------------------------------------------------------------- DataModule


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
                self.dataset_id, old, path,
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

    # ----------------------------------------------------------------------------------- dataloaders

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
