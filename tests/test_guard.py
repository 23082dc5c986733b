"""Divergence guard and checkpoint gate: a run whose losses or weights stop being finite ends with a clear error,
writes diverged.json and keeps last.ckpt (and the best file) at the last good epoch, even when the NaN comes on an
epoch's last step; non-finite weights are never written; other exceptions still save last.ckpt."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from genface.callbacks.checkpoint import FiniteCheckpoint
from genface.callbacks.guard import DivergenceGuard, TrainingDiverged
from helpers import TinyImages, tiny_trainer


class Breaks(pl.LightningModule):
    """A linear model that breaks from `break_at` on: its logged loss turns NaN ("loss"), or the loss it trains
    on turns NaN, so that the step makes the weights NaN ("nan"), or a weight is set to inf after the loss
    ("weights"), or it raises KeyboardInterrupt ("raise")."""

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
        if broken and self.how == "nan":
            loss = loss * float("nan")
        logged = loss * float("nan") if broken and self.how == "loss" else loss
        self.log("train/loss", logged.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def run(tmp_path, guard, *extra, max_epochs: int = 5):
    """A `max_epochs` trainer (4 steps an epoch with TinyImages(n=32, batch_size=8)) with last.ckpt as configured in
    conf/callbacks/last_checkpoint.yaml, `guard` (None: no guard) and `extra` callbacks."""
    last = FiniteCheckpoint(dirpath=str(tmp_path / "checkpoints"), filename="last", monitor=None, save_top_k=1,
                            every_n_epochs=1, save_on_train_epoch_end=True, save_on_exception=True, mode="max")  # fmt: skip
    callbacks = [last, *extra] + ([guard] if guard else [])
    trainer = tiny_trainer(tmp_path, max_epochs=max_epochs, limit_val_batches=0, enable_checkpointing=True,
                           callbacks=callbacks)  # fmt: skip
    return trainer, tmp_path / "checkpoints" / "last.ckpt"


def finite_checkpoint(path) -> dict:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values()), path
    return saved


@pytest.mark.parametrize("defer", [False, True], ids=["now", "deferred"])
def test_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, defer):
    """Deferred (a GPU's mode): step 6 is judged at step 7's end, step 7 at the epoch's end, before its save."""
    dm = TinyImages(n=32, resolution=8, batch_size=8)  # 4 batches an epoch
    trainer, last = run(tmp_path, DivergenceGuard(patience=2, defer=defer))
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
    trainer, _ = run(tmp_path, DivergenceGuard(patience=1, max_loss=1e-12, defer=True))
    with pytest.raises(TrainingDiverged, match="global step 2 "):  # step 0's loss, read at step 1's end
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


@pytest.mark.parametrize("defer", [False, True], ids=["now", "deferred"])
@pytest.mark.parametrize("max_epochs", [5, 2], ids=["mid-run", "last-epoch"])
def test_nan_on_the_last_step_of_an_epoch_stops_before_the_epoch_end_save(tmp_path, max_epochs, defer):
    """NaN weights from the last step of epoch 1 (steps 4-7): within patience 3, yet the guard stops at once,
    before the end-of-epoch save, writes diverged.json and says what last.ckpt holds; also when epoch 1 is the
    run's last (the run would otherwise end "successfully" with NaN weights and no diverged.json)."""
    trainer, last = run(tmp_path, DivergenceGuard(patience=3, defer=defer), max_epochs=max_epochs)
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit(Breaks(break_at=7, how="nan"), TinyImages(n=32, resolution=8, batch_size=8))
    message = str(caught.value)
    assert "diverged at global step 8 (epoch 1)" in message and "non-finite parameters ['net.weight'" in message
    assert "checkpoints/last.ckpt (epoch 0, global step 4)" in message
    report = json.loads((tmp_path / "diverged.json").read_text())
    assert report["global_step"] == 8 and "net.weight" in report["non_finite_parameters"]
    assert report["checkpoints"] == {"checkpoints/last.ckpt": {"epoch": 0, "global_step": 4}}
    assert finite_checkpoint(last)["global_step"] == 4


def test_spike_after_a_good_epoch_keeps_the_good_last_and_best_files(tmp_path):
    """A weight turns inf on epoch 1's last step, its loss still finite: neither last.ckpt nor the best file
    (a new name each epoch, the previous one deleted on save) is replaced, no last-v1.ckpt appears, and the
    next step's inf loss stops the run."""
    best = FiniteCheckpoint(dirpath=str(tmp_path / "checkpoints"), filename="best_epoch{epoch:03d}", monitor=None,
                            save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True, auto_insert_metric_name=False)  # fmt: skip
    trainer, last = run(tmp_path, DivergenceGuard(patience=3), best)
    with pytest.warns(UserWarning, match=r"checkpoint not saved at epoch 1, global step 8: non-finite values in net\.weight"):
        with pytest.raises(TrainingDiverged, match=r"global step 9 \(epoch 2\).*checkpoints/last\.ckpt \(epoch 0"):
            trainer.fit(Breaks(break_at=7, how="weights"), TinyImages(n=32, resolution=8, batch_size=8))
    assert sorted(p.name for p in last.parent.iterdir()) == ["best_epoch000.ckpt", "last.ckpt"]
    assert finite_checkpoint(last)["global_step"] == 4
    assert finite_checkpoint(last.parent / "best_epoch000.ckpt")["global_step"] == 4
    assert set(json.loads((tmp_path / "diverged.json").read_text())["checkpoints"]) == {
        "checkpoints/last.ckpt", "checkpoints/best_epoch000.ckpt"
    }


def test_without_a_guard_non_finite_weights_are_never_written(tmp_path):
    """The gate alone: NaN weights from step 6 on, 5 epochs run out; last.ckpt stays at the end of epoch 0."""
    trainer, last = run(tmp_path, None)
    with pytest.warns(UserWarning, match="checkpoint not saved at epoch 4"):
        trainer.fit(Breaks(break_at=6, how="nan"), TinyImages(n=32, resolution=8, batch_size=8))
    assert finite_checkpoint(last)["global_step"] == 4


def test_an_exception_after_nan_weights_does_not_save_them(tmp_path):
    """NaN weights at step 6, then a crash elsewhere (e.g. FID on NaN images) at step 7: the on-exception save
    is refused, last.ckpt keeps the end of epoch 0."""

    class NaNThenCrash(Breaks):
        def training_step(self, batch, batch_idx):
            if self.global_step == 7:
                raise RuntimeError("FID: NaN features")
            return super().training_step(batch, batch_idx)

    trainer, last = run(tmp_path, None)
    with pytest.warns(UserWarning, match="checkpoint not saved at epoch 1, global step 7: non-finite values in net"):
        with pytest.raises(RuntimeError, match="NaN features"):
            trainer.fit(NaNThenCrash(break_at=6, how="nan"), TinyImages(n=32, resolution=8, batch_size=8))
    assert finite_checkpoint(last)["global_step"] == 4
