"""`genface analyze <task>`: latent-space analysis of any generator with a trained classifier (the DD-GAN latent-analysis study).

Tasks (see conf/analyze.yaml): sample, directions, edit, reject, project, all, pipeline. Each writes
`<out>/<task>/` and refreshes `<out>/report.md`, which strings the task summaries together.
"""

from __future__ import annotations

import logging
import sys
from functools import cached_property
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra import compose
from omegaconf import DictConfig, open_dict

from genface.analysis.directions import Directions, fit_directions, write_directions_report
from genface.analysis.editing import run_edit_study, write_edit_pictures, write_edit_report
from genface.analysis.projection import run_projection
from genface.analysis.rejection import parse_condition, rejection_sample, write_rejection_report
from genface.analysis.sampling import Samples, load_samples, sample_to_disk
from genface.analysis.tables import write_report_index, write_text
from genface.config import CONF_PATH
from genface.launch import positional_task
from genface.models import load_generative
from genface.models.base import GenerativeModule
from genface.models.classifier import Classifier, load_classifier

log = logging.getLogger("genface.analyze")

STEPS = ("sample", "directions", "edit", "reject", "project")
TASKS = (*STEPS, "all", "pipeline")
_TITLES = {
    "sample": "Samples",
    "directions": "Latent directions",
    "edit": "Latent edits",
    "reject": "Rejection sampling",
    "project": "Projections",
}


class Analysis:
    """One analysis run: loads the generator, classifier, samples and directions lazily, on first use."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    @cached_property
    def generator(self) -> GenerativeModule:
        if not self.cfg.generator:
            raise ValueError(f"genface analyze {self.cfg.task} needs generator=PATH (a generator checkpoint)")
        return load_generative(self.cfg.generator, map_location=self.device)

    @cached_property
    def classifier(self) -> Classifier:
        if not self.cfg.classifier:
            raise ValueError(
                f"genface analyze {self.cfg.task} needs classifier=PATH (a classifier checkpoint)"
            )
        return load_classifier(self.cfg.classifier, map_location=self.device)

    @cached_property
    def samples(self) -> Samples:
        return load_samples(self.cfg.samples)

    @property
    def directions_file(self) -> Path:
        return self.out / "directions" / "directions.npz"

    @cached_property
    def directions(self) -> Directions:
        return Directions.load(self.directions_file)

    def fresh_latents(self, n: int, offset: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents (and default labels) not used for fitting the directions: seed + offset."""
        g = self.generator
        z = g.sample_latents(n, generator=torch.Generator().manual_seed(self.cfg.seed + offset))
        return z, g.default_labels(n)

    # ----- steps ----------------------------------------------------------------------------------
    def sample(self, only_if_missing: bool = False) -> str:
        cfg = self.cfg
        folder = Path(cfg.samples)
        if only_if_missing and self._samples_usable(folder):
            log.info("reusing the samples in %s", folder)
        else:
            sample_to_disk(
                self.generator,
                folder,
                n=cfg.sample.n,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                progress=cfg.progress,
                classifier=self.classifier,
                save_features=cfg.sample.features,
                overwrite=True,  # the pipeline's own samples folder: re-sampling replaces them
            )
            self.__dict__.pop("samples", None)
        s = self.samples
        rate = np.asarray(s.need_attributes()).mean(axis=0)
        return (
            f"{len(s.latents)} samples of {s.meta.get('model')} (seed {s.meta.get('seed')}), latent width "
            f"{s.latents.shape[1]}, in `{folder}`. Mean classifier probability per attribute: "
            + ", ".join(f"{n} {r:.2f}" for n, r in zip(s.attribute_names, rate))
            + "\n"
        )

    def _samples_usable(self, folder: Path) -> bool:
        try:
            s = load_samples(folder)
        except (FileNotFoundError, ValueError):  # absent, or an unfinished (killed) sampling run
            return False
        return s.attributes is not None and len(s.latents) >= self.cfg.sample.n

    def fit_directions(self) -> str:
        c, s = self.cfg.directions, self.samples
        directions = fit_directions(
            s.latents,
            s.need_attributes(),
            s.attribute_names,
            attributes=c.attributes,
            threshold=c.threshold,
            test_fraction=c.test_fraction,
            C=c.C,
            max_iter=c.max_iter,
            min_count=c.min_count,
            dims=c.dims,
            seed=self.cfg.seed,
        )
        directions.save(self.directions_file)
        self.__dict__["directions"] = directions
        return write_directions_report(directions, self.directions_file.parent)

    def edit_attributes(self) -> list[str]:
        c, d = self.cfg.edit, self.directions
        if c.attributes:
            return list(c.attributes)
        order = np.argsort(-np.nan_to_num(d.probe_bal_acc, nan=0.0))
        return [d.names[i] for i in order[: c.top_k]]

    def edit(self) -> str:
        c = self.cfg.edit
        attributes = self.edit_attributes()
        if not attributes:
            log.warning("edit: no attribute has a direction (see directions/summary.md); nothing to edit")
            return "No attribute has a latent direction to edit (see the directions section).\n"
        z, labels = self.fresh_latents(c.n, offset=1)
        common = dict(
            labels=labels,
            condition_on=c.condition_on,
            condition_top_k=c.condition_top_k,
            batch_size=self.cfg.batch_size,
        )
        study = run_edit_study(
            self.generator, self.classifier, self.directions, z, attributes, c.alpha, **common
        )
        text = write_edit_report(study, self.out / "edit")
        show = slice(0, c.n_show)
        common["labels"] = labels[show] if labels is not None else None
        write_edit_pictures(
            self.generator,
            self.directions,
            z[show],
            attributes,
            c.alphas,
            c.alpha,
            self.out / "edit",
            **common,
        )
        text += "\n" + "\n".join(
            f"![strip {a}](edit/strip_{a}.png) ![progression {a}](edit/progression_{a}.png)"
            for a in attributes
        )
        return text + "\n"

    def reject(self) -> str:
        c = self.cfg.reject
        common = dict(
            condition=c.condition,
            k=c.k,
            batch_size=self.cfg.batch_size,
            max_images=c.max_images,
            seed=self.cfg.seed + 2,
        )
        results = [rejection_sample(self.generator, self.classifier, **common)]
        if c.prefilter:
            missing = self._prefilter_missing(c.condition)
            if missing:
                log.warning("reject.prefilter skipped: %s", missing)
            else:
                results.append(
                    rejection_sample(
                        self.generator,
                        self.classifier,
                        directions=self.directions,
                        prefilter_min=c.prefilter_min,
                        **common,
                    )
                )
        return write_rejection_report(results, c.k, self.out / "reject")

    def _prefilter_missing(self, condition: str) -> str:
        """Why the latent pre-filter cannot run (no directions file, or none for a condition attribute)."""
        if not self.directions_file.is_file():
            return f"no {self.directions_file} yet (run the directions task first)"
        wanted = [clause.name for clause in parse_condition(condition, self.classifier.class_names)]
        lacking = [name for name in wanted if name not in self.directions.names]
        return f"no direction for {lacking} ({self.directions_file})" if lacking else ""

    def project(self) -> str:
        c, s = self.cfg.project, self.samples
        available = {"latents": s.latents, "features": s.features}
        unknown = [name for name in c.spaces if name not in available]
        if unknown:
            raise ValueError(f"project.spaces: unknown {unknown}; allowed: latents, features")
        spaces = {name: available[name] for name in c.spaces if available[name] is not None}
        for name in c.spaces:
            if available[name] is None:
                log.warning(
                    "project: %s has no %s.npy (sample with sample.features=true); skipped", s.root, name
                )
        return run_projection(
            spaces,
            s.need_attributes(),
            s.attribute_names,
            c.attributes,
            c.methods,
            self.out / "project",
            max_points=c.max_points,
            seed=self.cfg.seed,
        )

    def run_step(self, step: str, only_if_missing: bool = False) -> None:
        log.info("analysis step: %s", step)
        text = {
            "sample": lambda: self.sample(only_if_missing),
            "directions": self.fit_directions,
            "edit": self.edit,
            "reject": self.reject,
            "project": self.project,
        }[step]()
        write_text(self.out / step / "summary.md", text)

    def write_index(self) -> Path:
        sections = [
            (_TITLES[step], (self.out / step / "summary.md").read_text())
            for step in STEPS
            if (self.out / step / "summary.md").is_file()
        ]
        cfg = self.cfg
        inputs = f"generator `{cfg.generator}`, classifier `{cfg.classifier}`, samples `{cfg.samples}`"
        return write_report_index(self.out, [("Inputs", inputs), *sections], "genface latent-space analysis")


