"""Divergence guard: stop a run whose losses or weights stop being finite, before it overwrites good files.

A GAN that collapses to NaN keeps "training" for hours otherwise, and its end-of-epoch checkpoint replaces
the last good one. The guard looks at the training losses every step (every logged value whose name holds
"loss") and at the parameters every `check_params_every_n_steps` steps. On divergence it writes
`diverged.json` in the run directory (step, epoch, the offending values) and raises `TrainingDiverged`:
the run ends with a clear error (a sweeper records the trial as failed) and `LastCheckpoint` does not save
the broken weights on that exception, so `checkpoints/last.ckpt` still holds the last good epoch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


class TrainingDiverged(RuntimeError):
    """Raised by DivergenceGuard: losses or weights are no longer finite (or a loss exceeds `max_loss`)."""


class DivergenceGuard(pl.Callback):
    """Raises TrainingDiverged after `patience` consecutive bad checks.

    Args:
        patience: consecutive steps with a non-finite (or too large) loss before stopping; a single
            NaN batch under mixed precision can be a skipped step, so more than 1 tolerates that.
        max_loss: also stop when a training loss exceeds this absolute value (None: only non-finite).
        check_params_every_n_steps: how often to check every parameter for NaN/inf (0: never).
    """

    def __init__(self, patience: int = 3, max_loss: float | None = None, check_params_every_n_steps: int = 100) -> None:
        if patience < 1 or check_params_every_n_steps < 0:
            raise ValueError("callbacks.divergence_guard: patience must be >= 1, check_params_every_n_steps >= 0")
        if max_loss is not None and not max_loss > 0:
            raise ValueError(f"callbacks.divergence_guard.max_loss must be positive or null, got {max_loss}")
        self.patience, self.max_loss, self.check_params_every = patience, max_loss, check_params_every_n_steps
        self.bad_steps = 0
        self._batches = 0

    def _bad_losses(self, trainer: pl.Trainer) -> dict[str, float]:
        bad = {}
        for name, value in trainer.callback_metrics.items():
            if "loss" not in name or not name.startswith("train/") or name.endswith("_epoch"):
                continue
            v = float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
            if not math.isfinite(v) or (self.max_loss is not None and abs(v) > self.max_loss):
                bad[name] = v
        return bad

    @staticmethod
    def _bad_parameters(pl_module: pl.LightningModule) -> list[str]:
        return [name for name, p in pl_module.named_parameters() if not torch.isfinite(p.detach()).all()]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self._batches += 1
        bad: dict[str, object] = dict(self._bad_losses(trainer))
        self.bad_steps = self.bad_steps + 1 if bad else 0
        params: list[str] = []
        if self.check_params_every and self._batches % self.check_params_every == 0:
            params = self._bad_parameters(pl_module)
        if self.bad_steps >= self.patience or params:
            self._stop(trainer, bad, params)

    def _stop(self, trainer: pl.Trainer, losses: dict[str, object], params: list[str]) -> None:
        report = {
            "global_step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "bad_losses": {k: str(v) for k, v in losses.items()},
            "consecutive_bad_steps": self.bad_steps,
            "non_finite_parameters": params[:20],
        }
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / "diverged.json.tmp"
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            os.replace(tmp, out / "diverged.json")
        what = f"losses {report['bad_losses']}" if losses else f"non-finite parameters {params[:3]}"
        raise TrainingDiverged(
            f"training diverged at global step {report['global_step']} (epoch {report['epoch']}): {what}. "
            f"checkpoints/last.ckpt keeps the last good epoch; lower the learning rates or raise "
            f"callbacks.divergence_guard.patience (see {Path(trainer.default_root_dir) / 'diverged.json'})"
        )


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that does not save on a TrainingDiverged exception (the weights are broken then),
    while still saving on any other exception (Ctrl-C, an OOM, a bug) when `save_on_exception` is set."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, TrainingDiverged):
            return
        super().on_exception(trainer, pl_module, exception)
