"""Latent edits z' = z + alpha * d, and what the classifier says they change (the DD-GAN latent-analysis study's edit study).

For an attribute direction d (plain, or conditional: orthogonal to other attributes' directions) the
edit report measures on the classifier's judgement of the edited images:
- flip rate: share of samples without the attribute (p < 0.5) that have it after the edit;
- increase rate: share of samples whose probability of the attribute rose;
- the mean change of every attribute's probability: a row of the entanglement matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genface.analysis.directions import Directions, check_names
from genface.analysis.tables import markdown_table, write_csv, write_json
from genface.models.base import GenerativeModule
from genface.models.classifier import Classifier
from genface.viz.analysis import heatmap, image_table
from genface.viz.grids import save_png


@torch.no_grad()
def generate_batched(
    model: GenerativeModule, latents: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 64
) -> torch.Tensor:
    """Images (N, C, H, W) on the CPU, generated `batch_size` at a time."""
    parts = []
    for start in range(0, len(latents), batch_size):
        y = labels[start : start + batch_size] if labels is not None else None
        parts.append(model.generate(latents[start : start + batch_size], y).cpu())
    return torch.cat(parts)


@torch.no_grad()
def classify(classifier: Classifier, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(N, A) classifier probabilities, `batch_size` images at a time."""
    classifier.eval()
    parts = [
        classifier.predict_proba(images[start : start + batch_size].to(classifier.device)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).numpy()


def edit_latents(latents: torch.Tensor, direction: np.ndarray | torch.Tensor, alpha: float) -> torch.Tensor:
    """z + alpha * d for every row of `latents` (d of the latent's full width)."""
    d = torch.as_tensor(np.asarray(direction), dtype=latents.dtype, device=latents.device)
    if d.shape != latents.shape[1:]:
        raise ValueError(
            f"direction of shape {tuple(d.shape)} does not fit latents of shape {tuple(latents.shape)}"
        )
    return latents + alpha * d


@dataclass
class EditEffect:
    """What one edit (attribute, kind, alpha) did to the classifier's probabilities."""

    attribute: str
    kind: str  # "plain" | "conditional"
    conditions: list[str]
    alpha: float
    flip_rate: float  # among samples without the attribute before the edit; NaN when there are none
    increase_rate: float
    mean_change: np.ndarray  # (A,) mean change of every classifier attribute's probability
    target_before: float
    target_after: float

    def change_of(self, names: Sequence[str], which: Sequence[str]) -> float:
        """Mean |mean change| over attributes `which` (entanglement with them); NaN for none."""
        idx = [list(names).index(w) for w in which]
        return float(np.abs(self.mean_change[idx]).mean()) if idx else float("nan")


def measure_edit(
    before: np.ndarray,
    after: np.ndarray,
    names: Sequence[str],
    attribute: str,
    kind: str,
    conditions: Sequence[str],
    alpha: float,
    threshold: float = 0.5,
) -> EditEffect:
    """Flip rate, increase rate and mean changes from probabilities (N, A) before and after an edit."""
    t = list(names).index(attribute)
    without = before[:, t] < threshold
    flips = after[without, t] >= threshold
    return EditEffect(
        attribute=attribute,
        kind=kind,
        conditions=list(conditions),
        alpha=float(alpha),
        flip_rate=float(flips.mean()) if without.any() else float("nan"),
        increase_rate=float((after[:, t] > before[:, t]).mean()),
        mean_change=(after - before).mean(axis=0),
        target_before=float(before[:, t].mean()),
        target_after=float(after[:, t].mean()),
    )


def edit_conditions(
    directions: Directions, attribute: str, condition_on: Sequence[str] | None, top_k: int
) -> list[str]:
    """The attributes a conditional edit of `attribute` keeps fixed: `condition_on` (minus itself) when
    given, else the `top_k` attributes whose directions are most entangled with it."""
    if condition_on:
        return [c for c in condition_on if c != attribute]
    return directions.most_entangled(attribute, top_k)


@dataclass
class EditStudy:
    """Edits of several attributes of the same latents, plain and conditional."""

    names: list[str]  # classifier attribute names (columns of mean_change)
    effects: list[EditEffect]

    def matrix(self, kind: str) -> tuple[list[str], np.ndarray]:
        """The edited attributes and their (rows, A) mean changes, for the edits of one kind."""
        rows = [e for e in self.effects if e.kind == kind]
        changes = np.stack([e.mean_change for e in rows]) if rows else np.zeros((0, len(self.names)))
        return [e.attribute for e in rows], changes


def run_edit_study(
    model: GenerativeModule,
    classifier: Classifier,
    directions: Directions,
    latents: torch.Tensor,
    attributes: Sequence[str],
    alpha: float,
    labels: torch.Tensor | None = None,
    condition_on: Sequence[str] | None = None,
    condition_top_k: int = 1,
    batch_size: int = 64,
) -> EditStudy:
    """For each attribute: edit `latents` by +alpha along its plain and its conditional direction and
    measure the classifier's change on every attribute (images generated and judged batch by batch)."""
    names = list(classifier.class_names)
    check_names(attributes, directions.names, "attributes to edit (those with a direction)")
    check_names(list(condition_on or []), directions.names, "condition_on attributes")
    missing = [a for a in directions.names if a not in names]
    if missing:
        raise ValueError(f"directions {missing} are not attributes of the classifier ({', '.join(names)})")
    before = classify(classifier, generate_batched(model, latents, labels, batch_size), batch_size)
    effects = []
    for attribute in attributes:
        conditions = edit_conditions(directions, attribute, condition_on, condition_top_k)
        variants = [("plain", [], directions.normal(attribute))]
        if conditions:
            variants.append(("conditional", conditions, directions.conditional(attribute, conditions)))
        for kind, conds, d in variants:
            edited = generate_batched(model, edit_latents(latents, d, alpha), labels, batch_size)
            after = classify(classifier, edited, batch_size)
            effects.append(
                measure_edit(before, after, names, attribute, kind, conds, alpha, directions.threshold)
            )
    return EditStudy(names, effects)


def progression(
    model: GenerativeModule,
    latents: torch.Tensor,
    direction: np.ndarray,
    alphas: Sequence[float],
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """(N, len(alphas), C, H, W): each latent edited by every alpha (alpha 0 is the original)."""
    frames = [
        generate_batched(model, edit_latents(latents, direction, a), labels, batch_size) for a in alphas
    ]
    return torch.stack(frames, dim=1)


def write_edit_report(study: EditStudy, out_dir: str | Path) -> str:
    """edit_report.{csv,json} and the entanglement heatmaps (plain, conditional); returns the Markdown."""
    out = Path(out_dir)
    header = [
        "attribute",
        "kind",
        "kept fixed",
        "alpha",
        "flip rate",
        "increase rate",
        "p before",
        "p after",
        "mean abs change of kept-fixed",
        "mean abs change of others",
    ]
    rows = []
    by_attr: dict[str, list[str]] = {}
    for e in study.effects:
        if e.kind == "conditional":
            by_attr[e.attribute] = e.conditions
    for e in study.effects:
        kept = by_attr.get(e.attribute, [])
        others = [n for n in study.names if n != e.attribute]
        rows.append(
            [
                e.attribute,
                e.kind,
                ", ".join(kept) or "–",
                e.alpha,
                e.flip_rate,
                e.increase_rate,
                e.target_before,
                e.target_after,
                e.change_of(study.names, kept),
                e.change_of(study.names, others),
            ]
        )
    write_csv(out / "edit_report.csv", header, rows)
    write_json(
        out / "edit_report.json",
        {
            "attribute_names": study.names,
            "effects": [
                {
                    **{k: v for k, v in vars(e).items() if k != "mean_change"},
                    "mean_change": e.mean_change.tolist(),
                }
                for e in study.effects
            ],
        },
    )
    text = (
        "Edits z' = z + alpha * d judged by the classifier. Flip rate: share of samples without the "
        "attribute (p < 0.5) that have it after the edit; increase rate: share whose probability rose. "
        "'kept fixed': the attributes a conditional direction is orthogonal to; the last two columns are the "
        "mean |change| of their probabilities and of all other attributes' (lower = less entangled).\n\n"
        + markdown_table(header, rows)
    )
    vmax = max((float(np.abs(e.mean_change).max()) for e in study.effects), default=1.0) or 1.0
    for kind in ("plain", "conditional"):
        rows_names, matrix = study.matrix(kind)
        if not rows_names:
            continue
        heatmap(
            matrix,
            rows_names,
            study.names,
            out / f"entanglement_{kind}.png",
            f"mean change of classifier probabilities, {kind} edits (rows: edited attribute)",
            vmax=vmax,
            colour_label="mean change of p",
        )
        text += f"\n![{kind} entanglement](edit/entanglement_{kind}.png)\n"
    return text


def write_edit_pictures(
    model: GenerativeModule,
    directions: Directions,
    latents: torch.Tensor,
    attributes: Sequence[str],
    alphas: Sequence[float],
    alpha: float,
    out_dir: str | Path,
    labels: torch.Tensor | None = None,
    condition_on: Sequence[str] | None = None,
    condition_top_k: int = 1,
    batch_size: int = 64,
) -> list[Path]:
    """Per attribute: `strip_<attr>.png` (original, +alpha plain, +alpha conditional, -alpha plain, one
    row per latent) and `progression_<attr>.png` (the plain edit over every alpha)."""
    out = Path(out_dir)
    written = []
    for attribute in attributes:
        normal = directions.normal(attribute)
        conditions = edit_conditions(directions, attribute, condition_on, condition_top_k)
        columns = [("original", latents), (f"+{alpha:g}", edit_latents(latents, normal, alpha))]
        if conditions:
            cond = directions.conditional(attribute, conditions)
            columns.append((f"+{alpha:g} cond.", edit_latents(latents, cond, alpha)))
        columns.append((f"-{alpha:g}", edit_latents(latents, normal, -alpha)))
        strip = torch.stack([generate_batched(model, z, labels, batch_size) for _, z in columns], dim=1)
        rows = [f"#{i}" for i in range(len(latents))]
        written.append(
            save_png(image_table(strip, [c for c, _ in columns], rows), out / f"strip_{attribute}.png")
        )
        frames = progression(model, latents, normal, alphas, labels, batch_size)
        table = image_table(frames, [f"{a:+g}" if a else "0" for a in alphas], rows)
        written.append(save_png(table, out / f"progression_{attribute}.png"))
    return written
