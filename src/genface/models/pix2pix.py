"""Pix2Pix (Isola et al. 2017): a U-Net translator trained with a conditional PatchGAN and L1.

Objective, as the reference pytorch-CycleGAN-and-pix2pix: D sees (source, image) pairs and minimises
0.5 x its GAN loss (the paper halves D's objective); G minimises its GAN loss + λ·L1(G(source), target)
with λ = 100. Adam 2e-4, β1 0.5; the learning rate stays constant for `lr_constant_epochs`, then decays
linearly to 0 over `lr_decay_epochs` (the reference's `lambda` policy).

Pix2Pix is a translator, not a sampler: `translate(source)` replaces the Generative contract. It runs
the generator in eval mode, so it is deterministic: decoder dropout is off and batch norm uses its running
statistics. The paper instead keeps dropout and batch statistics at test time (its only noise source,
which it found to add little diversity); genface chooses reproducible translations, which metrics and
triplet grids need.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from pytorch_lightning.utilities import rank_zero_warn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from genface.losses import GAN_LOSSES, discriminator_loss, generator_loss
from genface.models.base import AdversarialTraining, GenfaceModule, eval_scope


def linear_decay(lr_constant_epochs: int, lr_decay_epochs: int):
    """Learning-rate factor after `epoch` finished epochs: 1, then linearly down to 1/(decay+1), then 0.

    Same rule as the reference: 1 - max(0, epoch + 1 - constant) / (decay + 1), clipped at 0.
    """

    def factor(epoch: int) -> float:
        return max(0.0, 1.0 - max(0, epoch + 1 - lr_constant_epochs) / float(lr_decay_epochs + 1))

    return factor


class Pix2Pix(AdversarialTraining, GenfaceModule):
    """Paired translation source -> target on `(source, target)` batches.

    Args:
        generator: Hydra config of the translator (`genface.nets.pix2pix_unet.UNetGenerator`).
        discriminator: Hydra config of the conditional discriminator (`genface.nets.patchgan.PatchGAN`);
            its `in_channels` is filled in: source + target channels of the generator.
        optimizer_g, optimizer_d: partial optimiser configs.
        loss: GAN loss: "bce" (the reference's "vanilla"), "lsgan", "hinge". genface's lsgan generator
            term is 0.5·(D-1)², half the reference's MSE, so λ weighs L1 twice as much for lsgan.
        lambda_l1: weight of the L1 term.
        lr_constant_epochs, lr_decay_epochs: the learning-rate schedule (should sum to trainer.max_epochs).
    """

    def __init__(
        self,
        generator: dict[str, Any],
        discriminator: dict[str, Any],
        optimizer_g: dict[str, Any],
        optimizer_d: dict[str, Any],
        loss: str = "bce",
        lambda_l1: float = 100.0,
        lr_constant_epochs: int = 100,
        lr_decay_epochs: int = 100,
    ) -> None:
        super().__init__()
        if loss not in GAN_LOSSES:
            raise ValueError(f"model.loss={loss!r} is not allowed; allowed: {', '.join(GAN_LOSSES)}")
        if lambda_l1 < 0 or lr_constant_epochs < 0 or lr_decay_epochs < 0:
            raise ValueError(
                "model.lambda_l1, model.lr_constant_epochs and model.lr_decay_epochs must be >= 0"
            )
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = instantiate(generator)
        g = self.generator
        self.discriminator = instantiate(discriminator, in_channels=g.in_channels + g.out_channels)
        # Images in [-1, 1] are scored in [0, 1]; PSNR per image, then averaged (as papers report it).
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    # ----- translation ----------------------------------------------------------------------------
    def translate(self, source: torch.Tensor) -> torch.Tensor:
        """Translations (N, C, H, W) in [-1, 1] of sources (N, C_src, H, W): eval mode, deterministic."""
        with eval_scope(self.generator):
            return self.generator(source.to(self.device)).clamp(-1, 1)

    # ----- training -------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt_g = instantiate(self.hparams.optimizer_g)(params=self.generator.parameters())
        opt_d = instantiate(self.hparams.optimizer_d)(params=self.discriminator.parameters())
        rule = linear_decay(self.hparams.lr_constant_epochs, self.hparams.lr_decay_epochs)
        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, rule) for opt in (opt_g, opt_d)]
        return [opt_g, opt_d], schedulers

    def on_fit_start(self) -> None:
        total = self.hparams.lr_constant_epochs + self.hparams.lr_decay_epochs
        max_epochs = self.trainer.max_epochs
        if max_epochs not in (None, -1) and max_epochs != total:
            rank_zero_warn(
                f"model.lr_constant_epochs + model.lr_decay_epochs = {total} but trainer.max_epochs = {max_epochs}: "
                "the learning rate will not end its linear decay at the last epoch"
            )

    def _d_input(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([source, image], dim=1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        source, target = batch
        opt_g, opt_d = self.optimizers()
        kind = self.hparams.loss
        fake = self.generator(source)

        real_logits = self.discriminator(self._d_input(source, target))
        fake_logits = self.discriminator(self._d_input(source, fake.detach()))
        loss_d = 0.5 * discriminator_loss(kind, real_logits, fake_logits)
        self.optimizer_update(opt_d, loss_d)

        with self.frozen(self.discriminator):
            loss_gan = generator_loss(kind, self.discriminator(self._d_input(source, fake)))
            loss_l1 = F.l1_loss(fake, target)
            loss_g = loss_gan + self.hparams.lambda_l1 * loss_l1
            self.optimizer_update(opt_g, loss_g)

        self.log_adversarial(
            loss_d, loss_g, torch.sigmoid(real_logits), torch.sigmoid(fake_logits), source.size(0),
            loss_g_gan=loss_gan, l1=loss_l1,
        )  # fmt: skip

    def on_train_epoch_end(self) -> None:
        # Manual optimisation: Lightning leaves scheduler stepping to the module.
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """L1 (in [-1, 1] units, the training term), PSNR and SSIM (in [0, 1]) of eval-mode translations.

        Returns the batch's translations so that callbacks (FID/KID of outputs) need not translate again.
        """
        source, target = batch
        output = self.generator(source).float().clamp(-1, 1)
        target = target.float()
        out01, target01 = (output + 1) / 2, (target + 1) / 2
        # Metrics in float32 also under mixed precision: SSIM's Gaussian filter is a convolution, which
        # autocast would run in bf16/fp16.
        with torch.autocast(self.device.type, enabled=False):
            self.val_psnr(out01, target01)
            self.val_ssim(out01, target01)
        n = source.size(0)
        self.log("val/l1", F.l1_loss(output, target), batch_size=n, sync_dist=True)
        self.log("val/psnr", self.val_psnr, batch_size=n)
        self.log("val/ssim", self.val_ssim, batch_size=n)
        return {"source": source, "output": output, "target": target}
