"""End to end: `genface train` composes, fits, writes its artefacts, resumes; `sample` and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from genface.train import train

# synthfaces at 16 px, 48 images, narrow nets: one epoch is a fraction of a second.
TINY = (
    "experiment=dcgan_synthfaces",
    "data.n=48",
    "data.resolution=16",
    "data.batch_size=8",
    "model.generator.width=8",
    "model.discriminator.width=8",
    "model.generator.latent_dim=16",
    "metrics=tiny",
    "metrics.fid.n_real=5",  # the whole validation split of 48 faces
    "callbacks.sample_grid.n=4",
    "trainer.accelerator=cpu",
    "~callbacks.progress",
)
#: TINY without FID and loggers, for the tests about checkpoints and resuming.
UNMEASURED = (*(a for a in TINY if not a.startswith("metrics")), "metrics=none", "logger=none")


def test_train_writes_checkpoints_samples_report_and_protocol(compose_train):
    cfg = compose_train(*TINY, "trainer.max_epochs=2")
    objective, trainer = train(cfg)
    out = trainer.default_root_dir
    for rel in (
        "checkpoints/last.ckpt",
        "samples/epoch_0000.png",
        "samples/epoch_0001.png",
        "samples/samples_over_epochs.png",
        "samples/samples_over_epochs.gif",
        "report/loss_curves.png",
        "report/fid_curve.png",
        "report/metrics.md",
        "csv/metrics.csv",
        "fid_protocol.json",
    ):
        assert os.path.isfile(os.path.join(out, rel)), rel
    assert objective is not None and np.isfinite(objective)
    history = json.load(open(os.path.join(out, "report/metrics.json")))
    assert [row["epoch"] for row in history] == [1, 2]
    assert all("train/loss_d" in row and "val/fid" in row for row in history)
    protocol = json.load(open(os.path.join(out, "fid_protocol.json")))
    assert protocol["extractor"] == "tiny" and protocol["n_fake"] == 32


def test_resume_continues_at_the_global_step(compose_train, tmp_path):
    first = compose_train(*UNMEASURED, "trainer.max_epochs=1")
    _, trainer1 = train(first)
    steps_one_epoch = trainer1.global_step
    assert steps_one_epoch > 0
    last = os.path.join(trainer1.default_root_dir, "checkpoints", "last.ckpt")
    resumed = compose_train(*UNMEASURED, "trainer.max_epochs=2", f"ckpt_path={last}")
    _, trainer2 = train(resumed)
    assert trainer2.global_step == 2 * steps_one_epoch
    assert trainer2.current_epoch == 2
    losses = [float(v) for k, v in trainer2.callback_metrics.items() if "loss" in k]
    assert losses and all(np.isfinite(losses))


@pytest.mark.timeout(400)
def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    """SIGKILL a run mid-way (no chance to clean up): last.ckpt from the last finished epoch resumes it."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "GENFACE_DATA_DIR": str(tmp_path / "data"), "GENFACE_LOG_DIR": str(tmp_path / "logs")}
    args = [*UNMEASURED, "hydra.run.dir=" + str(run_dir)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "genface", "train", *args, "trainer.max_epochs=1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if last.is_file():
                time.sleep(0.5)  # let a second epoch start, the kill must land mid-run
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert last.is_file(), "no last.ckpt while the run was going"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    state = torch.load(last, map_location="cpu", weights_only=False)
    epoch, step = state["epoch"], state["global_step"]
    assert step > 0 and epoch < 999
    steps_per_epoch = step // (epoch + 1)
    res = run_cli(
        "train", *args, f"trainer.max_epochs={epoch + 3}", f"ckpt_path={last}", tmp_path=tmp_path, timeout=240
    )
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert resumed["epoch"] == epoch + 2
    assert resumed["global_step"] == step + 2 * steps_per_epoch


def run_cli(*args: str, tmp_path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENFACE_DATA_DIR": str(tmp_path / "data"), "GENFACE_LOG_DIR": str(tmp_path / "logs")}
    return subprocess.run(
        [sys.executable, "-m", "genface", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_cli_prints_usage_and_composed_config(tmp_path):
    res = run_cli(tmp_path=tmp_path)
    assert res.returncode == 2 and "train" in res.stderr and "evaluate" in res.stderr
    res = run_cli("train", "experiment=dcgan_dg1_celeba64", "--cfg", "job", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "DCGANGenerator" in res.stdout and "lr: 0.0001" in res.stdout and "max_epochs: 30" in res.stdout


def test_cli_train_then_sample(tmp_path):
    res = run_cli("train", *TINY, "trainer.max_epochs=1", "hydra.run.dir=" + str(tmp_path / "run"), tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    out = tmp_path / "samples"
    res = run_cli("sample", f"ckpt={ckpt}", "n=10", "batch_size=4", f"out={out}", "hydra.run.dir=" + str(tmp_path / "s"), tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    latents = np.load(out / "latents.npy")
    assert latents.shape == (10, 16)
    assert len(list((out / "images").glob("*.png"))) == 10 and (out / "grid.png").is_file()
    # Same checkpoint + seed -> same samples (the Generative contract is deterministic).
    from genface.models import load_generative

    model = load_generative(ckpt)
    again = model.generate(torch.from_numpy(latents[:4]))
    from PIL import Image

    first = np.asarray(Image.open(out / "images" / "000000.png"))
    expect = ((again[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert np.abs(first.astype(int) - expect.astype(int)).max() <= 1


def test_sample_without_ckpt_is_a_clear_error(tmp_path):
    res = run_cli("sample", "hydra.run.dir=" + str(tmp_path / "s"), tmp_path=tmp_path)
    assert res.returncode != 0 and "needs ckpt=PATH" in res.stderr
