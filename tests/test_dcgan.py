"""DCGAN: DLStudio DG1's exact parameter counts, the study recipes, shapes, training, determinism, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from genface.callbacks.sample_grid import SampleGrid
from genface.models import load_generative
from genface.models.dcgan import DCGAN
from genface.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from genface.viz.grids import grid_image
from helpers import StepRecorder, TinyImages, tiny_trainer


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_dg1_parameter_counts_match_dlstudio():
    # DLStudio GeneratorDG1 / DiscriminatorDG1 as printed in DLStudio's DG1 study.
    assert n_params(DCGANGenerator(latent_dim=100, width=64, resolution=64, bias=False)) == 3_576_704
    assert n_params(DCGANDiscriminator(width=64, resolution=64, bias=True)) == 2_766_529


def test_dg1_model_config_builds_the_dlstudio_pair(compose_train):
    cfg = compose_train("model=dcgan_dg1", "data=digits", "data.channels=3")
    model = instantiate(cfg.model)
    assert n_params(model.generator) == 3_576_704
    assert n_params(model.discriminator) == 2_766_529
    assert model.hparams.optimizer_g["lr"] == 1e-4 and model.hparams.optimizer_g["betas"][0] == 0.5


def test_coursework_recipe_has_the_reports_settings(compose_train):
    cfg = compose_train("experiment=dcgan_coursework_celeba64")
    model = instantiate(cfg.model)
    assert n_params(model.generator) == 3_576_704 and n_params(model.discriminator) == 2_766_529
    for opt in (model.hparams.optimizer_g, model.hparams.optimizer_d):
        assert (opt["lr"], tuple(opt["betas"])) == (1e-4, (0.75, 0.999))
    assert model.hparams.loss == "bce" and cfg.trainer.max_epochs == 500
    assert (cfg.metrics.fid.n_fake, cfg.metrics.fid.extractor) == (2048, "inception")


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
        generator={
            "_target_": "genface.nets.dcgan.DCGANGenerator",
            "latent_dim": 8,
            "width": 8,
            "resolution": resolution,
        },
        discriminator={
            "_target_": "genface.nets.dcgan.DCGANDiscriminator",
            "width": 8,
            "resolution": resolution,
        },
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


def test_sample_grid_writes_the_real_images_once_in_the_samples_layout(tmp_path):
    data = TinyImages(n=16, resolution=16, batch_size=8)
    grid = SampleGrid(n=6, dirpath=str(tmp_path / "samples"))
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=0, callbacks=[grid]
    )
    trainer.fit(tiny_dcgan(), datamodule=data)
    real = np.asarray(Image.open(tmp_path / "samples" / "real.png"))
    assert real.shape == np.asarray(Image.open(tmp_path / "samples" / "epoch_0001.png")).shape
    assert np.array_equal(real, grid_image(data.images[:6]))  # the first training images, unaugmented
