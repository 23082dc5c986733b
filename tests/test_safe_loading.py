"""Checkpoints from others are opened without running their code (genface.safe_load): a pickle that runs
a command, and a `genface_class` or hyper-parameter `_target_` naming os.system, subprocess.Popen or
builtins.eval, are refused by every loader with the file and what it holds named, and nothing runs; a
TorchScript extractor runs only when known or trusted; genuine checkpoints of every family still load."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import genface.metrics.extractors as extractors
from genface.config import CONF_DIR
from genface.losses import VGGPerceptual
from genface.metrics.extractors import ClassifierExtractor, InceptionExtractor, build_extractor
from genface.models import load_module
from genface.models.dcgan import DCGAN
from genface.models.latent_diffusion import LatentDiffusion
from genface.nets.resnet import load_pretrained, resnet18
from genface.safe_load import (
    TRUSTED_MODULES_ENV,
    UnsafeCheckpointError,
    checkpoint_class,
    resolve_target,
    safe_load,
)
from helpers import FAMILY_EXPERIMENTS, TinyImages, tiny_trainer

OPT = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
REFUSAL = "never runs code from a checkpoint"


class RunsCommand:
    """Unpickling it runs `touch marker`: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> dict:
    """A real DCGAN checkpoint (one training step), as a dict to craft variants of."""
    tmp = tmp_path_factory.mktemp("genuine")
    model = DCGAN(
        generator={
            "_target_": "genface.nets.dcgan.DCGANGenerator",
            "latent_dim": 8,
            "width": 4,
            "resolution": 16,
        },
        discriminator={"_target_": "genface.nets.dcgan.DCGANDiscriminator", "width": 4, "resolution": 16},
        optimizer_g=OPT,
        optimizer_d=dict(OPT),
    )
    trainer = tiny_trainer(tmp, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyImages(n=8, batch_size=4))
    trainer.save_checkpoint(tmp / "m.ckpt")
    return torch.load(tmp / "m.ckpt", weights_only=True)


def crafted(genuine: dict, path: Path, **changes) -> Path:
    torch.save({**genuine, **changes}, path)
    return path


def test_a_pickle_that_runs_a_command_is_refused_by_every_loader(genuine, tmp_path):
    marker = tmp_path / "pwned"
    evil = crafted(genuine, tmp_path / "evil.ckpt", note=RunsCommand(marker))
    loaders = {
        "safe_load": lambda: safe_load(evil),
        "load_module": lambda: load_module(evil),
        "checkpoint_class": lambda: checkpoint_class(evil),
        "classifier extractor": lambda: ClassifierExtractor(evil),
        "inception weights": lambda: build_extractor("inception", str(evil)),
        "resnet weights": lambda: load_pretrained(resnet18(num_outputs=3), evil),
        "perceptual weights": lambda: VGGPerceptual(evil),
        "latent diffusion's first stage": lambda: LatentDiffusion._load_first_stage(str(evil)),
    }
    for name, load in loaders.items():
        with pytest.raises(UnsafeCheckpointError) as err:
            load()
        message = str(err.value)
        assert str(evil) in message and f"{os.system.__module__}.system" in message and REFUSAL in message, (
            name
        )
    assert not marker.exists()


def _command(target: str, marker: Path) -> dict:
    """A Hydra config that, built, would create `marker`."""
    args = {
        "os.system": [f"touch {marker}"],
        "subprocess.Popen": [["touch", str(marker)]],
        "builtins.eval": [f"__import__('os').system('touch {marker}')"],
    }
    return {"_target_": target, "_args_": args.get(target, [f"touch {marker}"])}


@pytest.mark.parametrize(
    "key,target",
    [
        ("genface_class", "os.system"),
        ("genface_class", "subprocess.Popen"),
        ("hyper_parameters.generator._target_", "builtins.eval"),
        ("hyper_parameters.optimizer_g._target_", "subprocess.Popen"),
        # inside the allowed packages by name, but leading out of them
        ("hyper_parameters.generator._target_", "genface.nets.resnet.torch.load"),
        ("hyper_parameters.generator._target_", "genface.models.load_module"),
        # an interpolation resolved by Hydra into the target at build time
        ("hyper_parameters.generator._target_", "${oc.decode:builtins.eval}"),
    ],
)
def test_targets_genface_does_not_build_are_refused(genuine, tmp_path, key, target):
    marker = tmp_path / "pwned"
    if key == "genface_class":
        evil = crafted(genuine, tmp_path / "evil.ckpt", genface_class=target)
    else:
        name = key.split(".")[1]
        hparams = {**genuine["hyper_parameters"], name: _command(target, marker)}
        evil = crafted(genuine, tmp_path / "evil.ckpt", hyper_parameters=hparams)
    loaders = [load_module, ClassifierExtractor] + ([checkpoint_class] if key == "genface_class" else [])
    for load in loaders:
        with pytest.raises(UnsafeCheckpointError) as err:
            load(evil)
        message = str(err.value)
        assert str(evil) in message and f"{key}={target!r}" in message and REFUSAL in message, load
    assert not marker.exists()


def test_genface_check_reports_a_crafted_checkpoint(genuine, tmp_path):
    from genface.check import Plan, _check_checkpoint

    plan = Plan()
    _check_checkpoint(
        plan, "ckpt_path", crafted(genuine, tmp_path / "e.ckpt", genface_class="os.system"), "DCGAN"
    )
    [problem] = plan.problems
    assert "os.system" in problem.what and str(tmp_path / "e.ckpt") in problem.what


