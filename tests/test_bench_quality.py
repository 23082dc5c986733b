"""benchmarks/bench_quality.py end to end at a toy budget: cGAN and latent diffusion (both stages), a few seconds
each, debug=smoke nets, the tiny extractor; then a rerun that does nothing, and a resumption from a mark."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from genface.models.classifier import Classifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ lives in the checkout, not in the installed package
from benchmarks import bench_quality  # noqa: E402
from benchmarks.quality_train import WallClockBudget  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("cgan", "latent_diffusion")
BUDGET_S = 0.05 * 60  # --toy's budget: 0.05 min
CONDITIONS = {"cgan": ["Smiling", "Male", "Eyeglasses"], "latent_diffusion": ["Smiling"]}


def untrained_judge(path: Path) -> str:
    """A small attribute classifier knowing both families' conditions (untrained: the plumbing is under test)."""
    judge = Classifier(
        net={"_target_": "genface.nets.smallcnn.SmallCNN", "in_channels": 3, "width": 8},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        label_kind="attributes",
        class_names=["Smiling", "Male", "Eyeglasses"],
        input_resolution=32,
    )
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(judge)
    trainer.save_checkpoint(path)
    return str(path)


@pytest.mark.slow  # 22 s: keeps `make test` under 10 minutes
def test_toy_run_writes_table_json_plot_and_resumes(tmp_path):
    out = tmp_path / "out"
    argv = ["--toy", "--families", ",".join(FAMILIES), "--out", str(out), "--data-dir", str(tmp_path / "data"),
            "--judge", untrained_judge(tmp_path / "judge.ckpt"), "--n-cond", "16"]  # fmt: skip
    first = bench_quality.main(argv)
    assert first["failed"] == {}
    assert first["trained"] == {"cgan": ["train"], "latent_diffusion": ["stage1", "stage2"]}

    results = {f: json.loads((out / f / "result.json").read_text()) for f in FAMILIES}
    for family, r in results.items():
        assert (r["n_fake"], r["n_real"], r["extractor"], r["real_split"]) == (32, 32, "tiny", "train")
        # stopped at the first batch end past the budget
        assert BUDGET_S <= r["train_s"] < BUDGET_S + 2, r["train_s"]
        assert math.isfinite(r["fid"]) and math.isfinite(r["kid_mean"]) and r["sample_s_per_image"] > 0
        assert 0 < r["params"]["sampling"] < r["params"]["trained"]
        cond = r["conditional"]
        assert list(cond["per_attribute"]) == CONDITIONS[family] and cond["n"] == 16
        assert (
            0 <= cond["cond_acc"] <= min(cond["per_attribute"].values()) and 0 <= cond["judge_on_real"] <= 1
        )
        points = sorted((out / family / "points").glob("*.json"))
        clocks = [json.loads(p.read_text())["elapsed_s"] for p in points]
        assert all(math.isfinite(json.loads(p.read_text())["kid_mean"]) for p in points)
        assert max(clocks) == r["train_s"]
    assert results["cgan"]["dataset_id"] == results["latent_diffusion"]["dataset_id"]
    # cGAN: a mark half-way through; latent diffusion: stage one spends half the budget, marks come after it
    assert sorted(p.stem for p in (out / "cgan" / "points").glob("*.json")) == ["final", "mark_001"]
    ldm = results["latent_diffusion"]
    stage_one_s = ldm["stages"]["stage1"]["final"]["elapsed_s"]
    assert BUDGET_S / 2 <= stage_one_s < ldm["train_s"]
    assert all(
        json.loads(p.read_text())["elapsed_s"] > stage_one_s
        for p in (out / "latent_diffusion" / "points").glob("*")
    )
    assert any("model.first_stage_ckpt=" in o for o in ldm["stages"]["stage2"]["overrides"])

    table = (out / "quality.md").read_text()
    for family, r in results.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {family} |"))
        assert f"| {r['fid']:.2f} |" in row and f"{1e3 * r['kid_mean']:.2f} ±" in row
        assert f"{r['conditional']['cond_acc']:.3f}" in row
    for family in ("dcgan", "ddpm", "ddgan"):
        assert f"| {family} | not run yet |" in table
    assert "tests only, NOT FID" in table and "metrics=none" in table
    with Image.open(out / "quality_vs_time.png") as png:
        assert png.size[0] > 100 and png.size[1] > 100
    for family in FAMILIES:  # the first 64 scored samples, 8 x 8 faces of 32 px, 2 px apart
        with Image.open(out / family / "samples.png") as png:
            assert png.size == (8 * 34 + 2, 8 * 34 + 2)
    assert "](quality_samples.png)" in table
    with Image.open(out / "quality_samples.png") as png:  # both families' grids in a row, labelled above
        assert png.size == (2 * (8 * 34 + 2) + 8, 16 + 8 * 34 + 2)

    # A rerun finds everything done: no training, no scoring, no checkpoint rewritten.
    files = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".ckpt", ".json") and p.parent != out
    }
    second = bench_quality.main(argv)
    assert second["trained"] == {"cgan": [], "latent_diffusion": []}
    assert second["scored"] == {"cgan": [], "latent_diffusion": []}
    assert {p: p.stat().st_mtime_ns for p in files} == files
    with pytest.raises(SystemExit, match="another protocol"):  # results of two budgets never share a table
        bench_quality.main([*argv, "--budget-min", "0.1"])

    # A run killed after its first mark: it resumes from that mark with the budget left, and is scored again.
    run = out / "cgan" / "train"
    mark = json.loads((run / "checkpoints" / "wall" / "mark_001.json").read_text())
    for path in run.joinpath("checkpoints").rglob("*.ckpt"):
        if path.name != "mark_001.ckpt":
            path.unlink()
    for path in (out / "cgan" / "result.json", out / "cgan" / "points" / "final.json"):
        path.unlink()
    # (With another --n-cond: latent diffusion, otherwise done, is judged again and only that.)
    third = bench_quality.main([*argv[:-1], "8"])
    assert third["trained"] == {"cgan": ["train"], "latent_diffusion": []}
    assert third["scored"] == {"cgan": ["final"], "latent_diffusion": ["conditional"]}
    assert json.loads((out / "latent_diffusion" / "result.json").read_text())["conditional"]["n"] == 8
    session = json.loads((run / "sessions.json").read_text())[-1]
    assert session["resumed_from"] == "mark_001.ckpt"
    assert session["restored_clock_s"] == pytest.approx(mark["elapsed_s"])
    final = json.loads((run / "checkpoints" / "wall" / "final.json").read_text())
    assert final["elapsed_s"] >= BUDGET_S and final["global_step"] > mark["global_step"]
    assert json.loads((out / "cgan" / "result.json").read_text())["train_s"] == final["elapsed_s"]


