"""Training curves and metric tables from a run's per-epoch history."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_curves(
    history: Sequence[Mapping[str, float]],
    keys: Sequence[str],
    path: str | Path,
    title: str,
    x_key: str = "epoch",
    ylabel: str = "",
) -> Path | None:
    """One line per metric key present in the history; None when none of the keys was logged."""
    present = [k for k in keys if any(k in row for row in history)]
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key in present:
        pts = [(row[x_key], row[key]) for row in history if key in row]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=key)
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def markdown_table(history: Sequence[Mapping[str, float]], keys: Sequence[str], x_key: str = "epoch") -> str:
    """A Markdown table, one row per epoch, of the keys that were logged."""
    present = [k for k in keys if any(k in row for row in history)]
    lines = ["| " + " | ".join([x_key, *present]) + " |", "|" + "---|" * (len(present) + 1)]
    for row in history:
        cells = [f"{row[x_key]:g}"] + [f"{row[k]:.4g}" if k in row else "" for k in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
