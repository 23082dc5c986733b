"""The Generative contract that FID, sample grids, `genface sample` and the analysis tools rely on, and the
pieces every genface LightningModule shares: the checkpoint's class name, eval scopes, EMA, GAN training."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn


@contextlib.contextmanager
def eval_scope(net: nn.Module) -> Iterator[None]:
    """Within the block `net` is in eval mode and nothing records gradients; its mode is restored after."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        net.train(was_training)


class GenfaceModule(pl.LightningModule):
    """Base of every genface LightningModule: its checkpoints name the class, so that
    `genface.models.load_module(path)` rebuilds any of them from the checkpoint file alone."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["genface_class"] = f"{type(self).__module__}.{type(self).__qualname__}"


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
        """One step of the average. Warm-up as in TF's ExponentialMovingAverage (the decay is at most
        (1 + n) / (10 + n) after n updates), so that early averages do not drag the random init along.
        The decay is computed on the device, in float64: no read-back, so a training step never waits."""
        self.num_updates += 1
        n = self.num_updates.to(torch.float64)
        weights: dict[torch.dtype, torch.Tensor] = {}
        for name, p in source.named_parameters():
            shadow = getattr(self, self._key(name))
            if shadow.dtype not in weights:
                weights[shadow.dtype] = (1.0 - torch.minimum(self.decay, (1.0 + n) / (10.0 + n))).to(
                    shadow.dtype
                )
            shadow.lerp_(p.detach().to(shadow.dtype), weights[shadow.dtype])

    @torch.no_grad()
    def swap(self, source: nn.Module) -> None:
        """Exchange the live parameters with the averaged ones (call twice to undo)."""
        for name, p in source.named_parameters():
            shadow = getattr(self, self._key(name))
            tmp = p.detach().clone()
            p.copy_(shadow)
            shadow.copy_(tmp)


class GenerativeModule(GenfaceModule):
    """Base of every generator family.

    Subclasses implement `latent_dim`, `sample_latents` and `_generate`; callers use `generate`, which
    runs in eval mode, without gradients and with EMA weights when the model keeps them.

    EMA has one path: the model's own. A family that keeps one takes `ema_decay`, calls `enable_ema` in its
    constructor and `update_ema()` right after each optimiser step of the EMA target; the averages are
    buffers, so checkpoints carry them together with their decay.
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

    @contextlib.contextmanager
    def sampling_scope(self) -> Iterator[None]:
        """What `generate` samples under: the target network in eval mode, no gradients, EMA weights."""
        with eval_scope(getattr(self, self.ema_target_name)), self.ema_scope():
            yield

    def generate(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images (n, C, H, W) in [-1, 1], a deterministic function of `latents` (and `labels`)."""
        if self.num_classes and labels is None:
            raise ValueError(f"{type(self).__name__} is conditional: pass `labels` to generate()")
        latents = latents.to(self.device)
        labels = labels.to(self.device) if labels is not None else None
        with self.sampling_scope():
            return self._generate(latents, labels).clamp(-1, 1)

    def default_labels(self, n: int) -> torch.Tensor | None:
        """Labels for grids and FID: cycle through the classes (conditional models override)."""
        return None

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
        # A checkpoint with EMA weights gets its EMA container back before Lightning loads the state dict,
        # with the decay it was trained with (the `ema.decay` buffer, which the state dict then loads too).
        state = checkpoint.get("state_dict", {})
        if self.ema is None and any(k.startswith("ema.") for k in state):
            if "ema.decay" not in state:
                raise ValueError(
                    "the checkpoint holds EMA weights (state_dict 'ema.*') but no 'ema.decay': it was not "
                    "written by genface; drop its 'ema.*' entries to load the live weights only"
                )
            self.enable_ema(float(state["ema.decay"]))


class AdversarialTraining:
    """Manual-optimisation helpers of the adversarial modules (GANs, Pix2Pix, VAE-GAN): mixed into
    LightningModules, they use `manual_backward` and `log_dict`. Nothing here reads a value back to the
    host, so a training step never waits for the device."""

    def optimizer_update(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """One manual-optimisation update: zero the gradients, backward (precision and DDP aware), step."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    @contextlib.contextmanager
    def frozen(self, net: nn.Module) -> Iterator[None]:
        """`net`'s parameters take no gradient within the block (e.g. D during G's update), then get their
        previous `requires_grad` back. What `toggle_optimizer` does for two optimisers, without walking
        every optimiser's parameter groups twice a step."""
        params = [p for p in net.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def log_adversarial(
        self, loss_d: torch.Tensor, loss_g: torch.Tensor, d_real: torch.Tensor, d_fake: torch.Tensor, batch_size: int,
        **extra: torch.Tensor,
    ) -> None:  # fmt: skip
        """The training curves every GAN logs: both losses and D's mean belief that reals / fakes are real
        (probabilities, detached here), plus any `extra` train/<name> values; float32 whatever the autocast.

        Logged as device tensors without `prog_bar`: the progress bar turns its values into Python floats at
        every step, a host sync; the logger converts them every `log_every_n_steps` only. The losses of every
        step are also kept in `step_losses` (device tensors) for the divergence guard, as the logged curves are
        windowed (:meth:`log_windowed`)."""
        logs = {
            "train/loss_d": loss_d.detach().float(),
            "train/loss_g": loss_g.detach().float(),
            "train/d_real": d_real.detach().float().mean(),
            "train/d_fake": d_fake.detach().float().mean(),
            **{f"train/{name}": value.detach().float() for name, value in extra.items()},
        }
        self.step_losses = {k: v for k, v in logs.items() if "loss" in k}
        self.log_windowed(logs, batch_size)

    def log_windowed(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log scalar `values` as on-step and on-epoch curves with one `self.log` per value per logger write
        (every `trainer.log_every_n_steps` batches) instead of per batch.

        Each `self.log` call costs Lightning ~0.5 ms of Python (it walks the stored metric's whole state to
        move it to the value's device), a few per cent of a small GAN's step, more with several threads per
        step. So the batches in between are summed on the device (weighted by batch size, no read-back) and
        logged as their mean, with the window's image count as batch size: the step values the logger writes
        are the means of the batches since its previous write, and the epoch values, Lightning's weighted
        mean over the windows, the means of every batch of the epoch (the window is also closed on an
        epoch's last batch and at `max_steps`; a run that a callback stops mid-window leaves out that last
        window). With `log_every_n_steps=1` this is per-batch logging."""
        keys = tuple(values)
        stacked = torch.stack([values[k] for k in keys]) * batch_size
        open_keys = getattr(self, "_curve_keys", None)
        if open_keys not in (None, keys):  # other values than the open window's: close that one first
            self._log_window_mean(open_keys, *self._windows.pop("curves"))
        self._curve_keys = keys
        window = self.add_to_window("curves", stacked, batch_size)
        if window is not None:
            self._log_window_mean(keys, *window)
            self._curve_keys = None

    def add_to_window(self, name: str, *parts: Any) -> tuple[Any, ...] | None:
        """Add this batch's `parts` (device tensors or ints) to the sums of window `name`; return the sums
        when the logger writes after this batch (the window then starts afresh), else None. Without a trainer
        every batch is its own window."""
        windows = self.__dict__.setdefault("_windows", {})
        if name in windows:
            parts = tuple(a + b for a, b in zip(windows.pop(name), parts))
        if self._trainer is None or self._window_due(self._trainer):
            return parts
        windows[name] = parts
        return None

    @staticmethod
    def _window_due(trainer: pl.Trainer) -> bool:
        """Whether the logger writes after this batch, or the epoch or run ends with it."""
        epoch_loop = trainer.fit_loop.epoch_loop
        last_of_epoch = trainer.is_last_batch or epoch_loop.batch_idx + 1 >= trainer.num_training_batches
        at_max_steps = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        # the logger connector's own test for "write the step values of this batch" (Lightning 2.x)
        return bool(trainer.fast_dev_run) or last_of_epoch or at_max_steps or trainer._logger_connector.should_update_logs

    def _log_window_mean(self, keys: tuple[str, ...], sums: torch.Tensor, count: int) -> None:
        self.log_dict(dict(zip(keys, (sums / count).unbind())), on_step=True, on_epoch=True, batch_size=count)


class GANModule(AdversarialTraining, GenerativeModule):
    """Base of the adversarial generator families (DCGAN, cGAN, DD-GAN, VAE-GAN): the Generative contract
    plus the manual-optimisation helpers that the diffusion families do not need."""
