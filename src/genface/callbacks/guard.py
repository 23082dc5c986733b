"""Divergence guard: stop a run whose losses or weights stop being finite, before it overwrites good files.

A GAN that collapses to NaN keeps "training" for hours otherwise. The guard looks at the training losses every
step (every logged value whose name holds "loss") and at the weights (every floating-point tensor of the
module's state_dict) on every step with a bad loss and every `check_params_every_n_steps` steps. Non-finite
weights stop the run at once, even on an epoch's last step, before validation and the epoch-end save; bad
losses with finite weights (a skipped mixed-precision step) stop it after `patience` steps in a row. On stopping
it tells every `FiniteCheckpoint` to save nothing more, writes `diverged.json` in the run directory (step, epoch,
the offending values, the checkpoints written and what they hold) and raises `TrainingDiverged`: the run ends
with a clear error that says which checkpoint holds the last finite weights (a sweeper records a failed trial).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytorch_lightning as pl
import torch

from genface.callbacks.checkpoint import FiniteCheckpoint
from genface.checkpoint_io import non_finite_tensors


class TrainingDiverged(RuntimeError):
    """Raised by DivergenceGuard: losses or weights are no longer finite (or a loss exceeds `max_loss`)."""


class DivergenceGuard(pl.Callback):
    """Raises TrainingDiverged on non-finite weights, or after `patience` consecutive steps with bad losses.

    Args:
        patience: consecutive steps with a non-finite (or too large) loss, the weights still finite, before
            stopping; a single NaN batch under mixed precision can be a skipped step, so more than 1 tolerates that.
        max_loss: also stop when a training loss exceeds this absolute value (None: only non-finite).
        check_params_every_n_steps: how often to check the weights for NaN/inf besides the steps with a bad
            loss (0: only then).
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

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self._batches += 1
        bad = self._bad_losses(trainer)
        self.bad_steps = self.bad_steps + 1 if bad else 0
        weights: list[str] = []
        if bad or (self.check_params_every and self._batches % self.check_params_every == 0):
            weights = non_finite_tensors(pl_module.state_dict())
        if weights or self.bad_steps >= self.patience:
            self._stop(trainer, bad, weights)

    def _stop(self, trainer: pl.Trainer, losses: dict[str, float], weights: list[str]) -> None:
        out = Path(trainer.default_root_dir)
        reason = f"training diverged at global step {trainer.global_step} (epoch {trainer.current_epoch})"
        savers = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, FiniteCheckpoint)]
        for saver in savers:
            saver.stop_saving(reason)
        checkpoints = {
            _relative(path, out): {"epoch": epoch, "global_step": step}
            for saver in savers
            for path, (epoch, step) in saver.saved.items()
        }
        report = {
            "global_step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "bad_losses": {k: str(v) for k, v in losses.items()},
            "consecutive_bad_steps": self.bad_steps,
            "non_finite_parameters": weights[:20],
            "checkpoints": checkpoints,
        }
        if trainer.is_global_zero:
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / "diverged.json.tmp"
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            os.replace(tmp, out / "diverged.json")
        what = " and ".join(
            ([f"losses {report['bad_losses']}"] if losses else [])
            + ([f"non-finite parameters {weights[:3]}"] if weights else [])
        )
        raise TrainingDiverged(
            f"{reason}: {what}. {_checkpoint_state(checkpoints, out, trainer.ckpt_path)}. Lower the learning rates "
            f"or raise callbacks.divergence_guard.patience (see {out / 'diverged.json'})"
        )


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _checkpoint_state(checkpoints: dict[str, dict[str, int]], out: Path, resumed_from: str | None) -> str:
    """What the run's checkpoints hold, for the error message: only finite weights are ever written."""
    if checkpoints:
        listing = ", ".join(f"{p} (epoch {v['epoch']}, global step {v['global_step']})" for p, v in checkpoints.items())
        latest = max(checkpoints, key=lambda p: checkpoints[p]["global_step"])
        return (
            f"Nothing was saved after the divergence; the checkpoints written before it hold finite weights: "
            f"{listing}. Resume with ckpt_path={out / latest}"
        )
    if resumed_from:
        return f"This run wrote no checkpoint; {resumed_from}, which it resumed from, is unchanged"
    return "No checkpoint was written before the divergence: there is nothing to resume from"
