"""`genface rehearse`: what it changes in a recipe (devices and length only), how big a stand-in it makes,
and, in the slow tests, one dress rehearsal per real-data recipe on the 2-core CPU machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from genface.budget import analysis_images, analysis_plan, sampled_images, sampling_plan, shortened_steps
from genface.config import compose_train
from genface.rehearse import (
    ANALYSIS_KEYS,
    NEEDS,
    OWN_KEYS,
    REAL_DATA,
    SMALL_MACHINE_BATCH,
    TRAINS_AS,
    BeyondMachine,
    Rehearsal,
    append_row,
    fewer_gpus_note,
    is_analysis,
    layout_of,
    needed_images,
    rehearsal_overrides,
    rehearse,
    write_markdown,
)
from test_analysis import HalvesGenerator, halves_classifier, save_module


@pytest.mark.parametrize("experiment", sorted(REAL_DATA))
def test_every_real_data_recipe_has_a_standin_layout(experiment, tmp_path):
    """REAL_DATA is what `genface rehearse all` and the slow tests run: it must name every such recipe."""
    cfg = compose_train([f"experiment={experiment}", f"paths.data_dir={tmp_path}", f"paths.log_dir={tmp_path}"])
    assert layout_of(cfg) == REAL_DATA[experiment]


def test_overrides_cut_length_and_devices_only(tmp_path):
    cfg = compose_train(["experiment=ddgan_celebahq128", f"paths.log_dir={tmp_path}"])
    cut = rehearsal_overrides(cfg, steps=3)
    assert cut[:2] == ["trainer=ddp_cpu", "trainer.devices=2"]
    assert "trainer.limit_train_batches=3" in cut and "trainer.max_epochs=2" in cut
    assert not any(o.startswith("trainer.limit_val_batches") for o in cut)  # metrics over validation keep their N
    assert "metrics.fid.every_n_epochs=2" in cut and "callbacks.sample_grid.every_n_epochs=2" in cut
    assert not any(o.startswith(("data.", "model.")) for o in cut)  # the recipe itself is untouched
    single = compose_train(["experiment=dcgan_dg1_celeba64", f"paths.log_dir={tmp_path}"])
    assert not any(o.startswith("trainer=") for o in rehearsal_overrides(single, steps=2))


def test_a_gpu_recipe_keeps_its_trainer_on_a_machine_with_gpus(tmp_path):
    """On a GPU machine the recipe's own trainer (strategy, bf16) runs on the GPUs there, as many ranks as it asks
    for and the machine holds; the global batch is the recipe's (data.batch_size is global)."""
    cfg = compose_train(["experiment=ddgan_celebahq256", f"paths.log_dir={tmp_path}"])  # 8 GPUs
    one = rehearsal_overrides(cfg, steps=2, gpus=1)
    assert one[0] == "trainer.devices=1" and not any(o.startswith(("trainer=", "data.", "model.")) for o in one)
    assert "metrics.fid.every_n_epochs=2" in one and "trainer.limit_train_batches=2" in one
    assert not any(o.startswith("trainer.devices") for o in rehearsal_overrides(cfg, steps=2, gpus=8))
    assert rehearsal_overrides(cfg, steps=2, gpus=0)[:2] == ["trainer=ddp_cpu", "trainer.devices=2"]
    assert fewer_gpus_note(cfg, 1) == "1 GPU in place of the recipe's 8, the same global batch (32)"
    assert fewer_gpus_note(cfg, 2).startswith("2 GPUs in place") and fewer_gpus_note(cfg, 8) is None
    table = tmp_path / "rehearsals.json"
    append_row(table, Rehearsal("g", status="passed", machine="NVIDIA H200", train_s=60))
    write_markdown(table, tmp_path / "t.md")
    assert "| `g` | passed | embedded | 1 x NVIDIA H200 | 1.0 min |" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize("gpus", [0, 1])
