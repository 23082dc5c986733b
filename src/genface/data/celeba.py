"""CelebA in torchvision's layout, with its official partitions and 40 binary attributes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from genface.data.base import ImageDataModule
from genface.data.datasets import FileImageDataset
from genface.data.ids import background_tag, content_key, make_dataset_id, path_key
from genface.data.labels import missing_names, name_indices
from genface.data.splits import Split

#: The 40 attribute names of list_attr_celeba.txt, in file order.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
_PARTITION_SPLITS: dict[str, Split] = {"0": "train", "1": "val", "2": "test"}


def celeba_layout(root: Path) -> str:
    return (
        f"expected {root}/{IMAGE_DIR}/*.jpg|png, {root}/{ATTR_FILE}, {root}/{PARTITION_FILE} "
        "(torchvision's CelebA layout)"
    )


def read_attribute_names(path: Path) -> list[str]:
    """Attribute names from the header of a CelebA-style attribute file, without reading the rows."""
    with open(path) as f:
        lines = [f.readline() for _ in range(2)]
    _parse_count_line(path, lines[0])
    names = lines[1].split()
    if not names:
        raise ValueError(f"{path}, line 2: expected the attribute names, got an empty line")
    return names


def _parse_count_line(path: Path, line: str) -> int:
    try:
        return int(line.strip())
    except ValueError:
        raise ValueError(
            f"{path}, line 1: expected the number of images (an integer), got {line.strip()!r}"
        ) from None


def read_attribute_file(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse a CelebA-style attribute file -> (names, file names, uint8 0/1 values (N, A)).

    Format (CelebA's list_attr_celeba.txt and CelebAMask-HQ-attribute-anno.txt): line 1 the image count,
    line 2 the attribute names, then ``<file name> <+-1 per attribute>`` per image.
    """
    lines = Path(path).read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line, a line of attribute names and one line per image")
    count = _parse_count_line(path, lines[0])
    names = lines[1].split()
    if not names:
        raise ValueError(f"{path}, line 2: expected the attribute names, got an empty line")
    files: list[str] = []
    values: list[list[str]] = []
    line_numbers: list[int] = []
    for number, line in enumerate(lines[2:], start=3):
        columns = line.split()
        if not columns:
            continue
        if len(columns) != len(names) + 1:
            raise ValueError(
                f"{path}, line {number}: expected {len(names) + 1} columns (file name + {len(names)} attribute "
                f"values), got {len(columns)}"
            )
        files.append(columns[0])
        values.append(columns[1:])
        line_numbers.append(number)
    if count != len(files):
        raise ValueError(f"{path}, line 1: says {count} images but the file lists {len(files)}")
    table = np.array(values, dtype=str).reshape(len(files), len(names))
    positive = table == "1"
    bad = ~(positive | (table == "-1"))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{path}, line {line_numbers[row]}: expected 1 or -1 for {names[col]}, got {table[row, col]!r}"
        )
    return names, files, positive.astype(np.uint8)


def write_attribute_file(path: Path, files: Sequence[str], names: Sequence[str], labels: np.ndarray) -> None:
    """Write a CelebA-style attribute file: the count, the attribute ``names``, then ``<file> -1  1 ...``
    per image (``labels`` +1/-1, one row per file, two columns a value as CelebA's own file)."""
    lines = [str(len(files)), " ".join(names)]
    lines += [f"{file} " + " ".join(f"{v:2d}" for v in row) for file, row in zip(files, labels.tolist())]
    path.write_text("\n".join(lines) + "\n")


def write_partition_file(path: Path, files: Sequence[str], partition: Sequence[int]) -> None:
    """Write ``<file name> <0|1|2>`` lines (train, val, test), as list_eval_partition.txt."""
    path.write_text("".join(f"{file} {int(split)}\n" for file, split in zip(files, partition)))


def write_celeba_lists(
    root: Path, files: Sequence[str], labels: np.ndarray, partition: Sequence[int]
) -> None:
    """Write CelebA's two list files under ``root``: the 40 attributes (``labels`` +1/-1, CelebA's column order)
    and the partition (0, 1, 2: train, val, test) of the image ``files``."""
    write_attribute_file(root / ATTR_FILE, files, CELEBA_ATTRIBUTES, labels)
    write_partition_file(root / PARTITION_FILE, files, partition)


def read_partition_file(path: Path) -> list[tuple[str, Split]]:
    """``<file name> <0|1|2>`` lines (train, val, test) -> [(file name, split)] in file order."""
    out: list[tuple[str, Split]] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        columns = line.split()
        if not columns:
            continue
        if len(columns) != 2 or columns[1] not in _PARTITION_SPLITS:
            raise ValueError(f"{path}, line {number}: expected '<file name> <0|1|2>', got {line.strip()!r}")
        out.append((columns[0], _PARTITION_SPLITS[columns[1]]))
    return out


