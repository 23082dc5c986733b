"""`genface standin`: each layout, written small, read back through the REAL DataModule and shipped config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from genface.data.celeba import CELEBA_ATTRIBUTES, read_attribute_file
from genface.data.layouts import (
    CELEBA_SPLITS,
    FACADE_PALETTE,
    FACADES_SPLITS,
    FILLED_RATES,
    LAYOUTS,
    label_map,
    split_counts,
    standin_labels,
    write_standin,
)
from genface.data.synthfaces import ATTRIBUTES, face_rng, render_face, sample_attributes
from genface.launch import positional_task


def write(layout: str, out: Path, n: int, **kwargs) -> Path:
    return write_standin(layout, out, n=n, workers=kwargs.pop("workers", 1), progress=False, **kwargs)


def face(index: int, size: int, seed: int = 0) -> np.ndarray:
    rng = face_rng(seed, index)
    return render_face(sample_attributes(rng), rng, size)


def first_batch(loader) -> tuple:
    return next(iter(loader))


# ------------------------------------------------------------------------------------------- layouts
def test_celeba_through_celeba_datamodule(tmp_path, compose_train):
    root = write("celeba", tmp_path / "celeba", n=40)
    assert Image.open(root / "img_align_celeba" / "000001.jpg").size == (178, 218)
    dm = instantiate(
        compose_train("data=celeba", f"data.root={root}", "data.resolution=32", "data.num_workers=0").data
    )
    dm.setup()
    counts = [32, 4, 4]  # CelebA's 80.34 / 9.81 / 9.85 %
    assert [len(dm.split_dataset(s)) for s in ("train", "val", "test")] == counts
    assert dm.class_names == list(CELEBA_ATTRIBUTES)
    partition = [line.split() for line in (root / "list_eval_partition.txt").read_text().splitlines()]
    assert [int(p) for _, p in partition] == [0] * counts[0] + [1] * counts[1] + [2] * counts[2]
    images, targets = first_batch(dm.val_dataloader())
    assert images.shape == (counts[1], 3, 32, 32) and -1 <= images.min() < images.max() <= 1
    assert targets.shape == (counts[1], 40) and set(targets.unique().tolist()) <= {0.0, 1.0}
    # drawn columns are the renderer's truth; the centred 178 crop the loader takes is the rendered face
    names, files, values = read_attribute_file(root / "list_attr_celeba.txt")
    rng = face_rng(0, 0)
    truth = sample_attributes(rng)
    assert names == list(CELEBA_ATTRIBUTES) and files[0] == "000001.jpg"
    assert all(values[0, names.index(a)] == truth[a] for a in ATTRIBUTES)
    crop = np.asarray(Image.open(root / "img_align_celeba" / "000001.jpg"))[20:198].astype(float)
    assert np.abs(crop - render_face(truth, rng, 178)).mean() < 3


def test_celeba_splits_and_filled_rates():
    assert split_counts(sum(CELEBA_SPLITS), CELEBA_SPLITS) == list(CELEBA_SPLITS)
    assert split_counts(3, CELEBA_SPLITS) == [1, 1, 1]
    assert set(FILLED_RATES) == set(CELEBA_ATTRIBUTES) - set(ATTRIBUTES)
    n = 3000
    rows = []
    for i in range(n):
        attrs = sample_attributes(face_rng(0, i))
        rows.append(standin_labels(attrs, 0, i))
    labels = np.array(rows) == 1
    column = {name: labels[:, CELEBA_ATTRIBUTES.index(name)] for name in CELEBA_ATTRIBUTES}
    for name, rate in FILLED_RATES.items():
        if name != "Straight_Hair":  # also held off wavy and bald heads
            assert abs(column[name].mean() - rate) < 0.03, name
    assert not (column["Straight_Hair"] & (column["Wavy_Hair"] | column["Bald"])).any()
    assert column["Straight_Hair"].any()


def test_celebahq_through_celebahq_datamodule(tmp_path, compose_train):
    root = write("celebahq", tmp_path / "hq", n=20, size=32)
    assert Image.open(root / "0.jpg").size == (32, 32)
    cfg = compose_train(
        "data=celebahq", f"data.root={root}", "data.attr_file=CelebAMask-HQ-attribute-anno.txt",
        "data.resolution=16", "data.num_workers=0",
    )  # fmt: skip
    dm = instantiate(cfg.data)
    dm.setup()
    sizes = [len(dm.split_dataset(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 20 and min(sizes) >= 1
    assert dm.class_names == list(CELEBA_ATTRIBUTES)
    images, targets = first_batch(dm.test_dataloader())
    assert images.shape[1:] == (3, 16, 16) and -1 <= images.min() < images.max() <= 1
    assert targets.shape[1] == 40
    names, files, _ = read_attribute_file(root / "CelebAMask-HQ-attribute-anno.txt")
    assert files == [f"{i}.jpg" for i in range(20)] and names == list(CELEBA_ATTRIBUTES)


def test_facades_through_paired_folder_datamodule(tmp_path, compose_train):
    assert split_counts(sum(FACADES_SPLITS), FACADES_SPLITS) == list(FACADES_SPLITS)
    root = write("facades", tmp_path / "facades", n=8, size=32)
    counts = split_counts(8, FACADES_SPLITS)
    for split, count in zip(("train", "val", "test"), counts):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(
            f"{k}.jpg" for k in range(1, count + 1)
        )
    assert Image.open(root / "train" / "1.jpg").size == (64, 32)
    cfg = compose_train("data=facades", f"data.root={root}", "data.resolution=32", "data.load_size=36")
    dm = instantiate(cfg.data)
    assert [len(dm.split_dataset(s)) for s in ("train", "val", "test")] == counts
    source, target = dm.split_dataset("train", augment=True)[0]
    assert source.shape == target.shape == (3, 32, 32)
    # BtoA: the source is the label map (right half), the target the photo (left half)
    source, target = (((x + 1) * 127.5).permute(1, 2, 0).numpy() for x in dm.split_dataset("val")[0])
    photo = face(counts[0], 32)  # the first val pair is face number counts[0]
    assert np.abs(target - photo).mean() < 5
    assert np.abs(source - label_map(photo)).mean() < np.abs(source - photo).mean() / 2


def test_label_map_is_flat_palette_colours():
    colours = np.unique(label_map(face(1, 64)).reshape(-1, 3), axis=0)
    palette = {tuple(c) for c in FACADE_PALETTE.tolist()}
    assert 2 <= len(colours) <= len(palette) and {tuple(c) for c in colours.tolist()} <= palette


def test_mnist_through_mnist_datamodule(tmp_path, compose_train):
    root = write("mnist", tmp_path / "mnist", n=70)
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        f"{p}-{k}" for p in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )
    dm = instantiate(compose_train("data=mnist", f"data.root={root}", "data.num_workers=0").data)
    dm.setup()
    assert [len(dm.split_dataset(s)) for s in ("train", "val", "test")] == [50, 10, 10]
    images, labels = first_batch(dm.val_dataloader())
    assert images.shape == (10, 1, 32, 32) and images.min() == -1 and images.max() > 0.9
    assert labels.dtype == torch.long and 0 <= labels.min() <= labels.max() <= 9


def test_imagefolder_through_imagefolder_datamodule(tmp_path, compose_train):
    root = write("imagefolder", tmp_path / "folder", n=30, size=32, attribute="Male")
    cfg = compose_train(
        "data=imagefolder",
        f"data.root={root}",
        "data.labels=subfolders",
        "data.resolution=32",
        "data.num_workers=0",
    )
    dm = instantiate(cfg.data)
    assert dm.class_names == ["Male", "Not_Male"]
    dm.setup()
    assert sum(len(dm.split_dataset(s)) for s in ("train", "val", "test")) == 30
    male = {p.name for p in (root / "Male").iterdir()}
    assert male == {f"{i + 1:06d}.png" for i in range(30) if sample_attributes(face_rng(0, i))["Male"]}
    images, labels = first_batch(dm.val_dataloader())
    assert images.shape[1:] == (3, 32, 32) and set(labels.tolist()) <= {0, 1}


# ----------------------------------------------------------------------------------- the front door
def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = write("celebahq", tmp_path / "a", n=6, size=32, workers=1)
    b = write("celebahq", tmp_path / "b", n=6, size=32, workers=2)
    c = write("celebahq", tmp_path / "c", n=6, size=32, seed=1)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "0.jpg").read_bytes() != (c / "0.jpg").read_bytes()


def test_non_empty_out_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        write("mnist", out, n=14)
    assert (out / "mine.txt").read_text() == "keep"
    write("mnist", out, n=14, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "MNIST" / "raw").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial or old folder left


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr("genface.data.synthfaces.writer.render_face", broken)
    with pytest.raises(RuntimeError, match="renderer broke"):
        write("celebahq", tmp_path / "hq", n=4, size=16)
    assert list(tmp_path.iterdir()) == []


def test_errors_name_the_key_and_the_allowed_values(tmp_path):
    with pytest.raises(ValueError, match="layout='celebb'.*" + ", ".join(LAYOUTS)):
        write_standin("celebb", tmp_path / "x")
    with pytest.raises(ValueError, match="size does not apply to layout=celeba"):
        write_standin("celeba", tmp_path / "x", size=64)
    with pytest.raises(ValueError, match="attribute='Attractive' is not drawn.*Smiling"):
        write("imagefolder", tmp_path / "x", n=4, attribute="Attractive")
    with pytest.raises(ValueError, match="n=2 is too few for 3 splits"):
        write("celeba", tmp_path / "x", n=2)
    assert list(tmp_path.iterdir()) == []


def test_layout_word_becomes_an_override():
    # what genface.standin.main does to argv
    assert positional_task(["genface", "celeba", "out=d"], "layout") == ["genface", "layout=celeba", "out=d"]
    assert positional_task(["genface", "out=d", "layout=mnist"], "layout") == ["genface", "out=d", "layout=mnist"]
    assert positional_task(["genface", "--help"], "layout") == ["genface", "--help"]


def test_cli_writes_the_layout_and_nothing_else(tmp_path):
    env = {**os.environ, "GENFACE_ROOT": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "genface", "standin", "celebahq", "out=hq", "n=8", "size=64"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hq"]  # no outputs/, logs/ or .hydra/
    assert sorted(p.name for p in (tmp_path / "hq").glob("*.jpg")) == sorted(f"{i}.jpg" for i in range(8))
    assert "data.root=" in result.stdout
