"""Attribute directions in a generator's latent space (the DD-GAN latent-analysis study; InterFaceGAN, Shen et al. 2020).

For each attribute a logistic regression separates the latents whose images the classifier judges to have
it from those it judges not to; the unit normal of that hyperplane is the edit direction. A held-out
split measures how linearly the latent space encodes the attribute (probe accuracy). Conditional
directions remove the components along other attributes' normals, so that an edit moves the first
attribute without (linearly) moving the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from genface.analysis.tables import markdown_table, write_csv
from genface.viz.analysis import heatmap

log = logging.getLogger(__name__)


def check_names(requested: Sequence[str], available: Sequence[str], what: str) -> None:
    """Unknown names are an error that lists the known ones (typos are the usual cause)."""
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; available: {', '.join(available)}")


@dataclass
class Directions:
    """Per-attribute latent hyperplanes. Vectors are full latent width (zero outside `dims`)."""

    names: list[str]
    #: (A, D) unit normals pointing towards the attribute.
    normals: np.ndarray
    #: (A, D) raw logistic-regression weights and (A,) intercepts: P(attribute | z) = sigmoid(z.w + b).
    weights: np.ndarray
    intercepts: np.ndarray
    train_acc: np.ndarray
    #: accuracy and balanced accuracy of the latent -> label model on held-out latents.
    probe_acc: np.ndarray
    probe_bal_acc: np.ndarray
    #: share of samples labelled positive.
    positive_rate: np.ndarray
    #: [start, stop) of the latent coordinates the models were fitted on.
    dims: tuple[int, int]
    threshold: float
    #: attribute -> why no direction was fitted (too few positives or negatives).
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def latent_dim(self) -> int:
        return int(self.normals.shape[1])

    def index(self, name: str) -> int:
        if name not in self.names:
            reason = f" ({self.skipped[name]})" if name in self.skipped else ""
            raise ValueError(
                f"no direction for {name!r}{reason}; directions exist for: {', '.join(self.names)}"
            )
        return self.names.index(name)

    def normal(self, name: str) -> np.ndarray:
        return self.normals[self.index(name)]

    def conditional(self, name: str, conditions: Sequence[str]) -> np.ndarray:
        """InterFaceGAN's conditional manipulation: the normal of `name` with its components along the
        normals of `conditions` removed (projection onto the orthogonal complement of their span), unit."""
        conditions = [c for c in conditions if c != name]
        if not conditions:
            return self.normal(name)
        basis, _ = np.linalg.qr(np.stack([self.normal(c) for c in conditions], axis=1).astype(np.float64))
        primal = self.normal(name).astype(np.float64)
        v = primal - basis @ (basis.T @ primal)
        norm = np.linalg.norm(v)
        if norm < 1e-6:
            raise ValueError(
                f"the direction of {name} lies in the span of {conditions}: nothing is left to edit"
            )
        return (v / norm).astype(np.float32)

    def most_entangled(self, name: str, k: int) -> list[str]:
        """The k other attributes whose normals have the largest |cosine| with that of `name`."""
        cos = np.abs(self.normals @ self.normal(name))
        order = [j for j in np.argsort(-cos) if self.names[j] != name]
        return [self.names[j] for j in order[:k]]

    def cosine(self) -> np.ndarray:
        """(A, A) cosine similarity of the normals: off-diagonal magnitude = linear entanglement."""
        return self.normals @ self.normals.T

    def latent_proba(self, latents: np.ndarray) -> np.ndarray:
        """(N, A) P(attribute | latent) of the fitted models: cheap, needs no image (rejection pre-filter)."""
        logits = np.asarray(latents, dtype=np.float32) @ self.weights.T + self.intercepts
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            names=np.array(self.names),
            normals=self.normals,
            weights=self.weights,
            intercepts=self.intercepts,
            train_acc=self.train_acc,
            probe_acc=self.probe_acc,
            probe_bal_acc=self.probe_bal_acc,
            positive_rate=self.positive_rate,
            dims=np.array(self.dims),
            threshold=np.array(self.threshold),
            skipped_names=np.array(list(self.skipped), dtype=str),
            skipped_reasons=np.array(list(self.skipped.values()), dtype=str),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Directions:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no directions file at {path}: run `genface analyze directions` first")
        with np.load(path) as f:
            return cls(
                names=[str(n) for n in f["names"]],
                normals=f["normals"],
                weights=f["weights"],
                intercepts=f["intercepts"],
                train_acc=f["train_acc"],
                probe_acc=f["probe_acc"],
                probe_bal_acc=f["probe_bal_acc"],
                positive_rate=f["positive_rate"],
                dims=tuple(int(d) for d in f["dims"]),
                threshold=float(f["threshold"]),
                skipped=dict(zip(map(str, f["skipped_names"]), map(str, f["skipped_reasons"]))),
            )


def latent_slice(dims: Sequence[int] | None, latent_dim: int) -> tuple[int, int]:
    """`[start, stop)` of the coordinates to fit on (None: all), checked against the latent width."""
    if dims is None:
        return 0, latent_dim
    start, stop = (int(d) for d in dims)
    if not 0 <= start < stop <= latent_dim:
        raise ValueError(
            f"directions.dims={list(dims)} must satisfy 0 <= start < stop <= {latent_dim} (latent width)"
        )
    return start, stop


def fit_directions(
    latents: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    attributes: Sequence[str] | None = None,
    threshold: float = 0.5,
    test_fraction: float = 0.2,
    C: float = 1.0,
    max_iter: int = 1000,
    min_count: int = 10,
    dims: Sequence[int] | None = None,
    seed: int = 0,
) -> Directions:
    """One logistic regression (with intercept) per attribute of `label = probs >= threshold` on the latents.

    Args:
        latents: (N, D), e.g. the memory-mapped latents.npy of `genface sample`.
        probs: (N, A) classifier probabilities; `names` their A attribute names.
        attributes: the subset to fit (default: all).
        test_fraction: share of samples held out for the probe accuracy.
        C: inverse L2 strength of scikit-learn's LogisticRegression.
        min_count: attributes with fewer positives or negatives in the training part are skipped.
        dims: [start, stop) of latent coordinates to regress on (e.g. DD-GAN's x_T); default all.
    """
    latents, probs = np.asarray(latents), np.asarray(probs)
    if latents.ndim != 2 or probs.ndim != 2 or len(latents) != len(probs):
        raise ValueError(
            f"latents (N, D) and probs (N, A) must share N; got {latents.shape} and {probs.shape}"
        )
    if probs.shape[1] != len(names):
        raise ValueError(f"probs has {probs.shape[1]} columns but {len(names)} attribute names were given")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"directions.test_fraction must lie in (0, 1), got {test_fraction}")
    attributes = list(names) if attributes is None else list(attributes)
    check_names(attributes, names, "attributes")
    start, stop = latent_slice(dims, latents.shape[1])
    x = np.ascontiguousarray(latents[:, start:stop], dtype=np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(test_fraction * len(x))))
    test, train = order[:n_test], order[n_test:]
    fitted: dict[str, tuple[np.ndarray, float, float, float, float, float]] = {}
    skipped: dict[str, str] = {}
    for name in attributes:
        y = probs[:, list(names).index(name)] >= threshold
        pos, neg = int(y[train].sum()), int((~y[train]).sum())
        if min(pos, neg) < min_count:
            skipped[name] = (
                f"{pos} positive / {neg} negative training samples, fewer than min_count={min_count}"
            )
            continue
        model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        model.fit(x[train], y[train])
        predicted = model.predict(x[test])
        fitted[name] = (
            model.coef_[0].astype(np.float32),
            float(model.intercept_[0]),
            float(model.score(x[train], y[train])),
            float((predicted == y[test]).mean()),
            float(balanced_accuracy_score(y[test], predicted))
            if 0 < y[test].sum() < len(test)
            else float("nan"),
            float(y.mean()),
        )
    if skipped:
        log.warning(
            "no direction for %d attributes: %s",
            len(skipped),
            "; ".join(f"{k}: {v}" for k, v in skipped.items()),
        )
    kept = list(fitted)
    weights = np.zeros((len(kept), latents.shape[1]), dtype=np.float32)
    for i, name in enumerate(kept):
        weights[i, start:stop] = fitted[name][0]
    norms = np.linalg.norm(weights, axis=1, keepdims=True)
    return Directions(
        names=kept,
        normals=weights / np.maximum(norms, 1e-12),
        weights=weights,
        intercepts=np.array([fitted[n][1] for n in kept], dtype=np.float32),
        train_acc=np.array([fitted[n][2] for n in kept]),
        probe_acc=np.array([fitted[n][3] for n in kept]),
        probe_bal_acc=np.array([fitted[n][4] for n in kept]),
        positive_rate=np.array([fitted[n][5] for n in kept]),
        dims=(start, stop),
        threshold=float(threshold),
        skipped=skipped,
    )


def write_directions_report(directions: Directions, out_dir: str | Path) -> str:
    """directions.csv (probe accuracies) and cosine.png (entanglement heatmap); returns the Markdown."""
    out = Path(out_dir)
    header = ["attribute", "positive rate", "train acc", "probe acc", "probe bal. acc"]
    d = directions
    rows = [
        [
            n,
            float(d.positive_rate[i]),
            float(d.train_acc[i]),
            float(d.probe_acc[i]),
            float(d.probe_bal_acc[i]),
        ]
        for i, n in enumerate(d.names)
    ]
    write_csv(out / "directions.csv", header, rows)
    if d.names:
        heatmap(
            d.cosine(),
            d.names,
            d.names,
            out / "cosine.png",
            "cosine similarity of attribute directions (entanglement)",
            vmax=1.0,
            colour_label="cosine",
        )
    text = (
        f"Logistic regression per attribute (label: classifier probability >= {d.threshold:g}) on latent "
        f"coordinates [{d.dims[0]}, {d.dims[1]}); probe = held-out latents. Unit normals: "
        "[directions.npz](directions/directions.npz).\n\n"
        + markdown_table(header, rows)
    )
    if d.names:
        text += "\n![cosine similarity of directions](directions/cosine.png)\n"
    if d.skipped:
        text += "\nNo direction: " + "; ".join(f"{k} ({v})" for k, v in d.skipped.items()) + "\n"
    return text
