"""FID/KID of image folders or of a generator against real images (library side of `genface evaluate`).

Resize policy: each side is fed to the extractor at its own size and the extractor resizes (Inception:
TF1 bilinear to 299 from uint8 levels), so real and fake folders need not share a resolution and no
second, undocumented resize is introduced. Within one folder all images must share one size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from genface.data.images import IMAGE_EXTENSIONS, flatten_image, list_images
from genface.metrics.extractors import FeatureExtractor
from genface.metrics.fidkid import FIDKID
from genface.metrics.stats import RealStats, compute_real_stats, load_or_compute_real_stats, stack_images
from genface.models.base import GenerativeModule


class ImageFolderDataset(Dataset):
    """The images under `root` (recursively, sorted by path) as RGB float (3, H, W) in [-1, 1].

    Found and decoded like the training data (:func:`genface.data.images.list_images`, the same extensions,
    hidden files and folders skipped; :func:`genface.data.images.flatten_image`: 16-bit grey scaled to 8
    bits, transparency composited on white).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.files = list_images(self.root, recursive=True, order="path")
        if not self.files:
            raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {self.root}")
        self.size = self._open(self.files[0]).size

    @staticmethod
    def _open(path: Path) -> Image.Image:
        try:
            with Image.open(path) as image:
                return flatten_image(image).convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        image = self._open(path)
        if image.size != self.size:
            raise ValueError(
                f"{path} is {image.size[0]}x{image.size[1]} but {self.files[0]} is {self.size[0]}x{self.size[1]}: "
                "all images of a folder must share one size"
            )
        array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        return array.permute(2, 0, 1).float() / 127.5 - 1, 0

    def fingerprint(self) -> str:
        """Cache id: folder name + hash of its path, file names, sizes and modification times (changes when
        the content does)."""
        digest = hashlib.sha1(str(self.root.resolve()).encode())
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return f"folder-{self.root.name}-{digest.hexdigest()[:10]}"


def rank_share(n: int, rank: int, world_size: int) -> int:
    """How many of n samples rank `rank` generates (the first n % world_size ranks take one more)."""
    return n // world_size + (1 if rank < n % world_size else 0)


def generate_fake_batches(
    model: GenerativeModule, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> Iterator[torch.Tensor]:
    """This rank's share of n samples, batch by batch.

    Latents come from one CPU generator seeded `seed + rank` and are drawn per batch (a DD-GAN latent
    holds every step's noise, too big to draw for all samples at once); labels from
    `model.default_labels(share)`. Samples are thus a fixed function of (weights, seed, rank, batch_size).
    """
    share = rank_share(n, rank, world_size)
    generator = torch.Generator().manual_seed(seed + rank)
    labels = model.default_labels(share)
    for start in range(0, share, batch_size):
        size = min(batch_size, share - start)
        latents = model.sample_latents(size, generator=generator)
        yield model.generate(latents, None if labels is None else labels[start : start + size])


def _real_stats(
    real: str | Path | Dataset,
    extractor: FeatureExtractor,
    n_real: int | None,
    batch_size: int,
    cache_dir: str | Path | None,
    progress: bool,
    real_id: str | None,
) -> RealStats:
    if isinstance(real, (str, Path)):
        dataset: Dataset = ImageFolderDataset(real)
        real_id = real_id or dataset.fingerprint()  # type: ignore[attr-defined]
    else:
        dataset = real
    n = len(dataset) if n_real is None else n_real  # type: ignore[arg-type]
    if cache_dir is None:
        return compute_real_stats(extractor, dataset, n, batch_size, progress)
    if real_id is None:
        raise ValueError(
            "caching the statistics of a Dataset needs `real_id` (a name that identifies its content)"
        )
    return load_or_compute_real_stats(extractor, dataset, real_id, "all", n, cache_dir, batch_size, progress)


def _result(metric: FIDKID, real: RealStats) -> dict:
    values = metric.compute()
    return {
        "fid": values["fid"],
        "kid_mean": values["kid_mean"],
        "kid_std": values["kid_std"],
        "n_real": real.n,
        "n_fake": values["n_fake"],
        "extractor": metric.extractor.name,
        "protocol": metric.extractor.protocol,
    }


def evaluate_folders(
    real: str | Path,
    fake: str | Path,
    extractor: FeatureExtractor,
    n_real: int | None = None,
    n_fake: int | None = None,
    batch_size: int = 50,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    allow_low_n: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """FID/KID between two image folders (first n_real / n_fake images in path order; all by default).

    Returns {fid, kid_mean, kid_std, n_real, n_fake, extractor, protocol}. With `cache_dir` the real
    folder's statistics are cached under a fingerprint of its content.
    """
    real_stats = _real_stats(real, extractor, n_real, batch_size, cache_dir, progress, None)
    metric = FIDKID(extractor, kid_subsets, kid_subset_size, allow_low_n=allow_low_n).to(extractor.device)
    metric.set_real(real_stats)
    fakes = ImageFolderDataset(fake)
    subset = Subset(fakes, range(len(fakes) if n_fake is None else min(n_fake, len(fakes))))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=stack_images)
    for images in tqdm(loader, desc=f"fake features ({extractor.name})", disable=not progress):
        metric.update(images)
    return _result(metric, real_stats)


def evaluate_generator(
    model: GenerativeModule,
    real: str | Path | Dataset,
    extractor: FeatureExtractor,
    n_fake: int = 2048,
    seed: int = 0,
    n_real: int | None = None,
    real_id: str | None = None,
    batch_size: int = 50,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    allow_low_n: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """FID/KID of `n_fake` samples of `model` (latents seeded by `seed`) against a real folder or Dataset.

    `real_id` names a Dataset for the statistics cache (folders derive theirs). Same result keys as
    `evaluate_folders`.
    """
    if not isinstance(model, GenerativeModule):
        raise TypeError(f"evaluate_generator needs a GenerativeModule, got {type(model).__name__}")
    real_stats = _real_stats(real, extractor, n_real, batch_size, cache_dir, progress, real_id)
    metric = FIDKID(extractor, kid_subsets, kid_subset_size, allow_low_n=allow_low_n).to(extractor.device)
    metric.set_real(real_stats)
    batches = generate_fake_batches(model, n_fake, batch_size, seed)
    total = -(-n_fake // batch_size)
    for images in tqdm(
        batches, total=total, desc=f"generate + features ({extractor.name})", disable=not progress
    ):
        metric.update(images)
    return {**_result(metric, real_stats), "sampling": model.sampling_protocol}
