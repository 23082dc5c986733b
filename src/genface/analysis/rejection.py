"""Rejection sampling by classifier: generate until K images satisfy a condition (the DD-GAN latent-analysis study's alternative to
latent edits: slower, but every accepted image is an unedited sample of the model).

A condition is a comma-separated list of clauses on classifier probabilities:
``Eyeglasses=1`` (p >= 0.5), ``Male=0`` (p < 0.5), ``Smiling>0.8``, ``Young<0.3`` (also ``>=``, ``<=``).
An optional pre-filter drops latents that the latent logistic models (`Directions`) find unlikely to
satisfy the condition before any image is generated, trading a little recall for generator time.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genface.analysis.directions import Directions, check_names
from genface.analysis.editing import classify
from genface.analysis.tables import markdown_table, write_json
from genface.models.base import GenerativeModule
from genface.models.classifier import Classifier
from genface.viz.analysis import enlarge
from genface.viz.grids import save_grid

log = logging.getLogger(__name__)

_CLAUSE = re.compile(r"^\s*([^=<>\s]+)\s*(>=|<=|=|>|<)\s*([0-9]*\.?[0-9]+)\s*$")


@dataclass(frozen=True)
class Clause:
    name: str
    op: str
    value: float

    def holds(self, p: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Boolean mask over probabilities `p`; `=1` / `=0` mean at / below the decision threshold."""
        if self.op == "=":
            return p >= threshold if self.value >= 0.5 else p < threshold
        return {">": p > self.value, ">=": p >= self.value, "<": p < self.value, "<=": p <= self.value}[
            self.op
        ]

    @property
    def wants_present(self) -> bool:
        """Whether the clause asks for the attribute (True) or for its absence (False)."""
        return bool(self.holds(np.array([1.0]))[0]) and not bool(self.holds(np.array([0.0]))[0])

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


def parse_condition(text: str, names: Sequence[str]) -> list[Clause]:
    """``"Eyeglasses=1,Male=0,Smiling>0.8"`` -> clauses; unknown names and bad syntax are clear errors."""
    clauses = []
    for part in (p for p in text.split(",") if p.strip()):
        match = _CLAUSE.match(part)
        if match is None:
            raise ValueError(
                f"cannot parse condition clause {part.strip()!r} in {text!r}: expected NAME=0|1 or NAME>p, "
                "NAME<p, NAME>=p, NAME<=p with p in [0, 1], e.g. 'Eyeglasses=1,Male=0,Smiling>0.8'"
            )
        name, op, value = match.group(1), match.group(2), float(match.group(3))
        if op == "=" and value not in (0.0, 1.0):
            raise ValueError(f"condition {part.strip()!r}: '=' takes 0 or 1; use > or < for probabilities")
        if value > 1.0:
            raise ValueError(f"condition {part.strip()!r}: probabilities lie in [0, 1]")
        clauses.append(Clause(name, op, value))
    if not clauses:
        raise ValueError(f"empty condition {text!r}: expected e.g. 'Eyeglasses=1,Male=0,Smiling>0.8'")
    check_names([c.name for c in clauses], names, "attributes in the condition")
    return clauses


def satisfied(probs: np.ndarray, clauses: Sequence[Clause], names: Sequence[str]) -> np.ndarray:
    """(N,) mask of rows of `probs` (N, A) that satisfy every clause."""
    mask = np.ones(len(probs), dtype=bool)
    for c in clauses:
        mask &= c.holds(probs[:, list(names).index(c.name)])
    return mask


def prefilter_scores(latents: np.ndarray, clauses: Sequence[Clause], directions: Directions) -> np.ndarray:
    """(N,) product over clauses of the latent model's probability that the clause's wish holds."""
    check_names(
        [c.name for c in clauses],
        directions.names,
        "condition attributes (pre-filter needs their directions)",
    )
    p = directions.latent_proba(latents)
    score = np.ones(len(latents))
    for c in clauses:
        q = p[:, directions.index(c.name)]
        score *= q if c.wants_present else 1.0 - q
    return score


@dataclass
class RejectionResult:
    condition: str
    images: torch.Tensor  # (accepted, C, H, W)
    latents: torch.Tensor
    probs: np.ndarray  # classifier probabilities of the accepted images
    proposed: int  # latents drawn
    generated: int  # images generated and classified
    satisfying: int  # generated images that satisfied the condition (the last batch may exceed k)
    seconds: float
    prefilter: bool

    @property
    def accepted(self) -> int:
        return len(self.images)

    @property
    def acceptance_rate(self) -> float:
        """Satisfying / generated images (what the generator's time bought)."""
        return self.satisfying / max(1, self.generated)

    def summary(self) -> dict:
        return {
            "condition": self.condition,
            "accepted": self.accepted,
            "generated": self.generated,
            "satisfying": self.satisfying,
            "proposed": self.proposed,
            "acceptance_rate": self.acceptance_rate,
            "seconds": self.seconds,
            "images_per_s": self.generated / max(self.seconds, 1e-9),
            "accepted_per_s": self.satisfying / max(self.seconds, 1e-9),
            "prefilter": self.prefilter,
        }


