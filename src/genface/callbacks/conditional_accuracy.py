"""Conditional accuracy: does a conditional generator produce what it is asked for?

An independently trained classifier (a genface `Classifier` checkpoint, trained on the real images of the
same DataModule) labels generated samples; the score is the share of samples it assigns the requested
class, or, for attributes, all requested attributes (``val/cond_acc``; per attribute
``val/cond_acc/<name>``). The classifier's accuracy on real validation images (``val/cond_acc_real``) is
the ceiling that puts the number in context.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from genface.data.labels import missing_names, name_indices
from genface.metrics.scoring import generate_fake_batches, rank_share
from genface.models.base import GenerativeModule


class ConditionalAccuracy(pl.Callback):
    """Logs conditional accuracy every `every_n_epochs` validation epochs (and after the last).

    Each rank generates its share of `n` samples from latents seeded `seed + rank` with the model's
    `default_labels` (every condition in turn); counts are summed across ranks. The classifier is
    matched to the model by name: the model's classes / attributes must all be among the classifier's
    `class_names`, which may hold more (an all-attribute classifier serves any attribute subset).

    Args:
        classifier_path: checkpoint of a classifier with `predict_proba`, `class_names`, `label_kind` and
            `input_resolution`, loadable with `genface.models.load_module`. None: the callback only warns
            that conditional accuracy is off (experiments list it so that one override turns it on).
        n: generated samples per evaluation.
        threshold: probability above which an attribute counts as present.
    """

    def __init__(
        self,
        classifier_path: str | None,
        n: int = 512,
        batch_size: int = 128,
        every_n_epochs: int = 1,
        seed: int = 4321,
        threshold: float = 0.5,
        real_split: str = "val",
    ) -> None:
        if n < 1 or batch_size < 1 or every_n_epochs < 1:
            raise ValueError("callbacks.conditional_accuracy: n, batch_size and every_n_epochs must be >= 1")
        self.classifier_path = classifier_path
        self.n, self.batch_size, self.every_n_epochs = n, batch_size, every_n_epochs
        self.seed, self.threshold, self.real_split = seed, threshold, real_split
        self.classifier: pl.LightningModule | None = None
        self._columns: torch.Tensor | None = None
        self._real_accuracy: float | None = None
        self.last_values: dict[str, float] | None = None

    # ----------------------------------------------------------------------------------------- setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, GenerativeModule) or not getattr(pl_module, "condition", None):
            raise TypeError(
                "ConditionalAccuracy needs a conditional GenerativeModule that names its conditions (`condition`, "
                f"`label_kind`), such as ConditionalGAN; got {type(pl_module).__name__}"
            )
        if self.classifier_path is None:
            warnings.warn(
                "val/cond_acc is off: set callbacks.conditional_accuracy.classifier_path to a genface classifier "
                "checkpoint trained on the same data",
                stacklevel=2,
            )
            return
        if self.classifier is None:
            from genface.models import load_module

            self.classifier = self.attach(load_module(Path(self.classifier_path)), pl_module)

    def attach(self, classifier: pl.LightningModule, model: GenerativeModule) -> pl.LightningModule:
        """Check that `classifier` can judge `model`'s conditions and map them to its outputs."""
        wanted = [str(name) for name in model.condition]
        kind = model.label_kind
        names = [str(name) for name in classifier.class_names]
        if classifier.label_kind != kind:
            raise ValueError(
                f"classifier {self.classifier_path} predicts {classifier.label_kind} but the model is conditioned on {kind}"
            )
        missing = missing_names(names, wanted)
        if missing:
            raise ValueError(
                f"classifier {self.classifier_path} does not know {missing} (it predicts {names}); train it on the "
                "same data as the generator"
            )
        self._columns = torch.tensor(name_indices(names, wanted))
        classifier.eval().requires_grad_(False)
        return classifier

    # ---------------------------------------------------------------------------------------- scoring
    def _agreement(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Classes: (N,) 1 where the classifier's top class is the requested one. Attributes: (N, K) 1 where
        the classifier's decision on that attribute matches the request."""
        assert self.classifier is not None and self._columns is not None
        size = int(self.classifier.input_resolution)
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        proba = self.classifier.predict_proba(images.to(self.classifier.device)).to(labels.device)
        columns = self._columns.to(labels.device)
        if self.classifier.label_kind == "class":
            return (proba.argmax(1) == columns[labels]).float()
        return ((proba[:, columns] > self.threshold).float() == labels.float()).float()

    @staticmethod
    def _full_match(agreement: torch.Tensor) -> torch.Tensor:
        return agreement if agreement.dim() == 1 else agreement.min(1).values

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking or self.classifier is None:
            return False
        last = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        return last or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @torch.no_grad()
    def _real_accuracy_of(self, trainer: pl.Trainer, model: GenerativeModule) -> float | None:
        """The classifier's accuracy on up to `n` real images of `real_split` (computed once)."""
        if self._real_accuracy is None:
            dm = trainer.datamodule
            if not hasattr(dm, "split_dataset"):
                return None
            dataset = dm.split_dataset(self.real_split)
            loader = DataLoader(Subset(dataset, range(min(self.n, len(dataset)))), batch_size=self.batch_size)
            hits = [
                self._full_match(self._agreement(x.to(model.device), model.check_labels(y.to(model.device))))
                for x, y in loader
            ]
            self._real_accuracy = float(torch.cat(hits).mean())
        return self._real_accuracy

    @torch.no_grad()
    def counts(self, model: GenerativeModule, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """This rank's [fully matching samples, samples, hits per condition (K), samples per condition (K)].

        Per condition: classes count the samples requested as that class; attributes count every sample.
        """
        assert self.classifier is not None
        self.classifier.to(model.device)
        k = model.num_classes
        labels = model.default_labels(rank_share(self.n, rank, world_size)).to(model.device)
        total = torch.zeros(2 + 2 * k, dtype=torch.float64, device=model.device)
        start = 0
        for images in generate_fake_batches(model, self.n, self.batch_size, self.seed, rank, world_size):
            y = labels[start : start + len(images)]
            start += len(images)
            agreement = self._agreement(images, y)
            hit = self._full_match(agreement)
            total[0] += hit.sum()
            total[1] += len(hit)
            if agreement.dim() == 1:
                requested = F.one_hot(y, k).double()
                total[2 : 2 + k] += (requested * hit[:, None]).sum(0)
                total[2 + k :] += requested.sum(0)
            else:
                total[2 : 2 + k] += agreement.sum(0)
                total[2 + k :] += len(hit)
        return total

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer):
            return
        assert isinstance(pl_module, GenerativeModule)
        counts = trainer.strategy.reduce(self.counts(pl_module, trainer.global_rank, trainer.world_size), reduce_op="sum")
        k = pl_module.num_classes
        values = {"val/cond_acc": float(counts[0] / counts[1])}
        for i, name in enumerate(pl_module.condition):
            if counts[2 + k + i] > 0:
                values[f"val/cond_acc/{name}"] = float(counts[2 + i] / counts[2 + k + i])
        real = self._real_accuracy_of(trainer, pl_module)
        if real is not None:
            values["val/cond_acc_real"] = real
        self.last_values = values
        for key, value in values.items():
            # Already global (summed across ranks): no further reduction.
            pl_module.log(key, value, sync_dist=False, rank_zero_only=False)
