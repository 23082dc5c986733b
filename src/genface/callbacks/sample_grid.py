"""Sample grids from fixed latents, so that epochs can be compared image by image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn

from genface.models.base import GenerativeModule
from genface.viz.grids import grid_image, save_gif, save_png, stack_rows


def log_image(trainer: pl.Trainer, key: str, image, step: int) -> None:
    """Send an (H, W, 3) uint8 picture to every attached logger that takes images."""
    for logger in trainer.loggers:
        exp = getattr(logger, "experiment", None)
        if hasattr(logger, "log_image"):  # WandbLogger
            logger.log_image(key=key, images=[image], step=step)
        elif hasattr(exp, "add_image"):  # TensorBoard SummaryWriter
            exp.add_image(key, image, global_step=step, dataformats="HWC")


class SampleGrid(pl.Callback):
    """Every `every_n_epochs` epochs (and after the last), rank 0 renders the same `n` latents.

    Grids go to `<dirpath>/epoch_XXXX.png` and to the loggers under `samples`. At the end of fit the
    first `strip` samples of every rendered epoch are stacked into `samples_over_epochs.png` (one row
    per epoch) and the grids into `samples_over_epochs.gif`: progress at a glance. At the start of fit,
    `<dirpath>/real.png` shows the first `n` training images (without augmentation) in the same layout,
    the yardstick for the samples (and goes to the loggers under `real`).
    """

    def __init__(
        self, n: int = 64, every_n_epochs: int = 1, seed: int = 0, strip: int = 8, dirpath: str | None = None
    ) -> None:
        if n < 1 or every_n_epochs < 1:
            raise ValueError("callbacks.sample_grid.n and every_n_epochs must be >= 1")
        self.n, self.every_n_epochs, self.seed, self.dirpath = n, every_n_epochs, seed, dirpath
        self.strip = min(strip, n)
        self._latents: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self.history: list[tuple[int, np.ndarray, np.ndarray]] = []  # (epoch, strip, grid)

    def grid_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "samples")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, GenerativeModule):
            raise TypeError(f"SampleGrid needs a GenerativeModule, got {type(pl_module).__name__}")
        self._latents = pl_module.sample_latents(self.n, generator=torch.Generator().manual_seed(self.seed)).cpu()
        self._labels = pl_module.default_labels(self.n)
        self._write_real(trainer, pl_module)

    def _nrow(self, pl_module: GenerativeModule) -> int | None:
        """Images per row: one condition per row for conditional models, else a square."""
        return pl_module.num_classes if self._labels is not None and pl_module.num_classes else None

    @rank_zero_only
    def _write_real(self, trainer: pl.Trainer, pl_module: GenerativeModule) -> None:
        """`real.png`: the first `n` images of the train split, unaugmented, laid out like the sample grids."""
        datamodule = trainer.datamodule
        if not callable(getattr(datamodule, "split_dataset", None)):
            rank_zero_warn("SampleGrid: the data have no split_dataset(split) (not a genface DataModule): no real.png")
            return
        dataset = datamodule.split_dataset("train")  # without augmentation
        images = torch.stack([dataset[i][0] for i in range(min(self.n, len(dataset)))])
        grid = grid_image(images, nrow=self._nrow(pl_module))
        save_png(grid, self.grid_dir(trainer) / "real.png")
        log_image(trainer, "real", grid, step=0)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: GenerativeModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 >= (trainer.max_epochs or 0) and trainer.max_epochs not in (None, -1)
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        images = pl_module.generate(self._latents, self._labels)
        grid = grid_image(images, nrow=self._nrow(pl_module))
        save_png(grid, self.grid_dir(trainer) / f"epoch_{epoch:04d}.png")
        log_image(trainer, "samples", grid, step=trainer.global_step)
        self.history.append((epoch, grid_image(images[: self.strip], nrow=self.strip), grid))

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: GenerativeModule) -> None:
        if not self.history:
            return
        out = self.grid_dir(trainer)
        rows = [strip for _, strip, _ in self.history]
        save_png(stack_rows(rows, labels=[f"epoch {e + 1}" for e, _, _ in self.history]), out / "samples_over_epochs.png")
        save_gif([grid for _, _, grid in self.history], out / "samples_over_epochs.gif", duration=0.5)
