"""Real-image feature statistics for FID/KID, computed once and cached on disk.

The real side of FID never changes during a run (or across runs on the same data), so its mean,
covariance and a KID feature sample are stored as `.npz` keyed by everything that determines them:
dataset id, split, image shape, extractor name + protocol hash, N and the KID sample cap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from genface.metrics.extractors import FeatureExtractor

log = logging.getLogger(__name__)

#: Default cap on the per-side feature sample kept for KID (KID subsets are drawn from it).
KID_MAX_FEATURES = 4096


@dataclass(frozen=True)
class RealStats:
    """Mean/covariance (float64) of `n` real images' features plus a float32 feature sample for KID."""

    mean: np.ndarray
    cov: np.ndarray
    n: int
    features: np.ndarray
    protocol: str

    def save(self, path: str | Path) -> None:
        """Write atomically (tmp file + rename) so a crash or a concurrent reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, mean=self.mean, cov=self.cov, n=np.int64(self.n), features=self.features,
                         protocol=np.str_(self.protocol))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | Path) -> RealStats:
        with np.load(path) as data:
            return cls(
                mean=data["mean"].astype(np.float64),
                cov=data["cov"].astype(np.float64),
                n=int(data["n"]),
                features=data["features"].astype(np.float32),
                protocol=str(data["protocol"]),
            )


def mean_cov(feature_sum: torch.Tensor, outer_sum: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance from running sums (Σx, Σxxᵀ) over n samples, in float64."""
    mean = feature_sum.double() / n
    cov = (outer_sum.double() - n * torch.outer(mean, mean)) / (n - 1)
    return mean, cov


def accumulate_features(
    feats: torch.Tensor, feature_sum: torch.Tensor, outer_sum: torch.Tensor, kept: list[torch.Tensor], cap: int
) -> None:
    """Add a batch to the running float64 sums (in place) and keep the first `cap` features for KID."""
    feats64 = feats.double()
    feature_sum += feats64.sum(0)
    outer_sum += feats64.T @ feats64
    room = cap - sum(len(k) for k in kept)
    if room > 0:
        kept.append(feats[:room])


def _image(item: object) -> torch.Tensor:
    """Dataset items are `(image, target)` (genface datamodules) or bare images."""
    return item[0] if isinstance(item, (tuple, list)) else item  # type: ignore[return-value]


def stack_images(items: list) -> torch.Tensor:
    # Only images are batched: targets may be None or ragged and are irrelevant here.
    return torch.stack([_image(item) for item in items])


def check_real_n(n: int, available: int, where: str = "the dataset") -> None:
    """Refuse to compute statistics of `n` real images from fewer: a silently smaller N would change what the
    number means (and FID then refuses it anyway, after the fakes were made)."""
    if available < 2:
        raise ValueError(f"real statistics need at least 2 images, {where} has {available}")
    if n > available:
        raise ValueError(f"asked for n_real={n} real images but {where} holds {available}")


def compute_real_stats(
    extractor: FeatureExtractor,
    dataset: Dataset,
    n: int,
    batch_size: int = 64,
    progress: bool = True,
    kid_max_features: int = KID_MAX_FEATURES,
) -> RealStats:
    """Statistics of the first `n` items of `dataset` (which must hold at least `n`)."""
    check_real_n(n, len(dataset))  # type: ignore[arg-type]
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False, collate_fn=stack_images)
    d = extractor.num_features
    feature_sum = torch.zeros(d, dtype=torch.float64, device=extractor.device)
    outer_sum = torch.zeros(d, d, dtype=torch.float64, device=extractor.device)
    kept: list[torch.Tensor] = []
    for images in tqdm(loader, desc=f"real features ({extractor.name}, n={n})", disable=not progress):
        accumulate_features(extractor(images), feature_sum, outer_sum, kept, kid_max_features)
    mean, cov = mean_cov(feature_sum, outer_sum, n)
    return RealStats(
        mean=mean.cpu().numpy(),
        cov=cov.cpu().numpy(),
        n=n,
        features=torch.cat(kept).cpu().numpy(),
        protocol=extractor.protocol,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def cache_file_name(
    dataset_id: str, split: str, image_shape: tuple[int, ...], extractor: FeatureExtractor, n: int,
    kid_max_features: int,
) -> str:
    """File name that changes whenever anything that determines the statistics changes."""
    protocol_hash = hashlib.sha1(extractor.protocol.encode()).hexdigest()[:10]
    shape = "x".join(str(s) for s in image_shape)
    return (
        f"{_slug(dataset_id)}_{_slug(split)}_{shape}_{_slug(extractor.name)}-{protocol_hash}"
        f"_n{n}_kid{kid_max_features}.npz"
    )


def load_or_compute_real_stats(
    extractor: FeatureExtractor,
    dataset: Dataset,
    dataset_id: str,
    split: str,
    n: int,
    cache_dir: str | Path,
    batch_size: int = 64,
    progress: bool = True,
    kid_max_features: int = KID_MAX_FEATURES,
) -> RealStats:
    """Cached `compute_real_stats`. Under torch.distributed only rank 0 computes and writes; the others
    wait at a barrier and then load the file, so every rank holds identical statistics."""
    check_real_n(n, len(dataset), f"the {split!r} split of {dataset_id}")  # type: ignore[arg-type]
    shape = tuple(_image(dataset[0]).shape)
    path = Path(cache_dir) / cache_file_name(dataset_id, split, shape, extractor, n, kid_max_features)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not distributed or dist.get_rank() == 0:
        if path.is_file():
            log.info("real FID statistics: loading %s", path)
        else:
            log.info("real FID statistics: computing %s/%s (n=%d, %s)", dataset_id, split, n, extractor.protocol)
            compute_real_stats(extractor, dataset, n, batch_size, progress, kid_max_features).save(path)
    if distributed:
        dist.barrier()
    stats = RealStats.load(path)
    if stats.protocol != extractor.protocol:
        raise ValueError(
            f"{path} was computed with {stats.protocol!r}, not {extractor.protocol!r}: delete it to recompute"
        )
    return stats
