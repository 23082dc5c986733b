"""The VAE-GAN latent-diffusion study's pictures of a class-conditional latent diffusion model: class rows and latent projections."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from genface.callbacks.sample_grid import log_image
from genface.models.latent_diffusion import LatentDiffusion, class_grid, encode_dataset
from genface.viz.grids import save_png
from genface.viz.latents import PROJECTIONS, latent_scatter


class LatentPictures(pl.Callback):
    """The VAE-GAN latent-diffusion study's pictures, every `every_n_epochs` epochs (and after the last), rank 0, into `dirpath`:
    `classes_epoch_XXXX.png` (one row of `n_per_class` samples per class, fixed latents) and
    `latents_{tsne,pca}_epoch_XXXX.png` (encoded validation images, up to `max_points`, coloured by class).
    The denoising path and its GIF come from `genface.callbacks.denoising_path.DenoisingPath`."""

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        n_per_class: int = 8,
        every_n_epochs: int = 1,
        max_points: int = 500,
        projections: Sequence[str] = PROJECTIONS,
        seed: int = 0,
        dirpath: str | None = None,
    ) -> None:
        if n_per_class < 1 or every_n_epochs < 1 or max_points < 3:
            raise ValueError(
                "callbacks.latent_pictures: n_per_class, every_n_epochs >= 1 and max_points >= 3"
            )
        unknown = set(projections) - set(PROJECTIONS)
        if unknown:
            raise ValueError(
                f"callbacks.latent_pictures.projections: unknown {sorted(unknown)}; allowed {PROJECTIONS}"
            )
        self.class_names, self.n_per_class, self.every_n_epochs = class_names, n_per_class, every_n_epochs
        self.max_points, self.projections, self.seed, self.dirpath = (
            max_points,
            tuple(projections),
            seed,
            dirpath,
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, LatentDiffusion) or not pl_module.num_classes:
            raise TypeError(
                "LatentPictures needs a class-conditional LatentDiffusion (model.num_classes > 0)"
            )
        k = pl_module.num_classes
        names = list(self.class_names or [str(i) for i in range(k)])
        if len(names) != k:
            raise ValueError(f"callbacks.latent_pictures.class_names has {len(names)} names for {k} classes")
        self.class_names = names

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: LatentDiffusion) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs not in (None, -1) and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "samples")
        picture = class_grid(pl_module, self.class_names, self.n_per_class, self.seed)
        save_png(picture, out / f"classes_epoch_{epoch:04d}.png")
        log_image(trainer, "class_samples", picture, step=trainer.global_step)
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        if loader is None:
            return
        latents, labels = encode_dataset(pl_module, loader, self.max_points)
        for method in self.projections:
            latent_scatter(
                latents, labels, out / f"latents_{method}_epoch_{epoch:04d}.png", method, self.class_names,
                title=f"{method.upper()} of encoded validation latents, epoch {epoch + 1}", seed=self.seed,
            )  # fmt: skip
