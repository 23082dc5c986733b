"""Image files: finding them in a folder, and decoding them to uint8 (H, W, C) pixels.

Every genface reader of image folders lists files with :func:`list_images` (one extension list, hidden files
and folders skipped) and decodes them with :func:`flatten_image` / :func:`to_pixels`, so training data,
prepared arrays and FID folders see the same files and the same pixels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

#: ``int``: centred square of that many pixels; ``"center"``: the largest centred square; ``None``: no crop.
Crop = int | Literal["center"] | None
#: The files genface reads as images (suffixes compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: ``data.background``: the colour transparent pixels are composited on. White, as viewers show them and as
#: cut-out face sets are usually delivered; CelebA-style JPEGs have no alpha, so their pixels do not change.
DEFAULT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)


class CorruptImageError(OSError):
    """An image file that cannot be decoded; the message names the file."""


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode ``path``; PIL decodes lazily, so errors only show up at ``load()``."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CorruptImageError(f"cannot decode image file {path}: {err}") from err
    try:
        img.load()
    except Exception as err:
        img.close()
        raise CorruptImageError(f"cannot decode image file {path}: {err}") from err
    return img


def _crop(img: Image.Image, crop: Crop, path: str | Path) -> Image.Image:
    if crop is None:
        return img
    w, h = img.size
    side = min(w, h) if crop == "center" else int(crop)
    if side > min(w, h):
        raise ValueError(f"crop of {side} px is larger than image {path} ({w}x{h}); lower data.crop")
    # Same rounding as torchvision's CenterCrop.
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    return img.crop((left, top, left + side, top + side))


def check_background(background: Sequence[int]) -> tuple[int, int, int]:
    """Validate ``data.background``: three 0-255 levels (R, G, B)."""
    levels = tuple(int(v) for v in background)
    if len(levels) != 3 or not all(0 <= v <= 255 for v in levels):
        raise ValueError(f"data.background must be three levels 0-255 (R, G, B), got {list(background)}")
    return levels  # type: ignore[return-value]


def flatten_image(img: Image.Image, background: Sequence[int] = DEFAULT_BACKGROUND) -> Image.Image:
    """8-bit pixels without alpha: 16-bit grey scaled (65535 -> 255), transparency composited on ``background``.

    PIL's ``convert("L"/"RGB")`` clips 16-bit levels (a 16-bit grey PNG turns almost white) and drops alpha
    (showing whatever colour transparent pixels happen to store).
    """
    if img.mode.startswith("I;16"):
        levels = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.rint(levels).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        backdrop = Image.new("RGBA", img.size, (*background, 255))
        img = Image.alpha_composite(backdrop, img.convert("RGBA")).convert("RGB")
    return img


def to_pixels(
    img: Image.Image,
    resolution: int,
    channels: int,
    resample: Image.Resampling,
    background: Sequence[int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Flatten (:func:`flatten_image`), convert to L (1 channel) or RGB (grey repeated) and resize to a
    square; returns uint8 (H, W, C)."""
    img = flatten_image(img, background).convert("L" if channels == 1 else "RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), resample)
    pixels = np.asarray(img)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def decode_image(
    path: str | Path,
    resolution: int,
    channels: int,
    crop: Crop = None,
    background: Sequence[int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Decode an image file, crop, resize (bicubic, antialiased when shrinking) -> uint8 (H, W, C)."""
    with open_image(path) as img:
        return to_pixels(_crop(img, crop, path), resolution, channels, Image.Resampling.BICUBIC, background)


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders ``2.jpg`` before ``10.jpg``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def image_entries(directory: Path, recursive: bool) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """``(path relative to directory, entry)`` of every image file, in no particular order.

    One ``os.scandir`` per folder; hidden files and folders (such as ``.genface_cache``) are skipped and
    symlinked folders are not entered, as ``Path.rglob`` does.
    """
    pending = [(str(directory), "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        pending.append((entry.path, f"{prefix}{entry.name}/"))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                    yield prefix + entry.name, entry


def list_images(
    directory: Path, recursive: bool, order: Literal["natural", "path"] = "natural"
) -> list[Path]:
    """Image files (:data:`IMAGE_EXTENSIONS`, any case) under ``directory``, hidden files and folders skipped.

    ``order``: ``"natural"`` sorts ``2.jpg`` before ``10.jpg`` (the DataModules' file order, which their
    splits follow); ``"path"`` sorts as ``sorted(paths)`` does (the FID folders' order, which their
    statistics' cache id and "the first N images" follow).
    """
    found = list(image_entries(directory, recursive))
    if order == "path":
        return sorted(directory / relative for relative, _ in found)
    return [directory / relative for relative, _ in sorted(found, key=lambda item: natural_key(item[0]))]
