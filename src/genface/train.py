"""`genface train`: compose data, model, callbacks, loggers and trainer from conf/ and fit."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from genface.config import CONF_DIR, instantiate_group, to_container

log = logging.getLogger("genface.train")


def train(cfg: DictConfig) -> tuple[float | None, pl.Trainer]:
    """Fit `cfg.model` on `cfg.data`; returns (objective for sweepers, trainer)."""
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

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if trainer.checkpoint_callback else None)

    objective = trainer.callback_metrics.get(cfg.objective) if cfg.get("objective") else None
    _print_outputs(trainer)
    return (float(objective) if objective is not None else None), trainer


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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    objective, _ = train(cfg)
    return objective


if __name__ == "__main__":
    main()
