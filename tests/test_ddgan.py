"""DD-GAN: nets, the latent layout of the Generative contract, training, per-timestep logs, R1 laziness,
checkpoints (including those saved before `min_channels_per_group`), configs."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

import genface.models.ddgan as ddgan_module
from genface.models import load_generative, load_module
from genface.models.ddgan import DDGAN
from genface.nets.ddgan import DDGANDiscriminator, DDGANGenerator, minibatch_stddev
from helpers import StepRecorder, TinyImages, tiny_trainer

TINY_G = dict(
    _target_="genface.nets.ddgan.DDGANGenerator",
    channels=3,
    resolution=16,
    nz=8,
    base_channels=8,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[],
    num_groups=4,
)
TINY_D = dict(
    _target_="genface.nets.ddgan.DDGANDiscriminator", channels=3, resolution=16, ngf=4, t_emb_dim=16
)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def tiny_ddgan(generator: dict | None = None, **kw) -> DDGAN:
    opt = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3, "betas": [0.5, 0.9]}
    kw = {"ema_decay": None, "use_cosine": False, **kw}
    generator = dict(generator or TINY_G)
    return DDGAN(
        generator=generator, discriminator=dict(TINY_D), optimizer_g=opt, optimizer_d=dict(opt), **kw
    )


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move the zero-initialised layers off zero so that every input influences the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_generator_predicts_x0_in_range_and_uses_z():
    g = DDGANGenerator(**{k: v for k, v in TINY_G.items() if k != "_target_"})
    perturb(g)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    a, b = g(x, t, torch.randn(2, 8)), g(x, t, torch.randn(2, 8))
    assert a.shape == (2, 3, 16, 16) and a.abs().max() < 1
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    ("layout", "resolution"), [("small", 16), ("small", 32), ("large", 64), ("large", 128)]
)
def test_discriminator_shapes(layout, resolution):
    d = DDGANDiscriminator(channels=3, resolution=resolution, ngf=4, t_emb_dim=16, layout=layout)
    x = torch.randn(3, 3, resolution, resolution)
    assert d(x, x, torch.tensor([0, 1, 1])).shape == (3,)


def test_discriminator_is_time_and_pair_conditioned():
    torch.manual_seed(0)
    d = DDGANDiscriminator(channels=3, resolution=16, ngf=4, t_emb_dim=16)
    perturb(d)
    x_prev, x_t = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    out = d(x_prev, x_t, torch.zeros(4, dtype=torch.long))
    assert not torch.allclose(out, d(x_prev, x_t, torch.ones(4, dtype=torch.long)))
    assert not torch.allclose(out, d(x_prev, torch.randn_like(x_t), torch.zeros(4, dtype=torch.long)))


def test_discriminator_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="multiple of 64"):
        DDGANDiscriminator(resolution=32, layout="large")
    with pytest.raises(ValueError, match="layout must be one of"):
        DDGANDiscriminator(layout="huge")
    with pytest.raises(ValueError, match="disagree on"):
        DDGAN(
            generator=dict(TINY_G),
            discriminator={**TINY_D, "resolution": 32},
            optimizer_g={"_target_": "torch.optim.Adam", "_partial_": True},
            optimizer_d={"_target_": "torch.optim.Adam", "_partial_": True},
        )


def test_minibatch_stddev_feature_handles_any_batch_size():
    h = torch.randn(6, 5, 2, 2)  # 6 is not a multiple of the group size 4: groups of 3
    out = minibatch_stddev(h)
    assert out.shape == (6, 6, 2, 2)
    assert torch.equal(out[:, :5], h)
    same = torch.zeros(4, 5, 2, 2)  # identical samples have (almost) zero spread
    assert minibatch_stddev(same)[:, 5].max() < 1e-3


def test_latent_dim_and_layout_cover_the_vector_once():
    model = tiny_ddgan(num_timesteps=3)
    pixels, nz, T = 3 * 16 * 16, 8, 3
    assert model.latent_dim == T * pixels + T * nz
    layout = model.latent_layout()
    assert sorted(layout.z) == [0, 1, 2] and sorted(layout.noise) == [1, 2]
    covered = torch.zeros(model.latent_dim, dtype=torch.long)
    for s in [layout.x_T, *layout.z.values(), *layout.noise.values()]:
        covered[s] += 1
    assert bool((covered == 1).all())
    assert layout.x_T == slice(0, pixels) and layout.z[2] == slice(pixels, pixels + nz)


def test_generate_is_deterministic_and_editable():
    model = tiny_ddgan()
    perturb(model.generator)
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(1))
    assert z.shape == (3, model.latent_dim)
    a = model.generate(z)
    assert torch.equal(a, model.generate(z))
    assert a.shape == (3, 3, 16, 16) and a.abs().max() <= 1
    layout = model.latent_layout()
    for part in (layout.z[0], layout.z[1], layout.noise[1], layout.x_T):
        edited = z.clone()
        edited[:, part] += 1.0
        assert not torch.allclose(model.generate(edited), a), part
    with pytest.raises(ValueError, match=r"latents must have shape \(n, "):
        model.generate(z[:, :-1])


def test_generate_with_path_returns_every_step():
    model = tiny_ddgan(num_timesteps=2)
    perturb(model.generator)
    z = model.sample_latents(2, generator=torch.Generator().manual_seed(0))
    images, path = model.generate_with_path(z)
    assert torch.equal(images, model.generate(z))
    assert [t for t, _, _ in path] == [1, 0]
    # The chain starts from the x_T part of the latent ...
    assert torch.equal(path[0][1], z[:, model.latent_layout().x_T].reshape(2, 3, 16, 16))
    # ... and its last step returns the posterior mean at t=0, i.e. the predicted x0 itself.
    assert torch.allclose(path[-1][2].clamp(-1, 1), images, atol=1e-6)


def test_each_player_step_lowers_its_own_loss(tmp_path):
    """D alone (G's lr 0) learns to tell real pairs from fakes; then G alone learns to fool that fixed D."""
    torch.manual_seed(0)
    model, data = tiny_ddgan(), TinyImages(n=8, batch_size=8)

    def fit(lr_g: float, lr_d: float) -> list[dict[str, float]]:
        model.hparams.optimizer_g["lr"], model.hparams.optimizer_d["lr"] = lr_g, lr_d
        rec = StepRecorder()
        # One batch = one D step + one G step = 2 Lightning global steps.
        tiny_trainer(tmp_path, max_steps=40, limit_val_batches=0, callbacks=[rec]).fit(model, datamodule=data)
        assert len(rec.rows) == 20
        return rec.rows

    loss_d = [r["train/loss_d_step"] for r in fit(lr_g=0.0, lr_d=2e-3)]
    assert all(torch.isfinite(torch.tensor(loss_d)))
    assert sum(loss_d[-5:]) / 5 < loss_d[0] - 0.2, loss_d
    loss_g = [r["train/loss_g_step"] for r in fit(lr_g=2e-3, lr_d=0.0)]
    assert sum(loss_g[-5:]) / 5 < loss_g[0] / 2, loss_g


def test_r1_runs_on_lazy_steps_only(tmp_path, monkeypatch):
    calls: list[int] = []
    model, original = tiny_ddgan(r1_gamma=1.0, lazy_reg=3), ddgan_module.r1_penalty

    def recording_r1(logits, inputs):
        calls.append(model.global_step // 2)  # the batch index
        return original(logits, inputs)

    monkeypatch.setattr(ddgan_module, "r1_penalty", recording_r1)
    trainer = tiny_trainer(tmp_path, max_steps=14, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyImages(n=16, batch_size=8))
    assert calls == [0, 3, 6]
    assert float(trainer.callback_metrics["train/r1_epoch"]) > 0


def test_cosine_decay_steps_once_per_epoch(tmp_path):
    model = tiny_ddgan(use_cosine=True, lr_min=1e-5)
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyImages(n=8, batch_size=8))
    opt_g, opt_d = model.optimizers()
    # After max_epochs cosine steps both rates sit at lr_min.
    assert opt_g.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(1e-5)


class LRRecorder(pl.Callback):
    """Both optimizers' learning rates after every training batch."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.rows.append(tuple(opt.param_groups[0]["lr"] for opt in trainer.optimizers))


def test_cosine_steps_decays_per_batch_without_max_epochs_and_resumes(tmp_path):
    """A budget-ended run (max_epochs -1): the cosine runs over `cosine_steps` batches, then holds at lr_min,
    and a checkpoint resumes it mid-way."""
    lr, lr_min, total = 2e-3, 1e-5, 3
    expected = [
        lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * min(k, total) / total)) for k in range(1, 6)
    ]
    rec = LRRecorder()
    # One batch per epoch (8 images, batch 8), two global steps per batch: 3 batches, a checkpoint, then 2 more.
    first = tiny_trainer(tmp_path, max_epochs=-1, max_steps=6, limit_val_batches=0, callbacks=[rec])
    model = tiny_ddgan(use_cosine=True, lr_min=lr_min, cosine_steps=total)
    first.fit(model, datamodule=TinyImages(n=8, batch_size=8))
    first.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = tiny_trainer(tmp_path, max_epochs=-1, max_steps=10, limit_val_batches=0, callbacks=[rec])
    resumed.fit(
        tiny_ddgan(use_cosine=True, lr_min=lr_min, cosine_steps=total),
        datamodule=TinyImages(n=8, batch_size=8),
        ckpt_path=tmp_path / "mid.ckpt",
    )
    assert [g for g, _ in rec.rows] == pytest.approx(expected)
    # D starts from its own rate (the helper gives both 2e-3) and ends at the same floor.
    assert [d for _, d in rec.rows] == pytest.approx(expected)
    assert rec.rows[-1] == pytest.approx((lr_min, lr_min))


@pytest.mark.parametrize(
    "kw", [dict(use_cosine=False, cosine_steps=10), dict(use_cosine=True, cosine_steps=0)]
)
def test_cosine_steps_needs_the_cosine_and_a_positive_count(kw):
    with pytest.raises(ValueError, match="model.cosine_steps"):
        tiny_ddgan(**kw)


def test_validation_logs_discriminator_accuracy(tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(tiny_ddgan(), datamodule=TinyImages(n=8, batch_size=8))
    for key in ("val/d_real_acc", "val/d_fake_acc"):
        assert 0.0 <= float(trainer.callback_metrics[key]) <= 1.0


class ScriptedDiscriminator(nn.Module):
    """A D whose logit is a known function of t and of the call: per batch DD-GAN calls D on the real pairs,
    on the fakes (D step), then on fresh fakes (G step); batch b adds b to every logit."""

    REAL, FAKE = torch.tensor([2.0, 0.5, -0.5, 0.0]), torch.tensor([-3.0, -1.0, 0.2, 0.1])

    def __init__(self) -> None:
        super().__init__()
        self.channels, self.resolution = 3, 16
        self.scale = nn.Parameter(torch.ones(()))  # something for D's optimiser; stays 1 with lr 0
        self.real_t: list[Tensor] = []
        self.calls = 0

    def forward(self, x_prev: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        batch, role = divmod(self.calls, 3)
        self.calls += 1
        if role == 0:
            self.real_t.append(t.clone())
        logits = self.scale * ((self.REAL if role == 0 else self.FAKE)[t] + batch)
        return logits + 0.0 * x_prev.mean(dim=(1, 2, 3))  # keeps G's loss differentiable


@pytest.mark.parametrize("log_every", [1, 2])
def test_discriminator_beliefs_are_logged_per_timestep(tmp_path, log_every):
    """train/d_real_t{t}: at each logger write the mean of sigmoid(logit) over the samples at t of the batches
    since the previous write (NaN when none is at t; `log_every` 1: the batch's own), per epoch the mean over
    every sample at t; the averages over all t are kept."""
    torch.manual_seed(0)
    model = tiny_ddgan(num_timesteps=4, r1_gamma=0.0)
    model.discriminator = d = ScriptedDiscriminator()
    model.hparams.optimizer_d["lr"] = 0.0
    rec = StepRecorder()
    batches = 2 * log_every
    tiny_trainer(tmp_path, max_steps=2 * batches, limit_val_batches=0, callbacks=[rec],
                 log_every_n_steps=log_every).fit(model, datamodule=TinyImages(n=4 * batches, batch_size=4))
    assert len(rec.rows) == len(d.real_t) == batches
    ts = torch.cat(d.real_t)
    if log_every == 1:
        assert any(set(range(4)) - set(t.tolist()) for t in d.real_t), "want a batch that misses a t: change the seed"
    for kind, table in (("d_real", d.REAL), ("d_fake", d.FAKE)):
        beliefs = [torch.sigmoid(table[t] + b) for b, t in enumerate(d.real_t)]
        for w in range(2):  # the logger writes after batches log_every - 1 and 2 * log_every - 1
            window = slice(w * log_every, (w + 1) * log_every)
            row, b_w, t_w = rec.rows[window.stop - 1], torch.cat(beliefs[window]), torch.cat(d.real_t[window])
            assert row[f"train/{kind}_step"] == pytest.approx(float(b_w.mean()))
            for step in range(4):
                expected = b_w[t_w == step].mean()  # NaN if the window has no sample at t
                assert row[f"train/{kind}_t{step}_step"] == pytest.approx(float(expected), nan_ok=True)
        for step in range(4):
            expected = torch.cat(beliefs)[ts == step].mean()  # NaN if the epoch never drew t
            got = model.trainer.callback_metrics[f"train/{kind}_t{step}_epoch"]
            assert float(got) == pytest.approx(float(expected), nan_ok=True)


def test_checkpoint_round_trip_with_ema(tmp_path):
    model = tiny_ddgan(ema_decay=0.9)
    trainer = tiny_trainer(tmp_path, max_steps=6, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyImages(n=16, batch_size=8))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_generative(ckpt)
    assert isinstance(loaded, DDGAN) and loaded.ema is not None
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.generate(z), loaded.generate(z))
    # generate() uses the EMA weights, which differ from the live ones.
    live = model._chain(z).clamp(-1, 1)
    assert not torch.allclose(live, model.generate(z))


def _group_counts(model: DDGAN) -> dict[int, int]:
    return {m.num_channels: m.num_groups for m in model.generator.modules() if isinstance(m, nn.GroupNorm)}


def test_checkpoint_saved_before_min_channels_per_group_keeps_its_groups(tmp_path):
    """GroupNorm's weights fit any group count, so a checkpoint whose generator config lacks the key (saved
    before it existed) must rebuild the old groups (largest divisor <= num_groups), not the configs' new ones."""
    old = {**TINY_G, "num_groups": 32, "min_channels_per_group": 1}
    model = tiny_ddgan(generator=old)
    perturb(model.generator)
    trainer = tiny_trainer(tmp_path, max_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyImages(n=8, batch_size=8))
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    del ckpt["hyper_parameters"]["generator"]["min_channels_per_group"]
    torch.save(ckpt, path)

    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    loaded = load_module(path)
    assert _group_counts(loaded) == _group_counts(model) == {8: 8, 16: 16, 24: 24, 32: 32}
    assert torch.equal(loaded.generate(z), model.generate(z))
    # The hazard guarded against: the same weights under the new groups load silently, draw other images.
    new = tiny_ddgan(generator={**old, "min_channels_per_group": 4})
    new.load_state_dict(loaded.state_dict())
    assert _group_counts(new) == {8: 2, 16: 4, 24: 6, 32: 8}
    assert not torch.allclose(new.generate(z), model.generate(z), atol=1e-3)


@pytest.mark.parametrize(
    ("experiment", "resolution", "timesteps", "layout"),
    [
        ("ddgan_synthfaces", 32, 2, "small"),
        ("ddgan_celebahq128", 128, 2, "large"),
        ("ddgan_celebahq256", 256, 2, "large"),
    ],
)
def test_experiment_configs_compose(compose_train, experiment, resolution, timesteps, layout):
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.data.resolution == resolution and cfg.model.num_timesteps == timesteps
    assert cfg.model.discriminator.layout == layout
    assert cfg.model.optimizer_g.betas == [0.5, 0.9]
    assert (cfg.model.generator.num_groups, cfg.model.generator.min_channels_per_group) == (32, 4)
    if experiment == "ddgan_synthfaces":
        model = instantiate(cfg.model)
        assert model.image_shape == (3, 32, 32) and model.ema is not None
        # D at ngf 16, batch 16: the synthfaces A/B's best (benchmarks/ab_ddgan.py; at ngf 8 D stayed at chance)
        assert cfg.data.batch_size == 16
        assert (n_params(model.generator), n_params(model.discriminator)) == (470_227, 798_465)
        assert instantiate(cfg.data).resolution == 32
    else:
        assert cfg.data._target_.endswith("CelebAHQDataModule") and cfg.trainer.accelerator == "gpu"
        assert (cfg.model.r1_gamma, cfg.model.lazy_reg, cfg.model.ema_decay) == (2.0, 10, 0.9999)


def test_celebahq128_builds_the_latent_analysis_studys_model(compose_train):
    cfg = compose_train("experiment=ddgan_celebahq128")
    model = instantiate(cfg.model)
    assert model.image_shape == (3, 128, 128) and model.generator.nz == 100
    # Guards against silent architecture drift of the DD-GAN latent-analysis study's configuration.
    assert n_params(model.generator) == 39_996_739
    assert n_params(model.discriminator) == 27_737_217
    assert model.latent_dim == 2 * 3 * 128 * 128 + 2 * 100
