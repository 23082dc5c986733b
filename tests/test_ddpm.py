"""DDPM: training lowers the loss, `generate` runs the configured sampler (DDIM or ancestral) deterministically,
CFG, checkpoints, paths, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from genface.callbacks.denoising_path import DenoisingPath
from genface.diffusion import ddim_timesteps
from genface.metrics.extractors import build_extractor
from genface.metrics.fidkid import frechet_distance
from genface.models import load_generative
from genface.models.ddpm import DDPM
from genface.viz.diffusion import evenly_spaced, path_frames, path_strip
from helpers import TinyImages, tiny_trainer

RES = 16


def tiny_ddpm(**kw) -> DDPM:
    args = dict(
        net={
            "_target_": "genface.nets.unet.UNet",
            "in_channels": 3,
            "out_channels": 3,
            "resolution": RES,
            "base_channels": 8,
            "channel_mult": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [8],
        },
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3},
        scheduler=None,
        schedule={"kind": "linear", "T": 100},
        sample_steps=5,
        ema_decay=None,
    )
    args.update(kw)
    return DDPM(**args)


def perturbed(model: DDPM, seed: int = 0) -> DDPM:
    """Move every weight off its init: the UNet's zero-initialised output would hide labels and inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


class TinyLabelled(TinyImages):
    """TinyImages with class labels 0..num_classes-1, declared like a genface DataModule."""

    label_kind = "class"

    def __init__(self, num_classes: int = 3, **kw) -> None:
        super().__init__(**kw)
        self.num_classes = num_classes
        self.targets = torch.arange(len(self.images)) % num_classes


def fixed_loss(model: DDPM, x0: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, model.schedule.num_timesteps, (len(x0),), generator=g)
    with torch.no_grad():
        return float(model._loss(x0, None, t, torch.randn(x0.shape, generator=g)))


# ----- construction and errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"pred_type": "score"}, r"model.pred_type='score'.*eps, x0, v"),
        ({"loss": "huber"}, r"model.loss='huber'.*l2, l1"),
        ({"sampler": "lms"}, r"model.sampler='lms'.*ancestral, ddim, dpmpp_2m"),
        ({"sample_steps": 101}, r"sample_steps must lie in \[1, T=100\]"),
        ({"guidance_scale": 3.0}, r"guidance_scale != 1 needs a conditional model"),
        ({"schedule": {"kind": "linear"}}, r"model.schedule must hold `kind` and `T`"),
        ({"schedule": {"kind": "quadratic", "T": 10}}, r"unknown noise schedule kind 'quadratic'"),
    ],
)
def test_bad_settings_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_ddpm(**kw)


def test_contract_shapes():
    model = tiny_ddpm()
    assert model.image_shape == (3, RES, RES) and model.latent_dim == 3 * RES * RES
    assert model.num_classes == 0 and model.default_labels(4) is None
    assert model.sample_latents(2).shape == (2, 3 * RES * RES)


# ----- training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pred_type", ["eps", "x0"])
def test_training_steps_lower_the_loss(tmp_path, pred_type):
    torch.manual_seed(0)
    data = TinyImages(n=16, resolution=RES, batch_size=16)
    model = tiny_ddpm(pred_type=pred_type)
    before = fixed_loss(model, data.images)
    tiny_trainer(tmp_path, max_steps=20, limit_val_batches=0).fit(model, datamodule=data)
    after = fixed_loss(model, data.images)
    assert np.isfinite(after) and after < 0.8 * before, (before, after)


def test_validation_loss_is_logged_and_reproducible(tmp_path):
    model, data = tiny_ddpm(), TinyImages(n=16, resolution=RES, batch_size=8)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(model, datamodule=data)
    first = trainer.validate(model, datamodule=data, verbose=False)[0]["val/loss"]
    again = trainer.validate(model, datamodule=data, verbose=False)[0]["val/loss"]
    assert first == again and np.isfinite(first)


