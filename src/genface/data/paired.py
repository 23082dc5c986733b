"""Paired data for image-to-image translation (Pix2Pix): items ``(source, target)``, both images in [-1, 1].

Two sources of pairs:

- :class:`PairedFolderDataModule`: pix2pix's "AB" layout, ``<root>/{train,val,test}/*.jpg`` with source
  and target side by side in one file (CMP Facades, edges2shoes, maps, ...); ``direction`` picks which half
  is the source. Training images can be jittered as in the reference (resize to ``load_size``, random
  crop back to ``resolution``, random flip, the same for both halves).
- :class:`DerivedPairsDataModule`: tasks derived on the fly from any face DataModule of
  :mod:`genface.data` (its images are the targets): ``edges2face`` (Sobel edges, black lines on white),
  ``gray2color`` (luminance), ``masked2face`` (inpainting: a square hole of 1/4 to 1/2 of the side,
  filled with 0, plus the hole mask as an extra channel) and ``lowres2face`` (x``scale`` super-resolution:
  box-downsampled, then bicubic-upsampled back so source and target share a size).

Both expose what configs and models read: ``resolution``, ``channels`` (target), ``source_channels``,
``dataset_id`` and ``split_dataset(split)``.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from genface.data.base import GlobalBatchLoaders, ImageDataModule
from genface.data.ids import make_dataset_id, path_key
from genface.data.images import list_images, open_image, to_pixels
from genface.data.splits import SPLITS, Split

PairedTask = Literal["edges2face", "gray2color", "masked2face", "lowres2face"]
PAIRED_TASKS: tuple[str, ...] = ("edges2face", "gray2color", "masked2face", "lowres2face")
Direction = Literal["AtoB", "BtoA"]
Pair = tuple[torch.Tensor, torch.Tensor]


# ------------------------------------------------------------------------------------- derived sources


def luminance(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) in [-1, 1] -> (1, H, W): ITU-R 601 luma of RGB, the image itself when grey."""
    if image.shape[0] == 1:
        return image
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device)
    return (image * weights[:, None, None]).sum(0, keepdim=True)


def edge_map(image: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """(1, H, W): -1 (black) where the Sobel gradient of the luma exceeds `threshold`, +1 elsewhere.

    The Sobel kernels are divided by 4, so a full-contrast step of height d (in [-1, 1] units) has
    gradient d: `threshold=0.2` keeps steps of more than a tenth of the range (outlines, features).
    """
    gray = F.pad(luminance(image)[None], (1, 1, 1, 1), mode="replicate")
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=image.dtype) / 4
    grad = F.conv2d(gray, torch.stack([kx, kx.T])[:, None].to(image.device))
    magnitude = grad.pow(2).sum(1).sqrt()
    return torch.where(magnitude > threshold, -1.0, 1.0).to(image.dtype)


