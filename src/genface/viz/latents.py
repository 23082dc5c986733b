"""Pictures of a latent space (the VAE-GAN latent-diffusion study): 2-D projections of encoded images coloured by class, and
class-conditional sample grids (one labelled row per class, e.g. Not Smiling / Smiling)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from genface.viz.grids import grid_image, stack_rows
from genface.viz.plots import _save, plt

PROJECTIONS = ("pca", "tsne")


def project_2d(latents: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) by PCA or t-SNE (perplexity capped for small N, PCA initialisation)."""
    x = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
    if method not in PROJECTIONS:
        raise ValueError(f"projection method {method!r} is not allowed; allowed: {', '.join(PROJECTIONS)}")
    if len(x) < 3:
        raise ValueError(f"a 2-D projection needs at least 3 latents, got {len(x)}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    # Barnes-Hut's tree and thread pool cost seconds even for a handful of points: exact below a few hundred.
    method = "exact" if len(x) < 300 else "barnes_hut"
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=method).fit_transform(x)


def latent_scatter(
    latents: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    method: str = "tsne",
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """Scatter plot of the 2-D projection of `latents`, one colour (and legend entry) per class label."""
    labels = np.asarray(labels).reshape(-1).astype(int)
    if len(labels) != len(latents):
        raise ValueError(f"{len(latents)} latents but {len(labels)} labels")
    points = project_2d(latents, method, seed)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for k in np.unique(labels):
        name = class_names[k] if class_names is not None and k < len(class_names) else str(k)
        sel = labels == k
        ax.scatter(points[sel, 0], points[sel, 1], s=8, alpha=0.7, label=name)
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title(title or f"{method.upper()} of encoded latents")
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, Path(path))


def class_rows(images_per_class: Sequence[torch.Tensor], class_names: Sequence[str]) -> np.ndarray:
    """(H, W, 3) uint8: one labelled row of samples per class."""
    if len(images_per_class) != len(class_names):
        raise ValueError(f"{len(images_per_class)} image rows but {len(class_names)} class names")
    return stack_rows([grid_image(x, nrow=len(x)) for x in images_per_class], labels=list(class_names))