# ----- sampling ---------------------------------------------------------------------------------------
def test_generate_is_deterministic_ddim_and_in_range():
    model = perturbed(tiny_ddpm())
    z = model.sample_latents(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, model.sample_latents(4, generator=torch.Generator().manual_seed(1)))
    a, b = model.generate(z), model.generate(z)
    assert torch.equal(a, b)
    assert a.shape == (4, 3, RES, RES) and a.abs().max() <= 1
    assert not torch.equal(a, model.generate(model.sample_latents(4)))


@pytest.mark.parametrize(("sampler", "eta", "nfe"), [("ancestral", 0.0, 10), ("ddim", 1.0, 5), ("ddim", 0.0, 5)])
def test_generate_runs_the_configured_sampler_deterministically(sampler, eta, nfe):
    model = perturbed(tiny_ddpm(sampler=sampler, eta=eta, schedule={"kind": "cosine", "T": 10}))
    calls = []
    model.net.register_forward_hook(lambda *_: calls.append(1))
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    images = model.generate(z)
    assert len(calls) == nfe  # ancestral: all T steps; DDIM: sample_steps
    assert torch.equal(images, model.generate(z)) and images.abs().max() <= 1
    # stochastic steps draw each sample's noise from its own latent: the batch does not matter
    torch.testing.assert_close(model.generate(z[1:]), images[1:])


def test_sampler_switch_is_checked_and_recorded_in_the_protocol():
    model = tiny_ddpm(eta=0.5)
    assert model.sampling_protocol == {"sampler": "ddim", "steps": 5, "eta": 0.5}
    model.sampler = "ancestral"
    assert model.sampling_protocol == {"sampler": "ancestral", "steps": 100}
    assert tiny_ddpm(num_classes=3, guidance_scale=2.0).sampling_protocol["guidance_scale"] == 2.0
    model.sampler = "lms"
    with pytest.raises(ValueError, match=r"model.sampler='lms' is not allowed; allowed: ancestral, ddim, dpmpp_2m"):
        model.generate(model.sample_latents(1))


def test_trained_model_samplers_and_their_fids_differ_and_the_checkpoint_keeps_the_sampler(tmp_path):
    torch.manual_seed(0)
    model = tiny_ddpm(schedule={"kind": "cosine", "T": 20})
    trainer = tiny_trainer(tmp_path, max_steps=20, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyImages(n=16, resolution=RES, batch_size=16))
    z = model.sample_latents(4, generator=torch.Generator().manual_seed(0))
    ddim = model.generate(z)
    model.sampler = "ancestral"  # changed after training: the checkpoint keeps it
    ancestral = model.generate(z)
    assert (ancestral - ddim).abs().mean() > 0.05, (ancestral - ddim).abs().mean()
    # and so do their FIDs against the training images (tiny extractor, 64 fakes vs the 16 reals)
    extractor = build_extractor("tiny")
    real = extractor(TinyImages(n=16, resolution=RES).images).double()
    many = model.sample_latents(64, generator=torch.Generator().manual_seed(1))
    fids = {}
    for sampler in ("ddim", "ancestral"):
        model.sampler = sampler
        fake = extractor(model.generate(many)).double()
        fids[sampler] = frechet_distance(real.mean(0), real.T.cov(), fake.mean(0), fake.T.cov())
    assert abs(fids["ancestral"] - fids["ddim"]) > 0.05 * max(fids.values()), fids
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = load_generative(tmp_path / "m.ckpt")
    assert loaded.sampling_protocol == {"sampler": "ancestral", "steps": 20}
    assert torch.equal(loaded.generate(z), ancestral)


@pytest.mark.parametrize(("every", "kept"), [(1, [0, 1, 2, 3, 4]), (2, [0, 2, 4]), (3, [0, 3, 4])])
def test_generate_with_path_matches_generate(every, kept):
    model = perturbed(tiny_ddpm())
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    images, path = model.generate_with_path(z, every=every)
    assert torch.equal(images, model.generate(z))
    steps = ddim_timesteps(100, 5)
    assert [t for t, _, _ in path] == [steps[k] for k in kept]
    assert all(x_t.shape == x0.shape == (3, 3, RES, RES) for _, x_t, x0 in path)
    # the first x_t is x_T itself, the final image the last step's x0
    assert torch.equal(path[0][1], z.reshape(3, 3, RES, RES))
    assert torch.allclose(path[-1][2].clamp(-1, 1), images)


