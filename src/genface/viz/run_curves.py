"""The picture of `genface runs`: a study's objective per trial beside every run's FID (or KID) curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from genface.viz.plots import _save, plt


def plot_runs(
    path: str | Path,
    curves: Mapping[str, Sequence[tuple[float, float]]],
    curve_label: str,
    trials: Sequence[tuple[str, float]] = (),
    objective_label: str = "objective",
    best: str | None = None,
) -> Path | None:
    """Left, when `trials` is given: the objective of each trial in order, `best` starred. Right: one line per
    run of `curves` ((global step, value) points). None when there is nothing to draw."""
    panels = [p for p, present in (("trials", bool(trials)), ("curves", bool(curves))) if present]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "trials":
            names = [name for name, _ in trials]
            ax.plot(range(len(trials)), [value for _, value in trials], marker="o", ms=5, linestyle="")
            if best in names:
                k = names.index(best)
                ax.plot([k], [trials[k][1]], marker="*", ms=14, color="tab:red", linestyle="", label=f"best: {best}")
                ax.legend(fontsize=8)
            ax.set_xticks(range(len(trials)), names, fontsize=7, rotation=90 if len(trials) > 20 else 0)
            ax.set_xlabel("trial")
            ax.set_ylabel(objective_label)
            ax.set_title("objective per trial")
        else:
            for name, points in curves.items():
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=name)
            ax.set_xlabel("global step")
            ax.set_ylabel(curve_label)
            ax.set_title(f"{curve_label} per run")
            ax.legend(fontsize=7, ncol=max(1, len(curves) // 12), loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)
    return _save(fig, Path(path))