def train_missing(cfg: DictConfig) -> None:
    """task=pipeline: train the generator (this config, as `genface train`) and the classifier
    (`train_classifier` overrides) when their checkpoints are not given; outputs under <out>/."""
    from genface.train import train

    out = Path(cfg.out)
    if not cfg.generator:
        gcfg = cfg.copy()
        with open_dict(gcfg):
            gcfg.paths.output_dir = str(out / "generator")
        cfg.generator = _best_checkpoint(train(gcfg)[1], "generator")
    if not cfg.classifier:
        overrides = [
            *cfg.train_classifier,
            f"paths.data_dir={cfg.paths.data_dir}",
            f"paths.cache_dir={cfg.paths.cache_dir}",
            f"paths.output_dir={out / 'classifier'}",
        ]
        ccfg = compose(config_name="train", overrides=overrides)
        cfg.classifier = _best_checkpoint(train(ccfg)[1], "classifier")


def _best_checkpoint(trainer, what: str) -> str:
    cb = trainer.checkpoint_callback
    path = (cb.best_model_path or cb.last_model_path) if cb is not None else ""
    if not path:
        raise RuntimeError(f"training the {what} wrote no checkpoint (is the model_checkpoint callback off?)")
    log.info("%s checkpoint: %s", what, path)
    return path


def analyze(cfg: DictConfig) -> Path:
    """Run `cfg.task`; returns the path of report.md."""
    if cfg.task not in TASKS:
        raise ValueError(f"unknown analysis task {cfg.task!r}; tasks: {', '.join(TASKS)}")
    if cfg.task == "pipeline":
        train_missing(cfg)
    analysis = Analysis(cfg)
    if cfg.task in ("all", "pipeline"):
        analysis.run_step("sample", only_if_missing=True)
        for step in STEPS[1:]:
            analysis.run_step(step)
    else:
        analysis.run_step(cfg.task)
    report = analysis.write_index()
    log.info("report: %s", report)
    return report


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="analyze")
def _app(cfg: DictConfig) -> None:
    analyze(cfg)


def main() -> None:
    """`genface analyze directions ...` is `task=directions`: the task may come first, without a key."""
    sys.argv = positional_task(sys.argv, "task", TASKS)
    _app()


if __name__ == "__main__":
    main()
