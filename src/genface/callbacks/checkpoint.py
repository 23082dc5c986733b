"""ModelCheckpoint that never writes non-finite weights and that knows which files it wrote."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from genface.checkpoint_io import non_finite_tensors

log = logging.getLogger(__name__)


class FiniteCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint (same arguments) with a finiteness gate before every save.

    Epoch-end, validation-end, periodic, `last` and on-exception saves first check every floating-point tensor
    of the module's state_dict: if one holds NaN or inf, nothing is written and no earlier file is removed or
    replaced (a NaN spike after a good epoch would otherwise overwrite the good `last.ckpt` and the best file),
    and a warning names the tensors and the files kept. `stop_saving(reason)` (called by the divergence guard
    when it stops a run) ends all saving, on-exception saves included. Where an on-exception save itself fails
    (a full disk), the failure is logged and the run's original exception is the one raised.

    `saved` maps each file this callback wrote in this process, and did not remove since, to its
    (epoch, global step): what the guard reports as the state of the checkpoints.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saved: dict[str, tuple[int, int]] = {}
        self._stopped: str | None = None

    def stop_saving(self, reason: str) -> None:
        """No further saves in this run (the weights can no longer be trusted): `reason` says why, in the logs."""
        self._stopped = reason

    def describe_saved(self) -> str:
        """The files in `saved`, for messages: `last.ckpt (epoch 3, global step 400), ...`."""
        if not self.saved:
            return f"no file written in {self.dirpath} by this run"
        return ", ".join(f"{Path(p).name} (epoch {e}, global step {s})" for p, (e, s) in self.saved.items())

    def _may_save(self, trainer: pl.Trainer) -> bool:
        if self._stopped is not None:
            return False
        bad = non_finite_tensors(trainer.lightning_module.state_dict())
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            rank_zero_warn(
                f"checkpoint not saved at epoch {trainer.current_epoch}, global step {trainer.global_step}: "
                f"non-finite values in {', '.join(bad[:5])}{more}; kept: {self.describe_saved()}"
            )
        return not bad

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self.save_top_k != 0 and self._may_save(trainer):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self.save_last and self._may_save(trainer):
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.saved[filepath] = (trainer.current_epoch, trainer.global_step)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        self.saved.pop(filepath, None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._stopped is not None:
            if self.save_on_exception:
                rank_zero_info(f"no checkpoint saved on {type(exception).__name__}: {self._stopped}")
            return
        if not self._should_save_on_exception(trainer) or not self._may_save(trainer):
            return
        monitor_candidates = self._monitor_candidates(trainer)
        filepath = self.format_checkpoint_name(metrics=monitor_candidates)
        try:
            self._save_checkpoint(trainer, filepath)
            self._save_last_checkpoint(trainer, monitor_candidates)
        except Exception as err:  # the run's own exception is the one to raise; this one is reported
            log.error("%s: could not save %s on the way out: %s. Kept: %s", type(exception).__name__, filepath,
                      err, self.describe_saved())  # fmt: skip
            return
        rank_zero_info(
            f"{type(exception).__name__} ({exception}): saved {filepath} "
            f"(epoch {trainer.current_epoch}, global step {trainer.global_step})"
        )
