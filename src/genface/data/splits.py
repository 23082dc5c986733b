"""Splits: their names, and deterministic random splits of a dataset by ``data.split_fractions``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
#: Where metrics may take real images from: one split, or ``all`` of them (pytorch-fid's protocol, which
#: scores against a whole folder, e.g. the DD-GAN reference FID on its CelebA-HQ subset).
REAL_SPLITS: tuple[str, ...] = (*SPLITS, "all")


def check_fractions(
    fractions: Sequence[float], key: str = "data.split_fractions"
) -> tuple[float, float, float]:
    """Validate split fractions (train, val, test): three non-negative numbers summing to 1, train > 0.

    ``key`` names the setting in the error (the config key, or a function's argument).
    """
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise ValueError(
            f"{key} must be three non-negative numbers (train, val, test) summing to 1 with "
            f"train > 0, got {list(fractions)}"
        )
    return values  # type: ignore[return-value]


def _split_counts(m: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    n_val, n_test = (int(np.floor(f * m + 0.5)) for f in fractions[1:])
    if m >= 3:  # tiny sets: still give every requested split at least one item
        n_val, n_test = max(n_val, int(fractions[1] > 0)), max(n_test, int(fractions[2] > 0))
    return n_val, n_test


def split_indices(
    n: int, fractions: tuple[float, float, float], seed: int, strata: np.ndarray | None = None
) -> dict[Split, np.ndarray]:
    """Deterministic random split of ``range(n)``; with ``strata`` each stratum is split separately.

    Indices come back sorted, so every split keeps the source order (file order, class order).
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == c) for c in np.unique(strata)]
    parts: dict[Split, list[np.ndarray]] = {split: [] for split in SPLITS}
    for group in groups:
        group = rng.permutation(group)
        n_val, n_test = _split_counts(len(group), fractions)
        parts["val"].append(group[:n_val])
        parts["test"].append(group[n_val : n_val + n_test])
        parts["train"].append(group[n_val + n_test :])
    out = {split: np.sort(np.concatenate(p)).astype(np.int64) for split, p in parts.items()}
    if len(out["train"]) == 0:
        raise ValueError(
            f"{n} images are too few for data.split_fractions={list(fractions)}: no training images"
        )
    return out


def fraction_tag(fractions: Sequence[float], seed: int) -> str:
    """Id fragment for seeded random splits (they decide which images land in which cached split)."""
    return "split" + "-".join(f"{f:g}" for f in fractions) + f"-seed{seed}"