def test_all_cuts_the_batch_only_where_there_is_no_gpu(gpus, tmp_path, monkeypatch):
    import genface.rehearse as rehearse_module

    seen = {}

    def one(name, overrides, own, out):  # what `all` asks of each rehearsal, not the rehearsal
        seen[name] = own
        return Rehearsal(name, status="passed")

    monkeypatch.setattr(rehearse_module, "visible_gpus", lambda: gpus)
    monkeypatch.setattr(rehearse_module, "_one", one)
    with pytest.raises(SystemExit) as done:
        rehearse_module.main(["all", f"out={tmp_path}"])
    assert done.value.code == 0 and set(seen) == set(REAL_DATA)
    for name in SMALL_MACHINE_BATCH:
        assert seen[name].get("batch") == (None if gpus else str(SMALL_MACHINE_BATCH[name]))


def test_standin_size_follows_the_recipes_needs(tmp_path):
    celeba = compose_train(["experiment=dcgan_dg1_celeba64", f"paths.log_dir={tmp_path}"])
    # 2,048 reals of CelebA's validation partition (9.8 % of the images)
    assert 20_880 <= needed_images(celeba, "celeba", world=1, steps=2) <= 20_900
    hq = compose_train(["experiment=ddgan_celebahq128", f"paths.log_dir={tmp_path}"])
    assert needed_images(hq, "celebahq", world=2, steps=2) == 5000  # the study's subset; FID over all of it


def test_table_keeps_the_newest_row_per_recipe_and_renders(tmp_path):
    table = tmp_path / "rehearsals.json"
    append_row(table, Rehearsal("a", status="failed", note="boom"))
    append_row(table, Rehearsal("a", status="passed", train_s=120, resume_s=30, peak_rss_mib=2048,
                                wrote=["checkpoints/last.ckpt", "samples/real.png"], metrics={"val/fid": 123.4}))
    append_row(table, Rehearsal("b", standin="celeba, n=10"))
    rows = json.loads(table.read_text())
    assert [r["experiment"] for r in rows] == ["a", "b"] and rows[0]["status"] == "passed"
    write_markdown(table, tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "| `a` | passed | embedded | 1 | 2.0 min | 0.5 min | 2.0 GiB | val/fid 123.4 | checkpoints, samples |" in text


def test_sampler_is_shortened_only_past_the_budget():
    # 1 s per step and image, 1,000 steps, 2,112 images: 587 h; a 1 h budget affords 1 step, 10 h 17 steps
    assert shortened_steps(1.0, 1000, 2112, 3600) == 1
    assert shortened_steps(1.0, 1000, 2112, 36000) == 17
    assert shortened_steps(1e-6, 1000, 2112, 3600) is None
    assert shortened_steps(1.0, 1000, 10, 10 * 999) == 999  # never the recipe's own count


def test_sampling_plan_measures_the_recipes_sampler(tmp_path):
    cfg = compose_train(["experiment=ddpm_dlstudio_celeba64", f"paths.log_dir={tmp_path}"])
    assert sampled_images(cfg) == 2048 + 64 + 4  # FID's fakes, the sample grid, the denoising paths
    tiny = compose_train(["experiment=ddpm_synthfaces", f"paths.log_dir={tmp_path}", "model.sampler=ancestral",
                          "model.net.base_channels=8", "model.net.num_res_blocks=1", "data.resolution=16"])
    plan = sampling_plan(tiny, budget_h=1e-9, batch=2)
    assert plan["sampler"] == "ancestral" and plan["steps"] == tiny.model.schedule.T
    assert plan["s_per_step_per_image"] > 0 and plan["rehearsed_with"] == {"sampler": "ddim", "steps": 1}
    assert "rehearsed_with" not in sampling_plan(tiny, budget_h=1e9, batch=2)
    dcgan = compose_train(["experiment=dcgan_synthfaces", f"paths.log_dir={tmp_path}"])
    plan = sampling_plan(dcgan, budget_h=1e-9)  # one network evaluation per image: measured, nothing to shorten
    assert plan["s_per_image"] > 0 and plan["images"] == sampled_images(dcgan) and "rehearsed_with" not in plan
    classifier = compose_train(["experiment=synthfaces_attr", f"paths.log_dir={tmp_path}"])
    assert sampling_plan(classifier, budget_h=1e-9) == {}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(REAL_DATA))
