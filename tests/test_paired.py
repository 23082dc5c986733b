"""Paired data: derived sources, derived-task and AB-folder DataModules, their errors and configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image

from genface.data import CorruptImageError, DigitsDataModule
from genface.data.paired import (
    PAIRED_TASKS,
    DerivedPairsDataModule,
    PairedFolderDataModule,
    edge_map,
    low_resolution,
    luminance,
    masked,
)


def square_image(size: int = 16) -> torch.Tensor:
    """Black background, a white 8x8 square at (4..11, 4..11), as RGB in [-1, 1]."""
    x = -torch.ones(3, size, size)
    x[:, 4:12, 4:12] = 1
    return x


# ----- derived sources ---------------------------------------------------------------------------------
def test_edge_map_outlines_steps_and_nothing_else():
    edges = edge_map(square_image())
    assert edges.shape == (1, 16, 16) and set(edges.unique().tolist()) == {-1.0, 1.0}
    drawn = edges[0] < 0
    # the Sobel response of a step covers the pixel on each side of it
    ring = torch.zeros(16, 16, dtype=torch.bool)
    ring[3:13, 3:13] = True
    ring[5:11, 5:11] = False
    assert torch.equal(drawn, ring)
    # a gentle ramp (a background gradient: gradient 2 x 1/15 per pixel < 0.2) stays white
    ramp = torch.linspace(-0.5, 0.5, 16).repeat(3, 16, 1)
    assert edge_map(ramp).min() == 1


def test_luminance_weights_rgb_and_keeps_grey():
    rgb = torch.stack([torch.full((2, 2), v) for v in (1.0, 0.0, -1.0)])
    assert torch.allclose(luminance(rgb), torch.full((1, 2, 2), 0.299 - 0.114))
    grey = torch.rand(1, 4, 4)
    assert luminance(grey) is grey


def test_masked_fills_one_square_hole_and_marks_it():
    image = torch.rand(3, 32, 32) * 2 - 1
    a = masked(image, torch.Generator().manual_seed(3))
    assert torch.equal(a, masked(image, torch.Generator().manual_seed(3)))
    hole = a[3] > 0
    rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
    side = len(rows)
    assert 8 <= side <= 16 and len(cols) == side and int(hole.sum()) == side * side  # one square
    assert (a[:3, hole] == 0).all() and torch.equal(a[:3, ~hole], image[:, ~hole])
    assert set(a[3].unique().tolist()) == {-1.0, 1.0}


def test_low_resolution_keeps_the_size_and_only_the_coarse_content():
    image = torch.rand(3, 16, 16) * 2 - 1
    low = low_resolution(image, 4)
    assert low.shape == image.shape and low.abs().max() <= 1
    # box-averaging the result again gives (nearly) the 4x4 image it came from
    assert torch.allclose(F.avg_pool2d(low[None], 4), F.avg_pool2d(image[None], 4), atol=0.15)
    assert torch.allclose(low_resolution(torch.full((1, 8, 8), 0.5)), torch.full((1, 8, 8), 0.5))


# ----- derived-task DataModule -------------------------------------------------------------------------
def digits(channels: int = 3, resolution: int = 16) -> DigitsDataModule:
    return DigitsDataModule(resolution=resolution, channels=channels, batch_size=8)


@pytest.mark.parametrize(("task", "source_channels"), [("edges2face", 1), ("gray2color", 1), ("masked2face", 4),
                                                       ("lowres2face", 3)])
def test_derived_tasks_yield_source_target_batches(task, source_channels):
    dm = DerivedPairsDataModule(digits(), task, resolution=16, channels=3, source_channels=source_channels,
                                batch_size=8)
    source, target = next(iter(dm.train_dataloader()))
    assert source.shape == (8, source_channels, 16, 16) and target.shape == (8, 3, 16, 16)
    assert source.abs().max() <= 1 and target.abs().max() <= 1
    assert dm.dataset_id.endswith(task) and dm.dataset_id.startswith("digits-16px")
    # the target is the base image itself
    assert torch.equal(dm.split_dataset("val")[5][1], digits().split_dataset("val")[5][0])


def test_validation_holes_are_fixed_and_training_holes_random():
    dm = DerivedPairsDataModule(digits(), "masked2face")
    val, train = dm.split_dataset("val"), dm.split_dataset("train", augment=True)
    assert torch.equal(val[0][0], val[0][0])
    torch.manual_seed(0)
    assert not all(torch.equal(train[0][0], train[0][0]) for _ in range(3))


def test_derived_task_errors_name_the_key():
    with pytest.raises(ValueError, match=r"data.task='sketch'.*edges2face"):
        DerivedPairsDataModule(digits(), "sketch")
    with pytest.raises(ValueError, match="gray2color needs colour targets: data.channels=3"):
        DerivedPairsDataModule(digits(channels=1), "gray2color")
    with pytest.raises(ValueError, match="data.scale=3 must be >= 2 and divide data.resolution=16"):
        DerivedPairsDataModule(digits(), "lowres2face", scale=3)
    with pytest.raises(ValueError, match="data.resolution=32 but the base DataModule has resolution 16"):
        DerivedPairsDataModule(digits(), "edges2face", resolution=32)
    with pytest.raises(ValueError, match="masked2face on 3-channel images has 4-channel sources"):
        DerivedPairsDataModule(digits(), "masked2face", source_channels=3)


# ----- AB folders --------------------------------------------------------------------------------------
def write_ab(root, split: str, n: int, h: int = 20) -> None:
    """A = horizontal ramp in red, B = the same ramp in blue: aligned pairs whose halves are told apart."""
    (root / split).mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, h).astype(np.uint8)[None, :].repeat(h, 0)
    zeros = np.zeros_like(ramp)
    a, b = np.stack([ramp, zeros, zeros], -1), np.stack([zeros, zeros, ramp], -1)
    for i in range(n):
        Image.fromarray(np.concatenate([a, b], 1)).save(root / split / f"{i}.png")


@pytest.mark.parametrize(("direction", "source_colour"), [("AtoB", 0), ("BtoA", 2)])
def test_ab_folder_splits_halves_by_direction(tmp_path, direction, source_colour):
    write_ab(tmp_path, "train", 4)
    write_ab(tmp_path, "val", 2)
    dm = PairedFolderDataModule(str(tmp_path), resolution=16, direction=direction, batch_size=2)
    source, target = dm.split_dataset("val")[0]
    assert source.shape == target.shape == (3, 16, 16)
    assert source[source_colour].max() > 0.9 and target[2 - source_colour].max() > 0.9
    assert source[2 - source_colour].max() == -1
    assert next(iter(dm.val_dataloader()))[0].shape == (2, 3, 16, 16)


def test_ab_jitter_crops_and_flips_both_halves_alike(tmp_path):
    write_ab(tmp_path, "train", 2)
    dm = PairedFolderDataModule(str(tmp_path), resolution=16, load_size=20, hflip=True, batch_size=1)
    train = dm.split_dataset("train", augment=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        source, target = train[0]
        assert source.shape == (3, 16, 16)
        assert torch.equal(source[0], target[2])  # the same crop and flip on both halves
        seen.add(bool(source[0, 0, 0] > source[0, 0, -1]))  # ramp reversed = flipped
    assert seen == {True, False}


def test_ab_folder_errors_name_the_path_and_layout(tmp_path):
    dm = PairedFolderDataModule(str(tmp_path / "facades"))
    with pytest.raises(FileNotFoundError, match=r"facades/train does not exist; expected .*side by side"):
        dm.split_dataset("train")
    (tmp_path / "facades" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="facades/val holds no images"):
        dm.split_dataset("val")
    (tmp_path / "facades" / "val" / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CorruptImageError, match="1.jpg"):
        PairedFolderDataModule(str(tmp_path / "facades")).split_dataset("val")[0]
    with pytest.raises(ValueError, match="data.load_size=200 must be >= data.resolution=256"):
        PairedFolderDataModule(str(tmp_path), load_size=200)


# ----- configs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["paired", "paired_gray", "paired_masked", "paired_lowres"])
def test_paired_options_state_their_source_channels(compose_train, option):
    cfg = compose_train(f"data={option}")
    dm = instantiate(cfg.data)
    assert dm.task in PAIRED_TASKS and dm.source_channels == cfg.data.source_channels
    assert dm.base.root.name == "synthfaces_n10000_r64_s0"  # the folder data=synthfaces renders into


def test_facades_config_is_the_reference_setup(compose_train):
    cfg = compose_train("data=facades")
    dm = instantiate(cfg.data)
    assert (dm.resolution, dm.load_size, dm.direction, dm.batch_size) == (256, 286, "BtoA", 1)