def masked(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(C + 1, H, W): the image with a square hole (side 1/4 to 1/2 of H) set to 0, then the mask (+1 in
    the hole, -1 outside). The mask channel tells the network where to paint, which a flat fill cannot."""
    _, h, w = image.shape
    side = int(torch.randint(max(1, h // 4), max(2, h // 2 + 1), (1,), generator=generator))
    top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
    hole = torch.zeros(1, h, w, dtype=image.dtype)
    hole[:, top : top + side, left : left + side] = 1
    return torch.cat([image * (1 - hole), hole * 2 - 1])


def low_resolution(image: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """(C, H, W): box-downsampled by `scale`, bicubic-upsampled back to H x W (the classic SR input)."""
    small = F.avg_pool2d(image[None], scale)
    return F.interpolate(small, size=image.shape[-2:], mode="bicubic", align_corners=False)[0].clamp(-1, 1)


class DerivedPairs(Dataset[Pair]):
    """`(source, image)` from a dataset of `(image, target)` items: the source is derived from the image.

    With `random_masks` (training) every access draws a new hole; otherwise the hole of item i is fixed
    by `seed` and i, so validation pictures and metrics compare like with like across epochs.
    """

    def __init__(
        self,
        images: Dataset,
        task: PairedTask,
        edge_threshold: float = 0.2,
        scale: int = 4,
        seed: int = 0,
        random_masks: bool = False,
    ) -> None:
        if task not in PAIRED_TASKS:
            raise ValueError(f"data.task={task!r} is not a paired task; allowed: {', '.join(PAIRED_TASKS)}")
        self.images, self.task = images, task
        self.edge_threshold, self.scale, self.seed, self.random_masks = (
            edge_threshold,
            scale,
            seed,
            random_masks,
        )

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def source(self, image: torch.Tensor, index: int) -> torch.Tensor:
        if self.task == "edges2face":
            return edge_map(image, self.edge_threshold)
        if self.task == "gray2color":
            return luminance(image)
        if self.task == "lowres2face":
            return low_resolution(image, self.scale)
        generator = (
            None if self.random_masks else torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        )
        return masked(image, generator)

    def __getitem__(self, index: int) -> Pair:
        image = self.images[index][0]
        return self.source(image, index), image


def source_channels_of(task: PairedTask, channels: int) -> int:
    """Channels of a derived task's source, given the target's."""
    return {"edges2face": 1, "gray2color": 1, "masked2face": channels + 1, "lowres2face": channels}[task]


# ------------------------------------------------------------------------------------------ AB folders


def ab_layout(root: Path) -> str:
    return (
        f"expected {root}/train, {root}/val (and {root}/test) holding images with source and target side by "
        "side (pix2pix's 'AB' layout, e.g. CMP Facades)"
    )


class PairedFolderDataset(Dataset[Pair]):
    """AB images split at half width into (A, B); `direction` says which half is the source.

    With `load_size`, items are jittered as in the reference pix2pix: both halves resized to `load_size`,
    the same random `resolution` crop taken from both, and both flipped together half the time (`hflip`).
    Without it, both halves are resized to `resolution`.
    """

    def __init__(
        self,
        paths: list[Path],
        resolution: int,
        channels: int,
        source_channels: int,
        direction: Direction = "AtoB",
        load_size: int | None = None,
        hflip: bool = False,
    ) -> None:
        self.paths, self.resolution, self.channels, self.source_channels = (
            paths,
            resolution,
            channels,
            source_channels,
        )
        self.direction, self.load_size, self.hflip = direction, load_size, hflip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Pair:
        path = self.paths[index]
        size = self.load_size or self.resolution
        with open_image(path) as img:
            w, h = img.size
            if w < 2:
                raise ValueError(f"{path} is {w}x{h}: an AB image needs source and target side by side")
            a, b = img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w, h))
            src, tgt = (a, b) if self.direction == "AtoB" else (b, a)
            source = to_pixels(src, size, self.source_channels, Image.Resampling.BICUBIC)
            target = to_pixels(tgt, size, self.channels, Image.Resampling.BICUBIC)
        if self.load_size:
            top, left = (int(v) for v in torch.randint(0, size - self.resolution + 1, (2,)))
            source = source[top : top + self.resolution, left : left + self.resolution]
            target = target[top : top + self.resolution, left : left + self.resolution]
        if self.hflip and torch.rand(()) < 0.5:
            source, target = source[:, ::-1], target[:, ::-1]
        return _to_tensor(source), _to_tensor(target)


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------------- DataModules


class PairedDataModule(GlobalBatchLoaders, pl.LightningDataModule, metaclass=ABCMeta):
    """Loaders and bookkeeping shared by paired DataModules; subclasses build the split datasets.

    `batch_size` is the GLOBAL batch, as everywhere in genface: each rank loads batch_size // world_size.
    """

    resolution: int
    channels: int
    source_channels: int
    dataset_id: str

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self._datasets: dict[tuple[str, bool], Dataset[Pair]] = {}

    @abstractmethod
    def _build_split(self, split: Split, augment: bool) -> Dataset[Pair]:
        """The `(source, target)` dataset of one split; `augment` adds the train-time randomness."""

    def split_dataset(self, split: Split, augment: bool = False) -> Dataset[Pair]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        key = (split, augment)
        if key not in self._datasets:
            self._datasets[key] = self._build_split(split, augment)
        return self._datasets[key]


class PairedFolderDataModule(PairedDataModule):
    """pix2pix "AB" folders: `<root>/{train,val,test}/` of side-by-side images (read lazily).

    Args:
        root: the folder holding train/, val/ (and test/).
        resolution: side of the square crops the networks see (256 for the reference pix2pix).
        channels, source_channels: target and source channels (1 or 3).
        direction: "AtoB" (left half -> right half) or "BtoA" (Facades: labels are B, photos A).
        load_size: train-time jitter: resize to this, random-crop back to `resolution` (286 in the
            reference); None: plain resize.
        hflip: random horizontal flips of training pairs.
    """

    def __init__(
        self,
        root: str,
        resolution: int = 256,
        channels: int = 3,
        source_channels: int = 3,
        direction: Direction = "AtoB",
        load_size: int | None = None,
        hflip: bool = False,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters(logger=False)
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"data.direction must be 'AtoB' or 'BtoA', got {direction!r}")
        if channels not in (1, 3) or source_channels not in (1, 3):
            raise ValueError(
                f"data.channels and data.source_channels must be 1 or 3, got {channels}, {source_channels}"
            )
        if load_size is not None and load_size < resolution:
            raise ValueError(
                f"data.load_size={load_size} must be >= data.resolution={resolution} (or null: no jitter)"
            )
        self.root = Path(root).expanduser()
        self.resolution, self.channels, self.source_channels = (
            int(resolution),
            int(channels),
            int(source_channels),
        )
        self.direction, self.load_size, self.hflip = direction, load_size, hflip
        self.dataset_id = make_dataset_id(
            f"pairs-{self.root.name}", self.resolution, self.channels, direction, key=path_key(self.root)
        )

    def _build_split(self, split: Split, augment: bool) -> PairedFolderDataset:
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"paired split folder {folder} does not exist; {ab_layout(self.root)}")
        paths = list_images(folder, recursive=False)
        if not paths:
            raise FileNotFoundError(f"{folder} holds no images; {ab_layout(self.root)}")
        return PairedFolderDataset(
            paths,
            self.resolution,
            self.channels,
            self.source_channels,
            self.direction,
            load_size=self.load_size if augment else None,
            hflip=self.hflip and augment,
        )


class DerivedPairsDataModule(PairedDataModule):
    """Paired tasks derived from a face DataModule (`base`), whose images become the targets.

    Args:
        base: any :class:`~genface.data.base.ImageDataModule` (Hydra builds it from the nested config).
        task: "edges2face", "gray2color", "masked2face" or "lowres2face".
        resolution, channels: must equal the base's (configs interpolate `${data.resolution}` from here).
        source_channels: must equal the task's (see :func:`source_channels_of`) when given; configs state
            it because the model config reads `${data.source_channels}` before any data exists.
        edge_threshold: Sobel threshold of edges2face (see :func:`edge_map`).
        scale: downsampling factor of lowres2face; must divide the resolution.
        seed: fixes the validation holes of masked2face.
    """

    def __init__(
        self,
        base: ImageDataModule,
        task: PairedTask,
        resolution: int | None = None,
        channels: int | None = None,
        source_channels: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        edge_threshold: float = 0.2,
        scale: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if task not in PAIRED_TASKS:
            raise ValueError(f"data.task={task!r} is not a paired task; allowed: {', '.join(PAIRED_TASKS)}")
        for name, value in (("resolution", resolution), ("channels", channels)):
            if value is not None and int(value) != getattr(base, name):
                raise ValueError(
                    f"data.{name}={value} but the base DataModule has {name} {getattr(base, name)}"
                )
        if task == "gray2color" and base.channels != 3:
            raise ValueError("data.task=gray2color needs colour targets: data.channels=3")
        if task == "lowres2face" and (scale < 2 or base.resolution % scale):
            raise ValueError(f"data.scale={scale} must be >= 2 and divide data.resolution={base.resolution}")
        self.base, self.task = base, task
        self.resolution, self.channels = base.resolution, base.channels
        self.source_channels = source_channels_of(task, base.channels)
        if source_channels is not None and int(source_channels) != self.source_channels:
            raise ValueError(
                f"data.source_channels={source_channels} but {task} on {base.channels}-channel images has "
                f"{self.source_channels}-channel sources: set data.source_channels={self.source_channels}"
            )
        self.edge_threshold, self.scale, self.seed = edge_threshold, scale, seed

    @cached_property
    def dataset_id(self) -> str:
        """The base set's id (computed on first use: a folder's id walks its files) and the task."""
        return f"{self.base.dataset_id}-{self.task}"

    def prepare_data(self) -> None:
        self.base.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        # The base then knows it runs under a Trainer (prepare_data already ran on rank 0).
        self.base.trainer = self.trainer

    def _build_split(self, split: Split, augment: bool) -> DerivedPairs:
        return DerivedPairs(
            self.base.split_dataset(split, augment=augment),
            self.task,
            edge_threshold=self.edge_threshold,
            scale=self.scale,
            seed=self.seed,
            random_masks=augment,
        )
