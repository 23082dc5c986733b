"""Shared fixtures: compose configs the way the entry points do, on tiny data in tmp dirs."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from genface.config import CONF_DIR

# Tiny nets: one thread avoids oversubscription (DDP and CLI tests start processes of their own).
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Test modules whose own nets and modules their checkpoints name (genface.safe_load builds nothing else).
os.environ.setdefault("GENFACE_TRUSTED_MODULES", "test_analysis,test_cgan,test_classifier,test_metrics")


def compose_cfg(config_name: str, overrides: Sequence[str], tmp_path) -> DictConfig:
    """The composed config of `genface <config_name> overrides...`, with every path inside tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs", *overrides],
            return_hydra_config=False,
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


@pytest.fixture
def compose_train(tmp_path):
    return lambda *overrides: compose_cfg("train", overrides, tmp_path)


@pytest.fixture
def one_thread():
    """Tiny convolutions run far faster on one thread than on two contended ones (2-core CI, parallel jobs);
    for tests that run after others changed the thread count. Use: pytestmark = usefixtures("one_thread")."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