@torch.no_grad()
def rejection_sample(
    model: GenerativeModule,
    classifier: Classifier,
    condition: str,
    k: int,
    batch_size: int = 64,
    max_images: int = 10000,
    seed: int = 0,
    directions: Directions | None = None,
    prefilter_min: float = 0.1,
) -> RejectionResult:
    """Generate batches until `k` images satisfy `condition` or `max_images` were generated.

    With `directions`, proposals whose pre-filter score (see `prefilter_scores`) is below `prefilter_min`
    are dropped before generation; accepted images are still judged by the classifier. Conditional
    models get their `default_labels`. Stopping at `max_images` returns fewer than `k` images, with a
    warning.
    """
    if k < 1 or max_images < 1:
        raise ValueError(f"reject.k and reject.max_images must be >= 1, got {k} and {max_images}")
    names = list(classifier.class_names)
    clauses = parse_condition(condition, names)
    gen = torch.Generator().manual_seed(seed)
    kept_images, kept_latents, kept_probs = [], [], []
    proposed = generated = satisfying = 0
    start = time.perf_counter()
    while satisfying < k and generated < max_images:
        z = model.sample_latents(batch_size, generator=gen)
        proposed += len(z)
        if directions is not None:
            z = z[torch.from_numpy(prefilter_scores(z.cpu().numpy(), clauses, directions) >= prefilter_min)]
            if not len(z):
                if proposed >= 100 * max_images:
                    break  # the pre-filter rejects (almost) everything: give up rather than spin
                continue
        z = z[: max_images - generated]
        labels = model.default_labels(len(z))
        images = model.generate(z, labels).cpu()
        generated += len(z)
        probs = classify(classifier, images, batch_size)
        mask = satisfied(probs, clauses, names)
        kept_images.append(images[mask])
        kept_latents.append(z.cpu()[mask])
        kept_probs.append(probs[mask])
        satisfying += int(mask.sum())
    seconds = time.perf_counter() - start
    if satisfying < k:
        log.warning(
            "rejection sampling: only %d of %d images satisfy %r after %d generated",
            satisfying,
            k,
            condition,
            generated,
        )
    images = torch.cat(kept_images)[:k] if kept_images else torch.zeros(0, *model.image_shape)
    latents = torch.cat(kept_latents)[:k] if kept_latents else torch.zeros(0, model.latent_dim)
    probs = np.concatenate(kept_probs)[:k] if kept_probs else np.zeros((0, len(names)))
    return RejectionResult(
        ", ".join(map(str, clauses)),
        images,
        latents,
        probs,
        proposed,
        generated,
        satisfying,
        seconds,
        directions is not None,
    )


def write_rejection_report(results: Sequence[RejectionResult], k: int, out_dir: str | Path) -> str:
    """One grid of accepted images per run (`grid_plain.png`, `grid_prefilter.png`) and a table."""
    out = Path(out_dir)
    header = [
        "condition",
        "pre-filter",
        "accepted",
        "generated",
        "proposed",
        "acceptance rate",
        "images/s",
        "accepted/s",
    ]
    rows, pictures = [], []
    for r in results:
        s = r.summary()
        rows.append(
            [
                s["condition"],
                "yes" if r.prefilter else "no",
                f"{r.accepted}/{k}",
                r.generated,
                r.proposed,
                s["acceptance_rate"],
                s["images_per_s"],
                s["accepted_per_s"],
            ]
        )
        if r.accepted:
            name = f"grid_{'prefilter' if r.prefilter else 'plain'}.png"
            save_grid(enlarge(r.images, 64), out / name)
            pictures.append(f"![accepted, pre-filter {'on' if r.prefilter else 'off'}](reject/{name})")
    write_json(out / "reject.json", [r.summary() for r in results])
    text = (
        "Rejection sampling: generate, classify, keep the images whose classifier probabilities satisfy "
        "the condition. Acceptance rate = satisfying / generated images; the pre-filter skips latents that "
        "the latent logistic models find unlikely to qualify.\n\n"
        + markdown_table(header, rows)
        + "\n"
        + "\n".join(pictures)
        + "\n"
    )
    return text