def test_unbudgeted_clock_writes_its_final_checkpoint_only_at_a_natural_end(tmp_path):
    """budget_s=None (score_run.py's runs): no stop at any clock, `final.ckpt` when the trainer ends by itself,
    none when something stopped it early (the divergence guard sets should_stop)."""
    saved = []
    trainer = SimpleNamespace(should_stop=False, global_step=7, current_epoch=2,
                              save_checkpoint=lambda path, weights_only: saved.append(path.name))  # fmt: skip
    module = SimpleNamespace(state_dict=lambda: {"w": torch.ones(2)})
    clock = WallClockBudget(budget_s=None, dirpath=str(tmp_path), every_s=1e9)
    clock.elapsed_s = 1e6
    clock.on_train_batch_end(trainer, module)
    assert not trainer.should_stop and saved == []
    trainer.should_stop = True
    clock.on_train_end(trainer, module)
    assert saved == [] and not (tmp_path / "final.json").exists()
    trainer.should_stop = False
    clock.on_train_end(trainer, module)
    assert saved == ["final.ckpt"]
    info = json.loads((tmp_path / "final.json").read_text())
    assert (info["budget_s"], info["global_step"], info["epoch"]) == (None, 7, 2)


def test_clock_carries_over_a_checkpoint_and_marks_follow_the_total_time(tmp_path):
    """The budget callback's state is what a checkpoint restores: the clock and the marks already written."""
    clock = WallClockBudget(budget_s=10, dirpath=str(tmp_path), every_s=2, start_s=5)
    assert (clock.elapsed_s, clock.last_mark) == (5, 2)  # stage two of a family that spent 5 s in stage one
    restored = WallClockBudget(budget_s=10, dirpath=str(tmp_path), every_s=2)
    restored.load_state_dict(clock.state_dict() | {"elapsed_s": 7.5, "last_mark": 3})
    assert (restored.elapsed_s, restored.last_mark, restored.restored_s) == (7.5, 3, 7.5)
    with pytest.raises(ValueError, match="leaves no time"):
        WallClockBudget(budget_s=5, dirpath=str(tmp_path), start_s=5)
