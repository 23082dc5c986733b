"""`genface check`: the plan of a sound recipe, and every deliberately broken variant named with its fix."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from genface.check import PreflightError, preflight
from test_train import TINY

#: TINY without its CPU pin, so that trainer=gpu keeps asking for a GPU
ON_GPU = (*(a for a in TINY if not a.startswith("trainer.accelerator")), "trainer=gpu")


def _plan(compose_train, *overrides, step=False):
    return preflight(compose_train(*overrides), step=step)


def _faces(root, n=20, size=24):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_sound_recipe_plans_every_section_and_trains_one_step(compose_train):
    plan = _plan(compose_train, "experiment=dcgan_synthfaces", "debug=smoke", step=True)
    assert plan.problems == []
    text = plan.report()
    for expected in ("trainer: cpu x 1", "images: train", "metrics.fid: tiny", "model: DCGAN",
                     "one step on 2 real images: OK", "output:", "schedule:", "genface check: OK"):
        assert expected in text, expected


def test_real_split_smaller_than_n_real_is_found_with_its_fix(compose_train, tmp_path):
    root = _faces(tmp_path / "faces", n=40)
    plan = _plan(compose_train, "data=imagefolder", f"data.root={root}", "data.resolution=16", "data.batch_size=4",
                 "metrics=fid")
    (problem,) = [p for p in plan.problems if "n_real" in p.what]
    assert "n_real=2048 but the 'val' split holds 2 images" in problem.what
    assert "metrics.fid.n_real=2" in problem.fix and "allow_low_n=true" in problem.fix


def test_missing_dataset_names_path_layout_and_standin(compose_train, tmp_path):
    plan = _plan(compose_train, "data=celeba", f"data.root={tmp_path}/nowhere")
    (problem,) = plan.problems
    assert f"{tmp_path}/nowhere" in problem.what and "list_attr_celeba.txt" in problem.what
    assert "genface standin celeba" in problem.fix


def test_missing_classifier_and_first_stage_paths(compose_train, tmp_path):
    plan = _plan(compose_train, "experiment=cgan_synthfaces", "debug=smoke",
                 f"callbacks.conditional_accuracy.classifier_path={tmp_path}/judge.ckpt")
    assert any("classifier_path: no file" in p.what for p in plan.problems)
    plan = _plan(compose_train, "experiment=latent_diffusion_synthfaces", "data.n=40", "data.batch_size=4",
                 "metrics=tiny", "model.first_stage_ckpt=null")
    assert any(p.what.startswith("model.first_stage_ckpt is required") for p in plan.problems)
    plan = _plan(compose_train, "experiment=latent_diffusion_synthfaces", "data.n=40", "data.batch_size=4",
                 "metrics=tiny", f"model.first_stage_ckpt={tmp_path}/vae.ckpt")
    assert any("first_stage_ckpt: no file" in p.what for p in plan.problems)


def test_wrong_family_checkpoint_is_named(compose_train, tmp_path):
    import torch

    fake = tmp_path / "ddpm.ckpt"
    torch.save({"genface_class": "genface.models.ddpm.DDPM", "state_dict": {}}, fake)
    plan = _plan(compose_train, "experiment=dcgan_synthfaces", "debug=smoke", f"ckpt_path={fake}")
    (problem,) = plan.problems
    assert "holds a genface.models.ddpm.DDPM, not a DCGAN" in problem.what


def test_devices_batch_and_precision(compose_train):
    plan = _plan(compose_train, *TINY, "trainer=ddp_cpu", "data.batch_size=5")
    (problem,) = plan.problems
    assert "data.batch_size=5" in problem.what and problem.fix.startswith("data.batch_size=4")
    if not __import__("torch").cuda.is_available():
        plan = _plan(compose_train, *ON_GPU)
        assert any("no CUDA GPU" in p.what and "trainer=cpu" in p.fix for p in plan.problems)
        plan = _plan(compose_train, *TINY, "trainer=cpu", "+trainer.precision=16-mixed")
        assert any("16-mixed is not supported on a CPU" in p.what for p in plan.problems)


def test_unwritable_output_is_found(compose_train, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = compose_train("experiment=dcgan_synthfaces", "debug=smoke")
    cfg.paths.output_dir = str(blocker / "logs" / "run")
    plan = preflight(cfg, step=False)
    (problem,) = plan.problems
    assert "is not writable" in problem.what and "paths.log_dir=" in problem.fix


def test_fid_epochs_that_validation_skips_are_found(compose_train):
    plan = _plan(compose_train, *TINY, "trainer.check_val_every_n_epoch=2", "metrics.fid.every_n_epochs=3")
    (problem,) = plan.problems
    assert "every_n_epochs=3" in problem.what and problem.fix == "metrics.fid.every_n_epochs=6"


def test_train_runs_the_check_first(compose_train, tmp_path):
    from genface.train import train

    cfg = compose_train(*TINY, "data.batch_size=5", "trainer=ddp_cpu")
    with pytest.raises(PreflightError, match="check=false skips"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("broken", [False, True])
def test_cli_exit_codes(tmp_path, broken):
    # smoke keeps a recipe on the CPU where no GPU is found: the broken variant asks for one without it
    args = list(ON_GPU) if broken else ["experiment=dcgan_synthfaces", "debug=smoke"]
    env = {**os.environ, "GENFACE_DATA_DIR": str(tmp_path / "data"), "GENFACE_LOG_DIR": str(tmp_path / "logs")}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "genface", "check", *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == (2 if broken else 0), done.stdout + done.stderr
    assert ("fix: trainer=cpu" in done.stdout) == broken
    assert time.monotonic() - start < 30 or not broken
    assert not (tmp_path / "logs").exists()  # check creates no run folder


def test_changed_optimizer_settings_on_resume_are_refused_with_the_key(compose_train, tmp_path):
    from genface.train import train

    first = compose_train(*TINY, "trainer.max_epochs=1", "metrics.fid.every_n_epochs=1")
    _, trainer = train(first)
    last = f"{trainer.default_root_dir}/checkpoints/last.ckpt"
    assert _plan(compose_train, *TINY, "trainer.max_epochs=2", f"ckpt_path={last}").problems == []
    plan = _plan(compose_train, *TINY, "trainer.max_epochs=2", f"ckpt_path={last}", "model.optimizer_g.lr=0.001")
    (problem,) = plan.problems
    assert problem.what.startswith("model.optimizer_g.lr=0.001 but last.ckpt was trained with 0.0002")
    assert "drop the model.optimizer_g.lr override" in problem.fix


def test_a_non_number_batch_names_the_key(compose_train):
    plan = _plan(compose_train, *TINY, "data.batch_size=abc")
    assert [p.what for p in plan.problems] == ["data.batch_size must be a whole number, got 'abc'"]


def test_train_into_an_unusable_log_folder_says_which_and_how(tmp_path):
    """Hydra makes the run folder before genface runs: the CLI names the folder first, not a bare traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = subprocess.run(
        [sys.executable, "-m", "genface", "train", "experiment=dcgan_synthfaces", f"paths.log_dir={blocker}/logs"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert done.returncode == 2
    assert f"{blocker} is not a folder" in done.stderr and "paths.log_dir=DIR" in done.stderr
    assert "Traceback" not in done.stderr
