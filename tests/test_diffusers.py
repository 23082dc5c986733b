"""The diffusers ecosystem: UNet2DModel as DDPM's net (`model/net=unet2d_diffusers`, `pretrained`), diffusers'
schedulers as `model.sampler`, and `genface export format=diffusers` to a DDPMPipeline that plain diffusers loads
and samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMPipeline,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from genface import cli
from genface.diffusion.diffusers_schedulers import SCHEDULERS, STOCHASTIC
from genface.export import write_atomically
from genface.models import load_module
from genface.models.ddpm import DDPM
from genface.nets.diffusers_unet import DiffusersUNet
from helpers import TinyImages, tiny_trainer
from test_ddpm import RES, perturbed, tiny_ddpm

pytestmark = pytest.mark.usefixtures("one_thread")

#: A UNet2DModel of 45k parameters: two levels, attention at 8 px.
TINY_UNET = {
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}
TINY_NET = {
    "_target_": "genface.nets.diffusers_unet.DiffusersUNet",
    "in_channels": 3,
    "out_channels": 3,
    "resolution": RES,
    **TINY_UNET,
}


def diffusers_ddpm(**kw) -> DDPM:
    return tiny_ddpm(net={**TINY_NET, **kw.pop("net", {})}, **kw)


def run_export(tmp_path: Path, *args: str) -> int:
    """`genface export args...` in this process; its exit status."""
    GlobalHydra.instance().clear()
    try:
        cli.main(["genface", "export", *args, f"paths.log_dir={tmp_path / 'logs'}"])
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


# ----- the net ------------------------------------------------------------------------------------------
def test_recipe_builds_the_labs_unet2dmodel(compose_train) -> None:
    """ddpm_unet2d_mnist: diffusers' MNIST tutorial UNet2DModel (1,707,009 parameters), 28 px, 1 channel."""
    cfg = compose_train("experiment=ddpm_unet2d_mnist")
    model = instantiate(cfg.model)
    assert isinstance(model.net, DiffusersUNet) and isinstance(model.net.unet, UNet2DModel)
    assert sum(p.numel() for p in model.net.parameters()) == 1_707_009
    assert model.image_shape == (1, 28, 28) and model.ema is not None
    conditional = instantiate(compose_train("experiment=ddpm_unet2d_mnist", "model.num_classes=10").model)
    assert conditional.net.unet.config.num_class_embeds == 11  # 10 classes + the null class


def test_net_option_replaces_the_default_unet(compose_train) -> None:
    default = compose_train("model=ddpm").model.net
    chosen = compose_train("model=ddpm", "model/net=unet2d_diffusers", "data.resolution=32").model.net
    assert default._target_ == "genface.nets.unet.UNet" and "base_channels" not in chosen
    assert chosen._target_ == "genface.nets.diffusers_unet.DiffusersUNet" and chosen.resolution == 32
    with pytest.raises(InstantiationException, match=r"model.net.resolution=28 must be divisible by 2\*\*3"):
        instantiate(compose_train("model=ddpm", "model/net=unet2d_diffusers", "data.resolution=28").model.net)


def test_net_matches_genface_unet_call_and_null_class() -> None:
    net = DiffusersUNet(**{k: v for k, v in TINY_NET.items() if k != "_target_"}, num_classes=3).eval()
    x, t = torch.randn(2, 3, RES, RES), torch.tensor([5, 90])
    out = net(x, t, torch.tensor([0, 2]))
    assert out.shape == x.shape and not torch.allclose(out, net(x, t, torch.tensor([1, 1])))
    torch.testing.assert_close(net(x, t), net(x, t, torch.tensor([3, 3])))  # y=None: the null class
    with pytest.raises(ValueError, match="genface derives"):
        DiffusersUNet(sample_size=16)
    with pytest.raises(ValueError, match=r"does not take: \['base_channels'\]"):
        DiffusersUNet(base_channels=8)


