"""Originals over reconstructions: the picture of an autoencoder's progress (first stages, VAE-GAN)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from genface.callbacks.sample_grid import log_image
from genface.viz.grids import grid_image, save_png, stack_rows


class ReconstructionGrid(pl.Callback):
    """After every `every_n_epochs`-th validation, rank 0 writes `<dirpath>/recon_epoch_XXXX.png`: the first
    `n` validation images (top row) over their reconstructions (bottom row); also sent to the loggers."""

    def __init__(self, n: int = 8, every_n_epochs: int = 1, dirpath: str | None = None) -> None:
        if n < 1 or every_n_epochs < 1:
            raise ValueError("callbacks.reconstruction_grid.n and every_n_epochs must be >= 1")
        self.n, self.every_n_epochs, self.dirpath = n, every_n_epochs, dirpath
        self._images: Tensor | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not callable(getattr(pl_module, "reconstruct", None)):
            raise TypeError(
                f"ReconstructionGrid needs an autoencoder (reconstruct); {type(pl_module).__name__} has none"
            )

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0 and self._images is None:
            self._images = batch[0][: self.n].detach().cpu()

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            self._images is None
            or trainer.sanity_checking
            or (trainer.current_epoch + 1) % self.every_n_epochs
        ):
            return
        rec = pl_module.reconstruct(self._images).cpu()
        picture = stack_rows([grid_image(self._images, nrow=self.n), grid_image(rec, nrow=self.n)])
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "samples")
        save_png(picture, out / f"recon_epoch_{trainer.current_epoch:04d}.png")
        log_image(trainer, "reconstructions", picture, step=trainer.global_step)
