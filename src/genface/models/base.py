"""The Generative contract that FID, sample grids, `genface sample` and the analysis tools rely on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn


class EMAWeights(nn.Module):
    """Exponential moving average of a module's parameters, held as buffers so it lands in checkpoints."""

    def __init__(self, source: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must lie in (0, 1), got {decay}")
        self.register_buffer("decay", torch.tensor(float(decay), dtype=torch.float64))
        self._names = [name for name, _ in source.named_parameters()]
        for name, p in source.named_parameters():
            self.register_buffer(self._key(name), p.detach().clone())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        # Warm-up as in TF's ExponentialMovingAverage: early averages do not drag the random init along.
        self.num_updates += 1
        n = float(self.num_updates)
        decay = min(float(self.decay), (1.0 + n) / (10.0 + n))
        for name, p in source.named_parameters():
            shadow = getattr(self, self._key(name))
            shadow.lerp_(p.detach().to(shadow.dtype), 1.0 - decay)

    @torch.no_grad()
    def swap(self, source: nn.Module) -> None:
        """Exchange the live parameters with the averaged ones (call twice to undo)."""
        for name, p in source.named_parameters():
            shadow = getattr(self, self._key(name))
            tmp = p.detach().clone()
            p.copy_(shadow)
            shadow.copy_(tmp)


class AdversarialTraining:
    """Manual-optimisation helpers of the adversarial modules (GANs, Pix2Pix, VAE-GAN): mixed into
    LightningModules, they use `manual_backward` and `log_dict`."""

    def optimizer_update(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """One manual-optimisation update: zero the gradients, backward (precision and DDP aware), step."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def log_adversarial(
        self, loss_d: torch.Tensor, loss_g: torch.Tensor, d_real: torch.Tensor, d_fake: torch.Tensor, batch_size: int,
        **extra: torch.Tensor,
    ) -> None:  # fmt: skip
        """The training curves every GAN logs: both losses and D's mean belief that reals / fakes are real
        (probabilities, detached here), plus any `extra` train/<name> values."""
        logs = {
            "train/loss_d": loss_d.detach(),
            "train/loss_g": loss_g.detach(),
            "train/d_real": d_real.detach().mean(),
            "train/d_fake": d_fake.detach().mean(),
            **{f"train/{name}": value.detach() for name, value in extra.items()},
        }
        self.log_dict(logs, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)


class GenerativeModule(AdversarialTraining, pl.LightningModule):
    """Base of every generator family.

    Subclasses implement `latent_dim`, `sample_latents` and `_generate`; callers use `generate`, which
    runs in eval mode, without gradients and with EMA weights when the model keeps them.
    """

    #: Name of the attribute holding the network whose weights EMA averages and `generate` uses.
    ema_target_name: str = "generator"

    def __init__(self) -> None:
        super().__init__()
        self.ema: EMAWeights | None = None

    # ----- contract -------------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """0 for unconditional models; class or attribute count for conditional ones."""
        return 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images. Default: `channels` and `resolution` of the generator network (the EMA
        target); families whose net says it otherwise override this."""
        net = getattr(self, self.ema_target_name)
        return (net.channels, net.resolution, net.resolution)

    @property
    def sampling_protocol(self) -> dict[str, Any]:
        """How `generate` turns latents into images, for the records of FID and samples (e.g. diffusion:
        {"sampler": "ancestral", "steps": 1000}); empty for one-pass generators such as GANs."""
        return {}

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One flat latent per image, (n, latent_dim), on the model's device. Default: standard normal."""
        z = torch.randn(n, self.latent_dim, generator=generator, device="cpu")
        return z.to(self.device)

    def _generate(self, latents: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images (n, C, H, W) in [-1, 1], a deterministic function of `latents` (and `labels`)."""
        if self.num_classes and labels is None:
            raise ValueError(f"{type(self).__name__} is conditional: pass `labels` to generate()")
        latents = latents.to(self.device)
        labels = labels.to(self.device) if labels is not None else None
        net = getattr(self, self.ema_target_name)
        was_training = net.training
        net.eval()
        try:
            with self.ema_scope():
                return self._generate(latents, labels).clamp(-1, 1)
        finally:
            net.train(was_training)

    # ----- EMA ------------------------------------------------------------------------------------
    def enable_ema(self, decay: float) -> None:
        """Start keeping an EMA of the target network (idempotent: a restored EMA is kept)."""
        if self.ema is None:
            self.ema = EMAWeights(getattr(self, self.ema_target_name), decay).to(self.device)
        else:
            self.ema.decay.fill_(decay)

    def update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update(getattr(self, self.ema_target_name))

    @contextlib.contextmanager
    def ema_scope(self) -> Iterator[None]:
        """Within the block the target network carries its EMA weights (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        net = getattr(self, self.ema_target_name)
        self.ema.swap(net)
        try:
            yield
        finally:
            self.ema.swap(net)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Recreate the EMA container before Lightning loads the state dict into it.
        if self.ema is None and any(k.startswith("ema.") for k in checkpoint.get("state_dict", {})):
            self.enable_ema(0.999)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets `genface.models.load_module` rebuild any family from the checkpoint file alone.
        checkpoint["genface_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def default_labels(self, n: int) -> torch.Tensor | None:
        """Labels for grids and FID: cycle through the classes (conditional models override)."""
        return None