def test_dress_rehearsal(experiment, tmp_path, tmp_path_factory):
    """The recipe unchanged on its stand-in (full model, configured N, callbacks, checkpoints, DDP on CPU),
    two epochs of two batches and a resume. Latent diffusion rehearses on a rehearsed VAE-GAN's checkpoint, the
    latent analysis trains its DD-GAN and analyses it with a rehearsed classifier."""
    overrides = [f"experiment={experiment}", f"paths.data_dir={tmp_path_factory.getbasetemp()}/data"]
    keys = {}
    for need in NEEDS.get(experiment, []):
        key, value = need.split("=", 1)
        if key == "generator":
            continue  # trained here, as `genface rehearse` does without generator=
        first = value.split("{root}/", 1)[1].split("/", 1)[0]  # the rehearsal that writes that checkpoint
        if not (tmp_path / first).is_dir():
            assert rehearse([f"experiment={first}", *overrides[1:]], tmp_path / first).status == "passed"
        (keys if key in OWN_KEYS else {}).update({key: Path(value.format(root=tmp_path))})
        if key not in OWN_KEYS:
            overrides.append(need.format(root=tmp_path))
    try:
        row = rehearse(overrides, tmp_path / "rehearsal", batch=SMALL_MACHINE_BATCH.get(experiment), **keys)
    except BeyondMachine as err:  # measured first: DD-GAN 256 px samples FID for hours on 2 CPU cores
        pytest.skip(f"{experiment} needs a GPU here: {err}")
    assert row.status == "passed"
    assert "checkpoints/last.ckpt" in row.wrote
    if experiment in TRAINS_AS:
        assert "analysis/report.md" in row.wrote and row.analysis["s_per_image"] > 0


@pytest.mark.parametrize("analysis", sorted(TRAINS_AS))
def test_analysis_recipe_trains_its_generator_as_the_recipe_it_names(analysis, tmp_path):
    """`rehearse all` analyses the named recipe's rehearsed checkpoint: the training must be the same."""
    paths = [f"paths.data_dir={tmp_path}", f"paths.log_dir={tmp_path}"]
    a = compose_train([f"experiment={analysis}", *paths])
    b = compose_train([f"experiment={TRAINS_AS[analysis]}", *paths])
    assert is_analysis(a) and not is_analysis(b)
    a, b = OmegaConf.to_container(a), OmegaConf.to_container(b)  # as written: the run folders differ
    for group in ("data", "model", "trainer", "callbacks", "metrics", "seed"):
        assert a[group] == b[group], group
    assert f"generator={{root}}/{TRAINS_AS[analysis]}/run/checkpoints/last.ckpt" in NEEDS[analysis]


def test_analysis_keys_are_what_only_analyze_knows(tmp_path):
    paths = [f"paths.log_dir={tmp_path}"]
    only = set(compose_train(paths, "analyze")) - set(compose_train(paths))
    assert only == set(ANALYSIS_KEYS)


def test_analysis_images_follow_the_recipe(tmp_path):
    cfg = compose_train(["experiment=ddgan_latent_analysis_celebahq128", f"paths.log_dir={tmp_path}"], "analyze")
    fixed, scaled = analysis_images(cfg)
    assert fixed == 8 * 8 * (4 + 5)  # top 8 attributes, 8 rows, original/+a/+a cond./-a and five alphas
    # 30,000 samples; 512 originals and a plain and a conditional edit of each per attribute; the rejection
    # cap, with and without the latent pre-filter
    assert scaled == {"sample.n": 30000, "edit.n": 512 * 17, "reject.max_images": 2 * 30000}


ANALYSIS_SETTINGS = ["experiment=latent_analysis_synthfaces", "progress=false", "directions.min_count=5", "edit.top_k=2",
                     "edit.n_show=2", "reject.condition='Left=1,Right=0'", "reject.k=4", "project.attributes=[Left]",
                     "project.methods=[pca]"]


@pytest.fixture
def analysed(tmp_path) -> tuple[Path, Path]:
    """A generator and a classifier checkpoint whose analysis is quick (test_analysis's halves)."""
    return (Path(save_module(HalvesGenerator(), tmp_path / "g.ckpt")),
            Path(save_module(halves_classifier(), tmp_path / "c.ckpt")))


