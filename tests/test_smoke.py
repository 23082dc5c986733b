"""`debug=smoke`: conf/debug/smoke.yaml plus the overlays of the run's model, net, metrics and trainer choices
(conf/debug/<group>/smoke/<choice>.yaml) shrink every experiment to narrow nets of the same family and structure on
the experiment's own data; the slow test trains every experiment that way on stand-ins of the real datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genface.check import preflight
from genface.config import CONF_DIR, require_smoke_overlay

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
#: Model settings an overlay may change other than by lowering an integer: sides follow the data (which may grow:
#: MNIST's 28 px become 32), one attention level at 16 px, the staged schedule and the stand-in first stage.
FREE = {"resolution", "attention_resolutions", "stages", "first_stage"}
#: Nets whose widths smoke leaves as the recipe sets them: ResNet-18's are fixed, UNet2DModel's pair with its
#: block types.
FIXED_WIDTHS = ("genface.nets.resnet.resnet18", "genface.nets.diffusers_unet.DiffusersUNet")


def options(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.yaml")}


def leaves(node, path: str = ""):
    """(dotted path, value) of every leaf of a plain container."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, node


def assert_same_structure(full: DictConfig, smoke: DictConfig) -> None:
    """Same classes, heads, losses, conditioning, learning rates...: integers go down, FREE settings aside."""
    before = dict(leaves(OmegaConf.to_container(full, resolve=True)))
    after = dict(leaves(OmegaConf.to_container(smoke, resolve=True)))
    free = lambda key: not FREE.isdisjoint(key.split("."))  # noqa: E731
    assert {k for k in before.keys() ^ after.keys() if not free(k)} == set()
    for key, old in before.items():
        new = after.get(key)
        if old == new or free(key):
            continue
        lowered = isinstance(old, int) and isinstance(new, int) and not isinstance(old, bool) and new < old
        assert lowered, f"model.{key}: {old!r} -> {new!r}"


def test_every_model_and_net_option_has_an_overlay_and_every_overlay_an_option():
    for group in ("model", "model/net"):
        overlays = options(CONF_DIR / "debug" / group.rsplit("/", 1)[-1] / "smoke")
        assert overlays == options(CONF_DIR / group), group


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_makes_every_experiment_tiny_on_its_own_data(compose_train, experiment):
    full = compose_train(f"experiment={experiment}")
    cfg = compose_train(f"experiment={experiment}", "debug=smoke")
    require_smoke_overlay(cfg)
    assert cfg.data._target_ == full.data._target_  # never swapped: absent data fail with their layout error
    assert cfg.data.resolution == (64 if cfg.model.get("discriminator", {}).get("layout") == "large" else 32)
    assert cfg.data.batch_size == 6 and cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 2

    assert cfg.model._target_ == full.model._target_
    assert_same_structure(full.model, cfg.model)
    model = instantiate(cfg.model)
    if str(cfg.model.get("net", {}).get("_target_")) not in FIXED_WIDTHS:
        assert sum(p.numel() for p in model.parameters()) < 1_000_000

    fid = (cfg.get("metrics") or {}).get("fid")
    if fid is not None:
        assert fid.extractor == "tiny" and fid.every_n_epochs == 1
    assert cfg.trainer.accelerator in ("auto", "cpu") and cfg.trainer.devices == 1
    assert cfg.trainer.get("precision", "32-true") == "32-true"


def test_smoke_of_absent_data_fails_with_the_layout_error(compose_train, tmp_path):
    plan = preflight(compose_train("experiment=dcgan_dg1_celeba64", "debug=smoke"), step=False)
    (problem,) = plan.problems
    assert f"{tmp_path}/data/celeba" in problem.what and "list_attr_celeba.txt" in problem.what
    assert "genface standin celeba" in problem.fix


