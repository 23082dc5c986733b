"""A run report that people can look at: loss and FID/KID curves as PNGs and a metrics table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from genface.viz.plots import markdown_table, plot_curves


class RunReport(pl.Callback):
    """Collects every epoch's aggregated metrics (whatever the logger) and writes at the end of fit:
    `<dirpath>/loss_curves.png`, `<dirpath>/fid_curve.png`, `metrics.md`, `metrics.json`.

    Works with any logger, or none, because it reads `trainer.callback_metrics`.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.history: list[dict[str, float]] = []
        self.written: list[Path] = []

    def report_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "report")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step"):
                continue
            v = float(value)
            if math.isfinite(v):
                row[key.removesuffix("_epoch")] = v
        self.history.append(row)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        out = self.report_dir(trainer)
        keys = sorted({k for row in self.history for k in row} - {"epoch", "step"})
        losses = [k for k in keys if "loss" in k]
        quality = [k for k in keys if k.split("/")[-1].startswith(("fid", "kid", "rfid", "rkid"))]
        self.written = [
            p
            for p in (
                plot_curves(self.history, losses, out / "loss_curves.png", "losses per epoch", ylabel="loss"),
                plot_curves(self.history, quality, out / "fid_curve.png", "FID / KID per epoch (see fid_protocol.json)"),
            )
            if p is not None
        ]
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.md").write_text(markdown_table(self.history, keys))
        (out / "metrics.json").write_text(json.dumps(self.history, indent=1))
        self.written += [out / "metrics.md", out / "metrics.json"]
