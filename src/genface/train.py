"""`genface train`: compose data, model, callbacks, loggers and trainer from conf/ and fit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from genface.config import CONF_PATH, instantiate_group, require_smoke_overlay, to_container
from genface.launch import ddp_ranks_join_this_job, release_ddp_ranks

log = logging.getLogger("genface.train")


def train(cfg: DictConfig) -> tuple[float | None, pl.Trainer]:
    """Fit `cfg.model` on `cfg.data`; returns (objective for sweepers, trainer)."""
    require_smoke_overlay(cfg)
    if cfg.get("check", True) and int(os.environ.get("LOCAL_RANK", "0")) == 0:  # ranks > 0: rank 0 checked
        _preflight(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    model: pl.LightningModule = instantiate(cfg.model)
    callbacks = instantiate_group(cfg.get("callbacks")) + instantiate_group(cfg.get("metrics"))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # Lightning refuses an LR monitor without a logger; logger=none is a valid choice
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in trainer.loggers:
        lg.log_hyperparams(to_container(cfg))

    ddp_ranks_join_this_job(trainer)
    try:
        # Read without running code: the omegaconf types genface checkpoints hold are allow-listed with torch
        # (genface.safe_load, imported with genface.models), so a shared ckpt_path cannot run code.
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        if cfg.get("test"):
            best = "best" if trainer.checkpoint_callback else None
            trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
    except BaseException:
        release_ddp_ranks(trainer, failed=True)
        raise

    objective = trainer.callback_metrics.get(cfg.objective) if cfg.get("objective") else None
    _print_outputs(trainer)
    release_ddp_ranks(trainer)
    return (float(objective) if objective is not None else None), trainer


def _preflight(cfg: DictConfig) -> None:
    """`genface check` before anything is built: a broken recipe fails in seconds, not at its first FID."""
    from genface.check import PreflightError, preflight

    plan = preflight(cfg)
    if plan.problems:
        raise PreflightError(plan.report() + "\n(check=false skips these checks)")
    log.info("%s", plan.report())


@rank_zero_only
def _print_outputs(trainer: pl.Trainer) -> None:
    out = Path(trainer.default_root_dir)
    files = sorted(
        p for pattern in ("report/*", "samples/samples_over_epochs.*", "checkpoints/*.ckpt", "fid_protocol.json")
        for p in out.glob(pattern)
    )
    log.info("run directory: %s", out)
    for p in files:
        log.info("  %s", p)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return the run's BEST `objective` (not its last value) to a sweeper such as Optuna.

    Inside a multirun a crash is logged with its traceback into the run's log and re-raised: the sweeper
    reports the trial as failed and goes on with the study (hparams_search: max_failure_rate).
    """
    from genface import sweeps

    failed = True
    try:
        _, trainer = train(cfg)
        objective = sweeps.run_objective(trainer, cfg.get("objective"))
        failed = False
        return objective
    except Exception:
        sweeps.log_failed_trial()
        raise
    finally:
        sweeps.finish_wandb_run(failed)


if __name__ == "__main__":
    main()
