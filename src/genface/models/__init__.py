"""LightningModules, one per model family, all implementing the Generative contract of base.py."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from genface.models.base import GenerativeModule


def load_module(ckpt_path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild any genface LightningModule from its checkpoint alone (class recorded at save time)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    target = ckpt.get("genface_class")
    if not target:
        raise ValueError(f"{path} is not a genface checkpoint (no 'genface_class' entry)")
    module_name, _, cls_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    # Hydra runs store omegaconf containers in hyper-parameters: not loadable with weights_only=True.
    model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    model.eval()
    return model


def load_generative(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModule:
    model = load_module(ckpt_path, map_location)
    if not isinstance(model, GenerativeModule):
        raise TypeError(f"{ckpt_path} holds a {type(model).__name__}, not a generative model")
    return model
