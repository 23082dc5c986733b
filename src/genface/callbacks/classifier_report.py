"""Per-attribute classifier metrics as files: a Markdown table, a CSV and a bar chart per split."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from genface.analysis.report import markdown_table, write_csv, write_text
from genface.models.classifier import METRICS, Classifier
from genface.viz.analysis import metric_bars

log = logging.getLogger(__name__)


class ClassifierReport(pl.Callback):
    """After each validation run and after testing, writes `<dirpath>/classifier_<split>.{md,csv,png}`.

    The numbers are the ones the `Classifier` computed and logged at that epoch end (`results`), so the
    files and the logs always agree; the bar chart shows balanced accuracy and AUROC per class with a
    dashed line at `target` (e.g. the 95 % that synthfaces attributes must reach).
    """

    def __init__(self, dirpath: str | None = None, target: float | None = 0.95) -> None:
        self.dirpath, self.target = dirpath, target
        self.written: list[Path] = []

    def report_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "report")

    def write(self, trainer: pl.Trainer, module: Classifier, split: str) -> list[Path]:
        results = module.results.get(split)
        if not results:
            return []
        out = self.report_dir(trainer)
        names = module.class_names
        header = ["class" if module.label_kind == "class" else "attribute", *METRICS]
        rows = [[name, *(results[m][i] for m in METRICS)] for i, name in enumerate(names)]
        means = [float(np.nanmean(np.asarray(results[m], dtype=float))) for m in METRICS]
        epoch = f"epoch {trainer.current_epoch + 1}" if split == "val" else "tested checkpoint"
        text = f"{split} split, {epoch}\n\n" + markdown_table(header, [*rows, ["**mean**", *means]])
        if self.target is not None:
            below = [name for name, bal in zip(names, results["bal_acc"]) if bal < self.target]
            text += f"\nbalanced accuracy below {self.target:g}: {', '.join(below) or 'none'}\n"
        if split == "test" and module.calibrates:
            cuts = ", ".join(f"{name} {p:.2f}" for name, p in zip(names, module.decision_logit.sigmoid().tolist()))
            text += f"\ndecision cuts (plain probability; calibrated on the validation split, 0.5 = plain): {cuts}\n"
        paths = [
            write_text(out / f"classifier_{split}.md", text),
            write_csv(out / f"classifier_{split}.csv", header, rows),
            metric_bars(
                names,
                {"balanced accuracy": results["bal_acc"], "AUROC": results["auroc"]},
                out / f"classifier_{split}.png",
                f"{split}: per-{header[0]} metrics ({epoch})",
                reference=self.target,
            ),
        ]
        self.written += [p for p in paths if p not in self.written]
        return paths

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and isinstance(pl_module, Classifier):
            self.write(trainer, pl_module, "val")

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(pl_module, Classifier):
            for path in self.write(trainer, pl_module, "test"):
                log.info("classifier test report: %s", path)