def test_ancestral_path_visits_every_step_and_matches_generate():
    model = perturbed(tiny_ddpm(sampler="ancestral", schedule={"kind": "cosine", "T": 10}))
    z = model.sample_latents(2, generator=torch.Generator().manual_seed(0))
    images, path = model.generate_with_path(z, every=4)
    assert torch.equal(images, model.generate(z))
    assert [t for t, _, _ in path] == [9, 5, 1, 0]


# ----- conditioning and classifier-free guidance ------------------------------------------------------
def test_labels_change_the_output_and_guidance_mixes_both_predictions():
    model = perturbed(tiny_ddpm(num_classes=3, guidance_scale=2.5)).eval()
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    a, b = model.generate(z, torch.tensor([0, 0, 0])), model.generate(z, torch.tensor([1, 1, 1]))
    assert not torch.allclose(a, b)
    assert model.default_labels(5).tolist() == [0, 1, 2, 0, 1]
    x, t, y = torch.randn(2, 3, RES, RES), torch.tensor([10, 90]), torch.tensor([2, 0])
    with torch.no_grad():
        cond, uncond = model.net(x, t, y), model.net(x, t, torch.tensor([3, 3]))
        guided = model._model_fn(y)(x, t)
    assert torch.allclose(guided, uncond + 2.5 * (cond - uncond), atol=1e-5)


def test_conditional_generate_requires_index_labels():
    model = tiny_ddpm(num_classes=3)
    z = model.sample_latents(2)
    with pytest.raises(ValueError, match="pass `labels`"):
        model.generate(z)
    with pytest.raises(ValueError, match=r"embeds class indices.*float \(2, 4\)"):
        model.generate(z, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 3\)"):
        model.generate(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_ddpm().generate(z, torch.tensor([0, 1]))


def test_one_binary_attribute_conditions_a_two_class_model():
    model = perturbed(tiny_ddpm(num_classes=2))
    z = model.sample_latents(2)
    assert torch.equal(model.generate(z, torch.tensor([[1.0], [0.0]])), model.generate(z, torch.tensor([1, 0])))


def test_training_drops_labels_to_the_null_class(tmp_path):
    torch.manual_seed(0)
    model, seen = tiny_ddpm(num_classes=3, p_uncond=0.5), []
    model.net.class_embed.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(model, datamodule=TinyLabelled(n=16, batch_size=16))
    labels = torch.cat(seen)
    assert set(labels.tolist()) == {0, 1, 2, 3}  # 3 = the null label of classifier-free guidance
    assert 0.2 < (labels == 3).float().mean() < 0.8


def test_class_count_must_match_the_data(tmp_path):
    with pytest.raises(ValueError, match=r"model.num_classes=3 does not fit the data.*num_classes=5"):
        tiny_trainer(tmp_path, max_steps=1).fit(tiny_ddpm(num_classes=3), datamodule=TinyLabelled(num_classes=5))


# ----- checkpoints ------------------------------------------------------------------------------------
def test_checkpoint_round_trip_with_ema(tmp_path):
    model = tiny_ddpm(ema_decay=0.9, num_classes=3, guidance_scale=1.5)
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyLabelled(n=16, batch_size=8))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_generative(ckpt)
    assert isinstance(loaded, DDPM) and loaded.ema is not None and int(loaded.ema.num_updates) == 3
    z, y = model.sample_latents(3, generator=torch.Generator().manual_seed(0)), model.default_labels(3)
    assert torch.equal(model.generate(z, y), loaded.generate(z, y))
    # generate() uses the EMA weights, which differ from the live ones
    live = model._generate(z, y).clamp(-1, 1)
    assert not torch.allclose(live, model.generate(z, y))


