"""DDPM: pixel-space Gaussian diffusion with a U-Net, sampled by DDIM or ancestrally.

`generate(latents)`, which FID, sample grids, `genface sample` and `genface evaluate` call, runs the
configured `sampler` from x_T = the latent reshaped to an image:

- "ddim" (Song et al. 2021): `sample_steps` steps. With η = 0 (the default) the latent is the whole
  randomness of a sample, which latent directions and edits rely on.
- "ancestral": DDPM's sampler over all T steps of the posterior (Ho et al. 2020).
- a diffusers scheduler by name (`genface.diffusion.diffusers_schedulers.SCHEDULERS`: dpmpp_2m, unipc,
  deis, euler, heun, euler_ancestral, ddpm) in `sample_steps` steps, configured from this model's schedule
  and prediction type, with genface's x0 clipping and guidance.

The Generative contract wants `generate` deterministic in its inputs, so the per-step noise of the
stochastic samplers (ancestral, DDIM with η > 0, euler_ancestral, ddpm) comes from a generator seeded by a
hash of each latent (`genface.diffusion.latent_generators`) rather than from T x C x H x W more latent
values. `sampling_protocol` says which sampler made the samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor

from genface.data.labels import class_index
from genface.diffusion import (
    PRED_TYPES,
    NoiseSchedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    latent_generators,
    path_indices,
    q_sample,
    target_for,
)
from genface.diffusion.diffusers_schedulers import (
    SCHEDULERS,
    STOCHASTIC,
    diffusers_sample,
    scheduler_timesteps,
)
from genface.models.base import GenerativeModule

LOSSES = ("l2", "l1")
#: genface's own samplers, then diffusers' schedulers by name.
SAMPLERS = ("ancestral", "ddim", *SCHEDULERS)
#: One step of a sampling path: (timestep t, x_t fed to the network, its predicted x0), CPU tensors.
PathStep = tuple[int, Tensor, Tensor]


class DDPM(GenerativeModule):
    """Denoising diffusion probabilistic model (Ho et al. 2020) with optional classifier-free guidance.

    `net` (a `genface.nets.unet.UNet` or `genface.nets.diffusers_unet.DiffusersUNet` config), `optimizer` and
    `scheduler` are Hydra configs (plain dicts) so that `load_from_checkpoint` rebuilds the model from its
    hyper-parameters; a net started from `pretrained` weights is recorded by its architecture instead, so
    that checkpoints rebuild without the folder. `num_classes` is the one source of truth for conditioning:
    it is passed to the net, whose class index `num_classes` is the null label that `p_uncond` of the
    training labels are replaced with (Ho & Salimans 2022).

    Sampling settings (`sampler`, `sample_steps`, `eta`, `guidance_scale`) are plain attributes, so they
    can be changed on a loaded model without retraining; checkpoints keep their current values.
    """

    ema_target_name = "net"

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        scheduler_interval: str = "step",
        schedule: dict[str, Any] | None = None,
        pred_type: str = "eps",
        loss: str = "l2",
        ema_decay: float | None = 0.9999,
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        clip_x0: bool = True,
        num_classes: int = 0,
        p_uncond: float = 0.1,
        guidance_scale: float = 1.0,
    ) -> None:
        super().__init__()
        schedule = dict(schedule or {"kind": "linear", "T": 1000})
        if pred_type not in PRED_TYPES:
            raise ValueError(f"model.pred_type={pred_type!r} is not allowed; allowed: {', '.join(PRED_TYPES)}")
        if loss not in LOSSES:
            raise ValueError(f"model.loss={loss!r} is not allowed; allowed: {', '.join(LOSSES)}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"model.scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        if num_classes < 0 or not 0.0 <= p_uncond < 1.0:
            raise ValueError(
                f"model.num_classes must be >= 0 and model.p_uncond in [0, 1); got {num_classes} and {p_uncond}"
            )
        self.save_hyperparameters()
        try:
            self.schedule = NoiseSchedule.from_config(**schedule)
        except TypeError as err:
            raise ValueError(f"model.schedule must hold `kind` and `T` (and schedule options), got {schedule}") from err
        self.net = instantiate(net, num_classes=num_classes)
        if net.get("pretrained"):  # the weights travel in this model's checkpoints, not in the folder
            self.hparams["net"] = self.net.architecture()
        self.sampler, self.sample_steps, self.eta, self.guidance_scale = sampler, sample_steps, eta, guidance_scale
        self._check_sampling()
        if ema_decay:
            self.enable_ema(ema_decay)

    def _check_sampling(self) -> None:
        """Checked at construction and before every sampling, since the settings can change afterwards."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"model.sampler={self.sampler!r} is not allowed; allowed: {', '.join(SAMPLERS)}")
        T = self.schedule.num_timesteps
        if not 1 <= self.sample_steps <= T:
            raise ValueError(f"model.sample_steps must lie in [1, T={T}], got {self.sample_steps}")
        if self.eta < 0 or self.guidance_scale < 0:
            raise ValueError(f"model.eta and model.guidance_scale must be >= 0, got {self.eta}, {self.guidance_scale}")
        if self.guidance_scale != 1.0 and not self.num_classes:
            raise ValueError("model.guidance_scale != 1 needs a conditional model (model.num_classes > 0)")

    # ----- Generative contract --------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.hparams.num_classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.net.in_channels, self.net.resolution, self.net.resolution)

    @property
    def latent_dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def default_labels(self, n: int) -> Tensor | None:
        return torch.arange(n) % self.num_classes if self.num_classes else None

    @property
    def diffusion_shape(self) -> tuple[int, ...]:
        """Shape of one sample in the space the diffusion runs in: the image here, a latent in subclasses."""
        return self.image_shape

    def _decode(self, x: Tensor) -> Tensor:
        """Diffusion space -> images in [-1, 1]: the identity for pixel diffusion (latent diffusion decodes)."""
        return x

    @property
    def sampling_timesteps(self) -> list[int]:
        """The timesteps at which the configured sampler runs the network, in order: all T (ancestral), DDIM's
        `sample_steps`, or a diffusers scheduler's (heun visits most of them twice)."""
        T = self.schedule.num_timesteps
        if self.sampler == "ancestral":
            return list(range(T - 1, -1, -1))
        if self.sampler == "ddim":
            return ddim_timesteps(T, self.sample_steps)
        return scheduler_timesteps(self.sampler, self.schedule, self.hparams.pred_type, self.sample_steps)

    @property
    def sampling_protocol(self) -> dict[str, Any]:
        """Sampler and steps; for a diffusers scheduler also its class and the network evaluations per image."""
        if self.sampler in SCHEDULERS:
            protocol: dict[str, Any] = {
                "sampler": self.sampler,
                "steps": self.sample_steps,
                "scheduler": f"diffusers.{SCHEDULERS[self.sampler][0].__name__}",
                "nfe": len(self.sampling_timesteps),
                "timestep_spacing": "trailing",
            }
        else:
            protocol = {"sampler": self.sampler, "steps": len(self.sampling_timesteps)}
        if self.sampler == "ddim":
            protocol["eta"] = self.eta
        if self.num_classes:
            protocol["guidance_scale"] = self.guidance_scale
        return protocol

    def _sample(self, latents: Tensor, labels: Tensor | None, **kw: Any) -> Any:
        """The configured sampler from x_T = `latents` reshaped to the diffusion space, with the configured
        prediction type and guidance; stochastic samplers draw their noise from `latent_generators`."""
        self._check_sampling()
        x_T = latents.reshape(-1, *self.diffusion_shape)
        model_fn = self._model_fn(self._class_index(labels))
        stochastic = self.sampler in ("ancestral", *STOCHASTIC) or (self.sampler == "ddim" and self.eta > 0)
        common = dict(
            pred_type=self.hparams.pred_type, clip_x0=self.hparams.clip_x0,
            generator=latent_generators(latents) if stochastic else None, **kw,
        )  # fmt: skip
        if self.sampler == "ancestral":
            return ddpm_sample(model_fn, self.schedule, x_T, **common)
        if self.sampler in SCHEDULERS:
            return diffusers_sample(model_fn, self.schedule, x_T, self.sampler, self.sample_steps, **common)
        return ddim_sample(model_fn, self.schedule, x_T, steps=self.sample_steps, eta=self.eta, **common)

    def _generate(self, latents: Tensor, labels: Tensor | None) -> Tensor:
        return self._decode(self._sample(latents, labels))

    # ----- denoising paths ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _sampling_scope(self) -> Iterator[None]:
        """Eval mode, no gradients, EMA weights: what `generate` does, for `generate_with_path`."""
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad(), self.ema_scope():
                yield
        finally:
            self.net.train(was_training)

    def _check_labels_given(self, labels: Tensor | None) -> Tensor | None:
        if self.num_classes and labels is None:
            raise ValueError(f"this DDPM is conditional (num_classes={self.num_classes}): pass `labels`")
        return None if labels is None else labels.to(self.device)

    def generate_with_path(
        self, latents: Tensor, labels: Tensor | None = None, every: int = 1
    ) -> tuple[Tensor, list[PathStep]]:
        """`generate(latents, labels)` plus the sampling path: every `every`-th step of the configured
        sampler (and the last) as (t, x_t, predicted x0), decoded to images, CPU tensors, for
        denoising-path pictures (`genface.viz.diffusion`)."""
        labels = self._check_labels_given(labels)
        steps = self.sampling_timesteps
        kept = path_indices(len(steps), every)
        with self._sampling_scope():
            final, raw = self._sample(latents.to(self.device), labels, return_path=True, path_every=every)
            path = [
                (steps[k], self._decode(x_t.to(self.device)).cpu(), self._decode(x0.to(self.device)).cpu())
                for k, (x_t, x0) in zip(kept, raw)
            ]
            images = self._decode(final)
        return images.clamp(-1, 1), path

    def _model_fn(self, y: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
        """The network as `model_fn(x_t, t)`; with guidance, out_uncond + s·(out_cond - out_uncond).

        Every prediction type is affine in the network output at fixed (x_t, t), so guiding the raw output
        equals guiding eps. Both halves run as one batch.
        """
        scale = self.guidance_scale
        if y is None or scale == 1.0:
            return lambda x, t: self.net(x, t, y)
        null = torch.full_like(y, self.num_classes)

        def guided(x: Tensor, t: Tensor) -> Tensor:
            cond, uncond = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
            return uncond + scale * (cond - uncond)

        return guided

    def _class_index(self, labels: Tensor | None) -> Tensor | None:
        """Labels as the UNet's class indices (N,) long.

        The UNet embeds class indices only (nn.Embedding), so attribute vectors are accepted in one case:
        a single binary attribute (N, 1) with num_classes=2 (e.g. data.attributes=[Smiling]).
        """
        if not self.num_classes:
            if labels is not None:
                raise ValueError("labels were given, but this DDPM is unconditional (model.num_classes=0)")
            return None
        if labels is None:
            raise ValueError(f"this DDPM is conditional (num_classes={self.num_classes}): labels are required")
        return class_index(
            labels, self.num_classes,
            context="DDPM's UNet embeds class indices (multi-attribute conditioning needs a UNet with a "
            "multi-hot label embedding): ",
        )

    # ----- training -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Refuse a model/data conditioning mismatch before the first step rather than mid-epoch."""
        dm = getattr(self.trainer, "datamodule", None)
        kind = getattr(dm, "label_kind", None)
        if not self.num_classes or kind is None:
            return
        ok = (kind == "class" and dm.num_classes == self.num_classes) or (
            kind == "attributes" and dm.num_classes == 1 and self.num_classes == 2
        )
        if not ok:
            raise ValueError(
                f"model.num_classes={self.num_classes} does not fit the data ({type(dm).__name__}: label_kind="
                f"{kind!r}, num_classes={dm.num_classes}); use a class-labelled dataset with that many classes, "
                "one binary attribute (data.attributes=[NAME]) with model.num_classes=2, or model.num_classes=0"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # The sampling settings as they are now (they may have changed since construction), so that a
        # loaded model samples as this one does.
        checkpoint["hyper_parameters"].update(
            sampler=self.sampler, sample_steps=self.sample_steps, eta=self.eta, guidance_scale=self.guidance_scale
        )

    def configure_optimizers(self):
        opt = instantiate(self.hparams.optimizer)(params=self.net.parameters())
        if not self.hparams.scheduler:
            return opt
        sched = instantiate(self.hparams.scheduler)(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.hparams.scheduler_interval}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # EMA follows optimizer steps, not batches, so gradient accumulation does not skew it.
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    def _loss(self, x0: Tensor, y: Tensor | None, t: Tensor, noise: Tensor) -> Tensor:
        x_t = q_sample(self.schedule, x0, t, noise)
        out = self.net(x_t, t, y)
        target = target_for(self.hparams.pred_type, x0, noise, self.schedule, t)
        return F.mse_loss(out, target) if self.hparams.loss == "l2" else F.l1_loss(out, target)

    def _batch_labels(self, target: Tensor) -> Tensor | None:
        if not self.num_classes:
            return None
        if target.is_floating_point() and target.ndim == 2 and target.shape[1] == 0:
            raise ValueError(f"model.num_classes={self.num_classes}, but the data items carry no labels")
        return self._class_index(target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, target = batch
        n = x0.size(0)
        y = self._batch_labels(target)
        if y is not None and self.hparams.p_uncond > 0:
            drop = torch.rand(n, device=self.device) < self.hparams.p_uncond
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        t = torch.randint(0, self.schedule.num_timesteps, (n,), device=self.device)
        loss = self._loss(x0, y, t, torch.randn_like(x0))
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """The training loss on held-out images at timesteps and noise fixed per batch index, so that
        epochs are compared on the same draws (a smooth over-fitting signal beside FID)."""
        x0, target = batch
        n = x0.size(0)
        g = torch.Generator().manual_seed(batch_idx)
        t = torch.randint(0, self.schedule.num_timesteps, (n,), generator=g).to(self.device)
        noise = torch.randn(x0.shape, generator=g).to(self.device, x0.dtype)
        loss = self._loss(x0, self._batch_labels(target), t, noise)
        self.log("val/loss", loss, on_epoch=True, batch_size=n, sync_dist=True)
