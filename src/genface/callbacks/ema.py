"""EMA of the generator's weights for any GenerativeModule, as a callback."""

from __future__ import annotations

import pytorch_lightning as pl

from genface.models.base import GenerativeModule


class EMA(pl.Callback):
    """Keeps an exponential moving average of `pl_module.<ema_target_name>` updated every training batch.

    The averaged weights live inside the module (`pl_module.ema`), so they are saved in checkpoints and
    used by `generate()`, FID and sample grids through `pl_module.ema_scope()`. Families that keep EMA
    themselves (`model.ema_decay`) need no callback, and asking for both is refused.
    """

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, start_step: int = 0) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.ema.every_n_steps must be >= 1, got {every_n_steps}")
        self.decay, self.every_n_steps, self.start_step = decay, every_n_steps, start_step

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, GenerativeModule):
            raise TypeError(f"the EMA callback needs a GenerativeModule, got {type(pl_module).__name__}")
        if pl_module.hparams.get("ema_decay"):
            raise ValueError(
                "model.ema_decay is set, so the model keeps its own EMA: drop callbacks.ema or set model.ema_decay=null"
            )
        pl_module.enable_ema(self.decay)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step >= self.start_step and step % self.every_n_steps == 0:
            pl_module.update_ema()
