"""Latent diffusion (Rombach et al. 2022; the VAE-GAN latent-diffusion study): Gaussian diffusion in the latent space of a frozen
VAE-GAN first stage, class-conditional with classifier-free guidance.

The diffusion itself is DDPM's (schedule, loss, CFG, EMA, samplers): this module only moves data in
and out of latent space. Training encodes each batch with the frozen first stage and multiplies by the
latent scale 1/std (measured on the first batch and kept as a buffer, so checkpoints restore it);
sampling runs the configured sampler (DDIM or ancestral) from x_T = the contract's latent, reshaped to
the latent shape, and decodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from torch import Tensor

from genface.models import load_module
from genface.models.ddpm import DDPM
from genface.models.vaegan import VAEGAN
from genface.viz.latents import class_rows


class LatentDiffusion(DDPM):
    """DDPM over the latents of a frozen autoencoder (`genface.models.vaegan.VAEGAN`).

    Args:
        first_stage_ckpt: checkpoint of the trained autoencoder (stage one). Its network and config are
            copied into this model, so this model's own checkpoints need the file no more.
        first_stage: the autoencoder network's Hydra config; filled in from `first_stage_ckpt` at the
            start of training (leave it null), it lets `load_from_checkpoint` rebuild the first stage.
        latent_scale: fixed factor for the latents; null measures 1/std on the first batch.
        sample_posterior: train on posterior samples (LDM) rather than posterior means.
        net: a `genface.nets.unet.UNet` config for spatial latents (in/out channels and resolution of the
            latent); for flat ones (dim = latent size) a `genface.nets.latent_denoiser.LatentDenoiser` (residual
            MLP) or `LatentUNet` (the study's conditional U-Net over the vector).
        Everything else: as `genface.models.ddpm.DDPM`; clip_x0 defaults to off because scaled latents
            are not confined to [-1, 1].
    """

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        first_stage_ckpt: str | None = None,
        first_stage: dict[str, Any] | None = None,
        latent_scale: float | None = None,
        sample_posterior: bool = True,
        scheduler: dict[str, Any] | None = None,
        scheduler_interval: str = "step",
        schedule: dict[str, Any] | None = None,
        pred_type: str = "eps",
        loss: str = "l2",
        ema_decay: float | None = 0.9999,
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        clip_x0: bool = False,
        num_classes: int = 0,
        p_uncond: float = 0.1,
        guidance_scale: float = 1.0,
    ) -> None:
        super().__init__(
            net=net, optimizer=optimizer, scheduler=scheduler, scheduler_interval=scheduler_interval,
            schedule=schedule, pred_type=pred_type, loss=loss, ema_decay=ema_decay, sampler=sampler,
            sample_steps=sample_steps, eta=eta, clip_x0=clip_x0, num_classes=num_classes, p_uncond=p_uncond,
            guidance_scale=guidance_scale,
        )  # fmt: skip
        if latent_scale is not None and latent_scale <= 0:
            raise ValueError(f"model.latent_scale must be > 0 or null (measure it), got {latent_scale}")
        self.register_buffer("latent_scale", torch.tensor(float(latent_scale or 0.0)))
        self.first_stage: torch.nn.Module | None = None
        if first_stage is not None:
            self._attach_first_stage(instantiate(first_stage))  # weights come from this model's checkpoint

    def setup(self, stage: str) -> None:
        """Load the first stage from `first_stage_ckpt` unless a checkpoint of this model brought it: done
        here rather than in __init__ so that configs instantiate (and are checked) without a trained
        autoencoder, and before Lightning moves the model to its device."""
        if self.first_stage is None:
            net, config = self._load_first_stage(self.hparams.first_stage_ckpt)
            self.hparams["first_stage"] = config  # checkpoints of this model then rebuild without the file
            self._attach_first_stage(net)

    def _attach_first_stage(self, net: torch.nn.Module) -> None:
        self.first_stage = net.to(self.device)
        net.requires_grad_(False)
        net.eval()
        self._check_net()

    @staticmethod
    def _load_first_stage(path: str | None) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The autoencoder network of a VAEGAN checkpoint and its Hydra config."""
        if not path:
            raise ValueError(
                "model.first_stage_ckpt is required: the checkpoint of a trained autoencoder, e.g. "
                "`genface train experiment=vaegan_synthfaces` then model.first_stage_ckpt=<run>/checkpoints/last.ckpt"
            )
        try:
            stage = load_module(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"model.first_stage_ckpt: no checkpoint at {path}") from err
        if not isinstance(stage, VAEGAN):
            raise ValueError(
                f"model.first_stage_ckpt={path} holds a {type(stage).__name__}, not a VAEGAN autoencoder"
            )
        return stage.autoencoder, dict(stage.hparams.autoencoder)

    def _check_net(self) -> None:
        z = torch.zeros(1, *self.latent_shape, device=self.device)
        t = torch.zeros(1, dtype=torch.long, device=self.device)
        try:
            with torch.no_grad():
                out = self.net(z, t, t if self.num_classes else None)
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"model.net does not fit the first stage's latents of shape {self.latent_shape}: use a UNet with "
                "in_channels = out_channels = C and resolution = H for spatial latents (C, H, W), or a "
                f"LatentDenoiser or LatentUNet with dim = D for flat latents (D,). ({err})"
            ) from err
        if out.shape != z.shape:
            raise ValueError(
                f"model.net maps latents {tuple(z.shape)} to {tuple(out.shape)}; they must match"
            )

    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        if self.first_stage is not None:
            self.first_stage.eval()  # frozen: no dropout, and no norm statistics drift
        return self

    # ----- latent space ---------------------------------------------------------------------------
    @property
    def stage_one(self) -> torch.nn.Module:
        """The frozen autoencoder network; before `setup` (e.g. right after instantiating a config) it is
        not loaded yet."""
        if self.first_stage is None:
            raise RuntimeError(
                "the first stage is not loaded yet: it is read from model.first_stage_ckpt in setup() (trainer.fit "
                "calls it), or comes with a checkpoint of this model (genface.models.load_generative)"
            )
        return self.first_stage

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.stage_one.latent_shape)

    @torch.no_grad()
    def encode_images(self, x: Tensor, sample: bool | None = None) -> Tensor:
        """Scaled latents of images in [-1, 1]. The first call during fitting measures the scale 1/std
        (averaged over ranks) when `latent_scale` was not given."""
        posterior = self.stage_one.encode(x)
        sample = self.hparams.sample_posterior if sample is None else sample
        z = posterior.sample() if sample else posterior.mode()
        if float(self.latent_scale) == 0.0:
            if self._trainer is None:
                raise RuntimeError(
                    "the latent scale is not measured yet: train the model or set model.latent_scale"
                )
            std = self.all_gather(z.float().std()).mean()
            self.latent_scale.fill_(1.0 / float(std))
        return z * self.latent_scale

    @torch.no_grad()
    def decode_latents(self, z: Tensor) -> Tensor:
        """Images in [-1, 1] from scaled latents (N, *latent_shape)."""
        if float(self.latent_scale) == 0.0:
            raise RuntimeError(
                "the latent scale is not measured yet: train the model or set model.latent_scale"
            )
        return self.stage_one.decode(z / self.latent_scale).clamp(-1, 1)

    # ----- Generative contract --------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        fs = self.stage_one
        return (fs.channels, fs.resolution, fs.resolution)

    @property
    def latent_dim(self) -> int:
        return math.prod(self.latent_shape)

    @property
    def diffusion_shape(self) -> tuple[int, ...]:
        return self.latent_shape

    def _decode(self, x: Tensor) -> Tensor:
        return self.decode_latents(x)

    # ----- training -------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, target = batch
        return super().training_step((self.encode_images(x), target), batch_idx)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, target = batch
        super().validation_step((self.encode_images(x, sample=False), target), batch_idx)


def class_grid(
    model: LatentDiffusion, class_names: Sequence[str], n_per_class: int, seed: int = 0
) -> np.ndarray:
    """One labelled row per class, the same `n_per_class` latents in every row: the label's effect alone."""
    latents = model.sample_latents(n_per_class, generator=torch.Generator().manual_seed(seed))
    rows = [
        model.generate(latents, torch.full((n_per_class,), k, dtype=torch.long)).cpu()
        for k in range(len(class_names))
    ]
    return class_rows(rows, class_names)


def encode_dataset(model: LatentDiffusion, loader, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Posterior-mean latents (N, D) and class indices (N,) of up to `max_points` images of `loader`."""
    zs, ys, seen = [], [], 0
    for x, target in loader:
        zs.append(model.encode_images(x.to(model.device), sample=False).flatten(1).cpu())
        ys.append(model._class_index(target.to(model.device)).cpu())
        seen += len(x)
        if seen >= max_points:
            break
    return torch.cat(zs)[:max_points].numpy(), torch.cat(ys)[:max_points].numpy()
