"""`genface prepare`, `genface evaluate` and the loggers, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_cfg
from genface.evaluate import evaluate
from genface.train import train
from test_analysis import HalvesGenerator, save_module
from test_train import TINY, run_cli


def test_prepare_writes_the_cache_that_training_then_reads(tmp_path):
    res = run_cli("prepare", "data=synthfaces", "data.n=30", "data.resolution=16", f"hydra.run.dir={tmp_path}/p", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    caches = list((tmp_path / "data" / ".cache" / "arrays").glob("synthfaces-16px*/train_images.npy"))
    assert len(caches) == 1
    images = np.load(caches[0])
    assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 3)


def write_folder(path, n, seed, shift=0):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.clip(rng.integers(0, 200, (16, 16, 3)) + shift, 0, 255).astype(np.uint8)).save(path / f"{i}.png")


def test_evaluate_folders_writes_results_json(tmp_path):
    write_folder(tmp_path / "real", 24, 0)
    write_folder(tmp_path / "same", 24, 1)
    write_folder(tmp_path / "shifted", 24, 2, shift=55)
    results = {}
    for fake in ("same", "shifted"):
        out = tmp_path / f"{fake}.json"
        res = run_cli(
            "evaluate", f"real={tmp_path}/real", f"fake={tmp_path}/{fake}", "extractor=tiny", "allow_low_n=true",
            "kid_subset_size=12", f"out={out}", f"hydra.run.dir={tmp_path}/e", tmp_path=tmp_path,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        results[fake] = json.loads(out.read_text())
    assert set(results["same"]) >= {"fid", "kid_mean", "kid_std", "n_real", "n_fake", "extractor"}
    assert results["same"]["n_real"] == 24 and results["same"]["extractor"] == "tiny"
    assert results["shifted"]["fid"] > results["same"]["fid"]


def test_evaluate_refuses_low_n_fid_by_default(tmp_path):
    write_folder(tmp_path / "real", 8, 0)
    res = run_cli("evaluate", f"real={tmp_path}/real", f"fake={tmp_path}/real", "extractor=tiny", f"hydra.run.dir={tmp_path}/e", tmp_path=tmp_path)
    assert res.returncode != 0 and "allow_low_n" in res.stderr


def test_evaluate_refuses_n_before_generating_anything(tmp_path, monkeypatch):
    write_folder(tmp_path / "real", 3, 0)
    ckpt = save_module(HalvesGenerator(), tmp_path / "g.ckpt")

    def generate(self, latents, labels):
        raise AssertionError("generated fakes although N is refused")

    monkeypatch.setattr(HalvesGenerator, "_generate", generate)

    def run(*overrides: str) -> None:
        common = [f"real={tmp_path}/real", f"fake={ckpt}", "extractor=tiny", "device=cpu"]
        evaluate(compose_cfg("evaluate", [*common, *overrides], tmp_path))

    with pytest.raises(ValueError, match=r"n_real=3 < 64 features is refused.*allow_low_n"):
        run()
    with pytest.raises(ValueError, match=r"n_real=5 real images but the real folder .*real holds 3"):
        run("n_real=5", "allow_low_n=true")


def test_wandb_offline_and_tensorboard_loggers_receive_metrics_and_images(compose_train, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(*TINY, "trainer.max_epochs=1", "logger=wandb")
    _, trainer = train(cfg)
    runs = list(Path(trainer.default_root_dir).glob("wandb/offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert trainer.loggers[0].experiment.config["model"]["loss"] == "bce"  # full resolved config recorded

    cfg = compose_train(*TINY, "trainer.max_epochs=1", "logger=tensorboard")
    _, trainer = train(cfg)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(trainer.default_root_dir) / "tensorboard")).Reload()
    assert "samples" in events.Tags()["images"]
    assert any(tag.startswith("val/fid") for tag in events.Tags()["scalars"])
