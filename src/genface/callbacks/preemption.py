"""SIGTERM (how SLURM and most schedulers pre-empt a job) ends `genface train` with status 143, not 0."""

from __future__ import annotations

import signal

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

#: 128 + SIGTERM: the status a shell reports for a process ended by SIGTERM; schedulers read it as "did not finish".
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


class Preemption(pl.Callback):
    """Gives Lightning's SIGTERM exit the status 143.

    On SIGTERM Lightning finishes the current step and raises SIGTERMException, a SystemExit without a code:
    the checkpoint callbacks save on the way out (`save_on_exception`), then the process would exit with status 0
    and a scheduler would take the run as finished, not requeue it. This sets the exit code to 128 + 15, on every
    rank; nothing else changes (the on-exception save happens in the checkpoint callbacks).
    """

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            exception.code = SIGTERM_EXIT_STATUS
            rank_zero_info(
                f"SIGTERM at epoch {trainer.current_epoch}, global step {trainer.global_step}: exiting with "
                f"status {SIGTERM_EXIT_STATUS} so that the scheduler sees an unfinished run; resume with "
                "ckpt_path=<run>/checkpoints/last.ckpt"
            )
