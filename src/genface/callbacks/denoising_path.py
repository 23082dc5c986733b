"""Denoising-path pictures during training: how the model turns fixed noise into images, per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from genface.callbacks.sample_grid import log_image
from genface.viz.diffusion import animation_gif, path_gif, path_strip
from genface.viz.grids import save_png


class DenoisingPath(pl.Callback):
    """Every `every_n_epochs` epochs (and after the last), rank 0 samples the same `n` latents with
    `pl_module.generate_with_path` (DDPM, DD-GAN) and writes `<dirpath>/path_epoch_XXXX.png` (x_t and
    predicted x0 over `columns` steps, see `genface.viz.diffusion.path_strip`) and `.gif` (the sampling as
    an animation); the strip also goes to the loggers under `denoising_path`.

    For a class-conditional model with `class_gifs` it also writes, for each class k, the study's animation of
    the same latents sampled with label k: `path_class{k}_epoch_XXXX.gif`, `gif_frames` frames at `fps`
    (`genface.viz.diffusion.animation_gif`), captioned with `class_names[k]` when given.
    """

    def __init__(
        self,
        n: int = 4,
        every_n_epochs: int = 1,
        seed: int = 0,
        columns: int = 10,
        dirpath: str | None = None,
        class_gifs: bool = True,
        gif_frames: int = 50,
        fps: float = 15.0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if n < 1 or every_n_epochs < 1 or columns < 1:
            raise ValueError("callbacks.denoising_path.n, every_n_epochs and columns must be >= 1")
        if gif_frames < 2 or fps <= 0:
            raise ValueError(
                f"callbacks.denoising_path: gif_frames must be >= 2 and fps > 0, got {gif_frames} and {fps}"
            )
        self.n, self.every_n_epochs, self.seed, self.columns, self.dirpath = (
            n,
            every_n_epochs,
            seed,
            columns,
            dirpath,
        )
        self.class_gifs, self.gif_frames, self.fps = class_gifs, gif_frames, fps
        self.class_names = list(class_names) if class_names is not None else None
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
        k = pl_module.num_classes
        if self.class_names is not None and k and len(self.class_names) != k:
            raise ValueError(
                f"callbacks.denoising_path.class_names has {len(self.class_names)} names for {k} classes"
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
        if self.class_gifs and pl_module.num_classes:
            self._class_gifs(pl_module, out, epoch)

    def _class_gifs(self, pl_module: pl.LightningModule, out: Path, epoch: int) -> None:
        """One animation per class; a DDPM keeps only about `gif_frames` steps of a long path (decoding costs)."""
        steps = getattr(pl_module, "sampling_timesteps", None)
        kw = {"every": max(1, len(steps) // (self.gif_frames - 1))} if steps is not None else {}
        for k in range(pl_module.num_classes):
            labels = torch.full((self.n,), k, dtype=torch.long)
            _, path = pl_module.generate_with_path(self._latents, labels, **kw)
            name = self.class_names[k] if self.class_names else f"class {k}"
            animation_gif(
                path,
                out / f"path_class{k}_epoch_{epoch:04d}.gif",
                frames=self.gif_frames,
                fps=self.fps,
                title=name,
            )
