"""`genface sample` loses nothing: a non-empty folder is refused, overwrite replaces only its own files, a
killed run leaves a manifest that says how far it got and resume finishes it exactly, images land atomically."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import compose_cfg
from genface.analysis.sampling import MANIFEST, check_complete, load_samples
from genface.sample import sample
from test_analysis import HalvesGenerator, save_module


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_module(HalvesGenerator(), tmp_path_factory.mktemp("ckpt") / "g.ckpt")


def run(tmp_path, ckpt, out, *overrides):
    cfg = compose_cfg(
        "sample",
        [f"ckpt={ckpt}", "n=10", "batch_size=4", f"out={out}", "device=cpu", "progress=false", *overrides],
        tmp_path,
    )
    return sample(cfg)


def numbered_images(out) -> list[str]:
    return sorted(p.name for p in (out / "images").glob("*.png") if p.stem.isdigit())


def die_on_call(monkeypatch, call: int, error: BaseException) -> None:
    """Make the generator fail on its `call`-th batch, as a kill at that point would."""
    calls = []
    original = HalvesGenerator._generate

    def generate(self, latents, labels):
        calls.append(1)
        if len(calls) == call:
            raise error
        return original(self, latents, labels)

    monkeypatch.setattr(HalvesGenerator, "_generate", generate)


def test_non_empty_folder_is_refused_and_left_as_it_was(tmp_path, ckpt):
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    user_files = {
        "labels.npy": b"my labels", "features.npy": b"my features", MANIFEST: b'{"mine": 1}',
        "grid.png": b"my grid", "images/000000.png": b"my picture",
    }  # fmt: skip
    for name, data in user_files.items():
        (out / name).write_bytes(data)
    with pytest.raises(FileExistsError, match=rf"{out}.*overwrite=true.*resume=true"):
        run(tmp_path, ckpt, out)
    assert {name: (out / name).read_bytes() for name in user_files} == user_files


def test_overwrite_replaces_its_own_files_and_nothing_else(tmp_path, ckpt):
    out = tmp_path / "samples"
    run(tmp_path, ckpt, out, "n=10")
    (out / "notes.txt").write_text("keep me")
    (out / "images" / "cat.png").write_bytes(b"keep me too")
    (out / "images" / "000011.png").write_bytes(b"")  # a stale, truncated image of some earlier run
    meta = run(tmp_path, ckpt, out, "n=3", "seed=1", "overwrite=true")
    assert numbered_images(out) == ["000000.png", "000001.png", "000002.png"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "images" / "cat.png").read_bytes() == b"keep me too"
    assert meta["n"] == meta["complete"] == 3 and meta["seed"] == 1
    assert load_samples(out).latents.shape == (3, 8)


def test_killed_run_says_how_far_it_got_and_resume_finishes_it_exactly(tmp_path, ckpt, monkeypatch):
    reference = tmp_path / "reference"
    run(tmp_path, ckpt, reference, "seed=3")
    out = tmp_path / "killed"
    die_on_call(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, ckpt, out, "seed=3")
    monkeypatch.undo()
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["complete"], manifest["finished"], manifest["n"]) == (8, False, 10)
    assert len(numbered_images(out)) == 8
    with pytest.raises(ValueError, match=r"incomplete: 8 of 10"):
        load_samples(out)
    with pytest.raises(ValueError, match=r"incomplete: 8 of 10.*resume=true"):
        check_complete(out / "images")  # what `genface evaluate fake=.../images` checks

    with pytest.raises(ValueError, match=r"cannot resume .*killed: seed differs"):
        run(tmp_path, ckpt, out, "seed=4", "resume=true")
    with pytest.raises(ValueError, match=r"cannot resume .*: n differs"):
        run(tmp_path, ckpt, out, "seed=3", "n=11", "resume=true")
    other = tmp_path / "other.ckpt"
    shutil.copy(ckpt, other)
    with pytest.raises(ValueError, match=r"cannot resume .*: checkpoint differs"):
        run(tmp_path, other, out, "seed=3", "resume=true")
    with pytest.raises(FileNotFoundError, match=r"holds no samples\.json"):
        run(tmp_path, ckpt, tmp_path / "empty", "seed=3", "resume=true")

    meta = run(tmp_path, ckpt, out, "seed=3", "resume=true")
    assert meta["complete"] == 10 and numbered_images(out) == numbered_images(reference)
    done, expected = load_samples(out), load_samples(reference)
    np.testing.assert_array_equal(done.latents, expected.latents)
    for name in numbered_images(out) + ["../grid.png"]:
        with Image.open(out / "images" / name) as a, Image.open(reference / "images" / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), name


def test_a_run_killed_while_finishing_is_resumed(tmp_path, ckpt, monkeypatch):
    out = tmp_path / "samples"
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("genface.analysis.sampling.save_grid", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, ckpt, out)
    monkeypatch.undo()
    assert json.loads((out / MANIFEST).read_text())["finished"] is False  # all images, but no grid yet
    with pytest.raises(ValueError, match="incomplete"):
        load_samples(out)
    meta = run(tmp_path, ckpt, out, "resume=true")
    assert meta["finished"] and (out / "grid.png").is_file() and not list(out.glob("*.partial"))
    assert run(tmp_path, ckpt, out, "resume=true") == meta  # a finished run is left as it is


def test_images_are_written_atomically(tmp_path, ckpt, monkeypatch):
    out = tmp_path / "samples"
    original = Image.Image.save
    saved = []

    def save(self, fp, *args, **kwargs):  # the 6th image dies half-written (disk full, kill)
        saved.append(fp)
        if len(saved) == 6:
            with open(fp, "wb") as f:
                f.write(b"\x89PNG\r\n\x1a\n half")
            raise OSError("No space left on device")
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(OSError, match="No space left"):
        run(tmp_path, ckpt, out)
    monkeypatch.undo()
    assert json.loads((out / MANIFEST).read_text())["complete"] == 4
    assert numbered_images(out) == [f"{i:06d}.png" for i in range(5)]  # the 6th never appeared
    for name in numbered_images(out):
        with Image.open(out / "images" / name) as img:
            img.load()
    assert run(tmp_path, ckpt, out, "resume=true")["complete"] == 10


def test_sample_reports_its_speed(tmp_path, ckpt, caplog):
    with caplog.at_level(logging.INFO, logger="genface.sample"):
        meta = run(tmp_path, ckpt, tmp_path / "samples")
    assert meta["images_per_s"] > 0 and meta["seconds_per_image"] == pytest.approx(1 / meta["images_per_s"])
    assert json.loads((tmp_path / "samples" / MANIFEST).read_text())["images_per_s"] == meta["images_per_s"]
    assert any("images/s" in r.getMessage() and "s per image" in r.getMessage() for r in caplog.records)


def test_overwrite_and_resume_exclude_each_other(tmp_path, ckpt):
    with pytest.raises(ValueError, match="exclude each other"):
        run(tmp_path, ckpt, tmp_path / "samples", "overwrite=true", "resume=true")
