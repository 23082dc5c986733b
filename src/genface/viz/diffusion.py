"""Pictures of a sampling path: how noise turns into an image, step by step.

A path is what `generate_with_path` returns (DDPM, DD-GAN): a list of (t, x_t, predicted x0) per step,
tensors (N, C, H, W), from the noisiest step to the last. Small images are enlarged (nearest neighbour)
so that 16-32 px samples and their timestep labels stay readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from genface.viz.analysis import column_header, enlarge
from genface.viz.grids import grid_image, save_gif, stack_rows

PathStep = tuple[int, Tensor, Tensor]
_PAD = 2  # grid_image's default padding


def evenly_spaced(count: int, k: int) -> list[int]:
    """k indices into range(count), evenly spaced, always with the first and the last."""
    if count < 1 or k < 1:
        raise ValueError(f"need count >= 1 and k >= 1, got count={count}, k={k}")
    if k >= count:
        return list(range(count))
    if k == 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (k - 1)) for i in range(k)})


def _check_path(path: Sequence[PathStep]) -> None:
    if not path:
        raise ValueError("the sampling path is empty")
    _, x_t, x0 = path[0]
    if x_t.ndim != 4 or x0.shape != x_t.shape:
        raise ValueError(
            f"path steps must hold (t, x_t, x0) with x_t, x0 of shape (N, C, H, W), got {tuple(x_t.shape)}"
        )


def path_strip(
    path: Sequence[PathStep], n_rows: int = 4, columns: int = 10, min_size: int = 64
) -> np.ndarray:
    """(H, W, 3) uint8: for each of the first `n_rows` samples, x_t over `columns` evenly spaced steps
    (upper row) and the network's predicted x0 at those steps (lower row); timesteps on top."""
    _check_path(path)
    idx = evenly_spaced(len(path), columns)
    n_rows = min(n_rows, path[0][1].shape[0])
    rows, labels = [], []
    for i in range(n_rows):
        for name, part in (("x_t", 1), ("x0", 2)):
            images = enlarge(torch.stack([path[k][part][i] for k in idx]), min_size)
            rows.append(grid_image(images, nrow=len(idx), padding=_PAD))
            labels.append(f"{name} #{i}")
    cell = enlarge(path[0][1][:1], min_size).shape[-1]
    header = column_header([f"t={path[k][0]}" for k in idx], cell, rows[0].shape[1])
    return stack_rows([header, *rows], labels=["", *labels])


def path_frames(
    path: Sequence[PathStep], n: int | None = None, max_frames: int = 60, min_size: int = 64
) -> list[np.ndarray]:
    """Grids of x_t for the first `n` samples at up to `max_frames` evenly spaced steps, then the final
    images (the last step's x0)."""
    _check_path(path)
    n = n or path[0][1].shape[0]
    frames = [grid_image(enlarge(path[k][1][:n], min_size)) for k in evenly_spaced(len(path), max_frames)]
    return [*frames, grid_image(enlarge(path[-1][2][:n], min_size))]


def path_gif(
    path: Sequence[PathStep],
    out: str | Path,
    n: int | None = None,
    max_frames: int = 60,
    duration: float = 0.08,
    hold: int = 15,
) -> Path:
    """A GIF of sampling (x_t frames, see `path_frames`) whose final images stay on screen for `hold` frames."""
    frames = path_frames(path, n=n, max_frames=max_frames)
    return save_gif(frames + [frames[-1]] * hold, out, duration=duration)


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    """`image` (H, W, 3) uint8 under a white strip with `text` on the left."""
    strip = Image.new("RGB", (image.shape[1], 14), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black")
    return np.concatenate([np.asarray(strip), image], axis=0)


def animation_gif(
    path: Sequence[PathStep],
    out: str | Path,
    frames: int = 50,
    fps: float = 15.0,
    title: str = "",
    n: int | None = None,
    min_size: int = 64,
) -> Path:
    """The VAE-GAN latent-diffusion study's denoising animation: `frames` frames at `fps`, x_t of the first `n`
    samples at `frames` - 1 evenly spaced steps (a path of fewer steps repeats some, and GIF readers merge the
    repeats) and then the final images, each under a caption `title  t=...`. GIF delays are whole hundredths
    of a second, so 15 fps is stored as 60 ms per frame."""
    _check_path(path)
    if frames < 2 or fps <= 0:
        raise ValueError(f"an animation needs frames >= 2 and fps > 0, got frames={frames}, fps={fps}")
    n = n or path[0][1].shape[0]
    idx = np.linspace(0, len(path) - 1, frames - 1).round().astype(int)
    prefix = f"{title}  " if title else ""
    images = [
        _caption(grid_image(enlarge(path[k][1][:n], min_size)), f"{prefix}t={path[k][0]}") for k in idx
    ]
    images.append(_caption(grid_image(enlarge(path[-1][2][:n], min_size)), f"{prefix}final"))
    return save_gif(images, out, duration=1.0 / fps)
