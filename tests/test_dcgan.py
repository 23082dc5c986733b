"""DCGAN: the seed's exact parameter counts, shapes, training, determinism, checkpoints."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from genface.models import load_generative
from genface.models.dcgan import DCGAN
from genface.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from helpers import StepRecorder, TinyImages, tiny_trainer


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_dg1_parameter_counts_match_seed_001():
    # DLStudio GeneratorDG1 / DiscriminatorDG1 as printed in DLStudio's DG1 study.
    assert n_params(DCGANGenerator(latent_dim=100, width=64, resolution=64, bias=False)) == 3_576_704
    assert n_params(DCGANDiscriminator(width=64, resolution=64, bias=True)) == 2_766_529


def test_dg1_model_config_builds_the_seed_pair(compose_train):
    cfg = compose_train("model=dcgan_dg1", "data=digits", "data.channels=3")
    model = instantiate(cfg.model)
    assert n_params(model.generator) == 3_576_704
    assert n_params(model.discriminator) == 2_766_529
    assert model.hparams.optimizer_g["lr"] == 1e-4 and model.hparams.optimizer_g["betas"][0] == 0.5


@pytest.mark.parametrize("resolution", [16, 32, 64, 128])
def test_shapes_at_every_resolution(resolution):
    g = DCGANGenerator(latent_dim=8, width=4, resolution=resolution, channels=3)
    d = DCGANDiscriminator(width=4, resolution=resolution, channels=3)
    x = g(torch.randn(2, 8))
    assert x.shape == (2, 3, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1
    assert d(x).shape == (2,)


def test_bad_resolution_is_a_clear_error():
    with pytest.raises(ValueError, match="resolution must be one of"):
        DCGANGenerator(resolution=48)


def tiny_dcgan(resolution: int = 16, **kw) -> DCGAN:
    opt = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3, "betas": [0.5, 0.999]}
    return DCGAN(
        generator={"_target_": "genface.nets.dcgan.DCGANGenerator", "latent_dim": 8, "width": 8, "resolution": resolution},
        discriminator={"_target_": "genface.nets.dcgan.DCGANDiscriminator", "width": 8, "resolution": resolution},
        optimizer_g=opt,
        optimizer_d=dict(opt),
        **kw,
    )


def test_unknown_loss_names_the_key_and_choices():
    with pytest.raises(ValueError, match=r"model.loss='wgan'.*bce, non_saturating, hinge, lsgan"):
        tiny_dcgan(loss="wgan")


def test_training_steps_lower_the_discriminator_loss(tmp_path):
    torch.manual_seed(0)
    model, rec = tiny_dcgan(), StepRecorder()
    # Lightning counts optimizer steps: one batch = one D step + one G step = 2 global steps.
    trainer = tiny_trainer(tmp_path, max_steps=60, limit_val_batches=0, callbacks=[rec])
    trainer.fit(model, datamodule=TinyImages(n=16, batch_size=16))
    losses = [r["train/loss_d_step"] for r in rec.rows]
    assert len(losses) == 30
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < losses[0] - 0.1, losses


def test_generate_is_deterministic_and_in_range():
    model = tiny_dcgan().eval()
    z = model.sample_latents(4, generator=torch.Generator().manual_seed(1))
    z_again = model.sample_latents(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, z_again) and z.shape == (4, 8)
    a, b = model.generate(z), model.generate(z)
    assert torch.equal(a, b)
    assert a.shape == (4, 3, 16, 16) and a.abs().max() <= 1


def test_checkpoint_round_trip_with_ema(tmp_path):
    model = tiny_dcgan(ema_decay=0.9)
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyImages(n=16, batch_size=8))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_generative(ckpt)
    assert isinstance(loaded, DCGAN) and loaded.ema is not None
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.generate(z), loaded.generate(z))
    # EMA weights differ from the live ones, and generate() uses the EMA ones.
    with torch.no_grad():
        live = model.generator.eval()(z)
    assert not torch.allclose(live, model.generate(z))
