"""`genface rehearse`: what it changes in a recipe (devices and length only), how big a stand-in it makes,
and, in the slow tests, one dress rehearsal per real-data recipe on the 2-core CPU machine."""

from __future__ import annotations

import json

import pytest

from genface.config import compose_train
from genface.rehearse import (
    NEEDS,
    REAL_DATA,
    SMALL_MACHINE_BATCH,
    Rehearsal,
    append_row,
    layout_of,
    needed_images,
    rehearsal_overrides,
    rehearse,
    sampled_images,
    sampling_plan,
    shortened_steps,
    write_markdown,
)


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
    assert sampling_plan(dcgan, budget_h=1e-9) == {}  # one network evaluation per image: nothing to shorten


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(REAL_DATA))
def test_dress_rehearsal(experiment, tmp_path, tmp_path_factory):
    """The recipe unchanged on its stand-in (full model, configured N, callbacks, checkpoints, DDP on CPU),
    two epochs of two batches and a resume. Latent diffusion rehearses on a rehearsed VAE-GAN's checkpoint."""
    overrides = [f"experiment={experiment}", f"paths.data_dir={tmp_path_factory.getbasetemp()}/data"]
    if experiment in NEEDS:  # latent diffusion: on the first stage of a VAE-GAN rehearsal
        first = rehearse(["experiment=vaegan_celeba64", *overrides[1:]], tmp_path / "vaegan_celeba64")
        assert first.status == "passed"
        overrides.append(NEEDS[experiment].format(root=tmp_path))
    row = rehearse(overrides, tmp_path / "rehearsal", batch=SMALL_MACHINE_BATCH.get(experiment))
    assert row.status == "passed"
    assert "checkpoints/last.ckpt" in row.wrote


def test_real_data_lists_every_recipe_on_a_real_dataset(tmp_path):
    from genface.config import CONF_DIR

    found = set()
    for path in (CONF_DIR / "experiment").glob("*.yaml"):
        cfg = compose_train([f"experiment={path.stem}", f"paths.data_dir={tmp_path}", f"paths.log_dir={tmp_path}"])
        if layout_of(cfg):
            found.add(path.stem)
    assert found == set(REAL_DATA)
