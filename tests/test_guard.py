"""Divergence guard: a run whose losses or weights stop being finite ends with a clear error, writes
diverged.json and keeps last.ckpt at the last good epoch; other exceptions still save last.ckpt."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from genface.callbacks.guard import DivergenceGuard, LastCheckpoint, TrainingDiverged
from helpers import TinyImages, tiny_trainer


class Breaks(pl.LightningModule):
    """A linear model whose logged loss turns NaN (or its weights inf, or it raises) from `break_at` on."""

    def __init__(self, break_at: int, how: str = "loss") -> None:
        super().__init__()
        self.net = nn.Linear(3 * 8 * 8, 1)
        self.break_at, self.how = break_at, how

    def training_step(self, batch, batch_idx):
        loss = self.net(batch[0].flatten(1)).pow(2).mean()
        broken = self.global_step >= self.break_at
        if broken and self.how == "raise":
            raise KeyboardInterrupt
        if broken and self.how == "weights":
            with torch.no_grad():
                self.net.weight[0, 0] = float("inf")
        logged = loss * float("nan") if broken and self.how == "loss" else loss
        self.log("train/loss", logged.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def run(tmp_path, guard):
    last = LastCheckpoint(dirpath=str(tmp_path / "checkpoints"), filename="last", monitor=None, save_top_k=1,
                          every_n_epochs=1, save_on_train_epoch_end=True, save_on_exception=True, mode="max")  # fmt: skip
    trainer = tiny_trainer(tmp_path, max_epochs=5, limit_val_batches=0, enable_checkpointing=True,
                           callbacks=[last, guard])  # fmt: skip
    return trainer, tmp_path / "checkpoints" / "last.ckpt"


def test_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    dm = TinyImages(n=32, resolution=8, batch_size=8)  # 4 batches an epoch
    trainer, last = run(tmp_path, DivergenceGuard(patience=2))
    with pytest.raises(TrainingDiverged, match=r"diverged at global step 8 \(epoch 1\).*train/loss"):
        trainer.fit(Breaks(break_at=6), dm)  # NaN losses at steps 6 and 7
    report = json.loads((tmp_path / "diverged.json").read_text())
    assert report["bad_losses"] == {"train/loss": "nan"} and report["consecutive_bad_steps"] == 2
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4  # end of epoch 0: the NaN steps of epoch 1 were not saved
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_one_bad_step_within_patience_is_tolerated(tmp_path):
    class OneNaN(Breaks):
        def training_step(self, batch, batch_idx):
            self.how = "loss" if self.global_step == 3 else "none"
            return super().training_step(batch, batch_idx)

    trainer, last = run(tmp_path, DivergenceGuard(patience=2))
    trainer.fit(OneNaN(break_at=0), TinyImages(n=32, resolution=8, batch_size=8))
    assert trainer.current_epoch == 5 and not (tmp_path / "diverged.json").exists()


def test_non_finite_weights_are_caught_by_the_parameter_check(tmp_path):
    trainer, _ = run(tmp_path, DivergenceGuard(patience=100, check_params_every_n_steps=2))
    with pytest.raises(TrainingDiverged, match=r"non-finite parameters \['net.weight'\]"):
        trainer.fit(Breaks(break_at=5, how="weights"), TinyImages(n=32, resolution=8, batch_size=8))


def test_max_loss_and_argument_errors(tmp_path):
    trainer, _ = run(tmp_path, DivergenceGuard(patience=1, max_loss=1e-12))
    with pytest.raises(TrainingDiverged, match="global step 1 "):
        trainer.fit(Breaks(break_at=10**6), TinyImages(n=32, resolution=8, batch_size=8))
    with pytest.raises(ValueError, match="patience must be >= 1"):
        DivergenceGuard(patience=0)
    with pytest.raises(ValueError, match="max_loss must be positive"):
        DivergenceGuard(max_loss=0)


def test_other_exceptions_still_save_last_checkpoint(tmp_path):
    trainer, last = run(tmp_path, DivergenceGuard())
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful shutdown, then exits
        trainer.fit(Breaks(break_at=6, how="raise"), TinyImages(n=32, resolution=8, batch_size=8))
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 6
