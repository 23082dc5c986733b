"""Image classifier (ResNet-18 by default) for class labels or multi-label face attributes.

It annotates generated images for the latent-space analysis (`genface sample classifier=...`,
`genface analyze`), and its penultimate features serve as the `classifier` FID/KID extractor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassSpecificity,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelF1Score,
    MultilabelRecall,
    MultilabelSpecificity,
)

from genface.models.base import GenfaceModule

log = logging.getLogger(__name__)

LABEL_KINDS = ("class", "attributes")
#: Per-class metrics computed at validation and test end, in table order.
METRICS = ("acc", "bal_acc", "f1", "auroc")


def balanced_thresholds(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per attribute, the logit cut that maximises balanced accuracy (Youden's J) on (N, K) scores.

    A cut lies halfway between two distinct neighbouring scores, so ties never split. An attribute that is
    absent from (or fills) the split, or whose scores do no better than chance, keeps the cut 0 (p = 0.5).
    """
    logits, targets = logits.detach().float().cpu(), targets.detach().float().cpu()
    cuts = torch.zeros(logits.shape[1])
    for j in range(logits.shape[1]):
        scores, order = torch.sort(logits[:, j], descending=True)
        y = targets[order, j]
        pos = y.sum()
        neg = len(y) - pos
        if pos == 0 or neg == 0:
            continue
        # youden[i]: the top i + 1 scores called positive; a cut only where the next score is lower.
        youden = torch.cumsum(y, 0) / pos - torch.cumsum(1 - y, 0) / neg
        distinct = torch.ones_like(youden, dtype=torch.bool)
        distinct[:-1] = scores[:-1] > scores[1:]
        youden = torch.where(distinct, youden, -torch.inf)
        i = int(torch.argmax(youden))
        if youden[i] <= 0:
            continue
        cuts[j] = (scores[i] + scores[i + 1]) / 2 if i + 1 < len(scores) else scores[i] - 1.0
    return cuts