def test_interpolations_in_hyper_parameters_are_refused(genuine, tmp_path):
    generator = {
        **genuine["hyper_parameters"]["generator"],
        "width": "${oc.decode:'{_target_: builtins.eval}'}",
    }
    evil = crafted(
        genuine, tmp_path / "e.ckpt", hyper_parameters={**genuine["hyper_parameters"], "generator": generator}
    )
    with pytest.raises(UnsafeCheckpointError, match=r"hyper_parameters\.generator\.width=.*interpolation"):
        load_module(evil)


def test_genface_sample_refuses_a_crafted_checkpoint(genuine, tmp_path):
    marker = tmp_path / "pwned"
    evil = crafted(genuine, tmp_path / "evil.ckpt", note=RunsCommand(marker))
    env = {
        **os.environ,
        "GENFACE_DATA_DIR": str(tmp_path / "data"),
        "GENFACE_LOG_DIR": str(tmp_path / "logs"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "genface", "sample", f"ckpt={evil}", "n=2", f"out={tmp_path / 'out'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"refused to load {evil}" in done.stderr and REFUSAL in done.stderr, done.stderr[-2000:]
    assert not marker.exists() and not (tmp_path / "out" / "images").exists()


def test_hydra_made_hyper_parameters_load(genuine, tmp_path):
    """What Hydra runs leave in checkpoints: omegaconf containers (a data module's attribute list)."""
    hparams = {
        **genuine["hyper_parameters"],
        "generator": OmegaConf.create(genuine["hyper_parameters"]["generator"]),
    }
    path = crafted(
        genuine, tmp_path / "m.ckpt", hyper_parameters=hparams,
        datamodule_hyper_parameters={"attributes": OmegaConf.create(["Smiling", "Male"])},
    )  # fmt: skip
    assert isinstance(load_module(path), DCGAN)
    assert checkpoint_class(path) == "genface.models.dcgan.DCGAN"


def test_a_checkpoint_naming_a_renamed_module_still_loads(genuine, tmp_path):
    """VAE-GAN checkpoints written before models/autoencoder.py became models/vaegan.py name the old path."""
    from genface.models.vaegan import VAEGAN

    assert resolve_target("genface.models.autoencoder.VAEGAN", "genface_class", "old.ckpt") is VAEGAN
    path = crafted(genuine, tmp_path / "m.ckpt", genface_class="genface.models.autoencoder.DCGAN")
    with pytest.raises(UnsafeCheckpointError, match="cannot be imported"):
        checkpoint_class(path)


def test_what_genface_builds_resolves_and_what_leads_elsewhere_does_not(monkeypatch):
    for target in (
        "genface.nets.unet.UNet",
        "genface.nets.resnet.resnet18",
        "genface.models.dcgan.DCGAN",
        "torch.optim.Adam",
        "torch.optim.lr_scheduler.LinearLR",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
    ):
        assert callable(resolve_target(target, "k", "f.ckpt"))
    for target in (
        "torch.optim.lr_scheduler.warnings",  # a module
        "torch.optim.swa_utils.AveragedModel",  # not an optimiser
        "genface.checkpoint_io.atomic_torch_save",  # writes files
        "genface.nets.unet.nothing_here",
        "helpers.TinyImages",
        42,
    ):
        with pytest.raises(UnsafeCheckpointError, match=r"f\.ckpt: k=.* is refused"):
            resolve_target(target, "k", "f.ckpt")
    monkeypatch.setenv(TRUSTED_MODULES_ENV, "mine, helpers")
    assert resolve_target("helpers.TinyImages", "k", "f.ckpt") is TinyImages
    with pytest.raises(UnsafeCheckpointError, match="leads to"):
        resolve_target("helpers.torch.load", "k", "f.ckpt")


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if "_target_" in node else []
        return own + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


def test_every_target_genface_model_configs_name_is_buildable_from_a_checkpoint():
    configs = [OmegaConf.to_container(OmegaConf.load(p)) for p in (CONF_DIR / "model").rglob("*.yaml")]  # model/net too
    configs += [
        (OmegaConf.to_container(OmegaConf.load(p)) or {}).get("model")
        for p in (CONF_DIR / "experiment").glob("*.yaml")
    ]
    targets = {t for config in configs for t in _targets(config)}
    assert {"torch.optim.Adam", "genface.nets.unet.UNet"} <= targets
    for target in targets:
        resolve_target(target, "model._target_", "conf")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_inception_torchscript_runs_only_when_known_or_trusted(tmp_path, monkeypatch):
    script = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(nn.Identity()), str(script))
    with pytest.raises(UnsafeCheckpointError, match=r"TorchScript program .*extractor_trusted=true"):
        build_extractor("inception", str(script))
    assert isinstance(build_extractor("inception", str(script), trusted=True), InceptionExtractor)
    monkeypatch.setattr(extractors, "FID_HELPER_SHA1", hashlib.sha1(script.read_bytes()).hexdigest())
    assert build_extractor("inception", str(script)).backend == "torchscript"


@pytest.mark.slow  # the fast suite's per-family round-trip tests load through the same safe reader
@pytest.mark.parametrize("family", sorted(FAMILY_EXPERIMENTS))
def test_the_checkpoint_of_a_smoke_run_of_every_family_loads(compose_train, family):
    """A real Hydra run of each family (debug=smoke, 3-7 s), its last.ckpt through load_module."""
    from genface.train import train

    cfg = compose_train(
        f"experiment={FAMILY_EXPERIMENTS[family]}", "debug=smoke", "check=false", "logger=none"
    )
    _, trainer = train(cfg)
    model = load_module(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt")
    assert type(model).__name__ == cfg.model._target_.rsplit(".", 1)[-1]