def reorder_columns(
    path: Path, names: Sequence[str], values: np.ndarray, wanted: Sequence[str]
) -> np.ndarray:
    """Columns of ``values`` (named ``names``) in the order of ``wanted``, which must all be present."""
    lacking = missing_names(names, wanted)
    if lacking:
        raise ValueError(f"{path}, line 2: attribute names {lacking} are missing from the header")
    return values[:, name_indices(names, wanted)]


def select_attributes(available: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """Validate ``data.attributes`` against the file's names; None means all of them."""
    if requested is None:
        return list(available)
    requested = [str(name) for name in requested]
    if not requested:
        raise ValueError("data.attributes is empty: name at least one attribute, or null for all of them")
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(
            f"unknown attribute(s) {unknown} in data.attributes; available: {', '.join(available)}"
        )
    return requested


class CelebADataModule(ImageDataModule):
    """CelebA (torchvision layout): official partitions, centre crop then antialiased resize, attributes.

    Args:
        root: folder with ``img_align_celeba/``, ``list_attr_celeba.txt``, ``list_eval_partition.txt``.
        crop: side of the centred square cut before resizing (178 is the common choice for the aligned
            178x218 images); None resizes the whole image.
        attributes: attribute names items carry as targets, in this order; None for all of the file's.
        **kwargs: the common arguments of :class:`ImageDataModule`.
    """

    def __init__(
        self,
        root: str,
        resolution: int = 64,
        crop: int | None = 178,
        attributes: list[str] | None = None,
        channels: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, **kwargs)
        self.root = Path(root).expanduser()
        self.crop = None if crop is None else int(crop)
        self.label_kind = "attributes"
        self.target_names = self._available_attributes()
        self.class_names = select_attributes(self.target_names, attributes)
        self._columns = np.array(name_indices(self.target_names, self.class_names), dtype=np.int64)
        self._partitions: dict[Split, tuple[list[Path], np.ndarray]] | None = None

    @cached_property
    def dataset_id(self) -> str:
        """Options, path and content (images, attribute and partition files): any change to them changes it."""
        return make_dataset_id(
            "celeba",
            self.resolution,
            self.channels,
            f"crop{self.crop}" if self.crop else "nocrop",
            *background_tag(self.background),
            key=path_key(self.root),
            content=content_key(
                self.root / IMAGE_DIR, False, self.root / ATTR_FILE, self.root / PARTITION_FILE
            ),
        )

    def _available_attributes(self) -> list[str]:
        """The attribute file's header, or CelebA's 40 names while the file does not exist (yet).

        Missing files are reported when data is read, so configs can be built before the data is there.
        """
        path = self.root / ATTR_FILE
        return read_attribute_names(path) if path.is_file() else list(CELEBA_ATTRIBUTES)

    def _default_cache_root(self) -> Path:
        return self.root / ".genface_cache"

    def _select_targets(self, targets: np.ndarray) -> np.ndarray:
        return targets[:, self._columns]

    def _check_layout(self) -> Path:
        layout = celeba_layout(self.root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"CelebA root {self.root} does not exist; {layout}")
        missing = [name for name in (IMAGE_DIR, ATTR_FILE, PARTITION_FILE) if not (self.root / name).exists()]
        if missing:
            raise FileNotFoundError(f"CelebA root {self.root} lacks {', '.join(missing)}; {layout}")
        image_dir = self.root / IMAGE_DIR
        if not image_dir.is_dir():
            raise FileNotFoundError(f"{image_dir} is not a folder; {layout}")
        return image_dir

    def _read_partitions(self) -> dict[Split, tuple[list[Path], np.ndarray]]:
        """Join partition and attribute files (each read once) -> per split (image paths, all targets)."""
        if self._partitions is None:
            image_dir = self._check_layout()
            attr_path, partition_path = self.root / ATTR_FILE, self.root / PARTITION_FILE
            names, files, values = read_attribute_file(attr_path)
            values = reorder_columns(attr_path, names, values, self.target_names)
            row_of = {name: row for row, name in enumerate(files)}
            partition = read_partition_file(partition_path)
            present = {entry.name for entry in os.scandir(image_dir)}
            if not present:
                raise FileNotFoundError(f"{image_dir} is empty; {celeba_layout(self.root)}")
            missing = [name for name, _ in partition if name not in present]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} images listed in {partition_path} are missing from {image_dir} "
                    f"(first: {missing[:3]})"
                )
            unlabelled = [name for name, _ in partition if name not in row_of]
            if unlabelled:
                raise ValueError(
                    f"{len(unlabelled)} images listed in {partition_path} have no line in {attr_path} "
                    f"(first: {unlabelled[:3]})"
                )
            self._partitions = {}
            for split in ("train", "val", "test"):
                names_in_split = [name for name, s in partition if s == split]
                rows = np.array([row_of[name] for name in names_in_split], dtype=np.int64)
                targets = values[rows]
                self._partitions[split] = ([image_dir / name for name in names_in_split], targets)
        return self._partitions

    def _source_split(self, split: Split) -> FileImageDataset:
        paths, targets = self._read_partitions()[split]
        return FileImageDataset(paths, targets, self.resolution, self.channels, self.crop, self.background)
