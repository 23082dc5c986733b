"""benchmarks/score_run.py: a shipped recipe run to its own end with bench_quality's clock (no budget), scored
under a toy bench_quality folder's protocol and added to its table as an extra row."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ lives in the checkout, not in the installed package
from benchmarks import bench_quality, score_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def clocked_run(run: Path, data: Path, epochs: int) -> subprocess.CompletedProcess:
    """`genface train` of the smoke DD-GAN recipe for `epochs` epochs, timed by WallClockBudget without a budget."""
    clock = "+callbacks.wall_clock_budget."
    args = ["experiment=ddgan_synthfaces", "debug=smoke", f"trainer.max_epochs={epochs}", f"hydra.run.dir={run}",
            f"paths.data_dir={data}", f"{clock}_target_=benchmarks.quality_train.WallClockBudget",
            f"{clock}budget_s=null", f"{clock}every_s=0.01", f"{clock}dirpath={run}/checkpoints/wall"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "genface", "train", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)  # fmt: skip


@pytest.mark.slow  # ~25 s: a toy bench, a CLI training run and its scoring
def test_recipe_run_to_its_end_is_scored_into_a_bench_folder(tmp_path):
    out, data, run = tmp_path / "out", tmp_path / "data", tmp_path / "ddgan_run"
    with pytest.raises(SystemExit):  # no bench folder yet: refused before anything is loaded
        score_run.main([str(run), "--out", str(out)])
    assert bench_quality.main(["--toy", "--families", "dcgan", "--out", str(out), "--data-dir", str(data)])[
        "failed"
    ] == {}

    res = clocked_run(run, data, epochs=2)
    assert res.returncode == 0, res.stderr[-3000:]
    final = json.loads((run / "checkpoints" / "wall" / "final.json").read_text())
    assert final["budget_s"] is None and final["epoch"] == 2 and final["global_step"] > 0  # 2 epochs done
    marks = sorted((run / "checkpoints" / "wall").glob("mark_*.json"))
    assert marks, "every_s=0.01 marks the first batches"

    result = score_run.main([str(run), "--out", str(out), "--name", "ddgan_recipe"])
    assert result["external"] and result["run_dir"] == str(run)
    assert result["train_s"] == final["elapsed_s"] > 0
    assert (result["n_fake"], result["extractor"], result["real_split"]) == (32, "tiny", "train")
    assert math.isfinite(result["kid_mean"]) and result["params"]["sampling"] > 0
    dcgan = json.loads((out / "dcgan" / "result.json").read_text())
    assert result["dataset_id"] == dcgan["dataset_id"]
    # the recipe's own overrides only: the clock, the folders and the data path are harness
    assert result["stages"]["train"]["overrides"] == [
        "experiment=ddgan_synthfaces", "debug=smoke", "trainer.max_epochs=2"
    ]
    points = sorted(p.stem for p in (out / "ddgan_recipe" / "points").glob("*.json"))
    assert points == sorted(["final", *(m.stem for m in marks)])
    table = (out / "quality.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| ddgan_recipe |"))
    assert "`ddgan_synthfaces` to its end" in row and f"{1e3 * result['kid_mean']:.2f} ±" in row
    assert "| dcgan | `dcgan_synthfaces` |" in table and "*to its end*" in table
    assert (out / "ddgan_recipe" / "samples.png").is_file()
    with Image.open(out / "ddgan_recipe" / "path.png") as png:  # T=2: x_t and x0 of 4 latents at 2 steps
        assert png.size == (184, 590)  # 2 columns of 64 px cells (32 px enlarged) after the row labels

    # bench_quality keeps the extra row when it reruns into the folder
    bench_quality.main(["--toy", "--families", "dcgan", "--out", str(out), "--data-dir", str(data)])
    assert "| ddgan_recipe |" in (out / "quality.md").read_text()


def test_refuses_a_run_without_its_final_checkpoint(tmp_path, capsys):
    out, run = tmp_path / "out", tmp_path / "run"
    out.mkdir()
    (out / "protocol.json").write_text(json.dumps({"mode": "toy"}))
    (run / "checkpoints" / "wall").mkdir(parents=True)
    with pytest.raises(SystemExit):
        score_run.main([str(run), "--out", str(out)])
    err = capsys.readouterr().err
    assert "final.ckpt" in err and "still training" in err
    with pytest.raises(SystemExit):
        score_run.main([str(run), "--out", str(out), "--name", "dcgan"])
    assert "bench_quality family" in capsys.readouterr().err
