"""Latent diffusion vs pixel-space DDPM at the same image resolution: training-step and sampling cost.

The point of latent diffusion (Rombach et al. 2022) is that the denoiser runs on a small latent instead of
the image. This builds, from the shipped configs, a pixel DDPM and latent diffusion models on the same
images (flat latent + MLP denoiser as the VAE-GAN latent-diffusion study; spatial latent + U-Net as latent-diffusion), and times
in one session, on the same device:

- one training step (batch `--batch`: forward, backward, optimiser step; for latent diffusion this
  includes encoding the batch with the frozen first stage);
- sampling per image (the Generative contract's DDIM, `--steps` steps, `--n` images; latent diffusion
  includes decoding).

Weights are untrained: costs do not depend on them.
Results: benchmarks/out/latent_vs_pixel_PRESETRESOLUTION[_DEVICE].json.
    python benchmarks/bench_latent_vs_pixel.py [--resolution 32] [--device cpu|cuda] [--preset tiny|study]
"""

from __future__ import annotations

import argparse

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from benchmarks.common import add_device_args, best_of, record, setup_torch
from genface.config import CONF_DIR
from genface.models.latent_diffusion import LatentDiffusion

#: (pixel DDPM config, first-stage config, latent diffusion config) per preset: `tiny` = the CPU demo
#: configs, `study` = the 64 px configs of ddpm_dlstudio_celeba64's default model and the VAE-GAN latent-diffusion study.
PRESETS = {
    "tiny": ("ddpm_tiny", "vaegan_tiny", "latent_diffusion_tiny"),
    "study": ("ddpm", "vaegan", "latent_diffusion"),
}


def model_cfg(name: str, resolution: int, *overrides: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [f"model={name}", f"data.resolution={resolution}", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True)


def latent_model(preset: str, resolution: int, spatial: bool) -> LatentDiffusion:
    _, stage_one, ldm = PRESETS[preset]
    ae = model_cfg(stage_one, resolution)["autoencoder"]
    cfg = model_cfg(ldm, resolution)
    if spatial:
        ae["latent_dim"] = None
        side = resolution // 2 ** (len(ae["channel_mult"]) - 1)
        cfg["net"] = {
            **model_cfg("latent_diffusion_unet", resolution)["net"],
            "in_channels": ae["z_channels"], "out_channels": ae["z_channels"], "resolution": side,
            "attention_resolutions": [side // 2],
        }  # fmt: skip
        if preset == "tiny":
            cfg["net"].update(base_channels=32, channel_mult=[1, 2], num_res_blocks=1)
    else:
        cfg["net"]["dim"] = ae["latent_dim"]
    cfg.pop("_target_"), cfg.pop("_recursive_"), cfg.pop("_convert_")
    cfg.update(first_stage=ae, latent_scale=1.0)
    return LatentDiffusion(**cfg)


def pixel_model(preset: str, resolution: int):
    return instantiate(model_cfg(PRESETS[preset][0], resolution), _recursive_=False)


def time_model(model, resolution: int, batch: int, n: int, steps: int, device: torch.device) -> dict:
    model = model.to(device)
    model.sample_steps = steps
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_step() -> None:
        x0 = model.encode_images(x) if isinstance(model, LatentDiffusion) else x
        t = torch.randint(0, model.schedule.num_timesteps, (batch,), device=device)
        loss = model._loss(x0, None, t, torch.randn_like(x0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    latents = model.sample_latents(n, generator=torch.Generator().manual_seed(0))

    def sample() -> None:
        model.generate(latents)
        sync()

    model.train()
    train_step()  # warm-up (allocations, cuDNN autotuning)
    step_s = best_of(train_step, 3)
    sample()
    sample_s = best_of(sample, 3) / n
    params = sum(p.numel() for p in model.net.parameters())
    return {
        "denoiser_params": params,
        "train_step_s": round(step_s, 5),
        "sample_s_per_image": round(sample_s, 5),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    add_device_args(p)
    args = p.parse_args()
    device = setup_torch(args)
    pixel = time_model(
        pixel_model(args.preset, args.resolution), args.resolution, args.batch, args.n, args.steps, device
    )
    rows = {"pixel_ddpm": pixel}
    for name, spatial in (("latent_flat_mlp", False), ("latent_spatial_unet", True)):
        model = latent_model(args.preset, args.resolution, spatial)
        rows[name] = time_model(model, args.resolution, args.batch, args.n, args.steps, device)
        rows[name]["latent_shape"] = list(model.latent_shape)
        rows[name]["train_step_ratio_vs_pixel"] = round(rows[name]["train_step_s"] / pixel["train_step_s"], 3)
        rows[name]["sample_ratio_vs_pixel"] = round(
            rows[name]["sample_s_per_image"] / pixel["sample_s_per_image"], 3
        )
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    record(
        f"latent_vs_pixel_{args.preset}{args.resolution}{suffix}",
        {
            "settings": {
                **vars(args),
                "note": "untrained weights; ratios < 1 mean latent diffusion is cheaper",
            },
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
