"""Denoising-path pictures during training: how the model turns fixed noise into images, per epoch."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from genface.callbacks.sample_grid import log_image
from genface.viz.diffusion import path_gif, path_strip
from genface.viz.grids import save_png


class DenoisingPath(pl.Callback):
    """Every `every_n_epochs` epochs (and after the last), rank 0 samples the same `n` latents with
    `pl_module.generate_with_path` (DDPM, DD-GAN) and writes `<dirpath>/path_epoch_XXXX.png` (x_t and
    predicted x0 over `columns` steps, see `genface.viz.diffusion.path_strip`) and `.gif` (the sampling as
    an animation); the strip also goes to the loggers under `denoising_path`.
    """

    def __init__(
        self, n: int = 4, every_n_epochs: int = 1, seed: int = 0, columns: int = 10, dirpath: str | None = None
    ) -> None:
        if n < 1 or every_n_epochs < 1 or columns < 1:
            raise ValueError("callbacks.denoising_path.n, every_n_epochs and columns must be >= 1")
        self.n, self.every_n_epochs, self.seed, self.columns, self.dirpath = n, every_n_epochs, seed, columns, dirpath
        self._latents: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def out_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "samples")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not callable(getattr(pl_module, "generate_with_path", None)):
            raise TypeError(
                f"DenoisingPath needs a model with generate_with_path (DDPM, DD-GAN); {type(pl_module).__name__} "
                "has none: drop callbacks.denoising_path"
            )
        generator = torch.Generator().manual_seed(self.seed)
        self._latents = pl_module.sample_latents(self.n, generator=generator).cpu()
        self._labels = pl_module.default_labels(self.n)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs not in (None, -1) and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        _, path = pl_module.generate_with_path(self._latents, self._labels)
        strip = path_strip(path, n_rows=self.n, columns=self.columns)
        out = self.out_dir(trainer)
        save_png(strip, out / f"path_epoch_{epoch:04d}.png")
        path_gif(path, out / f"path_epoch_{epoch:04d}.gif")
        log_image(trainer, "denoising_path", strip, step=trainer.global_step)
