"""2-D maps of latents or classifier features (PCA, t-SNE) coloured by an attribute (the VAE-GAN latent-diffusion study's plots).

If an attribute separates in such a map, the space encodes it along a few dominant directions (PCA) or
at least locally (t-SNE); latents of a GAN are usually isotropic noise (no structure), classifier
features of the same images are not: the contrast shows where the semantics live.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from genface.analysis.directions import check_names
from genface.viz.analysis import scatter_2d

METHODS = ("pca", "tsne")
_LABELS = {"pca": "PCA", "tsne": "t-SNE"}


def embed(x: np.ndarray, method: str, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) embedding of `x` (N, D) and a note (PCA: the variance the two components explain)."""
    x = np.asarray(x, dtype=np.float32)
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(x)
        return points, f"explained variance {pca.explained_variance_ratio_.sum():.1%}"
    if method == "tsne":
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), (
            f"perplexity {perplexity:g}"
        )
    raise ValueError(f"project.methods: unknown method {method!r}; allowed: {', '.join(METHODS)}")


def run_projection(
    spaces: dict[str, np.ndarray],
    probs: np.ndarray,
    names: Sequence[str],
    attributes: Sequence[str],
    methods: Sequence[str],
    out_dir: str | Path,
    max_points: int = 2000,
    seed: int = 0,
) -> str:
    """`<space>_<method>_<attribute>.png` for every space (e.g. latents, features), method and attribute;
    the first `max_points` samples are used (t-SNE is quadratic). Returns the report's Markdown."""
    check_names(attributes, names, "attributes to colour by")
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"project.methods: unknown method {method!r}; allowed: {', '.join(METHODS)}")
    out = Path(out_dir)
    n = min(max_points, len(probs))
    lines = [f"2-D maps of {n} samples, coloured by classifier probability.", ""]
    for space, x in spaces.items():
        for method in methods:
            points, note = embed(np.asarray(x[:n]), method, seed)
            lines.append(f"{_LABELS[method]} of {space}: {note}.")
            for attribute in attributes:
                name = f"{space}_{method}_{attribute}.png"
                values = probs[:n, list(names).index(attribute)]
                scatter_2d(
                    points, values, out / name, f"{_LABELS[method]} of {space} ({note})", f"p({attribute})"
                )
                lines.append(f"![{method} of {space} by {attribute}](project/{name})")
    text = "\n".join(lines) + "\n"
    return text
