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

from genface.config import CONF_PATH, instantiate_group, to_container

log = logging.getLogger("genface.train")


def train(cfg: DictConfig) -> tuple[float | None, pl.Trainer]:
    """Fit `cfg.model` on `cfg.data`; returns (objective for sweepers, trainer)."""
    if cfg.get("smoke"):  # debug=smoke: the experiment shrunk to a few seconds
        from genface.smoke import apply_smoke

        apply_smoke(cfg)
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

    _ddp_ranks_join_this_job(trainer)
    try:
        # Read without running code: the omegaconf types genface checkpoints hold are allow-listed with torch
        # (genface.safe_load, imported with genface.models), so a shared ckpt_path cannot run code.
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        if cfg.get("test"):
            best = "best" if trainer.checkpoint_callback else None
            trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
    except BaseException:
        _release_ddp_ranks(trainer, failed=True)
        raise

    objective = trainer.callback_metrics.get(cfg.objective) if cfg.get("objective") else None
    _print_outputs(trainer)
    _release_ddp_ranks(trainer)
    return (float(objective) if objective is not None else None), trainer


def _preflight(cfg: DictConfig) -> None:
    """`genface check` before anything is built: a broken recipe fails in seconds, not at its first FID."""
    from genface.check import PreflightError, preflight

    plan = preflight(cfg)
    if plan.problems:
        raise PreflightError(plan.report() + "\n(check=false skips these checks)")
    log.info("%s", plan.report())


def _ddp_ranks_join_this_job(trainer: pl.Trainer) -> None:
    """Make the DDP ranks that Lightning starts from a multirun job run this job, in this job's directory.

    Lightning starts ranks 1.. as `<sys.argv> hydra.run.dir=<hydra.run.dir>`. Inside a multirun that argv
    is the whole sweep (`-m`, `lr=1e-4,2e-4`, an Optuna search) and run.dir is not the job's directory, so
    every rank would start a sweep of its own, in new directories, and pair with rank 0 by chance. Give them
    this job's overrides (the ones the sweeper chose) in RUN mode (a search config may set hydra.mode), and its
    output directory as run.dir.
    """
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or trainer.world_size < 2:
        return
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None or environment.creates_processes_externally:  # SLURM, torchrun: nothing to start
        return
    hydra_cfg = HydraConfig.get()
    sweep_only = ("hydra.mode=", "hydra.sweep", "hydra.sweeper", "hydra.launcher", "hydra/sweeper=", "hydra/launcher=")
    kept = [o for o in hydra_cfg.overrides.hydra if not o.lstrip("+~").startswith(sweep_only)]
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, *kept, "hydra.mode=RUN"]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def _release_ddp_ranks(trainer: pl.Trainer, failed: bool = False) -> None:
    """Where this process started the other DDP ranks, wait for them (stop them if this rank `failed`: they
    would wait for it in a collective) and undo what the start left behind (the process group, LOCAL_RANK,
    WORLD_SIZE, MASTER_PORT...): otherwise the next job of a multirun, in this same process, would take them
    for ranks launched from outside and wait for ranks that are gone."""
    import os
    import signal

    import torch.distributed as dist

    launcher = getattr(trainer.strategy, "launcher", None)
    children = list(getattr(launcher, "procs", None) or [])
    if not children:
        return
    # Lightning's child-process observer watches this same list and kills this process when a child ends with
    # an error: empty it first, so that a failed job ends the job, not the whole sweep.
    launcher.procs.clear()
    for child in children:
        if failed:
            child.send_signal(getattr(signal, "SIGKILL", signal.SIGTERM))
        child.wait()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)


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
