"""Config plumbing shared by the entry points: resolvers, composing, instantiating groups."""

from __future__ import annotations

import os
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genface import ROOT

CONF_DIR = ROOT / "conf"


def _wandb_offline() -> bool:
    """W&B runs offline unless the user has a key or chose a mode: no network, no crash, `wandb sync` later."""
    return not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE", "offline") == "offline"


def register_resolvers() -> None:
    for name, fn in (("genface_root", lambda: str(ROOT)), ("wandb_offline", _wandb_offline)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Build every entry of a group such as `callbacks` or `logger` that names a `_target_`."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
