"""What a rehearsal can afford on this machine: the measured cost of a recipe's sampling and analysis, and
the cuts (fewer sampler steps, fewer analysed images) that fit them into a budget of hours.

`genface rehearse` runs a recipe unchanged but for its length; the two things whose length is not the
epoch count are an iterative sampler's steps (a 64 px DDPM sampling FID's 2,048 images over 1,000 ancestral
steps is weeks on 2 CPU cores) and an analysis pipeline's image counts (30,000 samples through DD-GAN and a
256 px classifier). Both are measured on the full-size models before the run, and cut only past the budget.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

#: Default hours of sampling a rehearsal may spend (FID fakes + pictures, or an analysis) before it cuts them.
SAMPLING_BUDGET_H = 1.0


def sampled_images(cfg: DictConfig) -> int:
    """Images one round of the run's periodic outputs samples: FID's fakes, the sample grid, denoising paths."""
    total = 0
    for group in ("metrics", "callbacks"):
        for node in (cfg.get(group) or {}).values():
            if isinstance(node, DictConfig) and "_target_" in node:
                total += int(node.get("n_fake", 0) or 0) + int(node.get("n", 0) or 0)
    return total


def shortened_steps(per_step_s: float, steps: int, images: int, budget_s: float) -> int | None:
    """DDIM steps that sample `images` within `budget_s` at `per_step_s` seconds per image and sampler step
    (at least 1), or None when the recipe's `steps` fit."""
    if per_step_s * steps * images <= budget_s:
        return None
    return max(1, min(steps - 1, int(budget_s // (per_step_s * images))))


def sampling_plan(cfg: DictConfig, budget_h: float, batch: int = 8, device: str = "cpu") -> dict[str, Any]:
    """Measured cost of the recipe's iterative sampler, and the overrides that fit it into `budget_h` hours.

    Builds the full-size model and times `generate` on `batch` latents with DDIM over 1 and 5 steps, after one
    untimed call: the difference is four sampler steps (four network evaluations, eight under classifier-free
    guidance), so the decoding and setup around them cancel. (Without the untimed call, latent diffusion's
    first call paid the set-up and its measured step came out 30 times too cheap.) Untrained weights cost what trained ones do. A generator without
    an iterative sampler (no `sampler`/`sample_steps`/`sampling_timesteps`: the GANs, DD-GAN's fixed T) has
    nothing to shorten: its seconds per image and the projected hours are measured and stated only. Empty for
    models that do not generate (classifiers, translators).
    """
    import hydra
    import torch

    model = hydra.utils.instantiate(cfg.model)
    if not all(hasattr(model, a) for a in ("sample_latents", "generate")):
        return {}
    model.to(device)

    def timed(latents: torch.Tensor, labels: torch.Tensor | None) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(latents.to(device), None if labels is None else labels.to(device))
        if device != "cpu":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    if not all(hasattr(model, a) for a in ("sampler", "sample_steps", "sampling_timesteps")):
        model.eval()
        latents = model.sample_latents(batch, generator=torch.Generator().manual_seed(0))
        labels = model.default_labels(batch) if hasattr(model, "default_labels") else None
        for _ in range(2):  # the second call: the first pays one-off allocations
            seconds = timed(latents, labels) / batch
        images = sampled_images(cfg)
        return {"s_per_image": float(f"{seconds:.3g}"), "images": images,
                "projected_h": round(seconds * images / 3600, 2)}
    model.setup("fit")  # what Lightning calls first (latent diffusion loads its first stage there)
    if float(getattr(model, "latent_scale", 1.0)) == 0.0:
        model.latent_scale.fill_(1.0)  # measured on the first batch in training; any value costs the same
    steps = len(model.sampling_timesteps)
    guided = getattr(model, "num_classes", 0) and getattr(model, "guidance_scale", 1.0) != 1.0
    recipe = {"sampler": model.sampler, "steps": steps, "nfe_per_image": steps * (2 if guided else 1)}
    model.eval()
    model.sampler, timings = "ddim", []
    latents = model.sample_latents(batch, generator=torch.Generator().manual_seed(0))
    labels = model.default_labels(batch) if hasattr(model, "default_labels") else None
    for n_steps in (1, 1, 5):  # the first call pays one-off costs (allocation, thread pools, first-stage decoder)
        model.sample_steps = n_steps
        timings.append(timed(latents, labels))
    per_step = max(timings[2] - timings[1], 1e-6) / 4 / batch  # one sampler step of one image (guidance included)
    images = sampled_images(cfg)
    plan = {**recipe, "s_per_step_per_image": float(f"{per_step:.3g}"), "images": images,
            "projected_h": round(per_step * steps * images / 3600, 2)}
    short = shortened_steps(per_step, steps, images, budget_h * 3600)
    if short is not None:
        plan["rehearsed_with"] = {"sampler": "ddim", "steps": short}
    return plan


def analysis_images(cfg: DictConfig) -> tuple[int, dict[str, int]]:
    """Images `genface analyze task=all` generates and classifies at the recipe's sizes: the edit pictures'
    fixed count, and per size key the images it drives (the sample; the edit study's originals and each
    attribute's plain and conditional edit; rejection's cap, twice with the latent pre-filter)."""
    edit, reject = cfg.edit, cfg.reject
    attributes = len(edit.attributes) if edit.get("attributes") else int(edit.top_k)
    pictures = attributes * int(edit.n_show) * (4 + len(edit.alphas))
    return pictures, {
        "sample.n": int(cfg.sample.n),
        "edit.n": int(edit.n) * (1 + 2 * attributes),
        "reject.max_images": int(reject.max_images) * (2 if reject.get("prefilter") else 1),
    }


def analysis_floors(cfg: DictConfig) -> dict[str, int]:
    """The smallest sizes at which each analysis task can still give its result: samples in which every
    attribute could have `min_count` positive and negative training samples (a direction), the edit pictures'
    rows, and as many rejection proposals as images wanted."""
    d = cfg.directions
    return {"sample.n": math.ceil(2 * int(d.min_count) / (1 - float(d.test_fraction))),
            "edit.n": int(cfg.edit.n_show), "reject.max_images": int(cfg.reject.k)}


def analysis_plan(cfg: DictConfig, generator: Path, classifier: Path, budget_h: float,
                  batch: int = 8) -> dict[str, Any]:
    """Measured cost of the analysis, and the sizes that fit it into `budget_h` hours.

    Times the generator's `generate` and the classifier's `predict_proba` on `batch` latents (the second of
    two calls: the first pays one-off allocations) and projects :func:`analysis_images`. Past the budget, the
    sample count, edited latents and rejection cap shrink by one factor, as they are lengths, but never below
    what lets each task give its result (:func:`analysis_floors`); the pictures, attributes, alpha and
    condition stay the recipe's.
    """
    import torch

    from genface.models import load_generative
    from genface.models.classifier import load_classifier

    g, c = load_generative(generator), load_classifier(classifier)
    latents = g.sample_latents(batch, generator=torch.Generator().manual_seed(0))
    labels = g.default_labels(batch)
    for _ in range(2):
        start = time.perf_counter()
        with torch.no_grad():
            c.predict_proba(g.generate(latents, labels))
        seconds = time.perf_counter() - start
    per_image = seconds / batch
    fixed, scaled = analysis_images(cfg)
    images = fixed + sum(scaled.values())
    plan = {"s_per_image": float(f"{per_image:.3g}"), "images": images, "projected_h": round(per_image * images / 3600, 2)}
    if per_image * images > budget_h * 3600:
        share = max(0.0, budget_h * 3600 / per_image - fixed) / sum(scaled.values())
        recipe = {"sample.n": int(cfg.sample.n), "edit.n": int(cfg.edit.n),
                  "reject.max_images": int(cfg.reject.max_images)}
        floors = analysis_floors(cfg)
        plan["rehearsed_with"] = {key: min(value, max(math.ceil(value * share), floors[key]))
                                  for key, value in recipe.items()}
    return plan
