"""`genface check`: preflight of a recipe, with exactly the overrides of `genface train`, without training.

It verifies in seconds what would otherwise fail later (hours in, on a cluster): the data layout and split
sizes, the metrics' N against the splits, every checkpoint path and the family it holds, devices, batch per
rank and precision, a writable run directory with room for the checkpoints, one real training step on two
real images; then prints the plan (batches, steps, when FID, grids and checkpoints happen). Exit 0 with the
plan, or 2 with every problem found, each with the override that fixes it. `genface train` runs the same
checks first (`check=false` skips them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from genface.config import compose_train, instantiate_group, require_smoke_overlay
from genface.safe_load import checkpoint_class

#: Extractors whose feature size is known without loading them (the low-N rule compares N with it).
KNOWN_FEATURES = {"inception": 2048}
#: Precisions Lightning runs on a CPU (16-bit float mixed precision needs a GPU).
CPU_PRECISIONS = {"32", "32-true", "64", "64-true", "bf16", "bf16-mixed", "bf16-true"}


@dataclass
class Problem:
    what: str
    fix: str


@dataclass
class Plan:
    """What `check` found: plan lines to print, and problems (empty: the recipe can start)."""

    lines: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(text)

    def problem(self, what: str, fix: str) -> None:
        self.problems.append(Problem(what, fix))

    def report(self) -> str:
        out = ["genface check: plan", *(f"  {line}" for line in self.lines)]
        out.append(f"genface check: {len(self.problems)} problem(s)" if self.problems else "genface check: OK")
        out += [f"  - {p.what}\n      fix: {p.fix}" for p in self.problems]
        return "\n".join(out)


class PreflightError(ValueError):
    """Raised by `genface train` when its preflight finds problems (the message lists them all)."""


# ------------------------------------------------------------------------------------------- trainer


def _world_size(trainer_cfg: DictConfig) -> tuple[str, int]:
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    devices = trainer_cfg.get("devices", 1)
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if isinstance(devices, int) and devices > 0:
        count = devices
    elif isinstance(devices, str) and devices.isdigit():
        count = int(devices)
    elif OmegaConf.is_list(devices) or isinstance(devices, list):
        count = len(devices)
    else:  # -1 / "auto": every visible device
        count = torch.cuda.device_count() if accelerator in ("gpu", "cuda") else 1
    return accelerator, max(count, 1) * int(trainer_cfg.get("num_nodes", 1) or 1)


def check_trainer(cfg: DictConfig, plan: Plan) -> int:
    """Accelerator present, enough devices, precision supported, global batch divisible; returns the world size."""
    trainer_cfg = cfg.trainer
    accelerator, world = _world_size(trainer_cfg)
    devices = trainer_cfg.get("devices", 1)
    precision = str(trainer_cfg.get("precision", "32-true"))
    if accelerator in ("gpu", "cuda"):
        visible = torch.cuda.device_count()
        if visible == 0:
            plan.problem(
                f"trainer.accelerator={trainer_cfg.accelerator} but this machine has no CUDA GPU",
                "trainer=cpu (one process), or trainer=ddp_cpu to rehearse DDP with CPU processes",
            )
        elif isinstance(devices, int) and devices > visible:
            plan.problem(f"trainer.devices={devices} but {visible} GPU(s) are visible", f"trainer.devices={visible}")
        if visible and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
            plan.problem(f"trainer.precision={precision} but this GPU has no bfloat16", "trainer.precision=16-mixed")
    elif accelerator == "cpu" and precision not in CPU_PRECISIONS:
        plan.problem(
            f"trainer.precision={precision} is not supported on a CPU",
            "trainer.precision=32-true (or bf16-mixed)",
        )
    from genface.data.base import positive_int

    try:
        batch = positive_int(cfg.data.get("batch_size", 1), "data.batch_size")
    except ValueError as err:
        plan.problem(str(err), "data.batch_size=<a whole number, e.g. 64>")
        batch = world
    if batch % world:
        fix = max(world, batch - batch % world)
        plan.problem(
            f"data.batch_size={batch} is the global batch and {world} ranks do not divide it",
            f"data.batch_size={fix} (a multiple of {world})",
        )
    plan.add(f"trainer: {accelerator} x {world} rank(s), precision {precision}, global batch {batch} "
             f"({batch // world if batch % world == 0 else '?'} per rank)")
    return world


# ---------------------------------------------------------------------------------------------- data


def _limited(n: int, limit: Any) -> int:
    """Batches Lightning runs of `n` under a `limit_*_batches` value (int: a count, float: a fraction)."""
    if limit is None:
        return n
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(n, limit)
    return int(n * float(limit))


def _root_hint(cfg: DictConfig) -> str:
    layout = str(cfg.data.get("_target_", "")).rsplit(".", 1)[-1].removesuffix("DataModule").lower()
    names = {"celeba": "celeba", "celebahq": "celebahq", "mnist": "mnist", "pairedfolder": "facades",
             "imagefolder": "imagefolder"}
    standin = f" (or a stand-in: `genface standin {names[layout]} out=DIR`)" if layout in names else ""
    return f"data.root=<a folder in that layout>{standin}"


def check_data(cfg: DictConfig, plan: Plan, world: int) -> tuple[Any, dict[str, int]] | None:
    """Instantiate the DataModule, count every split and the batches per rank; None when the data is unusable."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        datamodule = instantiate(cfg.data)
        sizes = {split: len(datamodule.split_dataset(split)) for split in ("train", "val", "test")}
    except (FileNotFoundError, ValueError, OSError, InstantiationException) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if "data.batch_size" not in str(cause):  # already a trainer problem, with its fix
            fix = "the data.* key named above" if "data." in str(cause) else _root_hint(cfg)
            plan.problem(f"data: {cause}", fix)
        return None
    per_rank = max(int(cfg.data.batch_size) // world, 1)
    train_batches = _limited(sizes["train"] // per_rank, cfg.trainer.get("limit_train_batches"))
    val_batches = _limited(math.ceil(sizes["val"] / per_rank), cfg.trainer.get("limit_val_batches"))
    root = cfg.data.get("root") or cfg.data.get("base", {}).get("root")
    plan.add(f"data: {datamodule.dataset_id}" + (f" at {root}" if root else ""))
    plan.add("  images: " + ", ".join(f"{split} {n}" for split, n in sizes.items())
             + f"; per rank per epoch: {train_batches} train / {val_batches} val batches of {per_rank}")
    if train_batches == 0:
        plan.problem(
            f"data: the train split ({sizes['train']} images) gives no batch of {per_rank} per rank",
            f"data.batch_size<={sizes['train'] * world // max(world, 1)} or more images",
        )
    return datamodule, {**sizes, "train_batches": train_batches, "val_batches": val_batches}


# ------------------------------------------------------------------------------------------- metrics


def check_metrics(cfg: DictConfig, plan: Plan, datamodule: Any, sizes: dict[str, int], world: int = 1) -> list[Any]:
    """Real-split sizes against n_real / n_fake, extractor weights, the low-N rule, validation epochs."""
    from genface.callbacks.fid import FIDCallback
    from genface.callbacks.triplets import TranslationFID
    from genface.metrics.extractors import inception_weights_path

    try:
        callbacks = instantiate_group(cfg.get("metrics"))
    except (ValueError, TypeError) as err:
        plan.problem(f"metrics: {err}", "see the allowed values named above")
        return []
    for (key, _), cb in zip(_targets(cfg.get("metrics")), callbacks):
        if isinstance(cb, TranslationFID):  # over the validation loop's translations
            per_rank = max(int(cfg.data.batch_size) // max(world, 1), 1)
            n = min(sizes["val"], sizes["val_batches"] * per_rank * world)
            plan.add(f"metrics.{key}: {cb.extractor_name}, {n} validation translations vs their targets")
            if n < 2:
                plan.problem(f"metrics.{key}: FID over {n} validation translation(s): it needs at least 2",
                             "trainer.limit_val_batches=1.0 (the whole val split)")
        if not isinstance(cb, FIDCallback):
            continue
        name = f"metrics.{key}"
        split = cb.real_split
        available = sum(sizes[s] for s in ("train", "val", "test")) if split == "all" else sizes[split]
        if split == "all" and hasattr(datamodule, "all_images"):
            available = len(datamodule.all_images())
        if cb.n_real > available:
            fixes = [f"{name}.real_split={s}" for s in ("train", "all") if s != split
                     and (sizes["train"] if s == "train" else sum(sizes[x] for x in ("train", "val", "test")))
                     >= cb.n_real]
            fixes.append(f"{name}.n_real={available} {name}.allow_low_n=true (N below the standard)")
            plan.problem(
                f"{name}: n_real={cb.n_real} but the {split!r} split holds {available} images", " or ".join(fixes)
            )
        if cb.source == "reconstructions" and cb.n_fake > sizes[split]:
            plan.problem(f"{name}: n_fake={cb.n_fake} reconstructions but the {split!r} split holds {sizes[split]}",
                         f"{name}.n_fake={sizes[split]}")
        features = KNOWN_FEATURES.get(cb.extractor_name)
        if cb.extractor_name == "inception":
            try:
                plan.add(f"{name}: Inception weights {inception_weights_path(cb.extractor_path)}")
            except FileNotFoundError as err:
                plan.problem(f"{name}: {err}", f"{name}.extractor_path=/path/to/weights")
        elif cb.extractor_name == "classifier":
            _check_checkpoint(plan, f"{name}.extractor_path", cb.extractor_path, "Classifier")
        for side, n in (("n_real", cb.n_real), ("n_fake", cb.n_fake)):
            if features and n < features and not cb.allow_low_n:
                plan.problem(f"{name}: {side}={n} < {features} features: FID would refuse it at its first epoch",
                             f"{name}.{side}={features}, or {name}.allow_low_n=true (comparable only at the same N)")
        if features and cb.allow_low_n and min(cb.n_real, cb.n_fake) >= features:
            plan.add(f"{name}: allow_low_n=true is not needed at N >= {features}")
        check_val = int(cfg.trainer.get("check_val_every_n_epoch") or 1)
        if cb.every_n_epochs % check_val:
            plan.problem(
                f"{name}: every_n_epochs={cb.every_n_epochs} but validation (where FID runs) happens every "
                f"{check_val} epochs", f"{name}.every_n_epochs={math.lcm(cb.every_n_epochs, check_val)}")
        if sizes["val_batches"] == 0:
            plan.problem(f"{name}: FID runs at the end of validation, and validation never runs here",
                         "trainer.limit_val_batches=1 (or more), and a non-empty val split")
        plan.add(f"{name}: {cb.extractor_name}, {cb.n_fake} {cb.source} vs {cb.n_real} real of {split!r}")
    return callbacks


def _targets(group: DictConfig | None) -> list[tuple[str, DictConfig]]:
    """(key, node) of a group's entries with a `_target_`, in the order `instantiate_group` builds them."""
    if not group:
        return []
    return [(str(k), v) for k, v in group.items() if isinstance(v, DictConfig) and "_target_" in v]


# ------------------------------------------------------------------------------------- paths and output


def _check_checkpoint(plan: Plan, key: str, path: Any, expected: str | None) -> None:
    """`path` exists and holds a checkpoint of the class named `expected` (the last part of its path)."""
    if not path:
        return
    file = Path(str(path)).expanduser()
    if not file.is_file():
        plan.problem(f"{key}: no file at {file}", f"{key}=<an existing .ckpt>")
        return
    try:
        found = checkpoint_class(file)
    except Exception as err:  # a truncated or foreign file: torch raises many kinds
        plan.problem(f"{key}: {file} is not a readable checkpoint ({type(err).__name__}: {err})",
                     f"{key}=<a genface .ckpt>")
        return
    if expected and found.rsplit(".", 1)[-1] != expected:
        plan.problem(f"{key}: {file} holds a {found or 'non-genface checkpoint'}, not a {expected}",
                     f"{key}=<a {expected} checkpoint>")
    else:
        plan.add(f"{key}: {file} ({found.rsplit('.', 1)[-1]})")


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _leaves(child, f"{prefix}.{key}").items()}
    if isinstance(node, (list, tuple)):
        return {k: v for i, child in enumerate(node) for k, v in _leaves(child, f"{prefix}.{i}").items()}
    return {prefix: node}


def check_resume_settings(cfg: DictConfig, plan: Plan) -> None:
    """A resumed run restores the optimizer and scheduler state saved in `ckpt_path` (learning rates, betas,
    schedule position): a changed `model.optimizer*` setting would be silently ignored while the run's
    hparams recorded it, so it is refused, naming the key; a changed `model.scheduler*` one is noted."""
    from genface.safe_load import safe_load

    path = Path(str(cfg.ckpt_path)).expanduser()
    try:
        saved = safe_load(path, mmap=True).get("hyper_parameters") or {}
    except Exception:  # unreadable: _check_checkpoint has said so
        return
    now = OmegaConf.to_container(cfg.model, resolve=True)
    for key in sorted(k for k in now if str(k).startswith(("optimizer", "scheduler")) and k in saved):
        old, new = _leaves(saved[key], f"model.{key}"), _leaves(now[key], f"model.{key}")
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name) and str(key).startswith("scheduler"):
                # e.g. a cosine T_max that follows trainer.max_epochs when a run is extended: worth saying,
                # not worth refusing (the restored schedule goes on as it was saved)
                plan.add(f"note: {name}={new.get(name)} but {path.name} has {old.get(name)}; the restored "
                         "scheduler state keeps the saved value")
            elif old.get(name) != new.get(name):
                plan.problem(
                    f"{name}={new.get(name)} but {path.name} was trained with {old.get(name)}: resuming restores "
                    "the saved optimizer state, so the new value would be ignored",
                    f"drop the {name} override to resume as saved, or start a new run without ckpt_path",
                )


def check_paths(cfg: DictConfig, plan: Plan, callbacks: list[Any]) -> None:
    """ckpt_path, first stages, judges' classifiers and pretrained weights exist and hold the right family."""
    model_class = str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1]
    before = len(plan.problems)
    _check_checkpoint(plan, "ckpt_path", cfg.get("ckpt_path"), model_class)
    if cfg.get("ckpt_path") and len(plan.problems) == before:
        check_resume_settings(cfg, plan)
    if "first_stage_ckpt" in cfg.model:
        if cfg.model.first_stage_ckpt is None and cfg.model.get("first_stage") is None:
            plan.problem("model.first_stage_ckpt is required: latent diffusion needs a trained autoencoder",
                         "model.first_stage_ckpt=<vaegan run>/checkpoints/last.ckpt")
        _check_checkpoint(plan, "model.first_stage_ckpt", cfg.model.first_stage_ckpt, "VAEGAN")
    weights = OmegaConf.select(cfg, "model.net.weights_path", default=None)
    if weights and not Path(str(weights)).expanduser().is_file():
        plan.problem(f"model.net.weights_path: no file at {weights}", "model.net.weights_path=<a .pth file>")
    for key, node in _targets(cfg.get("callbacks")):
        if node.get("classifier_path"):
            _check_checkpoint(plan, f"callbacks.{key}.classifier_path", node.classifier_path, "Classifier")


