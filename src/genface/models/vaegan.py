"""VAE-GAN autoencoder: the first stage of latent diffusion (the VAE-GAN latent-diffusion study; Esser et al. 2021 / Rombach et al. 2022).

Loss of the autoencoder: reconstruction (L1 or L2, plus an optional VGG perceptual term) + a KL term whose
weight warms up linearly + an adversarial term that switches on at `disc_start` with the adaptive weight
||∇L_rec|| / ||∇L_G|| at the decoder's last layer (VQGAN), so that the GAN never drowns reconstruction
whatever the loss scales + optional class losses on the latent mean (the VAE-GAN latent-diffusion study: "classification and center
losses"): a linear classification head (cross-entropy), which makes the latent keep the class even when its
pixel footprint is tiny (a smile is a pixel or two at 32 px), and a centre loss pulling means to learned
class centres.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from genface.losses import GAN_LOSSES, VGG16_TAPS, VGGPerceptual, discriminator_loss, generator_loss
from genface.models.base import GenerativeModule
from genface.nets.autoencoder import DiagonalGaussian

REC_LOSSES = ("l1", "l2")


def class_index(labels: Tensor, num_classes: int) -> Tensor:
    """Class indices (N,) long from class labels (N,) or one binary attribute (N, 1) (num_classes = 2)."""
    if labels.is_floating_point():
        if labels.ndim == 2 and labels.shape[1] == 1 and num_classes == 2:
            return labels[:, 0].round().long()
        raise ValueError(
            f"labels must be class indices (N,) or one binary attribute (N, 1) with num_classes=2; got float "
            f"{tuple(labels.shape)} with num_classes={num_classes}"
        )
    labels = labels.reshape(-1).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels


class VAEGAN(GenerativeModule):
    """KL autoencoder trained with reconstruction, KL, adversarial, perceptual and centre losses.

    `autoencoder` (a `genface.nets.autoencoder.AutoencoderKL` config), `discriminator` (e.g. the PatchGAN;
    null trains a plain VAE) and the optimisers are Hydra configs, rebuilt by `load_from_checkpoint`.
    `perceptual.weights` is a path to VGG16 weights; null (the default: none ship offline) turns it off.
    As a Generative module it decodes prior samples z ~ N(0, I) (the VAE as a generator); the first stage
    of latent diffusion uses `encode` / `decode`.
    """

    ema_target_name = "autoencoder"

    def __init__(
        self,
        autoencoder: dict[str, Any],
        optimizer_ae: dict[str, Any],
        discriminator: dict[str, Any] | None = None,
        optimizer_d: dict[str, Any] | None = None,
        rec_loss: str = "l1",
        kl_weight: float = 1.0e-6,
        kl_warmup_steps: int = 0,
        gan_loss: str = "hinge",
        disc_start: int = 0,
        disc_weight: float = 0.5,
        adaptive_weight: bool = True,
        perceptual: dict[str, Any] | None = None,
        num_classes: int = 0,
        center_weight: float = 0.0,
        class_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if rec_loss not in REC_LOSSES:
            raise ValueError(f"model.rec_loss={rec_loss!r} is not allowed; allowed: {', '.join(REC_LOSSES)}")
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"model.gan_loss={gan_loss!r} is not allowed; allowed: {', '.join(GAN_LOSSES)}")
        if (discriminator is None) != (optimizer_d is None):
            raise ValueError(
                "model.discriminator and model.optimizer_d must both be set, or both null (no GAN)"
            )
        if min(kl_weight, kl_warmup_steps, disc_start, disc_weight, center_weight, class_weight, num_classes) < 0:
            raise ValueError("model loss weights, kl_warmup_steps, disc_start and num_classes must be >= 0")
        for key, weight in (("center_weight", center_weight), ("class_weight", class_weight)):
            if weight > 0 and num_classes < 2:
                raise ValueError(f"model.{key} > 0 needs labelled classes: set model.num_classes >= 2")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.autoencoder = instantiate(autoencoder)
        self.discriminator = instantiate(discriminator) if discriminator else None
        perceptual = perceptual or {}
        self.perceptual = (
            VGGPerceptual(perceptual["weights"], perceptual.get("taps", VGG16_TAPS))
            if perceptual.get("weights")
            else None
        )
        flat = math.prod(self.autoencoder.latent_shape)
        self.centres = nn.Parameter(torch.zeros(num_classes, flat)) if center_weight > 0 else None
        self.class_head = nn.Linear(flat, num_classes) if class_weight > 0 else None
        # Counts autoencoder updates (Lightning's global_step counts both optimisers): drives KL warm-up and
        # the GAN switch, and is checkpointed so that a resumed run continues the schedule.
        self.register_buffer("ae_steps", torch.zeros((), dtype=torch.long))

    # ----- first-stage API ------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.autoencoder.latent_shape)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        return self.autoencoder.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.autoencoder.decode(z)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Posterior-mean reconstructions in [-1, 1] (eval mode), for grids and metrics."""
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        try:
            return self.decode(self.encode(x.to(self.device)).mode()).clamp(-1, 1)
        finally:
            self.autoencoder.train(was_training)

    # ----- Generative contract --------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return math.prod(self.latent_shape)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        ae = self.autoencoder
        return (ae.channels, ae.resolution, ae.resolution)

    def _generate(self, latents: Tensor, labels: Tensor | None) -> Tensor:
        return self.decode(latents.reshape(-1, *self.latent_shape))

    # ----- losses ---------------------------------------------------------------------------------
    def kl_weight_now(self) -> float:
        """KL weight at the current step: linear warm-up from 0 over `kl_warmup_steps` updates."""
        warm = self.hparams.kl_warmup_steps
        return self.hparams.kl_weight * (min(1.0, float(self.ae_steps) / warm) if warm else 1.0)

    def gan_active(self) -> bool:
        return self.discriminator is not None and int(self.ae_steps) >= self.hparams.disc_start

    def adaptive_weight(self, rec_loss: Tensor, g_loss: Tensor) -> Tensor:
        """disc_weight · ||∇_w L_rec|| / ||∇_w L_G|| at the decoder's last layer w (clamped, no gradient)."""
        if not self.hparams.adaptive_weight:
            return torch.tensor(self.hparams.disc_weight, device=self.device)
        w = self.autoencoder.last_layer
        (g_rec,) = torch.autograd.grad(rec_loss, w, retain_graph=True)
        (g_gan,) = torch.autograd.grad(g_loss, w, retain_graph=True)
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach() * self.hparams.disc_weight

    def reconstruction_loss(self, rec: Tensor, x: Tensor) -> Tensor:
        dist = (rec - x).abs() if self.hparams.rec_loss == "l1" else (rec - x).pow(2)
        loss = dist.flatten(1).mean(1)
        if self.perceptual is not None:
            loss = loss + self.hparams.perceptual.get("weight", 1.0) * self.perceptual(rec, x)
        return loss.mean()

    def center_loss(self, posterior: DiagonalGaussian, target: Tensor) -> Tensor:
        y = class_index(target, self.hparams.num_classes)
        return (posterior.mean.flatten(1) - self.centres[y]).pow(2).sum(1).mean()

    def class_logits(self, posterior: DiagonalGaussian) -> Tensor:
        """(N, num_classes) logits of the linear head on the latent mean."""
        return self.class_head(posterior.mean.flatten(1))

    # ----- training -------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = list(self.autoencoder.parameters()) + ([self.centres] if self.centres is not None else [])
        params += list(self.class_head.parameters()) if self.class_head is not None else []
        opt_ae = instantiate(self.hparams.optimizer_ae)(params=params)
        if self.discriminator is None:
            return opt_ae
        return [opt_ae, instantiate(self.hparams.optimizer_d)(params=self.discriminator.parameters())]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, target = batch
        opts = self.optimizers()
        opt_ae, opt_d = (opts[0], opts[1]) if isinstance(opts, list) else (opts, None)
        gan_on = self.gan_active()
        logs: dict[str, Tensor] = {}

        if opt_d is not None:
            self.toggle_optimizer(opt_ae)
        posterior = self.encode(x)
        rec = self.decode(posterior.sample())
        rec_loss = self.reconstruction_loss(rec, x)
        kl = posterior.kl().mean()
        loss = rec_loss + self.kl_weight_now() * kl
        if self.centres is not None:
            logs["train/center"] = self.center_loss(posterior, target)
            loss = loss + self.hparams.center_weight * logs["train/center"]
        if self.class_head is not None:
            logs["train/latent_ce"] = nn.functional.cross_entropy(
                self.class_logits(posterior), class_index(target, self.hparams.num_classes)
            )
            loss = loss + self.hparams.class_weight * logs["train/latent_ce"]
        if gan_on:
            g_loss = generator_loss(self.hparams.gan_loss, self.discriminator(rec))
            d_weight = self.adaptive_weight(rec_loss, g_loss)
            loss = loss + d_weight * g_loss
            logs.update({"train/loss_g": g_loss.detach(), "train/d_weight": d_weight})
        self.optimizer_update(opt_ae, loss)
        if opt_d is not None:
            self.untoggle_optimizer(opt_ae)

        if gan_on:
            self.toggle_optimizer(opt_d)
            loss_d = discriminator_loss(
                self.hparams.gan_loss, self.discriminator(x), self.discriminator(rec.detach())
            )
            self.optimizer_update(opt_d, loss_d)
            self.untoggle_optimizer(opt_d)
            logs["train/loss_d"] = loss_d.detach()
        self.ae_steps += 1

        logs.update({"train/loss": loss.detach(), "train/rec": rec_loss.detach(), "train/kl": kl.detach()})
        self.log_dict(logs, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.size(0))
        self.log("train/kl_weight", self.kl_weight_now(), on_step=True, on_epoch=False, batch_size=x.size(0))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Reconstruction quality of held-out images from the posterior mean: L1, PSNR and SSIM on [0, 1]."""
        x, target = batch
        posterior = self.encode(x)
        rec = self.decode(posterior.mode()).clamp(-1, 1)
        if self.class_head is not None:
            y = class_index(target, self.hparams.num_classes)
            acc = (self.class_logits(posterior).argmax(1) == y).float().mean()
            self.log("val/latent_acc", acc, on_epoch=True, batch_size=x.size(0), sync_dist=True)
        a, b = (rec + 1) / 2, (x + 1) / 2
        side = x.shape[-1]
        kernel = min(11, side if side % 2 else side - 1)
        self.log_dict(
            {
                "val/l1": (rec - x).abs().mean(),
                "val/psnr": peak_signal_noise_ratio(a, b, data_range=1.0),
                "val/ssim": structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=kernel),
            },
            on_epoch=True,
            batch_size=x.size(0),
            sync_dist=True,
        )
