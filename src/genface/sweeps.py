"""Sweeps: what a `genface train` job tells its sweeper, and W&B sweep files made from the Optuna searches.

`genface sweep-wandb hparams_search=NAME experiment=EXP [overrides] [--out FILE]` writes a `wandb sweep`
YAML whose parameters are the search space of conf/hparams_search/NAME.yaml (one source for both
searches) and whose command is `genface train` with Hydra overrides (wandb's `${args_no_hyphens}`).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.types import RunMode
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger("genface.sweeps")

# ---------------------------------------------------------------- one job of a sweep (genface.train.main)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def best_objective(trainer: pl.Trainer, key: str | None) -> float | None:
    """The run's best value of `key`: the best score of a ModelCheckpoint that monitors it (its `mode`
    says min or max), else the last value logged; None when the run never logged it."""
    if not key:
        return None
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor == key and callback.best_model_score is not None:
            return float(callback.best_model_score)
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def run_objective(trainer: pl.Trainer, key: str | None) -> float | None:
    """`best_objective`, logged, kept in the W&B summary as `best/<key>` (a W&B sweep's metric) and, for an
    Optuna trial, required to be a finite number: a missing key fails the trial with a message naming it."""
    objective = best_objective(trainer, key)
    if _optuna_trial():
        if not key:
            raise ValueError("objective is null: a search needs objective=<a logged metric> (or a metrics group with a monitor)")
        if objective is None or not math.isfinite(objective):
            logged = ", ".join(sorted(trainer.callback_metrics)) or "none"
            raise ValueError(f"objective={key!r} is {objective} in this run; metrics logged: {logged}")
    if objective is not None and getattr(trainer, "is_global_zero", True):
        log.info("objective %s (best of the run) = %.6g", key, objective)
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.run.summary[f"best/{key}"] = objective
    return objective


def _optuna_trial() -> bool:
    return in_multirun() and "optuna" in str(HydraConfig.get().sweeper.get("_target_", ""))


def log_failed_trial() -> None:
    """Inside a multirun the sweeper only reports a crashed job as failed and goes on: keep its traceback
    in the job's log. (Called from an `except` block; a single run's traceback is Hydra's to print.)"""
    if in_multirun():
        log.exception("run failed, the sweep goes on without it: %s", HydraConfig.get().runtime.output_dir)


def finish_wandb_run(failed: bool) -> None:
    """Close the job's W&B run: the next job of an in-process multirun would otherwise log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


# ---------------------------------------------------------------- W&B sweep files

WANDB_METHODS = ("grid", "random", "bayes")
WANDB_GOALS = ("minimize", "maximize")
# distributions this generator writes (a subset of W&B's), with the keys each needs
WANDB_DISTRIBUTIONS = {
    "uniform": ("min", "max"),
    "log_uniform_values": ("min", "max"),
    "int_uniform": ("min", "max"),
    "categorical": ("values",),
    "constant": ("value",),
}
# overrides that the sweep command sets itself
_COMMAND_KEYS = ("logger", "hydra.mode", "logger.wandb.offline")


def wandb_parameter(key: str, expression: Any) -> dict[str, Any]:
    """One Hydra sweep expression as a W&B parameter: choice/range -> values, interval -> uniform,
    tag(log, interval) -> log_uniform_values, a plain value -> value."""
    override: Override = OverridesParser.create().parse_override(f"{key}={expression}")
    value = override.value()
    if isinstance(value, IntervalSweep):
        kind = "log_uniform_values" if "log" in value.tags else "uniform"
        return {"distribution": kind, "min": float(value.start), "max": float(value.end)}
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        return {"values": list(override.sweep_iterator())}
    if override.is_sweep_override():
        raise ValueError(f"{key}={expression}: W&B sweeps take choice, range, interval or tag(log, interval)")
    return {"value": value}


def wandb_sweep_config(overrides: Sequence[str], method: str = "bayes") -> dict[str, Any]:
    """The `wandb sweep` config of `genface train overrides...`, where the overrides name an hparams_search.

    The command keeps `hparams_search=...` (its config changes, such as D's learning rate following G's,
    apply to every run) with `hydra.mode=RUN`: W&B, not Optuna, picks the values, one run per agent call.
    """
    from hydra import compose, initialize_config_dir

    from genface.config import CONF_DIR

    overrides = list(overrides)
    if not any(o.split("=", 1)[0] == "hparams_search" for o in overrides):
        raise ValueError("name the search space: hparams_search=<one of conf/hparams_search/*.yaml>")
    taken = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] in _COMMAND_KEYS]
    if taken:
        raise ValueError(f"{taken}: the sweep command sets {', '.join(_COMMAND_KEYS)} itself")
    if method not in WANDB_METHODS:
        raise ValueError(f"method={method!r} is not allowed; allowed: {', '.join(WANDB_METHODS)}")
    fixed = ["logger=wandb", "logger.wandb.offline=false", "hydra.mode=RUN"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="sweep_wandb"):
        cfg = compose(config_name="train", overrides=[*fixed, *overrides], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    if "params" not in sweeper:
        raise ValueError("hparams_search did not select the Optuna sweeper (no hydra.sweeper.params)")
    if not sweeper.params:
        raise ValueError("the search space is empty: hparams_search=optuna needs a family file (dcgan, ddpm, ...)")
    if not cfg.get("objective"):
        raise ValueError("objective is null: set objective=<a logged metric> (or a metrics group with a monitor)")
    parameters = {str(k): wandb_parameter(str(k), v) for k, v in sweeper.params.items()}
    config = {
        "program": "genface",
        "project": str(cfg.logger.wandb.project),
        "name": str(sweeper.study_name),
        "method": method,
        "metric": {"name": f"best/{cfg.objective}", "goal": _goal(sweeper.direction)},
        "parameters": parameters,
        # a W&B agent needs online runs: logger.wandb.offline is true without WANDB_API_KEY
        "command": ["${env}", "genface", "train", *fixed, *overrides, "${args_no_hyphens}"],
    }
    check_wandb_sweep(config)
    return config


def _goal(direction: Any) -> str:
    name = getattr(direction, "name", direction)
    if isinstance(name, str) and name in WANDB_GOALS:
        return name
    raise ValueError(f"hydra.sweeper.direction={direction!r}: one direction, {' or '.join(WANDB_GOALS)}")


def check_wandb_sweep(config: dict[str, Any]) -> None:
    """Refuse a sweep config that `wandb sweep` would reject or misread (method, metric, parameters, command)."""
    if config.get("method") not in WANDB_METHODS:
        raise ValueError(f"method={config.get('method')!r} is not allowed; allowed: {', '.join(WANDB_METHODS)}")
    metric = config.get("metric")
    if not isinstance(metric, dict) or not metric.get("name") or metric.get("goal") not in WANDB_GOALS:
        raise ValueError(f"metric={metric!r}: needs name and goal ({', '.join(WANDB_GOALS)})")
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ValueError("parameters: at least one is needed")
    for name, spec in parameters.items():
        _check_parameter(str(name), spec, grid=config["method"] == "grid")
    command = config.get("command")
    if not isinstance(command, list) or "${args_no_hyphens}" not in command:
        raise ValueError("command: a list that passes the parameters as Hydra overrides, with ${args_no_hyphens}")


def _check_parameter(name: str, spec: Any, grid: bool) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"parameters.{name}: a mapping, got {spec!r}")
    kind = spec.get("distribution") or ("categorical" if "values" in spec else "constant" if "value" in spec else None)
    if kind not in WANDB_DISTRIBUTIONS:
        raise ValueError(
            f"parameters.{name}: distribution {kind!r} is not allowed; allowed: {', '.join(WANDB_DISTRIBUTIONS)}"
        )
    missing = [k for k in WANDB_DISTRIBUTIONS[kind] if k not in spec]
    if missing:
        raise ValueError(f"parameters.{name}: {kind} needs {', '.join(missing)}")
    if kind == "categorical" and (not isinstance(spec["values"], list) or not spec["values"]):
        raise ValueError(f"parameters.{name}.values: a non-empty list")
    if "min" in spec:
        low, high = spec["min"], spec["max"]
        if not low < high or (kind == "log_uniform_values" and low <= 0):
            raise ValueError(f"parameters.{name}: needs {'0 < ' if kind == 'log_uniform_values' else ''}min < max, got {low}, {high}")
        if grid:
            raise ValueError(f"parameters.{name}: method=grid takes value/values only, not {kind}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="genface sweep-wandb",
        description="Write a `wandb sweep` YAML from an hparams_search config: "
        "genface sweep-wandb hparams_search=dcgan experiment=dcgan_synthfaces --out sweep.yaml",
    )
    parser.add_argument("overrides", nargs="+", help="genface train overrides, one of them hparams_search=NAME")
    parser.add_argument("--method", default="bayes", choices=WANDB_METHODS)
    parser.add_argument("--out", default=None, help="YAML file to write (default: stdout)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = wandb_sweep_config(args.overrides, method=args.method)
    except ValueError as err:
        parser.exit(2, f"genface sweep-wandb: {err}\n")
    text = yaml.safe_dump(config, sort_keys=False)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
        print(f"wrote {args.out}; next: wandb sweep {args.out}, then the `wandb agent ...` it prints", file=sys.stderr)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
