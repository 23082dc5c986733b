"""Sampling cost per image and network evaluations (NFE): DDPM (1000), DDIM (50, 10), DPM-Solver++ (20, 10),
DD-GAN (T=2, T=4).

DD-GAN's claim (Xiao et al. 2022; the DD-GAN latent-analysis study) is that a GAN per denoising step lets a handful of large
steps replace DDPM's thousand small ones. This builds, from the shipped configs and in one session on one
device, a pixel DDPM and DD-GAN generators at the same resolution with the same U-Net width (base channels,
channel multipliers and ResBlocks per level), and measures per image, for DDPM's own samplers and diffusers'
DPM-Solver++(2M) (`model.sampler=dpmpp_2m`) on the same net:

- NFE: network forward passes per sample, counted with a forward hook (not assumed);
- seconds per image of the whole sampler (best of `--repeats`, DDPM-1000 once: it is the slow baseline);
- seconds per NFE, to separate "fewer steps" from "cheaper steps" (DD-GAN's generator also maps z);
- ratios against DDPM-1000 (the reference every seed compares against).

Weights are untrained: costs do not depend on them. On a GPU (``--device cuda``) add ``--preset study128
--batch 100`` for the DD-GAN latent-analysis study's setting (DD-GAN 128 px, batch 100; the paper reports 0.025 s/image).
Results: benchmarks/out/diffusion_nfe_<preset>[_<device>].json.
    python -m benchmarks.bench_diffusion_nfe [--preset cpu32|study128] [--device cpu|cuda] [--batch 4]
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from benchmarks.common import add_device_args, best_of, record, setup_torch
from genface.config import CONF_DIR

#: resolution and the shared U-Net width per preset: `cpu32` is small enough for DDPM-1000 on a laptop CPU,
#: `study128` is DD-GAN's CelebA-HQ generator (64 x (1,1,2,2,4,4), attention at 16: ddgan_celebahq128) at the DD-GAN latent-analysis study's 128 px.
PRESETS = {
    "cpu32": dict(resolution=32, base_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention=[8]),
    "study128": dict(resolution=128, base_channels=64, channel_mult=[1, 1, 2, 2, 4, 4], num_res_blocks=2, attention=[16]),
}


def build(model: str, preset: dict, *overrides: str):
    GlobalHydra.instance().clear()
    net = "net" if model == "ddpm" else "generator"
    width = [
        f"model.{net}.base_channels={preset['base_channels']}",
        f"model.{net}.channel_mult=[{','.join(map(str, preset['channel_mult']))}]",
        f"model.{net}.num_res_blocks={preset['num_res_blocks']}",
        f"model.{net}.attention_resolutions=[{','.join(map(str, preset['attention']))}]",
    ]
    if model == "ddgan":
        width.append("model.discriminator.layout=small")  # the discriminator is not used for sampling
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", [f"model={model}", f"data.resolution={preset['resolution']}", "data.channels=3", *width, *overrides]
        )
    return instantiate(cfg.model)


class NFECounter:
    """Counts forward calls of a module and the images they processed."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = self.images = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.images += int(args[0].shape[0])

    def reset(self) -> None:
        self.calls = self.images = 0


def measure(name: str, net: torch.nn.Module, params: int, sample, batch: int, repeats: int, sync) -> dict:
    counter = NFECounter(net)

    def run() -> None:
        sample()
        sync()

    if repeats > 1:
        run()  # warm-up
    counter.reset()
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    nfe = counter.images / batch
    seconds = min(first, best_of(run, repeats - 1)) if repeats > 1 else first
    row = {
        "params": params,
        "nfe_per_image": nfe,
        "s_per_image": round(seconds / batch, 5),
        "s_per_nfe": round(seconds / batch / nfe, 6),
    }
    print(f"{name:>10}: {row}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    add_device_args(p)
    args = p.parse_args()
    device = setup_torch(args)
    preset = PRESETS[args.preset]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    rows: dict[str, dict] = {}

    ddpm = build("ddpm", preset, "model.schedule.T=1000").to(device).eval()
    ddpm_params = sum(p.numel() for p in ddpm.net.parameters())
    x_T = ddpm.sample_latents(args.batch, generator=gen)
    for sampler, steps in (("ddim", 50), ("ddim", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 10)):
        ddpm.sampler, ddpm.sample_steps = sampler, steps
        rows[f"{sampler}_{steps}"] = measure(
            f"{sampler} {steps}", ddpm.net, ddpm_params, lambda: ddpm.generate(x_T), args.batch, args.repeats, sync
        )
    ddpm.sampler = "ancestral"
    rows["ddpm_1000"] = measure("DDPM 1000", ddpm.net, ddpm_params, lambda: ddpm.generate(x_T), args.batch, 1, sync)
    for T in (2, 4):
        ddgan = build("ddgan", preset, f"model.num_timesteps={T}").to(device).eval()
        g_params = sum(p.numel() for p in ddgan.generator.parameters())
        z = ddgan.sample_latents(args.batch, generator=gen)
        rows[f"ddgan_T{T}"] = measure(
            f"DD-GAN T={T}", ddgan.generator, g_params, lambda m=ddgan, z=z: m.generate(z), args.batch, args.repeats,
            sync,
        )  # fmt: skip
    base = rows["ddpm_1000"]
    for row in rows.values():
        row["cost_ratio_vs_ddpm1000"] = round(row["s_per_image"] / base["s_per_image"], 5)
        row["speedup_vs_ddpm1000"] = round(base["s_per_image"] / row["s_per_image"], 1)
        row["s_per_nfe_ratio_vs_ddpm"] = round(row["s_per_nfe"] / base["s_per_nfe"], 3)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    record(
        f"diffusion_nfe_{args.preset}{suffix}",
        {
            "settings": {**vars(args), **preset, "note": "untrained weights; same U-Net width for DDPM and DD-GAN G"},
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