def test_pretrained_round_trip(tmp_path) -> None:
    """model.net.pretrained=DIR starts from exactly the saved weights; the model's hyper-parameters then hold
    the folder's architecture, so a checkpoint rebuilds without the folder."""
    saved = UNet2DModel(in_channels=3, out_channels=3, sample_size=RES, **TINY_UNET)
    saved.save_pretrained(tmp_path / "unet")
    model = diffusers_ddpm(net={"pretrained": str(tmp_path / "unet"), "block_out_channels": [8, 8]})
    expected = saved.state_dict()
    got = model.net.unet.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert model.hparams.net["pretrained"] is None and model.hparams.net["block_out_channels"] == [8, 16]
    with pytest.raises(
        InstantiationException, match=r"does not fit this model.*num_class_embeds': \(4, None\)"
    ):
        diffusers_ddpm(net={"pretrained": str(tmp_path / "unet")}, num_classes=3)
    shutil.rmtree(tmp_path / "unet")
    rebuilt = DDPM(**model.hparams)  # as load_from_checkpoint does: the folder is gone
    rebuilt.load_state_dict(model.state_dict())

    with pytest.raises(InstantiationException, match=r"model.net.pretrained=.*unet: no such folder"):
        diffusers_ddpm(net={"pretrained": str(tmp_path / "unet")})
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(
        InstantiationException, match=r"model.net.pretrained=.*other holds a 'AutoencoderKL' config"
    ):
        diffusers_ddpm(net={"pretrained": str(other)})


# ----- samplers -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guided() -> dict[str, DDPM]:
    """A class-conditional, guided DDPM per net kind, weights moved off their init."""
    kw = dict(num_classes=3, guidance_scale=2.0, sample_steps=4, schedule={"kind": "linear", "T": 100})
    return {"diffusers": perturbed(diffusers_ddpm(**kw)), "genface": perturbed(tiny_ddpm(**kw))}


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
@pytest.mark.parametrize("net", ["diffusers", "genface"])
def test_diffusers_samplers_are_deterministic_in_the_latents(guided, net: str, sampler: str) -> None:
    model = guided[net]
    model.sampler = sampler
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    torch.manual_seed(1)
    first = model.generate(z, y)
    torch.manual_seed(2)  # the global RNG plays no part
    assert torch.isfinite(first).all() and torch.equal(first, model.generate(z, y))
    # each sample depends on its own latent and label only, not on the batch it is drawn in
    torch.testing.assert_close(model.generate(z[1:], y[1:]), first[1:], rtol=0, atol=1e-5)
    assert not torch.allclose(first[0], first[1])
    protocol = model.sampling_protocol
    assert protocol["sampler"] == sampler and protocol["steps"] == 4 and protocol["guidance_scale"] == 2.0
    assert protocol["nfe"] == (7 if sampler == "heun" else 4) == len(model.sampling_timesteps)
    assert protocol["scheduler"] == f"diffusers.{SCHEDULERS[sampler][0].__name__}"
    if sampler in STOCHASTIC:  # fresh noise each step, seeded by the latent: another latent, other noise
        model.sampler = "ddim"
        assert not torch.allclose(first, model.generate(z, y), atol=1e-3)


@pytest.mark.parametrize(
    ("sampler", "reference"),
    [
        ("dpmpp_2m", DPMSolverMultistepScheduler),
        ("unipc", UniPCMultistepScheduler),
        ("deis", DEISMultistepScheduler),
        ("euler", EulerDiscreteScheduler),
        ("heun", HeunDiscreteScheduler),
    ],
)
@pytest.mark.parametrize("pred_type", ["eps", "v"])
def test_samplers_match_the_diffusers_pipeline_loop(sampler: str, reference, pred_type: str) -> None:
    """generate() equals diffusers' own sampling loop (scale_model_input, unet, step) on the same UNet2DModel
    and initial noise, with the scheduler built by diffusers from its own linear schedule: DDPM's endpoints
    scaled by 1000/T, as genface's (tests/test_oracles.py checks those schedules against each other).
    Tolerance: the betas agree to float32 rounding; a few float32 steps of the tiny net stay within 1e-4."""
    T, steps = 100, 6
    model = diffusers_ddpm(clip_x0=False, pred_type=pred_type, sample_steps=steps, sampler=sampler).eval()
    z = model.sample_latents(2, generator=torch.Generator().manual_seed(3))
    ref = reference(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T,
        prediction_type={"eps": "epsilon", "v": "v_prediction"}[pred_type], timestep_spacing="trailing",
        **SCHEDULERS[sampler][1],
    )  # fmt: skip
    ref.set_timesteps(steps)
    x = z.reshape(2, 3, RES, RES) * ref.init_noise_sigma
    with torch.no_grad():
        for t in ref.timesteps:
            out = model.net.unet(ref.scale_model_input(x, t), t).sample
            x = ref.step(out, t, x).prev_sample
    torch.testing.assert_close(model.generate(z), x.clamp(-1, 1), rtol=0, atol=1e-4)


