"""benchmarks/ab_ddgan.py: every variant composes as the harness composes it and builds the model it names;
`cosine` takes its step count from baseline's run; end to end at a toy budget (baseline and cosine)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ lives in the checkout, not in the installed package
from benchmarks import ab_ddgan  # noqa: E402
from benchmarks.quality_train import compose_run, stage_overrides, write_json  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: What each variant changes in the composed config (key: value), beyond the baseline's values.
BASELINE = {"data.hflip": False, "model.use_cosine": False, "model.cosine_steps": None,
            "model.discriminator.ngf": 8, "model.num_timesteps": 2, "model.generator.base_channels": 16,
            "data.batch_size": 32}  # fmt: skip
CHANGES = {
    "baseline": {},
    "hflip": {"data.hflip": True},
    "cosine": {"model.use_cosine": True, "model.cosine_steps": 100},
    "wide_d": {"model.discriminator.ngf": 16},
    "t4": {"model.num_timesteps": 4},
    "wide_g": {"model.generator.base_channels": 32},
    "d16_cosine": {"model.discriminator.ngf": 16, "model.use_cosine": True, "model.cosine_steps": 100},
    "d32": {"model.discriminator.ngf": 32},
    "d16_b16": {"model.discriminator.ngf": 16, "data.batch_size": 16},
}


def args_for(tmp_path: Path, *argv: str):
    return ab_ddgan.parse_args(["--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"), *argv])


def test_every_variant_composes_and_builds_its_model(tmp_path):
    args = args_for(tmp_path, "--cosine-steps", "100")
    assert set(CHANGES) | {"dcgan"} == set(ab_ddgan.VARIANTS)
    for name in ab_ddgan.VARIANTS:
        (stage,) = ab_ddgan.variant_stages(name, args)
        cfg = compose_run(stage_overrides(stage, toy=False), tmp_path / name, args.data_dir)
        assert cfg.trainer.max_epochs == -1 and cfg.callbacks.sample_grid is None
        model = instantiate(cfg.model)
        if name == "dcgan":
            assert type(model).__name__ == "DCGAN"
            continue
        for key, value in {**BASELINE, **CHANGES[name]}.items():
            assert OmegaConf.select(cfg, key) == value, (name, key)
        assert model.num_timesteps == cfg.model.num_timesteps and model.image_shape == (3, 32, 32)
        assert json.loads((args.out / name / "variant.json").read_text())["family"] == "ddgan"


def test_variants_compose_on_the_first_rounds_recipe_whatever_the_shipped_one_becomes(tmp_path):
    """The shipped recipe takes the winner's values; the A/B's variants keep the base they were measured on."""
    args = args_for(tmp_path, "--cosine-steps", "100")
    changed = ["model.discriminator.ngf=32", "data.batch_size=16", "model.use_cosine=true"]  # a recipe that moved on
    for name in ("baseline", "wide_d", "d16_b16"):
        (stage,) = ab_ddgan.variant_stages(name, args)
        cfg = compose_run([*changed, *stage_overrides(stage, toy=False)], tmp_path / name, args.data_dir)
        for key, value in {**BASELINE, **CHANGES[name]}.items():
            assert OmegaConf.select(cfg, key) == value, (name, key)
    assert json.loads((args.out / "wide_d" / "variant.json").read_text())["overrides"] == ["model.discriminator.ngf=16"]


def test_cosine_counts_the_batches_of_baselines_run_and_keeps_its_overrides(tmp_path):
    args = args_for(tmp_path)
    with pytest.raises(LookupError, match="run --variants baseline first"):
        ab_ddgan.variant_stages("cosine", args)
    wall = args.out / "baseline" / "train" / "checkpoints" / "wall"
    write_json(wall / "final.json", {"global_step": 1500})  # 750 batches of one D and one G step
    (stage,) = ab_ddgan.variant_stages("cosine", args)
    assert stage.overrides[-2:] == ("model.use_cosine=true", "model.cosine_steps=750")
    with pytest.raises(LookupError, match="run --variants wide_d first"):
        ab_ddgan.variant_stages("d16_cosine", args)
    write_json(args.out / "wide_d" / "train" / "checkpoints" / "wall" / "final.json", {"global_step": 812})
    assert ab_ddgan.variant_stages("d16_cosine", args)[0].overrides[-1] == "model.cosine_steps=406"
    # A rerun that would resume the same run with another decay is refused.
    with pytest.raises(RuntimeError, match="other overrides"):
        ab_ddgan.variant_stages("cosine", args_for(tmp_path, "--cosine-steps", "10"))


@pytest.mark.slow  # 15 s on 2 busy cores, two 3-s budgets included: keeps `make test` under 10 minutes
def test_toy_ab_runs_two_variants_and_writes_table_and_grids(tmp_path):
    argv = ["--toy", "--variants", "cosine,baseline", "--out", str(tmp_path / "out"),
            "--data-dir", str(tmp_path / "data")]  # fmt: skip
    first = ab_ddgan.main(argv)
    assert first["failed"] == {}
    assert first["trained"] == {
        "baseline": ["train"],
        "cosine": ["train"],
    }  # baseline first, whatever the order
    out = tmp_path / "out"
    results = {v: json.loads((out / v / "result.json").read_text()) for v in ("baseline", "cosine")}
    batches = results["baseline"]["steps"]["train"] // 2
    cosine = results["cosine"]["stages"]["train"]["overrides"]
    assert cosine[-2:] == ["model.use_cosine=true", f"model.cosine_steps={batches}"]
    for name, r in results.items():
        assert (r["n_fake"], r["n_real"], r["extractor"]) == (32, 32, "tiny")
        assert 0.05 * 60 <= r["train_s"] < 0.05 * 60 + 2 and math.isfinite(r["kid_mean"])
        with Image.open(out / name / "samples.png") as png:  # 8 x 8 faces of 32 px, 2 px apart
            assert png.size == (8 * 34 + 2, 8 * 34 + 2)

    table = (out / "ab_ddgan.md").read_text()
    for name, r in results.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f}" in row and f"| {r['fid']:.2f} |" in row
        assert f"| {r['steps']['train']} (" in row
    assert "`model.cosine_steps=" in table and "N = 32 fakes vs 32 real images" in table
    for name in ("hflip", "wide_d", "t4", "wide_g", "dcgan"):
        assert f"| {name} | not run yet |" in table
    assert "](ab_ddgan_samples.png)" in table and "tests only, NOT FID" in table
    with Image.open(out / "ab_ddgan_samples.png") as png:  # both grids in a row, 8 px apart, under a 16 px header
        assert png.size == (2 * (8 * 34 + 2) + 8, 16 + 8 * 34 + 2)

    # A rerun finds both done: nothing trained or scored again.
    second = ab_ddgan.main(argv)
    assert second["trained"] == {"baseline": [], "cosine": []}
    assert second["scored"] == {"baseline": [], "cosine": []}
