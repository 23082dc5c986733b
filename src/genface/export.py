"""`genface export ckpt=PATH out=DIR [format=diffusers] [overwrite=true]`: a trained model in another library's
format.

format=diffusers: a pixel-space DDPM whose net is diffusers' UNet2DModel (`model/net=unet2d_diffusers`,
`genface.nets.diffusers_unet.DiffusersUNet`) becomes a `diffusers.DDPMPipeline` folder: `unet/` (the EMA
weights when the model keeps them, as `generate` uses them) and `scheduler/` (a DDPMScheduler on the model's
own betas, prediction type and clipping). `DDPMPipeline.from_pretrained(DIR)` loads and samples it without
genface. DDPMPipeline samples unconditionally, so class-conditional models are refused, as are other nets and
families. The folder is written to a temporary sibling and renamed into place: an interrupted export leaves
no half-written `out`. Problems with the arguments exit with status 2 before the checkpoint is built.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from genface.config import CONF_PATH

log = logging.getLogger("genface.export")

FORMATS = ("diffusers",)
#: The nets `format=diffusers` can write, by their config `_target_`.
DIFFUSERS_NETS = ("genface.nets.diffusers_unet.DiffusersUNet",)


class ExportError(ValueError):
    """Arguments or a checkpoint that cannot be exported as asked; `genface export` exits 2 with the message."""


def check_out(out: Path, overwrite: bool) -> None:
    """`out` must be a new or empty folder, or `overwrite` must be on."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"out={out} exists and is not empty: choose another folder, or replace it with overwrite=true"
        )


def write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Run `write(folder)` on a temporary sibling of `out`, then put it in place of `out` (replacing what was
    there): `out` is either as it was or complete, never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        write(tmp)
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            out.replace(old / out.name)
            tmp.replace(out)
            shutil.rmtree(old)
        else:
            tmp.replace(out)  # onto an empty folder or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def diffusers_pipeline(model, ckpt: str):
    """The DDPMPipeline of a DDPM with a DiffusersUNet net (sharing its modules), or ExportError saying why not."""
    from diffusers import DDPMPipeline

    from genface.diffusion.diffusers_schedulers import ddpm_pipeline_scheduler
    from genface.models.ddpm import DDPM
    from genface.models.latent_diffusion import LatentDiffusion
    from genface.nets.diffusers_unet import DiffusersUNet

    exportable = f"pixel-space DDPMs whose net is diffusers' UNet2DModel ({', '.join(DIFFUSERS_NETS)}; model/net=unet2d_diffusers)"
    if not isinstance(model, DDPM) or isinstance(model, LatentDiffusion):
        raise ExportError(f"format=diffusers exports {exportable}; {ckpt} holds a {type(model).__name__}")
    if not isinstance(model.net, DiffusersUNet):
        raise ExportError(
            f"format=diffusers exports {exportable}; {ckpt} holds a DDPM whose net is "
            f"{type(model.net).__module__}.{type(model.net).__name__}: train with model/net=unet2d_diffusers to export"
        )
    if model.num_classes:
        raise ExportError(
            f"{ckpt} holds a class-conditional DDPM (num_classes={model.num_classes}); diffusers' DDPMPipeline "
            "samples unconditionally, so only unconditional models (model.num_classes=0) are exported"
        )
    scheduler = ddpm_pipeline_scheduler(model.schedule, model.hparams.pred_type, bool(model.hparams.clip_x0))
    return DDPMPipeline(unet=model.net.unet, scheduler=scheduler)


def export(cfg: DictConfig) -> Path:
    """Write the export that `cfg` asks for; returns the folder."""
    if not cfg.get("ckpt") or not cfg.get("out"):
        raise ExportError(
            "genface export needs ckpt=PATH (a checkpoint written by genface train) and out=DIR"
        )
    if cfg.format not in FORMATS:
        raise ExportError(f"format={cfg.format!r} is not supported; allowed: {', '.join(FORMATS)}")
    ckpt, out = str(cfg.ckpt), Path(str(cfg.out)).expanduser()
    check_out(out, bool(cfg.overwrite))
    from genface.models import load_module

    try:
        model = load_module(ckpt)
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None
    pipeline = diffusers_pipeline(model, ckpt)

    def write(folder: Path) -> None:
        with model.ema_scope():  # the weights `generate` samples with
            pipeline.save_pretrained(folder)

    write_atomically(out, write)
    log.info(
        "wrote a diffusers DDPMPipeline (%s weights, T=%d) of %s to %s: DDPMPipeline.from_pretrained(%r)",
        "EMA" if model.ema is not None else "live", model.schedule.num_timesteps, ckpt, out, str(out),
    )  # fmt: skip
    return out


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        export(cfg)
    except ExportError as err:
        print(f"genface export: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
