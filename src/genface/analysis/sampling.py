"""Stream samples of any GenerativeModule to disk: PNGs, latents, labels, classifier attributes, a grid."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from genface.models.base import GenerativeModule
from genface.models.classifier import Classifier
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
    classifier: Classifier | None = None,
    save_features: bool = False,
) -> dict:
    """Generate `n` images in batches, never holding more than one batch in memory.

    Writes `images/000000.png ...`, `latents.npy` (n, D) float32 (memory-mapped while filling),
    `labels.npy` for conditional models, `grid.png` of the first `grid_size`, and `samples.json`
    (n, seed, latent_dim) last, so that an interrupted run is recognisable as incomplete.
    Latents are drawn from one seeded generator: the same seed gives the same samples.

    With a `classifier` it also writes `attributes.npy` (n, A) float32 probabilities of each image and
    `attribute_names.json`, and with `save_features` its penultimate features `features.npy` (n, F),
    all streamed like the latents: what `genface analyze` works from.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    # Files of an earlier run into the same folder would silently mix with these samples.
    for stale in ("samples.json", "labels.npy", "attributes.npy", "attribute_names.json", "features.npy"):
        (out / stale).unlink(missing_ok=True)
    if model.num_classes and labels is None:
        labels = model.default_labels(n)
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for n={n} samples")
    gen = torch.Generator().manual_seed(seed)
    if save_features and classifier is None:
        raise ValueError("save_features needs a classifier (its penultimate features are saved)")

    def array(name: str, width: int) -> np.ndarray:
        return open_memmap(out / f"{name}.npy.tmp", mode="w+", dtype=np.float32, shape=(n, width))

    arrays = {"latents": array("latents", model.latent_dim)}
    if classifier is not None:
        classifier.eval()
        (out / "attribute_names.json").write_text(json.dumps(list(classifier.class_names)))
        arrays["attributes"] = array("attributes", classifier.num_outputs)
    if save_features:
        probe = torch.zeros(1, *model.image_shape, device=classifier.device)
        arrays["features"] = array("features", classifier.features(probe).shape[1])
    grid: list[torch.Tensor] = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("sampling", total=n)
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            z = model.sample_latents(k, generator=gen)
            y = labels[start : start + k] if labels is not None else None
            images = model.generate(z, y)
            arrays["latents"][start : start + k] = z.float().cpu().numpy()
            if classifier is not None:
                x = images.to(classifier.device)
                arrays["attributes"][start : start + k] = classifier.predict_proba(x).float().cpu().numpy()
                if save_features:
                    arrays["features"][start : start + k] = classifier.features(x).float().cpu().numpy()
            for i, img in enumerate(to_uint8(images)):
                Image.fromarray(img).save(out / "images" / f"{start + i:06d}.png")
            if sum(len(g) for g in grid) < grid_size:
                grid.append(images[: grid_size - sum(len(g) for g in grid)].cpu())
            bar.advance(task, k)
    for name, filled in arrays.items():
        filled.flush()
        os.replace(out / f"{name}.npy.tmp", out / f"{name}.npy")
    arrays.clear()
    if labels is not None:
        np.save(out / "labels.npy", labels.cpu().numpy())
    save_grid(torch.cat(grid), out / "grid.png")
    meta = {"n": n, "seed": seed, "latent_dim": model.latent_dim, "model": type(model).__name__}
    if classifier is not None:
        meta["attributes"] = len(classifier.class_names)
    (out / "samples.json").write_text(json.dumps(meta, indent=1))
    return meta


@dataclass
class Samples:
    """A `sample_to_disk` folder opened for analysis; the arrays are memory-mapped, never loaded whole."""

    root: Path
    latents: np.ndarray
    attributes: np.ndarray | None
    attribute_names: list[str]
    features: np.ndarray | None
    labels: np.ndarray | None
    meta: dict

    def need_attributes(self) -> np.ndarray:
        if self.attributes is None:
            raise FileNotFoundError(
                f"{self.root} has no attributes.npy: sample with a classifier "
                "(genface sample ckpt=G classifier=C out=...)"
            )
        return self.attributes


def load_samples(root: str | Path) -> Samples:
    """Open a folder written by `sample_to_disk` (`genface sample`); an incomplete folder is an error."""
    root = Path(root)
    meta_file = root / "samples.json"
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{root} is not a complete samples folder (no samples.json): write one with "
            "`genface sample ckpt=G classifier=C out=DIR` or `genface analyze sample`"
        )
    meta = json.loads(meta_file.read_text())

    def optional(name: str) -> np.ndarray | None:
        path = root / name
        return np.load(path, mmap_mode="r") if path.is_file() else None

    latents = np.load(root / "latents.npy", mmap_mode="r")
    attributes = optional("attributes.npy")
    names_file = root / "attribute_names.json"
    names = json.loads(names_file.read_text()) if names_file.is_file() else []
    if attributes is not None and attributes.shape != (len(latents), len(names)):
        raise ValueError(
            f"{root}: attributes.npy has shape {attributes.shape}, expected ({len(latents)}, {len(names)}) "
            "from latents.npy and attribute_names.json"
        )
    return Samples(root, latents, attributes, names, optional("features.npy"), optional("labels.npy"), meta)
