"""The shared image-file lister (every reader of image folders) and the label-index helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genface.data.images import IMAGE_EXTENSIONS, list_images
from genface.data.labels import class_index, missing_names, name_indices
from genface.metrics.scoring import ImageFolderDataset


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (200, 10, 10)).save(path, format="PNG")


def _relative(root: Path, paths: list[Path]) -> list[str]:
    return [str(p.relative_to(root)) for p in paths]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    _touch(root, "10.png", "2.JPG", "b.Jpeg", "a.bmp", "c.webp", "sub/1.png", "sub/deeper/3.jpg", "Z.png")
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "x.gif").write_bytes(b"GIF89a")  # not in the extension list
    _touch(root, ".hidden.png", ".genface_cache/0.png", "sub/.cache/4.png")
    return root


def test_one_extension_list_any_case(folder: Path) -> None:
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    found = _relative(folder, list_images(folder, recursive=False))
    assert sorted(found) == sorted(["10.png", "2.JPG", "b.Jpeg", "a.bmp", "c.webp", "Z.png"])


def test_natural_order_and_recursion(folder: Path) -> None:
    assert _relative(folder, list_images(folder, recursive=False)) == [
        "2.JPG", "10.png", "a.bmp", "b.Jpeg", "c.webp", "Z.png"
    ]  # fmt: skip
    recursive = _relative(folder, list_images(folder, recursive=True))
    assert recursive == [
        "2.JPG",
        "10.png",
        "a.bmp",
        "b.Jpeg",
        "c.webp",
        "sub/1.png",
        "sub/deeper/3.jpg",
        "Z.png",
    ]
    assert not any(part.startswith(".") for name in recursive for part in name.split("/"))


def test_path_order_is_sorted_paths(folder: Path) -> None:
    paths = list_images(folder, recursive=True, order="path")
    assert paths == sorted(paths)
    assert _relative(folder, paths)[:3] == ["10.png", "2.JPG", "Z.png"]  # as sorted(paths): case, no numbers


def test_symlinked_folders_are_not_entered(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _touch(elsewhere, "9.png")
    try:
        os.symlink(elsewhere, folder / "link", target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    assert "link/9.png" not in _relative(folder, list_images(folder, recursive=True))


def test_fid_folders_use_the_same_lister(folder: Path) -> None:
    dataset = ImageFolderDataset(folder)
    assert dataset.files == list_images(folder, recursive=True, order="path")
    assert len(dataset) == 8 and dataset[0][0].shape == (3, 4, 4)
    empty = folder.parent / "empty"
    _touch(empty, ".only_hidden.png")
    with pytest.raises(FileNotFoundError, match=r"no \.png/\.jpg/\.jpeg/\.bmp/\.webp images under"):
        ImageFolderDataset(empty)


def test_class_index_from_classes_and_one_binary_attribute() -> None:
    assert class_index(torch.tensor([0, 2, 1]), 3).tolist() == [0, 2, 1]
    assert class_index(torch.tensor([[1], [2]]), 3).tolist() == [1, 2]  # any shape of N indices
    binary = class_index(torch.tensor([[1.0], [0.0], [1.0]]), 2)
    assert binary.dtype == torch.long and binary.tolist() == [1, 0, 1]
    assert class_index(torch.zeros(0, dtype=torch.long), 3).numel() == 0


def test_class_index_refuses_what_it_cannot_convert() -> None:
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\), got \[-1, 2\]"):
        class_index(torch.tensor([-1, 2]), 3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        class_index(torch.tensor([0, 2]), 2)
    with pytest.raises(ValueError, match=r"DDPM's UNet: labels must be class indices.*float \(2, 4\)"):
        class_index(torch.zeros(2, 4), 3, context="DDPM's UNet: ")
    with pytest.raises(ValueError, match="one binary attribute"):
        class_index(torch.zeros(2, 1), 3)  # a binary attribute is two classes, not three


def test_name_indices() -> None:
    names = ["Male", "Smiling", "Young", "Smiling"]
    assert name_indices(names, ["Young", "Male", "Smiling"]) == [2, 0, 1]  # first of repeated names
    assert name_indices(names, []) == []
    assert np.array(name_indices(names, ["Smiling"] * 3)).tolist() == [1, 1, 1]
    assert missing_names(names, ["Bald", "Male", "Blurry"]) == ["Bald", "Blurry"]
    with pytest.raises(ValueError, match=r"\['Bald'\] are not among the names"):
        name_indices(names, ["Male", "Bald"])