def _checkpoints_kept(callbacks: list[Any]) -> int:
    from pytorch_lightning.callbacks import ModelCheckpoint

    kept = 0
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint):
            kept += max(cb.save_top_k, 0) + int(bool(cb.save_last))
    return max(kept, 1)


def check_output(cfg: DictConfig, plan: Plan, n_params: int | None, callbacks: list[Any]) -> None:
    """The run directory can be created and written, with room for the checkpoints it keeps."""
    run_dir = Path(str(cfg.paths.output_dir)).expanduser()
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), Path("/"))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        plan.problem(f"output: {existing} (on the way to the run directory {run_dir}) is not writable",
                     "paths.log_dir=<a writable folder> (or GENFACE_LOG_DIR=...)")
        return
    if n_params is not None:
        # weights + two Adam moments (+ an EMA copy or second net's moments): ~4 x float32 per parameter
        per_file = 16 * n_params
        need = per_file * _checkpoints_kept(callbacks)
        free = shutil.disk_usage(existing).free
        plan.add(f"output: {run_dir} ({free / 2**30:.1f} GiB free; ~{per_file / 2**20:.0f} MiB per checkpoint)")
        if need > free:
            plan.problem(f"output: the checkpoints need ~{need / 2**30:.1f} GiB, {existing} has {free / 2**30:.1f}",
                         "paths.log_dir=<a folder on a larger disk>")


