"""Stream samples of any GenerativeModule to disk: PNGs, latents.npy, labels, a preview grid."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from genface.models.base import GenerativeModule
from genface.viz.grids import save_grid, to_uint8


def progress_bar(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=disable,
    )


@torch.no_grad()
def sample_to_disk(
    model: GenerativeModule,
    out_dir: str | Path,
    n: int,
    batch_size: int = 64,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    grid_size: int = 64,
    progress: bool = True,
) -> dict:
    """Generate `n` images in batches, never holding more than one batch in memory.

    Writes `images/000000.png ...`, `latents.npy` (n, D) float32 (memory-mapped while filling),
    `labels.npy` for conditional models, `grid.png` of the first `grid_size`, and `samples.json`
    (n, seed, latent_dim) last, so that an interrupted run is recognisable as incomplete.
    Latents are drawn from one seeded generator: the same seed gives the same samples.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "samples.json").unlink(missing_ok=True)
    if model.num_classes and labels is None:
        labels = model.default_labels(n)
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for n={n} samples")
    gen = torch.Generator().manual_seed(seed)
    latents_file = open_memmap(out / "latents.npy.tmp", mode="w+", dtype=np.float32, shape=(n, model.latent_dim))
    grid: list[torch.Tensor] = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("sampling", total=n)
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            z = model.sample_latents(k, generator=gen)
            y = labels[start : start + k] if labels is not None else None
            images = model.generate(z, y)
            latents_file[start : start + k] = z.float().cpu().numpy()
            for i, img in enumerate(to_uint8(images)):
                Image.fromarray(img).save(out / "images" / f"{start + i:06d}.png")
            if sum(len(g) for g in grid) < grid_size:
                grid.append(images[: grid_size - sum(len(g) for g in grid)].cpu())
            bar.advance(task, k)
    latents_file.flush()
    del latents_file
    os.replace(out / "latents.npy.tmp", out / "latents.npy")
    if labels is not None:
        np.save(out / "labels.npy", labels.cpu().numpy())
    save_grid(torch.cat(grid), out / "grid.png")
    meta = {"n": n, "seed": seed, "latent_dim": model.latent_dim, "model": type(model).__name__}
    (out / "samples.json").write_text(json.dumps(meta, indent=1))
    return meta