# ----- pictures ---------------------------------------------------------------------------------------
def test_evenly_spaced_keeps_first_and_last():
    assert evenly_spaced(50, 5) == [0, 12, 24, 37, 49]
    assert evenly_spaced(3, 10) == [0, 1, 2] and evenly_spaced(7, 1) == [6]


def test_path_strip_and_frames_layout():
    model = perturbed(tiny_ddpm())
    _, path = model.generate_with_path(model.sample_latents(3))
    strip = path_strip(path, n_rows=2, columns=4, min_size=32)
    assert strip.dtype == np.uint8 and strip.ndim == 3
    # header (14 px) + 2 samples x (x_t row, x0 row) of 32 px cells + 2 px padding, 4 px gaps between rows
    assert strip.shape[0] == 14 + 4 * (32 + 4) + 4 * 4
    frames = path_frames(path, n=2, min_size=32)
    assert len(frames) == len(path) + 1 and frames[0].shape == frames[-1].shape


def test_denoising_path_callback_writes_pictures(tmp_path):
    cb = DenoisingPath(n=2, every_n_epochs=1, columns=3, dirpath=str(tmp_path / "paths"))
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=0, callbacks=[cb])
    trainer.fit(tiny_ddpm(), datamodule=TinyImages(n=8, resolution=RES, batch_size=4))
    for epoch in (0, 1):
        png, gif = tmp_path / "paths" / f"path_epoch_{epoch:04d}.png", tmp_path / "paths" / f"path_epoch_{epoch:04d}.gif"
        assert Image.open(png).size[0] > 3 * 64 and Image.open(gif).n_frames > 5


def test_denoising_path_refuses_models_without_paths(tmp_path):
    from test_dcgan import tiny_dcgan

    trainer = tiny_trainer(tmp_path, max_steps=1, callbacks=[DenoisingPath()])
    with pytest.raises(TypeError, match="generate_with_path"):
        trainer.fit(tiny_dcgan(), datamodule=TinyImages(n=8, batch_size=4))


# ----- configs ----------------------------------------------------------------------------------------
def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("overrides", "params", "shape"),
    [
        (["experiment=ddpm_dlstudio_celeba64"], 92_025_731, (3, 64, 64)),
        (["experiment=ddpm_coursework_celeba64"], 92_025_731, (3, 64, 64)),
        (["experiment=ddpm_synthfaces"], 1_192_387, (3, 32, 32)),
        (["model=ddpm", "data=synthfaces"], 9_593_539, (3, 64, 64)),
        (["model=ddpm_tiny", "data=digits"], 1_191_233, (1, 32, 32)),
    ],
)
def test_configs_instantiate(compose_train, overrides, params, shape):
    cfg = compose_train(*overrides)
    with torch.device("meta"):  # the size of the configured net without allocating 92M parameters
        assert n_params(instantiate(cfg.model.net, num_classes=cfg.model.num_classes)) == params
    model = instantiate(compose_train(*overrides, "model.net.base_channels=8").model)  # the module, narrowed
    assert isinstance(model, DDPM) and model.image_shape == shape and model.ema is not None
    assert "denoising_path" in cfg.callbacks or overrides[0].startswith("model=")


@pytest.mark.parametrize(
    ("experiment", "protocol"),
    [
        ("ddpm_dlstudio_celeba64", {"sampler": "ancestral", "steps": 1000}),
        ("ddpm_coursework_celeba64", {"sampler": "ddim", "steps": 100, "eta": 1.0}),
    ],
)
def test_study_recipes_sample_as_their_studies(compose_train, experiment, protocol):
    model = instantiate(compose_train(f"experiment={experiment}", "model.net.base_channels=8").model)
    assert model.sampling_protocol == protocol


def test_synthfaces_experiment_builds_its_data_and_callbacks(compose_train):
    cfg = compose_train("experiment=ddpm_synthfaces")
    dm = instantiate(cfg.data)
    assert (dm.resolution, dm.channels) == (32, 3)
    cb = instantiate(cfg.callbacks.denoising_path)
    assert isinstance(cb, DenoisingPath) and cb.dirpath.endswith("samples")
