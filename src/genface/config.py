"""Config plumbing shared by the entry points: resolvers, composing, instantiating groups."""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

#: The config tree shipped inside the package (`pkg://genface.conf`): primary configs and every group,
#: experiments included. A user's own folder joins it through Hydra's search path (`--config-dir DIR`).
CONF_DIR = Path(__file__).resolve().parent / "conf"
CONF_PATH = "pkg://genface.conf"


def _project_root() -> str:
    """Where `data/` and `logs/` go by default: $GENFACE_ROOT, else the directory genface was started from
    (DDP ranks inherit it), so an installed genface works from any folder, as a checkout does from its own."""
    return os.environ.get("GENFACE_ROOT") or os.getcwd()


def _wandb_offline() -> bool:
    """W&B runs offline unless the user has a key or chose a mode: no network, no crash, `wandb sync` later."""
    # Lightning's WandbLogger(offline=True) sets WANDB_MODE=dryrun in the process: later runs (multirun) stay offline
    return not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE", "offline") in ("offline", "dryrun")


def _hydra_node() -> DictConfig | None:
    """The running Hydra app's `hydra` node; None where configs are composed without an app (tests)."""
    return HydraConfig.get() if HydraConfig.initialized() else None


def _run_tags(user_tags: ListConfig | list | None, *, _root_: DictConfig) -> list[str]:
    """The user's tags, then the run's model family, dataset and experiment, each once: W&B filters by them.

    Family: the model's module (genface.models.dcgan -> dcgan). Dataset: the data
    module's class (SynthFacesDataModule -> synthfaces), the base set for derived pairs.
    """
    derived = []
    model_target = OmegaConf.select(_root_, "model._target_", default=None)
    if model_target:
        module = str(model_target).rsplit(".", 2)[-2]
        derived.append(module)
    data_target = OmegaConf.select(_root_, "data.base._target_", default=None) or OmegaConf.select(
        _root_, "data._target_", default=None
    )
    if data_target:
        derived.append(str(data_target).rsplit(".", 1)[-1].removesuffix("DataModule").lower())
    hydra_node = _hydra_node()
    experiment = hydra_node.runtime.choices.get("experiment") if hydra_node is not None else None
    if experiment:
        derived.append(str(experiment))
    return list(dict.fromkeys([str(t) for t in (user_tags or [])] + derived))


def _run_group(task_name: str) -> str | None:
    """One W&B group per sweep: a W&B agent's sweep id; an Optuna study kept in a storage (it spans
    invocations, so its name); else the multirun's sweep directory. A single run has no group."""
    sweep_id = os.environ.get("WANDB_SWEEP_ID")
    if sweep_id:
        return f"wandb-sweep-{sweep_id}"
    hydra_node = _hydra_node()
    if hydra_node is None or hydra_node.mode != RunMode.MULTIRUN:
        return None
    sweeper = hydra_node.sweeper
    if sweeper.get("storage") and sweeper.get("study_name"):
        return str(sweeper.study_name)
    return f"{task_name}-{Path(str(hydra_node.sweep.dir)).name}"


def _run_name(task_name: str) -> str:
    """`task_name`, with the job number inside a multirun so that a sweep's runs tell apart."""
    hydra_node = _hydra_node()
    if hydra_node is None or hydra_node.mode != RunMode.MULTIRUN:
        return task_name
    return f"{task_name}-{hydra_node.job.num}"


@functools.cache
def _run_id() -> str:
    """6 random hex digits, drawn once per process: with `${now:...}` it names a run or sweep folder, so that runs
    started in the same second (job arrays, shell loops) get folders of their own. Registered with `use_cache`:
    Hydra copies the value into each multirun job's config (also to SLURM jobs), and DDP ranks 1.. are started with
    rank 0's resolved `hydra.run.dir`."""
    return secrets.token_hex(3)


def _unless_set(value: Any, otherwise: Any) -> Any:
    """`otherwise` where `value` is unset (null or empty), else null: e.g. debug=smoke's stand-in first stage of
    latent diffusion, `${unless_set:${model.first_stage_ckpt},${smoke.first_stage}}`, only without a checkpoint."""
    return otherwise if value in (None, "") else None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id, use_cache=True)
    for name, fn in (
        ("genface_root", _project_root),
        ("wandb_offline", _wandb_offline),
        ("run_tags", _run_tags),
        ("run_group", _run_group),
        ("run_name", _run_name),
        ("unless_set", _unless_set),
    ):
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


def require_smoke_overlay(cfg: DictConfig) -> None:
    """Refuse a `debug=smoke` run whose model no overlay shrank: it would train at full size, slowly and silently.

    The overlay of model option NAME is `debug/model/smoke/NAME.yaml` (train.yaml selects it by the model choice);
    it sets `smoke.model`, which conf/debug/smoke.yaml leaves missing.
    """
    smoke = cfg.get("smoke")
    if isinstance(smoke, DictConfig) and OmegaConf.is_missing(smoke, "model"):
        raise ValueError(
            f"debug=smoke has no overlay for this model ({cfg.model.get('_target_')}): write "
            "debug/model/smoke/<model option>.yaml (in your --config-dir for a model option of your own) that "
            "sets smoke.model and narrows the nets; see genface/conf/debug/model/smoke/dcgan.yaml"
        )


def compose_train(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The config `genface train overrides...` composes (or another command's: `config_name="analyze"`), with
    its run directory resolved, without starting a Hydra run (no run folder is created)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=config_name):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):  # the one `${hydra:...}` of the tree: where the run would write
        cfg.paths.output_dir = str(cfg.hydra.run.dir)
        del cfg["hydra"]
    return cfg
