"""The prepared-array cache: every split decoded and resized once into uint8 ``.npy`` files.

Epochs then read memory-mapped arrays instead of decoding JPEGs. Layout of one cache directory
(``<cache_dir>/<dataset_id>/``)::

    train_images.npy  (N, H, W, C) uint8     train_targets.npy
    val_images.npy    ...                    val_targets.npy
    test_images.npy   ...                    test_targets.npy
    meta.json         dataset_id, n per split, image shape, target names, created time

Everything is written into a hidden temporary directory that is renamed into place only at the end, so a
killed ``genface prepare`` never leaves a directory that :func:`is_complete` would accept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch.utils.data import DataLoader, Dataset

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Bumped when the layout changes, so caches written by an older genface are ignored, not misread.
FORMAT_VERSION = 1
_DECODE_BATCH = 64


class PixelSource(Protocol):
    """What the cache needs from a dataset: its length, uint8 (H, W, C) pixels per index, all targets."""

    targets: np.ndarray

    def __len__(self) -> int: ...

    def read(self, index: int) -> np.ndarray: ...


def split_files(directory: Path, split: str) -> tuple[Path, Path]:
    """Paths of one split's image and target arrays."""
    return directory / f"{split}_images.npy", directory / f"{split}_targets.npy"


def is_complete(directory: Path, resolution: int, channels: int, target_names: Sequence[str]) -> bool:
    """True when ``directory`` holds a finished cache whose arrays match the requested shape and targets.

    Checks the array headers only (memory-mapped), so it is cheap even for CelebA-sized caches.
    """
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION or meta.get("target_names") != list(target_names):
            return False
        for split in SPLITS:
            n = int(meta["n"][split])
            images_path, targets_path = split_files(directory, split)
            images = np.load(images_path, mmap_mode="r")
            targets = np.load(targets_path, mmap_mode="r")
            if images.dtype != np.uint8 or images.shape != (n, resolution, resolution, channels):
                return False
            if targets.shape[0] != n:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def cached_files(directory: Path) -> list[Path]:
    """Every file of a complete cache directory."""
    return [path for split in SPLITS for path in split_files(directory, split)] + [directory / "meta.json"]


def load_targets(directory: Path, split: str) -> np.ndarray:
    """One split's targets, fully in memory (they are small next to the images)."""
    return np.load(split_files(directory, split)[1])


class _PixelView(Dataset[np.ndarray]):
    """Exposes ``source.read`` as a Dataset so a DataLoader can decode in worker processes."""

    def __init__(self, source: PixelSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.source.read(index)


class _RateColumn(ProgressColumn):
    """Images per second, the number that tells whether decoding or the disk is the bottleneck."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} img/s" if task.speed else "")


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
    with progress:
        yield progress


def write(
    directory: Path,
    dataset_id: str,
    sources: Mapping[str, PixelSource],
    resolution: int,
    channels: int,
    target_names: Sequence[str],
    num_workers: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Decode every split of ``sources`` into a new cache at ``directory`` (replacing any old one).

    Decoding errors (e.g. a corrupt image) propagate after the temporary directory is removed.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        with _progress_bar(progress) as bar:
            for split in SPLITS:
                source = sources[split]
                images_path, targets_path = split_files(tmp, split)
                images = np.lib.format.open_memmap(
                    images_path,
                    mode="w+",
                    dtype=np.uint8,
                    shape=(len(source), resolution, resolution, channels),
                )
                task = bar.add_task(f"{dataset_id} {split}", total=len(source))
                loader = DataLoader(
                    _PixelView(source), batch_size=_DECODE_BATCH, num_workers=num_workers, collate_fn=np.stack
                )
                start = 0
                for batch in loader:
                    images[start : start + len(batch)] = batch
                    start += len(batch)
                    bar.advance(task, len(batch))
                images.flush()
                del images
                np.save(targets_path, source.targets)
        meta = {
            "format": FORMAT_VERSION,
            "dataset_id": dataset_id,
            "n": {split: len(sources[split]) for split in SPLITS},
            "image_shape": [resolution, resolution, channels],
            "target_names": list(target_names),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cached_files(directory)


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is set aside first and deleted afterwards."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