# ------------------------------------------------------------------------------------ one real step


def one_step(cfg: DictConfig, plan: Plan, datamodule: Any) -> Any:
    """Build the real model and train it for one step on two real training images; returns the model."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader, Subset

    from genface.data.splits import SPLITS

    try:
        model = instantiate(cfg.model)
    except Exception as err:
        plan.problem(f"model: cannot build it ({type(err).__name__}: {err})", "see the model.* key named above")
        return None
    n_params = sum(p.numel() for p in model.parameters())
    plan.add(f"model: {type(model).__name__}, {n_params:,} parameters")
    train = datamodule.split_dataset("train", augment=True)
    images = Subset(train, range(min(2, len(train))))

    class TwoImages(pl.LightningDataModule):
        """The real DataModule (its attributes stay visible to the model) serving two training images."""

        def __getattr__(self, name: str) -> Any:
            return getattr(datamodule, name)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(images, batch_size=len(images))

    for split in SPLITS:  # models may read the DataModule's class names etc. in setup
        datamodule.split_dataset(split)
    accelerator, _ = _world_size(cfg.trainer)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        accelerator = "cpu"
    precision = str(cfg.trainer.get("precision", "32-true"))
    if accelerator == "cpu" and precision not in CPU_PRECISIONS:
        precision = "32-true"
    with tempfile.TemporaryDirectory(prefix="genface-check-") as tmp, _quiet():
        trainer = pl.Trainer(
            accelerator=accelerator, devices=1, precision=precision, max_epochs=1, limit_train_batches=1,
            limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp,
        )
        try:
            trainer.fit(model, datamodule=TwoImages())
        except Exception as err:
            plan.problem(f"one training step on 2 real images failed: {type(err).__name__}: {err}",
                         "see the error; the model and data settings it names")
            return model
    # losses only, as the divergence guard: a per-timestep D output is NaN where 2 images miss that timestep
    losses = {k: float(v) for k, v in trainer.callback_metrics.items()
              if k.startswith("train/") and "loss" in k and not k.endswith(("_step", "_epoch")) and v.numel() == 1}
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    bad += [n for n, p in model.named_parameters() if not torch.isfinite(p).all()][:3]
    if bad:
        plan.problem(f"one training step gave non-finite values: {', '.join(bad)}",
                     "lower the learning rates, or trainer.precision=32-true")
    shown = ", ".join(f"{k} {v:.3g}" for k, v in sorted(losses.items())[:6])
    plan.add(f"one step on {len(images)} real images: OK ({shown or 'no losses logged'})")
    return model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's banner, tips and warnings about the two-image loader say nothing about the recipe."""
    logger = logging.getLogger("pytorch_lightning")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------------------- schedule