def test_analysis_plan_measures_and_cuts_past_the_budget(analysed, tmp_path):
    """Sizes shrink by one factor past the budget, never below what each task needs: 13 samples can hold 5
    positive and 5 negative training samples (a fifth held out), 2 edit rows, 4 proposals for k=4."""
    cfg = compose_train([*ANALYSIS_SETTINGS, f"paths.log_dir={tmp_path}"], config_name="analyze")
    plan = analysis_plan(cfg, *analysed, budget_h=1e-9, batch=4)
    assert plan["s_per_image"] > 0 and plan["images"] == 2 * 2 * 9 + 4000 + 256 * 5 + 2 * 4000
    assert plan["rehearsed_with"] == {"sample.n": 13, "edit.n": 2, "reject.max_images": 4}
    assert "rehearsed_with" not in analysis_plan(cfg, *analysed, budget_h=1e9)
    with pytest.raises(ValueError, match="classifier=PATH"):
        rehearse([*ANALYSIS_SETTINGS, f"paths.log_dir={tmp_path}"], tmp_path / "r", generator=analysed[0])
    with pytest.raises(ValueError, match="are for analysis recipes"):
        rehearse(["experiment=dcgan_dg1_celeba64", "sample.n=5"], tmp_path / "r")


@pytest.mark.slow
def test_analysis_rehearsal_runs_the_analysis_cut_to_the_budget(analysed, tmp_path, monkeypatch):
    """An analysis recipe on given checkpoints: `genface analyze task=all` writes its report at the cut sizes
    (about 400 images' worth), and the row says all of it."""
    monkeypatch.setenv("GENFACE_TRUSTED_MODULES", "test_analysis")  # the halves nets live in the tests
    monkeypatch.setenv("PYTHONPATH", f"{Path(__file__).parent}:{os.environ.get('PYTHONPATH', '')}")
    settings = [*ANALYSIS_SETTINGS, f"paths.log_dir={tmp_path}"]
    per_image = analysis_plan(compose_train(settings, "analyze"), *analysed, budget_h=1e9, batch=4)["s_per_image"]
    row = rehearse(settings, tmp_path / "r", generator=analysed[0], classifier=analysed[1],
                   sampling_budget_h=400 * per_image * 1.5 / 3600)
    assert row.status == "passed" and row.train_s == 0 and row.analysis_s > 0
    sizes = row.analysis["rehearsed_with"]
    assert 0 < sizes["sample.n"] < 4000 and sizes["edit.n"] < 256
    assert f"analysed sample.n={sizes['sample.n']}" in row.note and "generator: " in row.note
    assert {"analysis/report.md", "analysis/samples/samples.json", "analysis/edit/summary.md"} <= set(row.wrote)
    assert json.loads((tmp_path / "r" / "analysis" / "samples" / "samples.json").read_text())["n"] == sizes["sample.n"]


def test_real_data_lists_every_recipe_on_a_real_dataset(tmp_path):
    from genface.config import CONF_DIR

    found = set()
    for path in (CONF_DIR / "experiment").glob("*.yaml"):
        cfg = compose_train([f"experiment={path.stem}", f"paths.data_dir={tmp_path}", f"paths.log_dir={tmp_path}"])
        if layout_of(cfg):
            found.add(path.stem)
    assert found == set(REAL_DATA)


def test_a_rehearsal_that_would_sample_for_hours_is_measured_not_started(tmp_path, monkeypatch):
    """DD-GAN 256 px measured 16.4 s per image here: FID's 2,112 images take 9.6 h, so the row says so and
    nothing is trained (no stand-in, no run folder)."""
    import genface.rehearse as rehearse_module

    measured = {"s_per_image": 16.4, "images": 2112, "projected_h": 9.64}
    monkeypatch.setattr(rehearse_module, "sampling_plan", lambda cfg, budget_h, device: dict(measured))
    table = tmp_path / "rehearsals.json"
    row = rehearse_module._one("dcgan_synthfaces", ["experiment=dcgan_synthfaces", f"paths.log_dir={tmp_path}"],
                               {"table": str(table)}, tmp_path / "r")
    assert row.status == "not run" and row.sampling == measured
    assert row.note == "sampling 2112 images takes 9.6 h here (16.4 s each, measured), more than max_h=2.5: it needs a GPU"
    assert not (tmp_path / "r" / "run").exists()
    line = next(x for x in table.with_suffix(".md").read_text().splitlines() if "`dcgan_synthfaces`" in x)
    assert line.startswith("| `dcgan_synthfaces` | not run (sampling 2112 images")
    assert line.endswith("a GPU) | - | - | - | - | - | - | - |")  # nothing rendered, run or measured but time
