"""Divergence guard: stop a run whose losses or weights stop being finite, before it overwrites good files.

A GAN that collapses to NaN keeps "training" for hours otherwise. The guard looks at the training losses every
step (every logged value whose name holds "loss") and at the weights (every floating-point tensor of the
module's state_dict) on every step with a bad loss and every `check_params_every_n_steps` steps. Non-finite
weights stop the run at once, even on an epoch's last step, before validation and the epoch-end save; bad
losses with finite weights (a skipped mixed-precision step) stop it after `patience` steps in a row. On stopping
it tells every `FiniteCheckpoint` to save nothing more, writes `diverged.json` in the run directory (step, epoch,
the offending values, the checkpoints written and what they hold) and raises `TrainingDiverged`: the run ends
with a clear error that says which checkpoint holds the last finite weights (a sweeper records a failed trial).

Reading a loss on the host waits for the device to finish the step. On a GPU that stall, every step, keeps the
host from queuing the next step's kernels, so there the guard copies a step's losses to the host asynchronously
and judges them at the end of the next step (or of the epoch, before validation and the epoch-end save): a
divergence is seen at most one step later, and never after a checkpoint could take it in.
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
        defer: judge a step's losses at the next step's end, from an asynchronous copy (see the module's
            docstring); None: when the losses live on a CUDA device (on a CPU reading them costs nothing).
    """

    def __init__(self, patience: int = 3, max_loss: float | None = None, check_params_every_n_steps: int = 100,
                 defer: bool | None = None) -> None:
        if patience < 1 or check_params_every_n_steps < 0:
            raise ValueError("callbacks.divergence_guard: patience must be >= 1, check_params_every_n_steps >= 0")
        if max_loss is not None and not max_loss > 0:
            raise ValueError(f"callbacks.divergence_guard.max_loss must be positive or null, got {max_loss}")
        self.patience, self.max_loss, self.check_params_every = patience, max_loss, check_params_every_n_steps
        self.defer = defer
        self.bad_steps = 0
        self._batches = 0
        #: a deferred step's loss names, their values being copied to the host, the copy's CUDA event
        self._pending: tuple[list[str], torch.Tensor, torch.cuda.Event | None] | None = None

    @staticmethod
    def _losses(trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[list[str], torch.Tensor | None]:
        """This step's training losses as one float32 tensor on their device (no read-back): the module's
        `step_losses` where it keeps them (the GANs, whose logged curves are windowed), else the logged ones."""
        names, values = [], []
        current = getattr(pl_module, "step_losses", None) or trainer.callback_metrics
        for name, value in current.items():
            if "loss" not in name or not name.startswith("train/") or name.endswith("_epoch"):
                continue
            names.append(name)
            values.append(value.detach().float().mean() if isinstance(value, torch.Tensor) else torch.tensor(value))
        if not values:
            return names, None
        device = values[0].device
        return names, torch.stack([v.to(device) for v in values])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self._flush(trainer, pl_module)  # the previous step's losses, copied during this step
        self._batches += 1
        names, values = self._losses(trainer, pl_module)
        defer = self.defer if self.defer is not None else (values is not None and values.is_cuda)
        if not defer or values is None:
            self._judge(trainer, pl_module, names, values.tolist() if values is not None else [])
            return
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=values.is_cuda)
        host.copy_(values, non_blocking=True)
        event = None
        if values.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self._pending = (names, host, event)

    def _flush(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        names, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # long done by the next step's end: no wait in practice
        self._judge(trainer, pl_module, names, host.tolist())

    # before validation (FID of a diverged model) and the epoch-end and final saves
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)

    def _judge(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str], values: list[float]) -> None:
        bad = {n: v for n, v in zip(names, values)
               if not math.isfinite(v) or (self.max_loss is not None and abs(v) > self.max_loss)}
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