def _epochs(every: int, max_epochs: int) -> str:
    due = sorted({e for e in range(every, max_epochs + 1, every)} | {max_epochs})
    shown = ", ".join(map(str, due)) if len(due) <= 5 else ", ".join(map(str, due[:4])) + f", ... {due[-1]}"
    return f"epochs {shown} ({len(due)} times)"


def schedule(cfg: DictConfig, plan: Plan, sizes: dict[str, int], callbacks: list[Any]) -> None:
    max_epochs = int(cfg.trainer.get("max_epochs") or 1)
    max_steps = int(cfg.trainer.get("max_steps") or -1)
    batches = sizes["train_batches"]
    total = batches * max_epochs
    ends = f"{max_epochs} epochs" if max_steps < 0 or max_steps >= total else f"max_steps={max_steps}"
    plan.add(f"schedule: {batches} batches/epoch x {max_epochs} epochs = {total} batches per rank (ends at {ends}; "
             "a GAN's optimizer steps count each net's update)")
    for cb in callbacks:
        every = getattr(cb, "every_n_epochs", None) or getattr(cb, "_every_n_epochs", None)
        if isinstance(every, int) and every > 0:
            plan.add(f"  {type(cb).__name__}: {_epochs(every, max_epochs)}")


# ------------------------------------------------------------------------------------------- preflight


def preflight(cfg: DictConfig, step: bool = True) -> Plan:
    """Every check of a composed `train` config; problems are collected, never raised."""
    plan = Plan()
    world = check_trainer(cfg, plan)
    found = check_data(cfg, plan, world)
    metrics = check_metrics(cfg, plan, *found, world) if found else []
    try:
        others = instantiate_group(cfg.get("callbacks"))
    except Exception as err:
        plan.problem(f"callbacks: {type(err).__name__}: {err}", "see the callbacks.* key named above")
        others = []
    check_paths(cfg, plan, others)
    model = one_step(cfg, plan, found[0]) if step and found and not plan.problems else None
    n_params = sum(p.numel() for p in model.parameters()) if model is not None else None
    check_output(cfg, plan, n_params, others)
    if found:
        schedule(cfg, plan, found[1], [*metrics, *others])
    return plan


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-m", "--multirun") for a in args):
        raise SystemExit("genface check takes the overrides of one run (no -m): check one job of the sweep")
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return
    cfg = compose_train(args)
    require_smoke_overlay(cfg)
    plan = preflight(cfg)
    print(plan.report())
    raise SystemExit(2 if plan.problems else 0)


if __name__ == "__main__":
    main()