class Classifier(GenfaceModule):
    """Multi-label (BCE) or multi-class (cross-entropy) classifier of images in [-1, 1].

    `net` (a network with `features(x) -> (N, D)` and `forward(x) -> (N, K)` logits, e.g.
    `genface.nets.resnet.resnet18`), `optimizer` and the optional `scheduler` are Hydra configs (plain
    dicts, the optimisers partial) so that `load_from_checkpoint` rebuilds the model from its
    hyper-parameters. With `class_names=None` the names, hence the number of outputs, come from the
    DataModule when training starts and are then stored in the hyper-parameters.

    Args:
        label_kind: "attributes" (targets float (K,) of 0/1) or "class" (targets long).
        input_resolution: inputs of any size are resized (bilinear, antialiased) to this side.
        pos_weight: BCE weights of the positive class per attribute, "auto" (neg/pos counts of the
            train split, for rare attributes) or None.
        calibrate: attributes only: after each validation epoch, set each attribute's decision cut to
            the one with the best balanced accuracy on the validation split (`balanced_thresholds`);
            `predict_proba` and the test metrics then read p = 0.5 at that cut. Validation metrics use
            the plain cut (logit 0), so model selection never sees its own calibration. Stored in the
            checkpoint as `decision_logit`.
    """

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        label_kind: Literal["class", "attributes"] = "attributes",
        class_names: list[str] | None = None,
        input_resolution: int = 64,
        pos_weight: list[float] | Literal["auto"] | None = None,
        calibrate: bool = False,
    ) -> None:
        super().__init__()
        if label_kind not in LABEL_KINDS:
            raise ValueError(
                f"model.label_kind={label_kind!r} is not allowed; allowed: {', '.join(LABEL_KINDS)}"
            )
        if pos_weight is not None and label_kind != "attributes":
            raise ValueError("model.pos_weight applies to label_kind='attributes' (BCE) only")
        if isinstance(pos_weight, str) and pos_weight != "auto":
            raise ValueError(f"model.pos_weight must be a list of floats, 'auto' or null, got {pos_weight!r}")
        if int(input_resolution) < 1:
            raise ValueError(
                f"model.input_resolution must be a positive number of pixels, got {input_resolution}"
            )
        self.save_hyperparameters()
        self.label_kind: str = label_kind
        self.input_resolution = int(input_resolution)
        self.class_names: list[str] = []
        self.net: nn.Module | None = None
        #: split -> metric name -> one value per class; filled at validation / test epoch end.
        self.results: dict[str, dict[str, list[float]]] = {}
        self._updated: set[str] = set()
        #: raw validation logits and targets of the running epoch, for `calibrate`.
        self._val_scores: list[tuple[torch.Tensor, torch.Tensor]] = []
        if class_names:
            self._build(list(class_names))

    # ----- construction ---------------------------------------------------------------------------
    def _build(self, class_names: list[str]) -> None:
        k = len(class_names)
        if len(set(class_names)) != k:
            raise ValueError(f"model.class_names has duplicates: {class_names}")
        declared = self.hparams.net.get("num_outputs")
        if declared is not None and declared != k:
            raise ValueError(f"model.net.num_outputs={declared} but there are {k} class names: {class_names}")
        self.class_names = class_names
        self.net = instantiate(self.hparams.net, num_outputs=k)
        if not callable(getattr(self.net, "features", None)):
            raise TypeError(
                f"model.net ({self.hparams.net.get('_target_')}) must define features(x) -> (N, D)"
            )
        pos_weight = self.hparams.pos_weight
        if pos_weight is None:
            self.bce_pos_weight = None
        else:
            values = (
                torch.ones(k) if pos_weight == "auto" else torch.as_tensor(pos_weight, dtype=torch.float32)
            )
            if values.shape != (k,):
                raise ValueError(f"model.pos_weight has {values.numel()} values for {k} attributes")
            self.register_buffer("bce_pos_weight", values)
        # Logit at which an attribute is called present (0 unless `calibrate` found a better one).
        self.register_buffer("decision_logit", torch.zeros(k))
        self.val_metrics = self._metrics(k, "val/")
        self.test_metrics = self._metrics(k, "test/")

    def _metrics(self, k: int, prefix: str) -> MetricCollection:
        if self.label_kind == "attributes" and k == 1:  # torchmetrics' multilabel needs >= 2 labels
            metrics = {
                "acc": BinaryAccuracy(),
                "recall": BinaryRecall(),
                "specificity": BinarySpecificity(),
                "f1": BinaryF1Score(),
                "auroc": BinaryAUROC(),
            }
        elif self.label_kind == "attributes":
            metrics = {
                "acc": MultilabelAccuracy(num_labels=k, average=None),
                "recall": MultilabelRecall(num_labels=k, average=None),
                "specificity": MultilabelSpecificity(num_labels=k, average=None),
                "f1": MultilabelF1Score(num_labels=k, average=None),
                "auroc": MultilabelAUROC(num_labels=k, average=None),
            }
        else:
            # Per class, one-vs-rest: "accuracy" is the class's recall, as torchmetrics defines it.
            metrics = {
                "acc": MulticlassAccuracy(num_classes=k, average=None),
                "specificity": MulticlassSpecificity(num_classes=k, average=None),
                "f1": MulticlassF1Score(num_classes=k, average=None),
                "auroc": MulticlassAUROC(num_classes=k, average=None),
            }
        return MetricCollection(metrics, prefix=prefix)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is not None and getattr(dm, "label_kind", self.label_kind) != self.label_kind:
            raise ValueError(
                f"model.label_kind={self.label_kind!r} but the data ({type(dm).__name__}) has label_kind="
                f"{dm.label_kind!r}: set model.label_kind to match"
            )
        names = list(getattr(dm, "class_names", []) or [])
        if self.net is None:
            if not names:
                raise ValueError(
                    "model.class_names is empty and the DataModule names no classes or attributes"
                )
            self._build(names)
            self.hparams["class_names"] = names  # so that load_from_checkpoint builds the same head
        elif names and names != self.class_names:
            raise ValueError(
                f"the classifier predicts {self.class_names} but the data provides {names}: "
                "train a new classifier or select the same attributes (data.attributes)"
            )
        if stage == "fit" and self.hparams.pos_weight == "auto":
            self.bce_pos_weight.copy_(self._auto_pos_weight(dm))

    def _auto_pos_weight(self, dm: Any) -> torch.Tensor:
        """neg / pos per attribute over the train split's targets (read without decoding any image)."""
        if dm is None or not hasattr(dm, "split_dataset"):
            raise ValueError("model.pos_weight='auto' needs a genface DataModule (its train split's targets)")
        targets = np.asarray(dm.split_dataset("train").targets, dtype=np.float64)
        pos = targets.sum(axis=0)
        weight = (len(targets) - pos) / np.maximum(pos, 1.0)
        log.info(
            "BCE pos_weight (neg/pos of the train split): %s", dict(zip(self.class_names, weight.round(2)))
        )
        return torch.as_tensor(weight, dtype=torch.float32)

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ----- inference ------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Match the net's channels (grey <-> RGB) and `input_resolution`."""
        if self.net is None:
            raise RuntimeError(
                "the classifier has no network yet: give class_names or call trainer.fit first"
            )
        want = getattr(self.net, "in_channels", x.shape[1])
        if x.shape[1] != want:
            x = x.mean(dim=1, keepdim=True) if want == 1 else x.expand(-1, want, -1, -1)
        size = (self.input_resolution, self.input_resolution)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of images (N, C, H, W) in [-1, 1] of any size."""
        return self.net(self._prepare(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, D): what the `classifier` FID/KID extractor measures."""
        return self.net.features(self._prepare(x))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) probabilities: softmax over classes, or an independent sigmoid per attribute.

        Attribute probabilities are centred on the decision cut: p > 0.5 means "present" at the
        calibrated threshold (see `calibrate`).
        """
        logits = self(x)
        return logits.softmax(dim=1) if self.label_kind == "class" else self._attribute_proba(logits)

    def _attribute_proba(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits - self.decision_logit)

    # ----- training -------------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.label_kind == "class":
            return F.cross_entropy(logits, target.long())
        return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=self.bce_pos_weight)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        # No prog_bar: the progress bar reads its values back to the host at every step.
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=x.size(0))
        return loss

    @property
    def calibrates(self) -> bool:
        return bool(self.hparams.get("calibrate")) and self.label_kind == "attributes"

    def _eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, split: str
    ) -> None:
        x, y = batch
        logits = self(x).float()  # metrics, losses and calibration in float32 also under autocast
        if split == "val" and self.calibrates and not self.trainer.sanity_checking:
            self._val_scores.append((logits.detach(), y.detach().float()))
        self.log(
            f"{split}/loss",
            self._loss(logits, y),
            batch_size=x.size(0),
            sync_dist=True,
            prog_bar=split == "val",
        )
        if self.label_kind == "class":
            metrics.update(logits.softmax(dim=1), y.long())
        else:
            # Validation judges the plain cut; test (and every later use) the calibrated one.
            proba = torch.sigmoid(logits) if split == "val" else self._attribute_proba(logits)
            if proba.shape[1] == 1:
                metrics.update(proba[:, 0], y[:, 0].long())
            else:
                metrics.update(proba, y.long())
        self._updated.add(split)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def _epoch_end(self, metrics: MetricCollection, split: str) -> None:
        if split not in self._updated:
            return
        self._updated.discard(split)
        raw = {k.removeprefix(f"{split}/"): v.float().cpu().reshape(-1) for k, v in metrics.compute().items()}
        metrics.reset()
        # Balanced accuracy per class: mean of the recall of positives and of negatives (one-vs-rest).
        recall = raw.pop("recall", raw["acc"] if self.label_kind == "class" else None)
        table = {
            "acc": raw["acc"],
            "bal_acc": (recall + raw["specificity"]) / 2,
            "f1": raw["f1"],
            "auroc": raw["auroc"],
        }
        # AUROC is undefined for a class absent from (or filling) the split.
        table = {k: torch.where(torch.isfinite(v), v, torch.nan) for k, v in table.items()}
        self.results[split] = {k: v.tolist() for k, v in table.items()}
        summary = {f"{split}/{k}_mean": v.nanmean() for k, v in table.items()}
        summary[f"{split}/bal_acc_min"] = table["bal_acc"].nan_to_num(nan=1.0).min()
        self.log_dict(summary, prog_bar=split == "val")
        # Per class only the headline metric: every metric of every class is in `results` (and the
        # ClassifierReport files); 4 x 40 logged curves would drown the loggers and run tables.
        self.log_dict({f"{split}/bal_acc/{name}": v for name, v in zip(self.class_names, table["bal_acc"])})

    def on_validation_epoch_end(self) -> None:
        self._epoch_end(self.val_metrics, "val")
        if self._val_scores:
            logits, targets = (torch.cat(t) for t in zip(*self._val_scores))
            self._val_scores.clear()
            # Every rank gets every rank's scores, hence the same cuts.
            k = logits.shape[1]
            logits, targets = self.all_gather(logits).reshape(-1, k), self.all_gather(targets).reshape(-1, k)
            self.decision_logit.copy_(balanced_thresholds(logits, targets).to(self.decision_logit))

    def on_test_epoch_end(self) -> None:
        self._epoch_end(self.test_metrics, "test")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints from before calibration existed hold no cut: the plain one (logit 0).
        state = checkpoint.get("state_dict", {})
        if self.net is not None and "decision_logit" not in state:
            state["decision_logit"] = torch.zeros(self.num_outputs)


def load_classifier(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """A trained classifier from its checkpoint, in eval mode (the counterpart of `load_generative`)."""
    from genface.models import load_module

    model = load_module(ckpt_path, map_location)
    if not isinstance(model, Classifier):
        raise TypeError(f"{ckpt_path} holds a {type(model).__name__}, not a genface Classifier")
    return model