def test_smoke_on_embedded_data_named_on_the_command_line(compose_train):
    cfg = compose_train("experiment=pix2pix_facades", "debug=smoke", "data=paired_lowres")
    pairs, model = instantiate(cfg.data), instantiate(cfg.model)
    assert (pairs.source_channels, pairs.resolution, cfg.model.generator.num_downs) == (3, 32, 5)
    with torch.no_grad():
        assert model.translate(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_latent_diffusion_stands_in_a_tiny_first_stage_only_without_a_checkpoint(compose_train, tmp_path):
    cfg = compose_train("experiment=latent_diffusion_smiling_celeba64", "debug=smoke")
    model = instantiate(cfg.model)  # the stand-in is built and checked against the denoiser here
    assert model.first_stage is not None and model.latent_shape == (cfg.model.net.dim,)
    with torch.no_grad():
        images = model.first_stage.decode(torch.zeros(2, *model.latent_shape))
    assert images.shape == (2, 3, 32, 32)
    spatial = instantiate(compose_train("model=latent_diffusion_unet", "debug=smoke").model)
    assert spatial.latent_shape == (4, 16, 16)

    ckpt = compose_train(
        "experiment=latent_diffusion_synthfaces", "debug=smoke", f"model.first_stage_ckpt={tmp_path}/a.ckpt"
    )
    # with a checkpoint, its autoencoder is loaded as in a real run
    assert ckpt.model.first_stage is None and ckpt.model.net.dim == 64


def test_gpu_trainers_become_one_process_and_ddp_cpu_keeps_its_ranks(compose_train):
    # trainer=ddp: 3 GPUs, SyncBatchNorm, bf16
    gpus = compose_train("experiment=ddgan_celebahq128", "debug=smoke")
    assert (gpus.trainer.accelerator, gpus.trainer.devices, gpus.trainer.strategy) == ("auto", 1, "auto")
    assert gpus.trainer.sync_batchnorm is False and gpus.trainer.precision == "32-true"
    # the recipe's 3 devices as CPU ranks
    three = compose_train("experiment=ddgan_celebahq128", "debug=smoke", "trainer=ddp_cpu")
    assert three.trainer.devices == 3 and three.trainer.strategy._target_.endswith("DDPStrategy")
    assert three.data.batch_size % 3 == 0


def test_a_model_without_an_overlay_is_refused_by_name(compose_train, tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "mine.yaml").write_text("defaults:\n  - dcgan\n")
    cfg = compose_train(f"hydra.searchpath=[file://{tmp_path}/conf]", "model=mine", "debug=smoke")
    assert cfg.model.generator.width == 64  # nothing shrank it
    with pytest.raises(
        ValueError, match=r"debug=smoke has no overlay.*debug/model/smoke/<model option>.yaml"
    ):
        require_smoke_overlay(cfg)


def stand_ins(data_dir: Path) -> dict[str, list[str]]:
    """Stand-ins of every real dataset the recipes read, rendered in the real layouts where the recipes look for
    them; returns the overrides that point a recipe at one where its default path is not under data_dir."""
    from genface.data.layouts import write_standin

    write_standin("celeba", data_dir / "celeba", n=120, seed=0)
    write_standin("celebahq", data_dir / "celebahq", n=40, seed=0, size=64)
    write_standin("facades", data_dir / "facades", n=40, seed=0)
    write_standin("mnist", data_dir / "mnist", n=120, seed=0)
    return {"MNISTDataModule": [f"data.root={data_dir / 'mnist'}"]}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_experiment_trains_under_smoke(tmp_path, compose_train):
    """`genface train -m experiment=... debug=smoke` on stand-ins: every job writes a last checkpoint, every job with
    a sample grid its first grid and the real images, every tested classifier its captioned test faces."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    for name in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "NODE_RANK"):
        env.pop(name, None)
    extra = stand_ins(tmp_path / "data")
    batches: dict[tuple[str, ...], list[str]] = {}
    for experiment in EXPERIMENTS:
        kind = str(compose_train(f"experiment={experiment}").data._target_).rsplit(".", 1)[-1]
        batches.setdefault(tuple(extra.get(kind, [])), []).append(experiment)
    for overrides, experiments in batches.items():
        res = subprocess.run(
            [sys.executable, "-m", "genface", "train", "-m", f"experiment={','.join(experiments)}", "debug=smoke",
             "~callbacks.progress", *overrides, f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'data'}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1700,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-6000:]
    done, missing = {}, []
    for job in (p for p in (tmp_path / "logs" / "debug" / "multiruns").glob("*/*") if p.is_dir()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        experiment = next(o.split("=", 1)[1] for o in overrides if o.startswith("experiment="))
        done[experiment] = job
        composed = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        callbacks = composed.get("callbacks") or {}
        expected = ["checkpoints/last.ckpt"] + (
            ["samples/epoch_0000.png", "samples/real.png"] if callbacks.get("sample_grid") else []
        )
        if callbacks.get("classifier_report") and composed.get("test"):
            expected.append("report/classifier_test_examples.png")
        missing += [f"{experiment}: no {name}" for name in expected if not (job / name).is_file()]
    assert not missing, missing
    assert sorted(done) == EXPERIMENTS
