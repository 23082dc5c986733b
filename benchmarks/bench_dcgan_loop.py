"""Lightning DCGAN training throughput vs a plain PyTorch loop: same nets, batch, data, threads.

Both train the same DCGAN (width 32, 32 px, batch 64) on the same in-memory images for the same
number of steps; runs alternate A/B/A/B so that load on the machine hits both alike.
Target (issue 2): Lightning / plain >= 0.95.
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import best_of, record
from genface.losses import discriminator_loss, generator_loss
from genface.models.dcgan import DCGAN

WIDTH, RES, BATCH, NZ = 32, 32, 64, 100


def configs() -> dict:
    opt = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-4, "betas": [0.5, 0.999]}
    return dict(
        generator={"_target_": "genface.nets.dcgan.DCGANGenerator", "latent_dim": NZ, "width": WIDTH, "resolution": RES},
        discriminator={"_target_": "genface.nets.dcgan.DCGANDiscriminator", "width": WIDTH, "resolution": RES},
        optimizer_g=opt,
        optimizer_d=dict(opt),
    )


def loader(images: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(images, torch.zeros(len(images), 0)), batch_size=BATCH, shuffle=True, drop_last=True)


def plain_loop(images: torch.Tensor, steps: int) -> None:
    model = DCGAN(**configs())
    g, d = model.generator, model.discriminator
    opt_g, opt_d = model.configure_optimizers()
    it = iter(loader(images))
    for _ in range(steps):
        real, _ = next(it)
        with torch.no_grad():
            fake = g(torch.randn(BATCH, NZ))
        loss_d = discriminator_loss("bce", d(real), d(fake))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        d.requires_grad_(False)  # as a careful plain loop would (and toggle_optimizer does)
        fake = g(torch.randn(BATCH, NZ))
        loss_g = generator_loss("bce", d(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        float(loss_d), float(loss_g)  # the Lightning run logs both every step: same synchronisation


def lightning_loop(images: torch.Tensor, steps: int) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2 * steps,  # two optimizers: Lightning counts 2 global steps per batch
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DCGAN(**configs()), train_dataloaders=loader(images))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(BATCH * (args.steps + 1), 3, RES, RES) * 2 - 1
    pl.seed_everything(0)
    plain_loop(images, 3), lightning_loop(images, 3)  # warm-up
    plain, light, cpu_plain, cpu_light = [], [], [], []
    for _ in range(args.repeats):
        c0 = time.process_time()
        plain.append(best_of(lambda: plain_loop(images, args.steps), 1))
        c1 = time.process_time()
        light.append(best_of(lambda: lightning_loop(images, args.steps), 1))
        cpu_plain.append(c1 - c0)
        cpu_light.append(time.process_time() - c1)
    t_plain, t_light = min(plain), min(light)
    record(
        "dcgan_lightning_vs_plain",
        {
            "setup": f"DCGAN width {WIDTH}, {RES} px, batch {BATCH}, {args.steps} steps, best of {args.repeats} alternating runs",
            "plain_img_per_s": round(BATCH * args.steps / t_plain, 1),
            "lightning_img_per_s": round(BATCH * args.steps / t_light, 1),
            "ratio_lightning_over_plain": round(t_plain / t_light, 3),
            # CPU seconds of this process: robust to other load on a shared machine
            "ratio_lightning_over_plain_cpu_time": round(min(cpu_plain) / min(cpu_light), 3),
        },
    )


if __name__ == "__main__":
    main()