def test_unknown_sampler_is_refused_at_construction(compose_train) -> None:
    with pytest.raises(
        InstantiationException,
        match=r"model.sampler='lms' is not allowed; allowed: ancestral, ddim, dpmpp_2m",
    ):
        instantiate(compose_train("experiment=ddpm_unet2d_mnist", "model.sampler=lms").model)


# ----- training and export ------------------------------------------------------------------------------
def test_smoke_run_trains_exports_and_diffusers_samples_it(compose_train, tmp_path) -> None:
    """`genface train experiment=ddpm_unet2d_mnist debug=smoke`, then `genface export`: plain diffusers loads the
    folder, and a one-step DDPMPipeline run (x0 predicted from the initial noise, clipped) equals genface's
    one-step sample of the same noise, with the EMA weights genface samples with."""
    from genface.train import train

    narrow = [
        "model.net.block_out_channels=[8,16,16]",
        "model.net.norm_num_groups=4",
        "model.net.layers_per_block=1",
    ]
    cfg = compose_train("experiment=ddpm_unet2d_mnist", "debug=smoke", "check=false", "logger=none", *narrow)
    _, trainer = train(cfg)
    ckpt = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    model = load_module(ckpt)
    assert isinstance(model.net, DiffusersUNet) and model.ema is not None
    protocol = json.loads((Path(trainer.default_root_dir) / "fid_protocol.json").read_text())
    assert "ddim" in json.dumps(protocol)

    out = tmp_path / "pipeline"
    assert run_export(tmp_path, f"ckpt={ckpt}", f"out={out}") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pipeline")]  # no temporary folder left
    pipe = DDPMPipeline.from_pretrained(out)
    c, h, w = model.image_shape
    assert pipe.scheduler.config.num_train_timesteps == model.schedule.num_timesteps
    assert (pipe.unet.config.in_channels, pipe.unet.config.sample_size) == (c, h) == (1, cfg.data.resolution)
    images = pipe(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, h, w, c) and np.isfinite(images).all()

    one_step = pipe(
        batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(1), output_type="np"
    )
    noise = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))
    model.sampler, model.sample_steps = "ddim", 1
    ours = (model.generate(noise.flatten(1)) / 2 + 0.5).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(one_step.images, ours, rtol=0, atol=1e-5)

    assert run_export(tmp_path, f"ckpt={ckpt}", f"out={out}") == 2  # not empty: refused
    assert run_export(tmp_path, f"ckpt={ckpt}", f"out={out}", "overwrite=true") == 0
    assert DDPMPipeline.from_pretrained(out).unet.config.block_out_channels == [8, 16, 16]


def test_export_refuses_other_nets_and_keeps_out_whole(tmp_path, capsys) -> None:
    model = tiny_ddpm()  # genface's own UNet
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(model, datamodule=TinyImages(n=8, resolution=RES, batch_size=4))
    ckpt = tmp_path / "unet.ckpt"
    trainer.save_checkpoint(ckpt)
    assert run_export(tmp_path, f"ckpt={ckpt}", f"out={tmp_path / 'out'}") == 2
    assert "genface.nets.unet.UNet: train with model/net=unet2d_diffusers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert run_export(tmp_path, f"ckpt={tmp_path / 'none.ckpt'}", f"out={tmp_path / 'out'}") == 2

    out = tmp_path / "kept"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(out, broken)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
