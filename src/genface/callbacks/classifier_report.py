"""Per-attribute classifier metrics as files: a Markdown table, a CSV and a bar chart per split, and test
faces captioned with what the classifier predicted against the truth."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from genface.analysis.tables import markdown_table, write_csv, write_text
from genface.models.classifier import METRICS, Classifier
from genface.viz.analysis import Caption, captioned_grid, metric_bars
from genface.viz.grids import save_png

log = logging.getLogger(__name__)

RIGHT, WRONG = (0, 128, 0), (200, 0, 0)


def prediction_captions(
    proba: torch.Tensor, targets: torch.Tensor, names: list[str], label_kind: str, top_k: int = 4
) -> list[list[Caption]]:
    """Caption lines per image: for classes, the predicted class and its probability (green when right; red,
    with the true class, when wrong); for attributes, the `top_k` most probable of those predicted present
    (green when present, red when not), then the present ones it missed (red)."""
    captions = []
    for p, y in zip(proba.tolist(), targets.tolist()):
        if label_kind == "class":
            pred = max(range(len(p)), key=p.__getitem__)
            lines = [(f"{names[pred]} {p[pred]:.2f}", RIGHT if pred == int(y) else WRONG)]
            if pred != int(y):
                lines.append((f"true: {names[int(y)]}", WRONG))
        else:
            present = sorted((j for j in range(len(p)) if p[j] > 0.5), key=lambda j: -p[j])[:top_k]
            lines = [(f"{names[j]} {p[j]:.2f}", RIGHT if y[j] > 0.5 else WRONG) for j in present]
            missed = [names[j] for j in range(len(p)) if y[j] > 0.5 and p[j] <= 0.5]
            if missed:
                lines.append(("missed: " + ", ".join(missed), WRONG))
        captions.append(lines)
    return captions


class ClassifierReport(pl.Callback):
    """After each validation run and after testing, writes `<dirpath>/classifier_<split>.{md,csv,png}`.

    The numbers are the ones the `Classifier` computed and logged at that epoch end (`results`), so the
    files and the logs always agree; the bar chart shows balanced accuracy and AUROC per class with a
    dashed line at `target` (e.g. the 95 % that synthfaces attributes must reach). After testing,
    `classifier_test_examples.png` shows the first `examples` test images (of a genface DataModule) captioned
    with the predictions against the truth (`prediction_captions`): the errors behind the numbers.
    """

    def __init__(
        self, dirpath: str | None = None, target: float | None = 0.95, examples: int = 16, top_k: int = 4
    ) -> None:
        if examples < 0 or top_k < 1:
            raise ValueError(f"callbacks.classifier_report: examples must be >= 0 and top_k >= 1, got {examples}, {top_k}")
        self.dirpath, self.target, self.examples, self.top_k = dirpath, target, examples, top_k
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

    def write_examples(self, trainer: pl.Trainer, module: Classifier, split: str) -> Path | None:
        """`classifier_<split>_examples.png`: the split's first `examples` images, captioned; None without a
        genface DataModule (`split_dataset`) or with `examples=0`."""
        datamodule = trainer.datamodule
        if not self.examples or not callable(getattr(datamodule, "split_dataset", None)):
            return None
        dataset = datamodule.split_dataset(split)
        n = min(self.examples, len(dataset))
        if not n:
            return None
        images, targets = zip(*(dataset[i] for i in range(n)))
        x, y = torch.stack(images), torch.stack(targets)
        was_training = module.training
        module.eval()  # batch-norm statistics, not the batch's
        with torch.no_grad():
            proba = module.predict_proba(x.to(module.device)).float().cpu()
        module.train(was_training)
        captions = prediction_captions(proba, y, module.class_names, module.label_kind, self.top_k)
        path = save_png(captioned_grid(x, captions), self.report_dir(trainer) / f"classifier_{split}_examples.png")
        if path not in self.written:
            self.written.append(path)
        return path

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and isinstance(pl_module, Classifier):
            self.write(trainer, pl_module, "val")

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(pl_module, Classifier):
            for path in [*self.write(trainer, pl_module, "test"), self.write_examples(trainer, pl_module, "test")]:
                if path is not None:
                    log.info("classifier test report: %s", path)
