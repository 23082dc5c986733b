"""The shared module bases (models/base.py): GAN helpers on GAN modules only, one EMA path with its decay
restored from checkpoints, and training steps that never read a value back from the device."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from genface.models import load_generative, load_module
from genface.models.base import AdversarialTraining, GANModule, GenerativeModule, GenfaceModule
from genface.models.cgan import ConditionalGAN
from genface.models.classifier import Classifier
from genface.models.dcgan import DCGAN
from genface.models.ddgan import DDGAN
from genface.models.ddpm import DDPM
from genface.models.latent_diffusion import LatentDiffusion
from genface.models.pix2pix import Pix2Pix
from genface.models.vaegan import VAEGAN
from helpers import TinyImages, tiny_trainer
from test_cgan import TinyLabelled, tiny_cgan
from test_dcgan import tiny_dcgan
from test_ddgan import tiny_ddgan
from test_pix2pix import TinyPairs, tiny_pix2pix

GAN_HELPERS = ("optimizer_update", "log_adversarial", "frozen")


# ----- who gets which helpers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", [DCGAN, ConditionalGAN, DDGAN, VAEGAN])
def test_adversarial_generators_are_gan_modules(family):
    assert issubclass(family, GANModule) and issubclass(family, GenerativeModule)
    assert all(callable(getattr(family, name)) for name in GAN_HELPERS)


@pytest.mark.parametrize("family", [DDPM, LatentDiffusion])
def test_diffusion_models_have_no_gan_helpers(family):
    assert issubclass(family, GenerativeModule) and not issubclass(family, AdversarialTraining)
    assert not any(hasattr(family, name) for name in GAN_HELPERS)


def test_pix2pix_trains_adversarially_without_the_generative_contract():
    assert issubclass(Pix2Pix, AdversarialTraining) and not issubclass(Pix2Pix, GenerativeModule)


@pytest.mark.parametrize(
    "family", [DCGAN, ConditionalGAN, DDGAN, VAEGAN, DDPM, LatentDiffusion, Pix2Pix, Classifier]
)
def test_every_module_names_its_class_in_checkpoints_through_one_hook(family):
    assert issubclass(family, GenfaceModule)
    for cls in (GenerativeModule, Pix2Pix, Classifier):  # each used to write `genface_class` itself
        assert "on_save_checkpoint" not in vars(cls)


def test_frozen_blocks_gradients_and_restores_each_flag():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[0].bias.requires_grad_(False)  # frozen by its owner: must stay frozen
    x = torch.randn(3, 2, requires_grad=True)
    with AdversarialTraining().frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
        net(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, True]


# ----- EMA: one path, decay from the checkpoint -----------------------------------------------------------------
def test_ema_decay_comes_back_from_the_checkpoint(tmp_path):
    """A model whose EMA was not made from `ema_decay` (VAE-GAN, or a checkpoint written with the former EMA
    callback) gets its EMA container back with the decay it was trained with, not a default."""
    torch.manual_seed(0)
    model = tiny_dcgan()
    model.enable_ema(0.95)
    trainer = tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyImages(n=16, batch_size=8))  # DCGAN updates an enabled EMA itself
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)

    ckpt = torch.load(path, weights_only=False)
    fresh = tiny_dcgan()
    fresh.on_load_checkpoint(ckpt)  # what Lightning calls before loading the state dict
    assert fresh.ema is not None and float(fresh.ema.decay) == pytest.approx(0.95)

    loaded = load_generative(path)
    assert float(loaded.ema.decay) == pytest.approx(0.95) and int(loaded.ema.num_updates) == 2
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.generate(z), model.generate(z))


def test_checkpoint_with_ema_weights_but_no_decay_is_a_clear_error(tmp_path):
    model = tiny_dcgan(ema_decay=0.9)
    trainer = tiny_trainer(tmp_path, max_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyImages(n=8, batch_size=8))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    del ckpt["state_dict"]["ema.decay"], ckpt["hyper_parameters"]["ema_decay"]
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="holds EMA weights .* but no 'ema.decay'"):
        load_module(path)


def test_resumed_ema_matches_an_uninterrupted_run(tmp_path):
    """Resume restores the EMA's decay, update count and averages: 1 + 1 epochs give the 2-epoch EMA."""
    data = TinyImages(n=16, batch_size=8)

    def fit(model: DCGAN, epochs: int, ckpt_path: Path | None = None) -> pl.Trainer:
        trainer = tiny_trainer(tmp_path, max_epochs=epochs, limit_val_batches=0)
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return trainer

    torch.manual_seed(0)
    straight = tiny_dcgan(ema_decay=0.9)
    fit(straight, 2)

    torch.manual_seed(0)
    first = tiny_dcgan(ema_decay=0.9)
    trainer = fit(first, 1)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    rng = torch.get_rng_state()  # not in a checkpoint: carried over by hand, so that both runs draw alike
    resumed = tiny_dcgan(ema_decay=0.5)  # the decay comes from the checkpoint, not from here
    torch.set_rng_state(rng)
    fit(resumed, 2, tmp_path / "epoch1.ckpt")

    assert float(resumed.ema.decay) == pytest.approx(0.9) and int(resumed.ema.num_updates) == 4
    for (name, a), b in zip(straight.ema.state_dict().items(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b), name


# ----- no host sync in a training step --------------------------------------------------------------------------
SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


class NoHostSync(pl.Callback):
    """From the end of the first training batch (an epoch's first batch may check its data once, as the cGAN
    does its labels) to the end of training, any Tensor method that reads values back to the host raises,
    unless torch.optim calls it (Adam keeps its step count on the CPU, whatever the device): the training
    steps, their logging and Lightning's per-batch bookkeeping are covered."""

    def __init__(self, monkeypatch) -> None:
        self.armed = False
        for name in SYNCING:
            monkeypatch.setattr(torch.Tensor, name, self._guard(name, getattr(torch.Tensor, name)))

    def _guard(self, name: str, original):
        def method(tensor, *args, **kwargs):
            caller = sys._getframe(1)
            if self.armed and os.path.join("torch", "optim", "") not in caller.f_code.co_filename:
                self.armed = False
                raise AssertionError(
                    f"Tensor.{name} (a host sync) from {caller.f_code.co_filename}:{caller.f_lineno}"
                )
            return original(tensor, *args, **kwargs)

        return method

    def on_train_batch_end(self, *args) -> None:
        self.armed = True

    def on_train_end(self, *args) -> None:
        self.armed = False


FAMILIES = {
    "dcgan": (lambda: tiny_dcgan(ema_decay=0.9), lambda: TinyImages(n=24, batch_size=8)),
    "cgan": (lambda: tiny_cgan("acgan", ema_decay=0.9), lambda: TinyLabelled(n=24, batch_size=8)),
    "ddgan": (
        lambda: tiny_ddgan(ema_decay=0.9, r1_gamma=1.0, lazy_reg=1),
        lambda: TinyImages(n=24, batch_size=8),
    ),
    "pix2pix": (lambda: tiny_pix2pix(), lambda: TinyPairs(n=12, batch_size=4)),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_training_batches_never_read_back_from_the_device(name, tmp_path, monkeypatch):
    """No `.item()`, `float(t)`, `if t:` ... in a GAN's training batch: on a GPU each one stalls the step until
    the device has caught up. (Lightning's logger converts values every `log_every_n_steps` only.)"""
    build, data = FAMILIES[name]
    torch.manual_seed(0)
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        callbacks=[NoHostSync(monkeypatch)],
    )
    trainer.fit(build(), data())
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 3
    assert not any(key.startswith("train/") for key in trainer.progress_bar_metrics)


class Recording(DCGAN):
    """A DCGAN that keeps every batch's logged values (read back here, in the test only)."""

    def log_windowed(self, values, batch_size):
        self.per_batch = getattr(self, "per_batch", []) + [{k: float(v) for k, v in values.items()}]
        super().log_windowed(values, batch_size)


def test_gan_curves_are_logged_per_logger_write_with_exact_window_and_epoch_means(tmp_path):
    """log_every_n_steps=3, 7 batches an epoch, 2 epochs: the CSV gets step values at batches 3, 6, 9, 12 (the
    means of the batches since the previous write, a window never crossing an epoch) and epoch values equal to
    the mean of all 7 batches; `step_losses` holds the last batch's own losses for the divergence guard."""
    import csv

    from pytorch_lightning.loggers import CSVLogger

    torch.manual_seed(0)
    model = Recording(**{k: v for k, v in tiny_dcgan().hparams.items() if k != "_instantiator"})
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_val_batches=0, log_every_n_steps=3,
                           logger=CSVLogger(str(tmp_path), name="csv", version=0))
    trainer.fit(model, TinyImages(n=56, batch_size=8))
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    batches = [b["train/loss_d"] for b in model.per_batch]
    assert len(batches) == 14
    steps = {int(r["step"]): float(r["train/loss_d_step"]) for r in rows if r.get("train/loss_d_step")}
    windows = {2: batches[0:3], 5: batches[3:6], 8: batches[7:9], 11: batches[9:12]}  # CSV steps count from 0
    assert sorted(steps) == sorted(windows)
    for step, window in windows.items():
        assert steps[step] == pytest.approx(sum(window) / len(window), rel=1e-5)
    epochs = [float(r["train/loss_d_epoch"]) for r in rows if r.get("train/loss_d_epoch")]
    assert epochs == pytest.approx([sum(batches[:7]) / 7, sum(batches[7:]) / 7], rel=1e-5)
    assert float(model.step_losses["train/loss_d"]) == pytest.approx(batches[-1], rel=1e-6)
