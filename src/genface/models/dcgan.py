"""DCGAN: adversarial training of a generator and a discriminator with manual optimisation."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate

from genface.losses import GAN_LOSSES, discriminator_loss, generator_loss
from genface.models.base import GANModule


class DCGAN(GANModule):
    """Unconditional GAN (Radford et al. 2016; DLStudio's DG1 study's DLStudio DG1 recipe by config).

    `generator`, `discriminator` and the optimisers are Hydra configs (plain dicts) rather than built
    objects, so that `load_from_checkpoint` can rebuild the model from its saved hyper-parameters.
    One training step = `d_steps` discriminator updates, then one generator update.
    """

    def __init__(
        self,
        generator: dict[str, Any],
        discriminator: dict[str, Any],
        optimizer_g: dict[str, Any],
        optimizer_d: dict[str, Any],
        loss: str = "bce",
        d_steps: int = 1,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        if loss not in GAN_LOSSES:
            raise ValueError(f"model.loss={loss!r} is not allowed; allowed: {', '.join(GAN_LOSSES)}")
        if d_steps < 1:
            raise ValueError(f"model.d_steps must be >= 1, got {d_steps}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = instantiate(generator)
        self.discriminator = instantiate(discriminator)
        if ema_decay:
            self.enable_ema(ema_decay)

    # ----- Generative contract --------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim

    def _generate(self, latents: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.generator(latents)

    # ----- training -------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt_g = instantiate(self.hparams.optimizer_g)(params=self.generator.parameters())
        opt_d = instantiate(self.hparams.optimizer_d)(params=self.discriminator.parameters())
        return [opt_g, opt_d]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        kind = self.hparams.loss
        n = real.size(0)

        for _ in range(self.hparams.d_steps):
            with torch.no_grad():
                fake = self.generator(torch.randn(n, self.latent_dim, device=self.device))
            real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
            loss_d = discriminator_loss(kind, real_logits, fake_logits)
            self.optimizer_update(opt_d, loss_d)

        with self.frozen(self.discriminator):
            fake = self.generator(torch.randn(n, self.latent_dim, device=self.device))
            loss_g = generator_loss(kind, self.discriminator(fake))
            self.optimizer_update(opt_g, loss_g)
        self.update_ema()

        self.log_adversarial(loss_d, loss_g, torch.sigmoid(real_logits), torch.sigmoid(fake_logits), n)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """How confidently D accepts held-out real images: a cheap over-fitting signal beside FID."""
        real, _ = batch
        d_real = torch.sigmoid(self.discriminator(real).float()).mean()
        self.log("val/d_real", d_real, batch_size=real.size(0), sync_dist=True)
