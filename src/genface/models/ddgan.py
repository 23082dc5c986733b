"""Denoising-Diffusion GAN (Xiao, Kreis & Vahdat, ICLR 2022): a T-step diffusion whose every denoising
step is a conditional GAN, so that T = 2..4 steps suffice (the DD-GAN latent-analysis study: T = 2 on CelebA-HQ 128)."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics import Metric

from genface.diffusion import NoiseSchedule, q_sample_pair, sample_posterior
from genface.losses import GAN_LOSSES, discriminator_loss, generator_loss, r1_penalty
from genface.models.base import GANModule

#: (t, x_t fed to G, G's x0 prediction) per step, CPU copies: what the denoising-path plots need.
DenoisingSteps = list[tuple[int, Tensor, Tensor]]


class WeightedMean(Metric):
    """sum(weight * value) / sum(weight) over every update: NaN on a batch whose weights are all 0.

    torchmetrics' MeanMetric checks its inputs for NaN on the host at every update, and ignores the weights
    when that check is disabled (torchmetrics issue #3434); this one never leaves the device.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: Tensor) -> None:
        self.total += (value * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> Tensor:
        return self.total / self.weight


def cosine_factor(step: int, total: int, floor: float) -> float:
    """The LR multiplier `step` steps into a cosine from 1 to `floor` over `total` steps, `floor` after them
    (CosineAnnealingLR would rise again past its T_max)."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


class LatentLayout(NamedTuple):
    """Where each random input lives in DD-GAN's flat latent (n, D); keys of `z` and `noise` are timesteps.

    Order in the vector: x_T (C·H·W), then z_t for t = T-1, ..., 0 (nz each), then the posterior noise of
    steps t = T-1, ..., 1 (C·H·W each; step 0 returns the posterior mean and needs none).
    """

    x_T: slice
    z: dict[int, slice]
    noise: dict[int, slice]


class DDGAN(GANModule):
    """DD-GAN with manual optimisation: per batch one discriminator step, then one generator step.

    Training pairs: t ~ U{0..T-1}, (x_{t-1}, x_t) ~ q (x_{-1} = data). D tells real pairs from fake ones
    (x'_{t-1} ~ q(x_{t-1} | x_t, x0 = G(x_t, t, z)), x_t), with R1 on the real x_{t-1} every `lazy_reg`
    batches. The R1 weight is r1_gamma / 2 *without* the lazy_reg factor of StyleGAN2: that is what the
    paper's code does, so its r1_gamma values (e.g. 2 with lazy_reg 10 on CelebA-HQ) carry over unchanged.

    Besides the usual adversarial curves, `train/d_real_t{t}` and `train/d_fake_t{t}` are D's mean belief per
    timestep t (NaN on a step whose batch has no sample at t): at t = 0 D sees clean pairs and should separate
    them; at t = T-1 the pairs are mostly noise and D sits near chance, so the averages over t alone read as a
    collapse that is not there.

    Nets and optimisers are Hydra configs (plain dicts) so that `load_from_checkpoint` can rebuild them.
    With `use_cosine` both learning rates follow a cosine from their initial value to `lr_min`: over
    `trainer.max_epochs`, stepped once per epoch (the paper's CosineAnnealingLR, eta_min 1e-5), or, with
    `cosine_steps`, over that many batches (one step of each optimizer), stepped per batch and held at `lr_min`
    afterwards: the form for a run that a wall-clock budget or `max_steps`, not an epoch count, ends.
    """

    def __init__(
        self,
        generator: dict[str, Any],
        discriminator: dict[str, Any],
        optimizer_g: dict[str, Any],
        optimizer_d: dict[str, Any],
        num_timesteps: int = 2,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        loss: str = "non_saturating",
        r1_gamma: float = 0.05,
        lazy_reg: int = 1,
        ema_decay: float | None = 0.9999,
        use_cosine: bool = True,
        lr_min: float = 1e-5,
        cosine_steps: int | None = None,
    ) -> None:
        super().__init__()
        if loss not in GAN_LOSSES:
            raise ValueError(f"model.loss={loss!r} is not allowed; allowed: {', '.join(GAN_LOSSES)}")
        if lazy_reg < 1:
            raise ValueError(f"model.lazy_reg must be >= 1 (1 = R1 every batch), got {lazy_reg}")
        if r1_gamma < 0:
            raise ValueError(f"model.r1_gamma must be >= 0, got {r1_gamma}")
        if cosine_steps is not None and (not use_cosine or cosine_steps < 1):
            raise ValueError(
                f"model.cosine_steps={cosine_steps} needs model.use_cosine=true and a value >= 1 (null: decay "
                "over trainer.max_epochs)"
            )
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.schedule = NoiseSchedule.from_config("vp", num_timesteps, beta_min=beta_min, beta_max=beta_max)
        self.generator = instantiate(generator)
        self.discriminator = instantiate(discriminator)
        g_shape = (self.generator.channels, self.generator.resolution)
        d_shape = (self.discriminator.channels, self.discriminator.resolution)
        if g_shape != d_shape:
            raise ValueError(
                "model.generator and model.discriminator disagree on (channels, resolution): "
                f"{g_shape} vs {d_shape}"
            )
        if ema_decay:
            self.enable_ema(ema_decay)
        # Weighted means (weight: is the sample at t?) give NaN on a step where t is absent and the exact
        # per-t mean over the epoch. Rank-local, like the other train/ curves.
        self.d_per_timestep = nn.ModuleDict(
            {
                f"{kind}_t{t}": WeightedMean(sync_on_compute=False)
                for kind in ("d_real", "d_fake")
                for t in range(num_timesteps)
            }
        )

    # ----- Generative contract --------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def latent_layout(self) -> LatentLayout:
        """Slices of the flat latent; see `LatentLayout`. Edit e.g. only the z parts to keep x_T fixed."""
        c, h, w = self.image_shape
        pixels, nz, T = c * h * w, self.generator.nz, self.num_timesteps
        z = {t: slice(pixels + k * nz, pixels + (k + 1) * nz) for k, t in enumerate(range(T - 1, -1, -1))}
        start = pixels + T * nz
        noise = {
            t: slice(start + k * pixels, start + (k + 1) * pixels) for k, t in enumerate(range(T - 1, 0, -1))
        }
        return LatentLayout(slice(0, pixels), z, noise)

    @property
    def latent_dim(self) -> int:
        """C·H·W (x_T) + T·nz (z per step) + (T-1)·C·H·W (posterior noise per step but the last)."""
        c, h, w = self.image_shape
        return c * h * w * self.num_timesteps + self.num_timesteps * self.generator.nz

    def _chain(self, latents: Tensor, path: DenoisingSteps | None = None) -> Tensor:
        """Run the T-step reverse chain with every random input taken from `latents`."""
        if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
            raise ValueError(
                f"DD-GAN latents must have shape (n, {self.latent_dim}) (see latent_layout()), "
                f"got {tuple(latents.shape)}"
            )
        n, shape, layout = latents.shape[0], self.image_shape, self.latent_layout()
        x = latents[:, layout.x_T].reshape(n, *shape)
        for step in range(self.num_timesteps - 1, -1, -1):
            t = torch.full((n,), step, device=x.device, dtype=torch.long)
            x0 = self.generator(x, t, latents[:, layout.z[step]])
            if path is not None:
                path.append((step, x.cpu(), x0.cpu()))
            noise = latents[:, layout.noise[step]].reshape(n, *shape) if step > 0 else torch.zeros_like(x)
            x = sample_posterior(self.schedule, x0, x, t, noise)
        return x

    def _generate(self, latents: Tensor, labels: Tensor | None) -> Tensor:
        return self._chain(latents)

    def generate_with_path(
        self, latents: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, DenoisingSteps]:
        """`generate` plus the chain: one (t, x_t, predicted x0) per step, t = T-1 first (EMA weights)."""
        path: DenoisingSteps = []
        with self.sampling_scope():
            images = self._chain(latents.to(self.device), path).clamp(-1, 1)
        return images, path

    # ----- training -------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt_g = instantiate(self.hparams.optimizer_g)(params=self.generator.parameters())
        opt_d = instantiate(self.hparams.optimizer_d)(params=self.discriminator.parameters())
        if not self.hparams.use_cosine:
            return [opt_g, opt_d]
        if self.hparams.cosine_steps:
            schedulers = [
                torch.optim.lr_scheduler.LambdaLR(
                    opt,
                    functools.partial(
                        cosine_factor,
                        total=self.hparams.cosine_steps,
                        floor=self.hparams.lr_min / opt.defaults["lr"],
                    ),
                )
                for opt in (opt_g, opt_d)
            ]
            return [opt_g, opt_d], schedulers
        epochs = self.trainer.max_epochs
        if not epochs or epochs < 1:
            raise ValueError(
                "model.use_cosine decays the LR over trainer.max_epochs: set it, or model.cosine_steps, or "
                "model.use_cosine=false"
            )
        schedulers = [
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=self.hparams.lr_min)
            for opt in (opt_g, opt_d)
        ]
        return [opt_g, opt_d], schedulers

    def _real_pair(self, real: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.randint(0, self.num_timesteps, (real.size(0),), device=real.device)
        x_prev, x_t = q_sample_pair(self.schedule, real, t, torch.randn_like(real), torch.randn_like(real))
        return t, x_prev, x_t

    def _fake_prev(self, x_t: Tensor, t: Tensor) -> Tensor:
        """x'_{t-1} ~ q(x_{t-1} | x_t, x0 = G(x_t, t, z)) with fresh z and noise."""
        z = torch.randn(x_t.size(0), self.generator.nz, device=x_t.device, dtype=x_t.dtype)
        return sample_posterior(self.schedule, self.generator(x_t, t, z), x_t, t, torch.randn_like(x_t))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        kind, n = self.hparams.loss, real.size(0)
        # Lightning counts one global step per optimizer step: two per batch.
        apply_r1 = self.hparams.r1_gamma > 0 and (self.global_step // 2) % self.hparams.lazy_reg == 0

        t_d, x_prev, x_t = self._real_pair(real)
        real_logits = self.discriminator(x_prev, x_t, t_d)
        with torch.no_grad():
            fake = self._fake_prev(x_t, t_d)
        fake_logits = self.discriminator(fake, x_t, t_d)
        loss_d = discriminator_loss(kind, real_logits, fake_logits)
        total_d = loss_d
        if apply_r1:
            r1 = self._r1(x_prev, x_t, t_d)
            total_d = loss_d + 0.5 * self.hparams.r1_gamma * r1
            self.log("train/r1", r1.detach(), on_step=True, on_epoch=True, batch_size=n)
        self.optimizer_update(opt_d, total_d)

        with self.frozen(self.discriminator):
            t, _, x_t = self._real_pair(real)
            loss_g = generator_loss(kind, self.discriminator(self._fake_prev(x_t, t), x_t, t))
            self.optimizer_update(opt_g, loss_g)
        self.update_ema()

        d_real, d_fake = (
            torch.sigmoid(real_logits.detach().float()),
            torch.sigmoid(fake_logits.detach().float()),
        )
        self.log_adversarial(loss_d, loss_g, d_real, d_fake, n)
        self._log_per_timestep(t_d, d_real, d_fake)
        if self.hparams.cosine_steps:
            self._step_schedulers()

    def _r1(self, x_prev: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """R1 on the real pairs in a pass of its own, in float32 with autocast off (StyleGAN2's way).

        Under bf16-mixed a bf16 input gradient shifts R1 by ~1 %; under 16-mixed `autograd.grad` of the
        float16 output bypasses the GradScaler and can underflow. Here the gradient is taken of the unscaled
        float32 output, and the penalty joins D's loss, which `manual_backward` then scales as a whole.
        `forward` is called directly, so a `torch.compile`d discriminator (compiled graphs have no double
        backward) runs this pass eagerly.
        """
        with torch.autocast(self.device.type, enabled=False):
            x = x_prev.detach().float().requires_grad_(True)
            return r1_penalty(self.discriminator.forward(x, x_t.float(), t), x)

    def _log_per_timestep(self, t: Tensor, d_real: Tensor, d_fake: Tensor) -> None:
        """Log D's mean belief on real and fake pairs at each timestep (see the class docstring).

        Windowed like the other GAN curves (:meth:`add_to_window`): each batch adds its per-t belief sums and
        counts on the device; at each logger write, `_step` is the mean over the window's samples at t (NaN if
        none was at t) and `_epoch` the exact mean over the epoch's (the `WeightedMean` metrics)."""
        steps = torch.arange(self.num_timesteps, device=t.device)
        at_t = (steps[:, None] == t[None, :]).to(d_real.dtype)  # (T, B): 1 where the sample is at that step
        beliefs = {"d_real": d_real, "d_fake": d_fake}
        sums = torch.stack([at_t @ beliefs[kind] for kind in beliefs])  # (2, T)
        counts = at_t.sum(dim=1)  # (T,)
        for kind, values in beliefs.items():
            for step in range(self.num_timesteps):
                self.d_per_timestep[f"{kind}_t{step}"].update(values, at_t[step])
        window = self.add_to_window("d_per_timestep", sums, counts)
        if window is None:
            return
        sums, counts = window
        means = (sums / counts).unbind(0)  # 0 / 0 = NaN where the window had no sample at t
        for kind, mean in zip(beliefs, means):
            for step in range(self.num_timesteps):
                self.log(f"train/{kind}_t{step}_step", mean[step], on_step=True, on_epoch=False)
                metric = self.d_per_timestep[f"{kind}_t{step}"]
                self.log(f"train/{kind}_t{step}_epoch", metric, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        if not self.hparams.cosine_steps:
            self._step_schedulers()

    def _step_schedulers(self) -> None:
        # Manual optimisation: Lightning leaves scheduler stepping to the module.
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """D's accuracy on held-out real pairs and on fresh fake pairs: a cheap signal beside FID."""
        real, _ = batch
        t, x_prev, x_t = self._real_pair(real)
        real_acc = (self.discriminator(x_prev, x_t, t) > 0).float().mean()
        fake_acc = (self.discriminator(self._fake_prev(x_t, t), x_t, t) < 0).float().mean()
        self.log_dict(
            {"val/d_real_acc": real_acc, "val/d_fake_acc": fake_acc}, batch_size=real.size(0), sync_dist=True
        )
