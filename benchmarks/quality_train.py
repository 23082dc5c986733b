"""Training side of `bench_quality.py` (and `ab_ddgan.py`): each family's shipped recipe, or a variant of it,
trained for a wall-clock budget.

A family is one or two *stages* (latent diffusion: its VAE-GAN first stage, then the diffusion), each a
`genface train experiment=...` run, composed with `genface.config.compose_train` and fitted in this process
with `genface.train.train`, so that what is measured is the shipped path. The budget is kept by
`WallClockBudget`, a callback added through the config (`+callbacks.wall_clock_budget`): it counts the
training loop's wall time, writes a checkpoint at every `every_s` seconds of it and a final one when the budget
is spent, and carries its clock in every checkpoint, so that a run cut short resumes from its newest checkpoint
(`ckpt_path=`) with the budget that is left. Each training session of a stage appends a line to the stage's
`sessions.json` (resumed from which checkpoint, at what clock) and logs to its own `csv/session<k>/`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf

from genface.checkpoint_io import non_finite_tensors
from genface.safe_load import safe_load

log = logging.getLogger("bench_quality")

#: Overrides every stage gets. `data.resolution=32`: the protocol's size (the recipes already use it).
#: `metrics=none`: no FID/KID inside the budget (scored afterwards from the checkpoints). `max_epochs=-1`,
#: `min_epochs=0`: the budget, not an epoch count, ends training (Lightning ignores a stop request before
#: `min_epochs`, which is 1 in trainer/default.yaml).
COMMON_OVERRIDES = ("data.resolution=32", "metrics=none", "trainer.max_epochs=-1", "trainer.min_epochs=0")

#: `--toy`: the recipes under `debug=smoke` (narrow nets, short schedules, 80 faces, batch 6), with smoke's
#: one-epoch-of-two-batches limits lifted so that the budget ends training.
TOY_OVERRIDES = ("debug=smoke", "trainer.limit_train_batches=1.0")

#: Every recipe's sample grid (pictures only) is off, as are the picture and scoring callbacks of single recipes
#: below, so that the budget buys training steps only.
GRID_OFF = "callbacks.sample_grid=null"


@dataclass(frozen=True)
class Stage:
    """One `genface train` run of a family: its recipe and the recipe-specific overrides it needs."""

    name: str
    experiment: str
    overrides: tuple[str, ...]


#: Families in table order; the last stage is the one that samples.
FAMILIES: dict[str, tuple[Stage, ...]] = {
    "dcgan": (Stage("train", "dcgan_synthfaces", (GRID_OFF,)),),
    "cgan": (Stage("train", "cgan_synthfaces", (GRID_OFF, "callbacks.conditional_accuracy=null")),),
    "ddpm": (Stage("train", "ddpm_synthfaces", (GRID_OFF, "callbacks.denoising_path=null")),),
    # DD-GAN's cosine decay runs over trainer.max_epochs, which the budget replaces: constant learning rates.
    "ddgan": (Stage("train", "ddgan_synthfaces", (GRID_OFF, "model.use_cosine=false")),),
    "latent_diffusion": (
        Stage("stage1", "vaegan_synthfaces", (GRID_OFF, "callbacks.reconstruction_grid=null")),
        Stage(
            "stage2",
            "latent_diffusion_synthfaces",
            (GRID_OFF, "callbacks.denoising_path=null", "callbacks.latent_pictures=null"),
        ),
    ),
}


def write_json(path: Path, data: Any) -> None:
    """Write atomically (temporary file + rename): a reader or a killed run never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class WallClockBudget(pl.Callback):
    """Stops training after `budget_s` seconds of training-loop wall time; checkpoints every `every_s` seconds.

    The clock runs from `on_train_start` to each training batch's end: steps, the recipe's validation loop and
    callbacks are counted; building data and model, the preflight and this callback's own checkpoint writes
    are not. `start_s` is time spent by an earlier stage of the same family (latent diffusion's first stage):
    the clock starts there, so marks and budget are in the family's total time. The clock is part of every
    checkpoint (`state_dict`), so `ckpt_path=` resumes it where the checkpoint left it.

    Files in `dirpath`: `mark_KKK.ckpt` at the first batch end past K * every_s (for K * every_s < budget_s),
    `final.ckpt` when the budget is spent, each with a `.json` beside it (clock, step, epoch).

    `budget_s=None` times a run that ends by its own schedule (a shipped recipe run to its last epoch, as
    `python -m genface train ... +callbacks.wall_clock_budget...` does for `score_run.py`): no stop, marks as
    usual, and `final.ckpt` when the trainer finishes its epochs. A run stopped early (the divergence guard sets
    `trainer.should_stop`) gets no final checkpoint.
    """

    def __init__(
        self, budget_s: float | None, dirpath: str, every_s: float | None = None, start_s: float = 0.0
    ) -> None:
        if budget_s is not None and budget_s <= start_s:
            raise ValueError(f"budget_s={budget_s} leaves no time after start_s={start_s}")
        self.budget_s = None if budget_s is None else float(budget_s)
        self.every_s, self.dirpath = every_s, Path(dirpath)
        self.elapsed_s = float(start_s)
        self.last_mark = int(start_s // every_s) if every_s else 0
        #: the clock a checkpoint restored (None: started afresh), for the record of each session
        self.restored_s: float | None = None
        self._tick: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed_s, "last_mark": self.last_mark, "budget_s": self.budget_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_s, self.last_mark = float(state_dict["elapsed_s"]), int(state_dict["last_mark"])
        self.restored_s = self.elapsed_s

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tick = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        now = time.monotonic()
        self.elapsed_s += now - (self._tick if self._tick is not None else now)
        if self.budget_s is not None and self.elapsed_s >= self.budget_s:
            self._save(trainer, pl_module, "final", None)
            trainer.should_stop = True
        elif self.every_s and int(self.elapsed_s // self.every_s) > self.last_mark:
            self.last_mark = int(self.elapsed_s // self.every_s)
            self._save(trainer, pl_module, f"mark_{self.last_mark:03d}", self.last_mark * self.every_s)
        self._tick = time.monotonic()  # the writes above are not training time

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.budget_s is None and not trainer.should_stop:  # an unbudgeted run that finished its schedule
            self._save(trainer, pl_module, "final", None)

    def _save(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, mark_s: float | None
    ) -> None:
        bad = non_finite_tensors(pl_module.state_dict())
        if bad:  # the divergence guard stops such a run; a checkpoint of it would only be scored as garbage
            log.warning("no %s checkpoint: non-finite weights in %s", name, ", ".join(bad[:3]))
            return
        path = self.dirpath / f"{name}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the full state, to resume from (and no log line)
        info = {"name": name, "mark_s": mark_s, "elapsed_s": self.elapsed_s, "budget_s": self.budget_s,
                "global_step": trainer.global_step, "epoch": trainer.current_epoch, "checkpoint": path.name}  # fmt: skip
        write_json(path.with_suffix(".json"), info)


def clock_of(path: Path) -> float | None:
    """The budget clock stored in a checkpoint (None when it holds none, e.g. a file of another run)."""
    state = safe_load(path, mmap=True).get("callbacks", {})
    for key, value in state.items():
        if key.split("{")[0] == WallClockBudget.__qualname__:
            return float(value["elapsed_s"])
    return None


def resume_point(run_dir: Path) -> tuple[Path, float] | None:
    """The checkpoint of `run_dir` with the most training time on its clock (marks, epoch-end `last.ckpt`...)."""
    found = [(p, clock_of(p)) for p in sorted((run_dir / "checkpoints").rglob("*.ckpt"))]
    timed = [(p, t) for p, t in found if t is not None]
    return max(timed, key=lambda pt: pt[1]) if timed else None


def final_info(run_dir: Path) -> dict[str, Any] | None:
    """The final checkpoint's record when this stage has spent its budget, else None."""
    path = run_dir / "checkpoints" / "wall" / "final.json"
    if path.is_file() and path.with_suffix(".ckpt").is_file():
        return json.loads(path.read_text())
    return None


def mark_infos(run_dir: Path) -> list[dict[str, Any]]:
    """Records of the mark checkpoints and of the final one, in clock order."""
    wall = run_dir / "checkpoints" / "wall"
    infos = [json.loads(p.read_text()) for p in sorted(wall.glob("*.json"))]
    infos = [i for i in infos if (wall / i["checkpoint"]).is_file()]
    return sorted(infos, key=lambda i: i["elapsed_s"])


def stage_overrides(stage: Stage, toy: bool, extra: tuple[str, ...] = ()) -> list[str]:
    """The overrides that define a stage's recipe in the protocol (listed in the output)."""
    return [f"experiment={stage.experiment}", *COMMON_OVERRIDES, *(TOY_OVERRIDES if toy else ()), *stage.overrides,
            *extra]  # fmt: skip


def compose_run(
    overrides: list[str], run_dir: Path, data_dir: str | None, clock: dict[str, Any] | None = None
) -> Any:
    """The config `genface train` composes for a stage run in `run_dir`; with `clock` (its arguments) the budget
    callback is added."""
    from genface.config import compose_train

    harness = [f"hydra.run.dir={run_dir}"] + ([f"paths.data_dir={data_dir}"] if data_dir else [])
    if clock is not None:
        target = f"{WallClockBudget.__module__}.{WallClockBudget.__qualname__}"
        harness.append(f"+callbacks.wall_clock_budget._target_={target}")
        harness += [f"+callbacks.wall_clock_budget.{key}={value}" for key, value in clock.items()]
    return compose_train([*overrides, *harness])


def first_stage_extra(first_cfg: Any, stage_two_cfg: Any, first_ckpt: Path) -> tuple[str, ...]:
    """Stage two's link to stage one: its checkpoint, and the denoiser's width set to the first stage's latent
    where the two recipes disagree (only under `--toy`: smoke narrows the autoencoder's latent to 16)."""
    extra = [f"model.first_stage_ckpt={first_ckpt}"]
    latent = OmegaConf.select(first_cfg, "model.autoencoder.latent_dim")
    if latent is not None and OmegaConf.select(stage_two_cfg, "model.net.dim") != latent:
        extra.append(f"model.net.dim={latent}")
    return tuple(extra)


def train_stage(
    overrides: list[str],
    run_dir: Path,
    budget_s: float,
    every_s: float | None,
    start_s: float,
    data_dir: str | None,
) -> tuple[dict[str, Any], bool]:
    """Train one stage until its clock reaches `budget_s` (resuming from its newest checkpoint), or do nothing
    when it already has. Returns (the final checkpoint's record, whether this call trained)."""
    from genface.train import train

    done = final_info(run_dir)
    if done is not None:
        return done, False
    resume = resume_point(run_dir)
    clock: dict[str, Any] = {
        "budget_s": budget_s,
        "dirpath": run_dir / "checkpoints" / "wall",
        "start_s": start_s,
    }
    if every_s:
        clock["every_s"] = every_s
    # Each session logs to csv/session<k>: the CSV logger would otherwise delete the earlier sessions' rows.
    session = f"logger.csv.version=session{len(list(run_dir.glob('csv/session*')))}"
    harness = [session] + ([f"ckpt_path={resume[0]}"] if resume else [])
    cfg = compose_run(overrides + harness, run_dir, data_dir, clock)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    where = f"resuming {resume[0].name} at {resume[1]:.0f} s" if resume else "from scratch"
    log.info("training %s (%s) until %.0f s, %s", run_dir, overrides[0], budget_s, where)
    started = time.monotonic()
    _, trainer = train(cfg)
    done = final_info(run_dir)
    if done is None:
        reason = (
            (run_dir / "diverged.json").read_text() if (run_dir / "diverged.json").is_file() else "unknown"
        )
        raise RuntimeError(f"{run_dir}: training ended before its budget of {budget_s:.0f} s ({reason})")
    clock = next(c for c in trainer.callbacks if isinstance(c, WallClockBudget))
    sessions_path = run_dir / "sessions.json"
    sessions = json.loads(sessions_path.read_text()) if sessions_path.is_file() else []
    sessions.append({"resumed_from": resume[0].name if resume else None, "restored_clock_s": clock.restored_s,
                     "final_clock_s": done["elapsed_s"], "global_step": done["global_step"],
                     "wall_s": time.monotonic() - started})  # fmt: skip
    write_json(sessions_path, sessions)
    return done, True


def train_family(
    name: str, stages: tuple[Stage, ...], out: Path, budget_s: float, every_s: float, stage_one_share: float,
    toy: bool, data_dir: str | None,
) -> dict[str, Any]:  # fmt: skip
    """Every stage of `stages` (a family's in `FAMILIES`, or a variant of them) within the shared budget, each in
    `out/name/<stage>`: stage one (latent diffusion's VAE-GAN) gets `stage_one_share` of it and no marks; the
    sampling stage the rest, with marks every `every_s` of total time.
    Returns {stages: {name: {overrides, final}}, trained: [stages trained now], final, marks}."""
    from genface.config import compose_train

    record: dict[str, Any] = {"stages": {}, "trained": []}
    start_s, extra = 0.0, ()
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        overrides = stage_overrides(stage, toy, extra)
        run_dir = out / name / stage.name
        budget = budget_s if last else budget_s * stage_one_share
        final, trained = train_stage(overrides, run_dir, budget, every_s if last else None, start_s, data_dir)
        record["stages"][stage.name] = {
            "experiment": stage.experiment,
            "overrides": overrides,
            "final": final,
        }
        record["trained"] += [stage.name] if trained else []
        record["run_dir"], start_s = str(run_dir), final["elapsed_s"]
        if not last:
            this, following = compose_train(overrides), compose_train(stage_overrides(stages[i + 1], toy))
            extra = first_stage_extra(this, following, run_dir / "checkpoints" / "wall" / "final.ckpt")
    record["final"] = final
    record["marks"] = [m for m in mark_infos(Path(record["run_dir"])) if m["name"] != "final"]
    return record
