"""LightningModules, one per model family, all implementing the Generative contract of base.py."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from genface.models.base import GenerativeModule
from genface.safe_load import check_targets, resolve_target, safe_load


def load_module(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> pl.LightningModule:
    """Rebuild any genface LightningModule from its checkpoint alone (class recorded at save time).

    Safe on a file from anyone: it is read without running code (`genface.safe_load.safe_load`), and the
    class it names and every `_target_` of its hyper-parameters must pass `resolve_target` before anything
    is built. The class is `genface_class`, else `hyper_parameters["_target_"]` (modules saved by hand).
    """
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = safe_load(path, mmap=True)  # mapped, not read: only the class and hyper-parameters are looked at
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"{path} is not a Lightning checkpoint (it holds a {type(ckpt).__name__}, not a dict)"
        )
    hparams = ckpt.get("hyper_parameters") or {}
    key = "genface_class" if ckpt.get("genface_class") else "hyper_parameters._target_"
    target = ckpt.get("genface_class") or hparams.get("_target_")
    if not target:
        raise ValueError(
            f"{path} is not a genface checkpoint: it names no class to build (no 'genface_class' entry, nor "
            "hyper_parameters['_target_'])"
        )
    cls = resolve_target(target, key, path)
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise TypeError(f"{path}: {key}={target!r} is not a LightningModule")
    check_targets(hparams, "hyper_parameters", path)
    # The allow-list of safe_load is registered with torch, so Lightning's weights-only read accepts the file.
    model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    model.eval()
    return model


def load_generative(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModule:
    model = load_module(ckpt_path, map_location)
    if not isinstance(model, GenerativeModule):
        raise TypeError(f"{ckpt_path} holds a {type(model).__name__}, not a generative model")
    return model
