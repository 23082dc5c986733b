"""Image grids and strips: tensors in [-1, 1] to uint8 pictures on disk."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, 3) uint8, grey repeated to RGB."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.size(1) == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).numpy()


def grid_image(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """A grid (H, W, 3) uint8; nrow defaults to a square layout."""
    nrow = nrow or max(1, math.isqrt(images.size(0) - 1) + 1)
    x = images.detach().float().cpu().clamp(-1, 1)
    if x.size(1) == 1:
        x = x.repeat(1, 3, 1, 1)
    grid = make_grid((x + 1) / 2, nrow=nrow, padding=padding, pad_value=1.0)
    return (grid.mul(255).round().to(torch.uint8).permute(1, 2, 0)).numpy()


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write atomically, so that a killed run never leaves a truncated PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    return save_png(grid_image(images, nrow), path)


def stack_rows(rows: Sequence[np.ndarray], labels: Sequence[str] | None = None, gap: int = 4) -> np.ndarray:
    """Stack images of equal width vertically with a white gap (e.g. one sample row per epoch)."""
    width = max(r.shape[1] for r in rows)
    out = []
    for i, r in enumerate(rows):
        if r.shape[1] < width:
            r = np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
        out.append(r)
        if i < len(rows) - 1:
            out.append(np.full((gap, width, 3), 255, np.uint8))
    img = np.concatenate(out, axis=0)
    if labels:
        img = _label_rows(img, rows, labels, gap)
    return img


def side_by_side(pictures: Sequence[np.ndarray], labels: Sequence[str], gap: int = 8) -> np.ndarray:
    """Pictures (H_i, W_i, 3) uint8 in one row on white, top-aligned, `gap` pixels apart, each under its label
    (e.g. one sample grid per model, so that they are compared at a glance)."""
    from PIL import ImageDraw

    if not pictures or len(pictures) != len(labels):
        raise ValueError(f"side_by_side: {len(pictures)} pictures, {len(labels)} labels")
    header, height = 16, max(p.shape[0] for p in pictures)
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, header + height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for picture, text in zip(pictures, labels):
        canvas.paste(Image.fromarray(picture), (x, header))
        draw.text((x + max(0, (picture.shape[1] - draw.textlength(text)) // 2), 2), text, fill="black")
        x += picture.shape[1] + gap
    return np.asarray(canvas)


def _label_rows(img: np.ndarray, rows: Sequence[np.ndarray], labels: Sequence[str], gap: int) -> np.ndarray:
    from PIL import ImageDraw

    margin = 8 + 7 * max(len(s) for s in labels)
    canvas = Image.new("RGB", (img.shape[1] + margin, img.shape[0]), "white")
    canvas.paste(Image.fromarray(img), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for r, text in zip(rows, labels):
        draw.text((4, y + r.shape[0] // 2 - 6), text, fill="black")
        y += r.shape[0] + gap
    return np.asarray(canvas)


def save_gif(frames: Sequence[np.ndarray], path: str | Path, duration: float = 0.2) -> Path:
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.gif")
    imageio.mimsave(tmp, list(frames), duration=duration * 1000, loop=0)  # imageio: milliseconds
    os.replace(tmp, path)
    return path
