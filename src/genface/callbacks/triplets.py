"""Validation callbacks for translators (Pix2Pix, anything with `translate(source)`):

- :class:`Triplets`: source | output | target grids of fixed pairs, to disk and to the loggers.
- :class:`TranslationFID`: FID/KID of the validation translations against the validation targets.

The sample-grid and FID callbacks of unconditional generators do not apply: a translator has no latents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import Dataset
from torchmetrics.utilities import dim_zero_cat

from genface.callbacks.sample_grid import log_image
from genface.metrics.extractors import build_extractor
from genface.metrics.fidkid import FIDKID
from genface.metrics.stats import RealStats, mean_cov
from genface.viz.grids import grid_image, save_png

PROTOCOL_FILE = "fid_protocol.json"


def displayable(images: torch.Tensor) -> torch.Tensor:
    """Images with 1 or 3 channels as they are; extra channels (a masked2face hole mask) dropped."""
    return images[:, :3] if images.shape[1] >= 3 else images[:, :1]


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    images = displayable(images)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def triplet_grid(source: torch.Tensor, output: torch.Tensor, target: torch.Tensor):
    """(H, W, 3) uint8: one row per pair, columns source | output | target."""
    rows = torch.stack([to_rgb(source), to_rgb(output), to_rgb(target)], dim=1).flatten(0, 1)
    return grid_image(rows, nrow=3)


def _check_translator(pl_module: pl.LightningModule, name: str) -> None:
    if not callable(getattr(pl_module, "translate", None)):
        raise TypeError(f"{name} needs a translator with translate(source), got {type(pl_module).__name__}")


def _check_paired(trainer: pl.Trainer, name: str) -> None:
    if not hasattr(trainer.datamodule, "split_dataset"):
        raise TypeError(
            f"{name} reads pairs from a paired DataModule (split_dataset(split) -> (source, target) items); "
            f"got {type(trainer.datamodule).__name__}"
        )


class Triplets(pl.Callback):
    """Every `every_n_epochs` validation epochs (and after the last), rank 0 translates the first `n`
    pairs of each split in `splits` and writes `<dirpath>/triplets_<split>_epoch_XXXX.png`.

    Training pairs show what is learnt, validation pairs whether it generalises (the cGAN / Pix2Pix / DDPM lab compares the
    two for Facades at 100 and 200 epochs). Pairs are taken without augmentation, so every epoch shows
    the same sources.
    """

    def __init__(
        self, n: int = 8, every_n_epochs: int = 1, splits: tuple[str, ...] = ("train", "val"), dirpath: str | None = None
    ) -> None:
        if n < 1 or every_n_epochs < 1:
            raise ValueError("callbacks.triplets.n and every_n_epochs must be >= 1")
        self.n, self.every_n_epochs, self.splits, self.dirpath = n, every_n_epochs, tuple(splits), dirpath
        self.written: list[Path] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _check_translator(pl_module, "Triplets")
        _check_paired(trainer, "Triplets")

    def grid_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "triplets")

    def pairs(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        items = [dataset[i] for i in range(min(self.n, len(dataset)))]  # type: ignore[arg-type]
        return torch.stack([s for s, _ in items]), torch.stack([t for _, t in items])

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs not in (None, -1) and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        for split in self.splits:
            source, target = self.pairs(trainer.datamodule.split_dataset(split))
            grid = triplet_grid(source, pl_module.translate(source).cpu(), target)
            path = save_png(grid, self.grid_dir(trainer) / f"triplets_{split}_epoch_{epoch:04d}.png")
            self.written.append(path)
            log_image(trainer, f"triplets/{split}", grid, step=trainer.global_step)


def feature_stats(metric: FIDKID) -> RealStats:
    """The features a FIDKID accumulated (summed across ranks) as `RealStats`, to serve as a real side."""
    with metric.sync_context():
        n = int(metric.fake_n)
        mean, cov = mean_cov(metric.fake_sum, metric.fake_outer, n)
        features = dim_zero_cat(metric.fake_features)[: metric.kid_max_features]
    return RealStats(mean.cpu().numpy(), cov.cpu().numpy(), n, features.cpu().numpy(), metric.extractor.protocol)


class TranslationFID(pl.Callback):
    """Logs `val/fid`, `val/kid_mean`, `val/kid_std`: the validation translations against the validation
    targets, every `every_n_epochs` epochs and after the last.

    Both sides come from what `validation_step` returns (keys "output" and "target"), so nothing is
    translated twice and `trainer.limit_val_batches` limits both sides alike. The target statistics are
    taken at the first evaluation and kept (validation batches are the same at every epoch). Under DDP
    each rank adds its shard and the statistics are summed across ranks. Translation validation sets are
    small (Facades: 100): FID below 2048 samples needs `allow_low_n` and compares only at equal N; KID is
    unbiased at any N. Extractor and N go to `fid_protocol.json` in the log dir. `extractor_trusted`: as
    FIDCallback's (run an Inception TorchScript that is not the known copy).
    """

    def __init__(
        self,
        extractor: str = "inception",
        extractor_path: str | None = None,
        extractor_trusted: bool = False,
        every_n_epochs: int = 1,
        kid_subset_size: int = 100,
        allow_low_n: bool = False,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError("metrics.fid.every_n_epochs must be >= 1")
        self.extractor_name, self.extractor_path, self.extractor_trusted = extractor, extractor_path, extractor_trusted
        self.every_n_epochs, self.kid_subset_size, self.allow_low_n = every_n_epochs, kid_subset_size, allow_low_n
        self.outputs: FIDKID | None = None
        self.targets: FIDKID | None = None
        self._real: RealStats | None = None
        self._active = False
        self.last_values: dict[str, float | int] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _check_translator(pl_module, "TranslationFID")
        if self.outputs is None:
            extractor = build_extractor(self.extractor_name, self.extractor_path, self.extractor_trusted)
            self.outputs = FIDKID(extractor, kid_subset_size=self.kid_subset_size, allow_low_n=self.allow_low_n)
            self.targets = FIDKID(extractor, kid_subset_size=self.kid_subset_size, allow_low_n=self.allow_low_n)

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking or self.outputs is None:
            return False
        epoch = trainer.current_epoch
        last = trainer.max_epochs not in (None, -1) and epoch + 1 >= trainer.max_epochs
        return last or (epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = self._due(trainer)
        if self._active:
            self.outputs = self.outputs.to(pl_module.device)
            self.targets = self.targets.to(pl_module.device)
            self.outputs.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active:
            return
        if not isinstance(outputs, dict) or not {"output", "target"} <= outputs.keys():
            raise TypeError("TranslationFID needs validation_step to return {'output': ..., 'target': ...}")
        self.outputs.update(outputs["output"])
        if self._real is None:
            self.targets.update(outputs["target"])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        if self._real is None:
            self._real = feature_stats(self.targets)
            self.targets.reset()
        self.outputs.set_real(self._real)
        values = self.outputs.compute()  # every rank: the output statistics are summed across ranks inside
        self.outputs.reset()
        self.last_values = values
        for key in ("fid", "kid_mean", "kid_std"):
            pl_module.log(f"val/{key}", values[key], sync_dist=False, rank_zero_only=False)
        self._record_protocol(trainer, values["n_fake"], self._real.n)

    def _record_protocol(self, trainer: pl.Trainer, n_fake: int, n_real: int) -> None:
        log_dir = Path(trainer.default_root_dir)  # the run directory, next to checkpoints/ (as FIDCallback)
        if not trainer.is_global_zero:
            return
        extractor = self.outputs.extractor
        record = {
            "extractor": extractor.name,
            "protocol": extractor.protocol,
            "n_fake": n_fake,
            "n_real": n_real,
            "fake": "translations of the validation sources",
            "real": "targets of the same validation batches",
            "dataset_id": getattr(trainer.datamodule, "dataset_id", None),
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / PROTOCOL_FILE).write_text(json.dumps(record, indent=2) + "\n")
