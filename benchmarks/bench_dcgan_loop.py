"""Lightning DCGAN training throughput vs a plain PyTorch loop: same nets, batch, data, threads.

Both train the same DCGAN (width 32, 32 px, batch 64) on the same in-memory images for the same
number of steps. Runs come in pairs whose order alternates (plain first, then Lightning first, ...), so
that drifting load on a shared machine hits both alike. The record gives, in wall time and in this
process's CPU time, the per-step ratio (median step of every run; what the framework adds to each step)
and the whole-run ratio (median over pairs; Trainer set-up included). Target: Lightning / plain >= 0.97.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import record
from genface.losses import discriminator_loss, generator_loss
from genface.models.dcgan import DCGAN

WIDTH, RES, BATCH, NZ = 32, 32, 64, 100


def configs() -> dict:
    opt = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-4, "betas": [0.5, 0.999]}
    return dict(
        generator={
            "_target_": "genface.nets.dcgan.DCGANGenerator",
            "latent_dim": NZ,
            "width": WIDTH,
            "resolution": RES,
        },
        discriminator={
            "_target_": "genface.nets.dcgan.DCGANDiscriminator",
            "width": WIDTH,
            "resolution": RES,
        },
        optimizer_g=opt,
        optimizer_d=dict(opt),
    )


def loader(images: torch.Tensor) -> DataLoader:
    return DataLoader(
        TensorDataset(images, torch.zeros(len(images), 0)), batch_size=BATCH, shuffle=True, drop_last=True
    )


Marks = list[tuple[float, float]]


def mark(marks: Marks) -> None:
    """Append (wall, this process's CPU) seconds now."""
    marks.append((time.perf_counter(), time.process_time()))


def plain_loop(images: torch.Tensor, steps: int, marks: Marks | None = None) -> None:
    """`steps` DCGAN updates by hand; `marks` gets a time at the start of every step and at the end."""
    marks = [] if marks is None else marks
    model = DCGAN(**configs())
    g, d = model.generator, model.discriminator
    opt_g, opt_d = model.configure_optimizers()
    it = iter(loader(images))
    for _ in range(steps):
        mark(marks)
        real, _ = next(it)
        with torch.no_grad():
            fake = g(torch.randn(BATCH, NZ))
        loss_d = discriminator_loss("bce", d(real), d(fake))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        d.requires_grad_(False)  # as a careful plain loop would (and DCGAN's `frozen` does)
        fake = g(torch.randn(BATCH, NZ))
        loss_g = generator_loss("bce", d(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
    mark(marks)


class Marker(pl.Callback):
    """Times every training batch from its start to the next one's (fetch, step, hooks and logging)."""

    def __init__(self, marks: Marks) -> None:
        self.marks = marks

    def on_train_batch_start(self, *args) -> None:
        mark(self.marks)

    def on_train_end(self, *args) -> None:
        mark(self.marks)


def lightning_loop(images: torch.Tensor, steps: int, marks: Marks | None = None) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2 * steps,  # two optimizers: Lightning counts 2 global steps per batch
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Marker([] if marks is None else marks)],
    )
    trainer.fit(DCGAN(**configs()), train_dataloaders=loader(images))


def timed(fn: Callable[[Marks], object]) -> tuple[float, float, Marks]:
    """(wall seconds, CPU seconds of this process, step marks) of one run, set-up and tear-down included."""
    marks: Marks = []
    w, c = time.perf_counter(), time.process_time()
    fn(marks)
    return time.perf_counter() - w, time.process_time() - c, marks


def step_times(marks: Marks) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each step: differences of consecutive marks."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5, help="pairs of runs (plain, Lightning)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(BATCH * (args.steps + 1), 3, RES, RES) * 2 - 1
    pl.seed_everything(0)
    loops = {"plain": plain_loop, "lightning": lightning_loop}
    runs = {name: (lambda marks, loop=loop: loop(images, args.steps, marks)) for name, loop in loops.items()}
    plain_loop(images, 3), lightning_loop(images, 3)  # warm-up
    pairs = []
    for i in range(args.repeats):
        order = ("plain", "lightning") if i % 2 == 0 else ("lightning", "plain")
        pairs.append({name: timed(runs[name]) for name in order})
    # Per step: the median over every step of every run, robust to the bursts of other jobs on the machine.
    steps = {name: [t for p in pairs for t in step_times(p[name][2])] for name in loops}
    step_wall = {name: statistics.median(t[0] for t in steps[name]) for name in loops}
    step_cpu = {name: statistics.median(t[1] for t in steps[name]) for name in loops}
    # Whole runs (Trainer set-up and tear-down included): the median of the per-pair ratios.
    wall = [p["plain"][0] / p["lightning"][0] for p in pairs]
    cpu = [p["plain"][1] / p["lightning"][1] for p in pairs]
    record(
        f"dcgan_lightning_vs_plain_{args.threads}t",
        {
            "setup": (
                f"DCGAN width {WIDTH}, {RES} px, batch {BATCH}, {args.steps} steps per run, {args.threads} "
                f"threads, {args.repeats} pairs of runs in alternating order, medians"
            ),
            "plain_img_per_s": round(BATCH / step_wall["plain"], 1),
            "lightning_img_per_s": round(BATCH / step_wall["lightning"], 1),
            "step_ratio_lightning_over_plain": round(step_wall["plain"] / step_wall["lightning"], 3),
            "step_ratio_lightning_over_plain_cpu_time": round(step_cpu["plain"] / step_cpu["lightning"], 3),
            "run_ratio_lightning_over_plain": round(statistics.median(wall), 3),
            "run_ratio_lightning_over_plain_cpu_time": round(statistics.median(cpu), 3),
            "run_wall_ratios": [round(r, 3) for r in wall],
            "run_cpu_ratios": [round(r, 3) for r in cpu],
        },
    )


if __name__ == "__main__":
    main()
