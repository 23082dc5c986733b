"""VAE-GAN autoencoder: the first stage of latent diffusion (the VAE-GAN latent-diffusion study; Esser et al. 2021 / Rombach et al. 2022).

Loss of the autoencoder: reconstruction (L1 or L2, plus an optional VGG perceptual term) + a KL term + an adversarial
term with the adaptive weight ||∇L_rec|| / ||∇L_G|| at the decoder's last layer (VQGAN), so that the GAN never
drowns reconstruction whatever the loss scales + optional class losses on the latent mean (the VAE-GAN
latent-diffusion study: "classification and center losses"): a linear classification head (cross-entropy), which
makes the latent keep the class even when its pixel footprint is tiny (a smile is a pixel or two at 32 px), and a
centre loss pulling means to learned class centres.

When each term counts is scheduled in one of two ways: by autoencoder updates (the KL weight warms up linearly over
`kl_warmup_steps`, the GAN switches on at `disc_start`), or by epochs (`stages`: the study's order, reconstruction
alone first, then KL, then the class and centre losses, then the GAN, each switched on at an epoch and optionally
ramped in linearly over some epochs).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from genface.data.labels import class_index
from genface.losses import GAN_LOSSES, VGG16_TAPS, VGGPerceptual, discriminator_loss, generator_loss
from genface.models.base import GANModule
from genface.nets.autoencoder import DiagonalGaussian

REC_LOSSES = ("l1", "l2")
#: The losses `model.stages` can schedule by epoch.
STAGED_LOSSES = ("kl", "class", "center", "gan")
_STAGE_KEYS = ("start_epoch", "ramp_epochs")


def parse_stages(stages: dict[str, Any] | None) -> dict[str, tuple[int, int]]:
    """{loss: (start_epoch, ramp_epochs)} from `model.stages`, whose values are a start epoch (the weight switches
    on fully) or {start_epoch: E, ramp_epochs: R} (it grows linearly to full over R epochs from E)."""
    if not stages:
        return {}
    if not isinstance(stages, dict):
        raise ValueError(
            f"model.stages must map losses ({', '.join(STAGED_LOSSES)}) to a start epoch or "
            f"{{start_epoch, ramp_epochs}}; got {stages!r}"
        )
    parsed = {}
    for name, value in stages.items():
        if name not in STAGED_LOSSES:
            raise ValueError(
                f"model.stages.{name}: unknown loss {name!r}; allowed: {', '.join(STAGED_LOSSES)}"
            )
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(_STAGE_KEYS))
            if unknown or "start_epoch" not in value:
                raise ValueError(
                    f"model.stages.{name} needs start_epoch and may have ramp_epochs (nothing else); got {value!r}"
                )
            start, ramp = value["start_epoch"], value.get("ramp_epochs", 0)
        else:
            start, ramp = value, 0
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, ramp)):
            raise ValueError(
                f"model.stages.{name}: start_epoch and ramp_epochs must be integers >= 0; got {start!r}, {ramp!r}"
            )
        parsed[name] = (start, ramp)
    return parsed


def stage_factor(start: int, ramp: int, epoch: int) -> float:
    """0 before epoch `start`; from there 1 at once (ramp 0) or (epoch - start + 1) / ramp up to 1."""
    if epoch < start:
        return 0.0
    return min(1.0, (epoch - start + 1) / ramp) if ramp else 1.0


class VAEGAN(GANModule):
    """KL autoencoder trained with reconstruction, KL, adversarial, perceptual and centre losses.

    `autoencoder` (a `genface.nets.autoencoder.AutoencoderKL` config), `discriminator` (e.g. the PatchGAN;
    null trains a plain VAE) and the optimisers are Hydra configs, rebuilt by `load_from_checkpoint`.
    `perceptual.weights` is a path to VGG16 weights; null (the default: none ship offline) turns it off.
    `stages` schedules the KL, class, centre and GAN terms by epoch instead of by step (`parse_stages`).
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
        stages: dict[str, Any] | None = None,
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
        settings = (
            kl_weight,
            kl_warmup_steps,
            disc_start,
            disc_weight,
            center_weight,
            class_weight,
            num_classes,
        )
        if min(settings) < 0:
            raise ValueError("model loss weights, kl_warmup_steps, disc_start and num_classes must be >= 0")
        for key, weight in (("center_weight", center_weight), ("class_weight", class_weight)):
            if weight > 0 and num_classes < 2:
                raise ValueError(f"model.{key} > 0 needs labelled classes: set model.num_classes >= 2")
        self.stages = parse_stages(stages)
        self._check_stages(
            kl_warmup_steps, disc_start, center_weight, class_weight, discriminator is not None
        )
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
        self._host_steps: int | None = None  # ae_steps as a Python int: read once, then counted on the host

    def _check_stages(
        self, kl_warmup_steps: int, disc_start: int, center_weight: float, class_weight: float, has_d: bool
    ) -> None:
        """A loss is scheduled by steps or by epochs, never both, and a staged loss must exist."""
        for name, key, value in (
            ("kl", "kl_warmup_steps", kl_warmup_steps),
            ("gan", "disc_start", disc_start),
        ):
            if name in self.stages and value:
                raise ValueError(
                    f"model.stages.{name} and model.{key}={value} both schedule the {name.upper()} term: "
                    f"set model.{key}=0 to schedule it by epochs"
                )
        for name, key, weight in (
            ("class", "class_weight", class_weight),
            ("center", "center_weight", center_weight),
        ):
            if name in self.stages and weight <= 0:
                raise ValueError(f"model.stages.{name} schedules a loss that is off: set model.{key} > 0")
        if "gan" in self.stages and not has_d:
            raise ValueError("model.stages.gan schedules the GAN, but model.discriminator is null")

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
    def stage(self, name: str) -> float | None:
        """The epoch schedule's factor in [0, 1] for loss `name` at the current epoch; None if it is not staged."""
        if name not in self.stages:
            return None
        return stage_factor(*self.stages[name], self.current_epoch)

    @property
    def updates_done(self) -> int:
        """Autoencoder updates so far (the `ae_steps` buffer, which checkpoints keep), read from the device once
        and then counted here, so that the per-step loss weights cost no host sync."""
        if self._host_steps is None:
            self._host_steps = int(self.ae_steps)
        return self._host_steps

    def on_train_start(self) -> None:
        self._host_steps = None  # a resumed run's buffer was restored after construction

    def kl_weight_now(self) -> float:
        """KL weight now: by stage, or by linear warm-up from 0 over `kl_warmup_steps` updates."""
        factor = self.stage("kl")
        if factor is None:
            warm = self.hparams.kl_warmup_steps
            factor = min(1.0, self.updates_done / warm) if warm else 1.0
        return self.hparams.kl_weight * factor

    def loss_weights(self) -> dict[str, float]:
        """The weights in force now, as `train/w_<name>` logs them: kl, class and center (the configured weight
        times its stage factor) and gan (the factor of the adversarial term; 0 = off, and D does not train)."""
        weights = {"kl": self.kl_weight_now()}
        for name, key, present in (
            ("class", "class_weight", self.class_head is not None),
            ("center", "center_weight", self.centres is not None),
        ):
            if present:
                factor = self.stage(name)
                weights[name] = self.hparams[key] * (1.0 if factor is None else factor)
        if self.discriminator is not None:
            factor = self.stage("gan")
            weights["gan"] = (
                float(self.updates_done >= self.hparams.disc_start) if factor is None else factor
            )
        return weights

    def gan_active(self) -> bool:
        return self.loss_weights().get("gan", 0.0) > 0

    def loss_scale(self) -> Tensor:
        """The factor `manual_backward` multiplies losses by: GradScaler's scale under 16-mixed, else 1."""
        one = torch.ones((), device=self.device)
        scaler = (
            getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        )
        return scaler.scale(one) if scaler is not None else one

    def adaptive_weight(
        self, rec_loss: Tensor, g_loss: Tensor, scale: Tensor | float | None = None
    ) -> Tensor:
        """disc_weight · ||∇_w L_rec|| / ||∇_w L_G|| at the decoder's last layer w (clamped, no gradient).

        The gradients are taken of the losses times `scale` (default: `loss_scale()`, GradScaler's factor under
        16-mixed), as `manual_backward` takes them, so that float16 backward passes do not underflow; the norms are
        divided by it in float32, which leaves the ratio as without scaling. A ratio that overflowed (the scaler
        then skips the step and lowers its scale) counts as 0.
        """
        if not self.hparams.adaptive_weight:
            return torch.tensor(self.hparams.disc_weight, device=self.device)
        scale = self.loss_scale() if scale is None else torch.as_tensor(scale, device=self.device)
        scale = scale.float()
        w = self.autoencoder.last_layer
        (g_rec,) = torch.autograd.grad(rec_loss * scale, w, retain_graph=True)
        (g_gan,) = torch.autograd.grad(g_loss * scale, w, retain_graph=True)
        ratio = (g_rec.float().norm() / scale) / (g_gan.float().norm() / scale + 1e-4)
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.zeros_like(ratio))
        return ratio.clamp(0.0, 1e4).detach() * self.hparams.disc_weight

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
        weights = self.loss_weights()
        gan_on = weights.get("gan", 0.0) > 0
        logs: dict[str, Tensor] = {}

        # D takes no gradient from the autoencoder's update (its own update below sees only detached images)
        with self.frozen(self.discriminator) if opt_d is not None else contextlib.nullcontext():
            loss, rec, rec_loss, kl = self._autoencoder_update(opt_ae, x, target, weights, gan_on, logs)

        if gan_on:
            loss_d = discriminator_loss(
                self.hparams.gan_loss, self.discriminator(x), self.discriminator(rec.detach())
            )
            self.optimizer_update(opt_d, loss_d)
            logs["train/loss_d"] = loss_d.detach()
        self.ae_steps += 1
        self._host_steps = self.updates_done + 1

        logs.update({"train/loss": loss.detach(), "train/rec": rec_loss.detach(), "train/kl": kl.detach()})
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=x.size(0))
        self.log_dict(
            {f"train/w_{name}": float(w) for name, w in weights.items()},
            on_step=True, on_epoch=False, batch_size=x.size(0),
        )  # fmt: skip

    def _autoencoder_update(
        self, opt_ae: Any, x: Tensor, target: Tensor, weights: dict[str, float], gan_on: bool,
        logs: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One update of the encoder and decoder (and class head, centres): (loss, reconstructions, L_rec, KL)."""
        posterior = self.encode(x)
        rec = self.decode(posterior.sample())
        rec_loss = self.reconstruction_loss(rec, x)
        kl = posterior.kl().mean()
        loss = rec_loss + weights["kl"] * kl
        if self.centres is not None:
            logs["train/center"] = self.center_loss(posterior, target)
            loss = loss + weights["center"] * logs["train/center"]
        if self.class_head is not None:
            logs["train/latent_ce"] = nn.functional.cross_entropy(
                self.class_logits(posterior), class_index(target, self.hparams.num_classes)
            )
            loss = loss + weights["class"] * logs["train/latent_ce"]
        if gan_on:
            g_loss = generator_loss(self.hparams.gan_loss, self.discriminator(rec))
            d_weight = self.adaptive_weight(rec_loss, g_loss)
            loss = loss + weights["gan"] * d_weight * g_loss
            logs.update({"train/loss_g": g_loss.detach(), "train/d_weight": d_weight})
        self.optimizer_update(opt_ae, loss)
        return loss, rec, rec_loss, kl

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
