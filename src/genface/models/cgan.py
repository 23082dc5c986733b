"""Conditional GAN: class labels (digits, MNIST) or binary attributes (synthfaces, CelebA).

One module, four discriminator heads (see `genface.nets.cgan`). Losses per head:

- ``concat``, ``projection``: the adversarial loss `loss` (bce, hinge, lsgan, ...) on the one logit.
- ``multiclass`` (the cGAN / Pix2Pix / DDPM lab): D minimises CE(D(x), y) on reals and CE(D(G(z, y)), K) on fakes (class K =
  "generated"); G minimises CE(D(G(z, y)), y): look real *and* look like the requested class.
- ``acgan``: the adversarial loss on the real/fake logit + `aux_weight` x the auxiliary classification
  loss (cross-entropy for classes, per-attribute BCE for attributes), on reals and fakes for D, on fakes
  for G (Odena et al. 2017).

Fakes are drawn with the labels of the real batch, so G sees the data's label distribution.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from genface.losses import GAN_LOSSES, discriminator_loss, generator_loss
from genface.models.base import GANModule
from genface.nets.cgan import HEADS

LabelKind = Literal["class", "attributes"]
LABEL_KINDS = ("class", "attributes")


class ConditionalGAN(GANModule):
    """cGAN on (image, label) batches; `generate(latents, labels)` with labels as the data carries them.

    Args:
        generator: Hydra config of a generator `G(z, y)` (DCGANGenerator); `num_classes` is filled in.
        discriminator: Hydra config of a `ConditionalDiscriminator`; `head` and `num_classes` filled in.
        optimizer_g, optimizer_d: partial optimiser configs.
        condition: what the model is conditioned on, in the data's target order: class names
            (`label_kind="class"`) or attribute names (`"attributes"`, e.g. [Smiling, Male, Eyeglasses];
            the data module must select the same attributes: `data.attributes: ${model.condition}`).
        label_kind: "class" (targets are class indices) or "attributes" (0/1 vectors).
        head: "concat", "projection", "multiclass" (classes only) or "acgan".
        loss: adversarial loss of concat / projection / acgan; multiclass trains with cross-entropy and
            accepts only "bce" (its binary special case).
        aux_weight: weight of the acgan auxiliary classification loss.
        d_steps: discriminator updates per generator update.
        ema_decay: keep an EMA of the generator (used by `generate`) when set.
    """

    def __init__(
        self,
        generator: dict[str, Any],
        discriminator: dict[str, Any],
        optimizer_g: dict[str, Any],
        optimizer_d: dict[str, Any],
        condition: list[str],
        label_kind: LabelKind = "class",
        head: str = "concat",
        loss: str = "bce",
        aux_weight: float = 1.0,
        d_steps: int = 1,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        if label_kind not in LABEL_KINDS:
            raise ValueError(
                f"model.label_kind={label_kind!r} is not allowed; allowed: {', '.join(LABEL_KINDS)}"
            )
        if head not in HEADS:
            raise ValueError(f"model.head={head!r} is not allowed; allowed: {', '.join(HEADS)}")
        if loss not in GAN_LOSSES:
            raise ValueError(f"model.loss={loss!r} is not allowed; allowed: {', '.join(GAN_LOSSES)}")
        if not condition:
            raise ValueError(
                "model.condition is empty: name the classes or attributes the model is conditioned on"
            )
        if head == "multiclass" and label_kind != "class":
            raise ValueError(
                "model.head=multiclass is the cGAN / Pix2Pix / DDPM lab's (K+1)-way classifier and needs class labels "
                "(model.label_kind=class); for attributes use concat, projection or acgan"
            )
        if head == "multiclass" and loss != "bce":
            raise ValueError(
                f"model.head=multiclass trains with (K+1)-way cross-entropy: model.loss must be 'bce', got {loss!r}"
            )
        if d_steps < 1:
            raise ValueError(f"model.d_steps must be >= 1, got {d_steps}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.condition = [str(name) for name in condition]
        self.label_kind: LabelKind = label_kind
        self.head = head
        self.generator = instantiate(generator, num_classes=self.num_classes)
        self.discriminator = instantiate(discriminator, head=head, num_classes=self.num_classes)
        if ema_decay:
            self.enable_ema(ema_decay)

    # ----- Generative contract --------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.hparams.condition)

    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim

    def default_labels(self, n: int) -> torch.Tensor:
        """Labels for grids drawn `num_classes` per row (SampleGrid): one condition per row.

        Classes: row r is class r mod K. Attributes: row r is attribute combination r mod 2**K (bits of r,
        first attribute = lowest bit), so every combination appears in turn.
        """
        row = torch.arange(n) // self.num_classes
        if self.label_kind == "class":
            return row % self.num_classes
        combo = row % 2**self.num_classes
        return ((combo[:, None] >> torch.arange(self.num_classes)) & 1).float()

    def check_labels(self, labels: torch.Tensor, check_range: bool = True) -> torch.Tensor:
        """Class indices (N,) in [0, K) or 0/1 attribute vectors (N, K), as the data carries them.

        The range check reads the labels back from the device; training checks only an epoch's first batch
        (`check_range=False` after it), so that its steps never wait for the device.
        """
        k = self.num_classes
        if self.label_kind == "class":
            if labels.dim() != 1 or labels.is_floating_point():
                raise ValueError(
                    f"class-conditional model: labels must be class indices (N,), got {tuple(labels.shape)} {labels.dtype}"
                )
            if check_range and len(labels) and (labels.min() < 0 or labels.max() >= k):
                raise ValueError(
                    f"class labels must lie in [0, {k}), got {int(labels.min())}..{int(labels.max())}"
                )
            return labels.long()
        if labels.dim() != 2 or labels.shape[1] != k:
            raise ValueError(
                f"attribute-conditional model on {self.condition}: labels must be (N, {k}) 0/1 vectors, "
                f"got {tuple(labels.shape)}"
            )
        return labels.float()

    def _generate(self, latents: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        assert labels is not None  # generate() refuses conditional calls without labels
        return self.generator(latents, self.check_labels(labels))

    # ----- losses ---------------------------------------------------------------------------------
    def _aux_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.label_kind == "class":
            return F.cross_entropy(logits, y)
        return F.binary_cross_entropy_with_logits(logits, y)

    def _discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.head == "multiclass":
            fake_class = torch.full_like(y, self.num_classes)
            return F.cross_entropy(real, y) + F.cross_entropy(fake, fake_class)
        adv = discriminator_loss(self.hparams.loss, real[:, 0], fake[:, 0])
        if self.head == "acgan":
            adv = adv + self.hparams.aux_weight * (
                self._aux_loss(real[:, 1:], y) + self._aux_loss(fake[:, 1:], y)
            )
        return adv

    def _generator_loss(self, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.head == "multiclass":
            return F.cross_entropy(fake, y)
        adv = generator_loss(self.hparams.loss, fake[:, 0])
        if self.head == "acgan":
            adv = adv + self.hparams.aux_weight * self._aux_loss(fake[:, 1:], y)
        return adv

    def p_real(self, logits: torch.Tensor) -> torch.Tensor:
        """D's probability that each image is real (multiclass: 1 - P(generated))."""
        if self.head == "multiclass":
            return 1 - logits.softmax(1)[:, -1]
        return torch.sigmoid(logits[:, 0])

    def class_accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """How often D's class output (multiclass, acgan) names the true label; None for the other heads."""
        if self.head == "multiclass":
            return (logits[:, : self.num_classes].argmax(1) == y).float().mean()
        if self.head != "acgan":
            return None
        aux = logits[:, 1:]
        if self.label_kind == "class":
            return (aux.argmax(1) == y).float().mean()
        return ((aux > 0).float() == y).float().mean()

    # ----- training -------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt_g = instantiate(self.hparams.optimizer_g)(params=self.generator.parameters())
        opt_d = instantiate(self.hparams.optimizer_d)(params=self.discriminator.parameters())
        return [opt_g, opt_d]

    def on_fit_start(self) -> None:
        """Refuse data whose labels mean something else than the model's condition (names and kind)."""
        dm = getattr(self.trainer, "datamodule", None)
        names, kind = getattr(dm, "class_names", None), getattr(dm, "label_kind", None)
        if names is None or kind is None:
            return
        if kind != self.label_kind or list(names) != self.condition:
            raise ValueError(
                f"the model is conditioned on {self.label_kind} {self.condition} but {type(dm).__name__} yields "
                f"{kind} {list(names)}; set model.condition (and, for attributes, data.attributes) to match"
            )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real, y = batch
        y = self.check_labels(y, check_range=batch_idx == 0)
        opt_g, opt_d = self.optimizers()
        n = real.size(0)

        for _ in range(self.hparams.d_steps):
            with torch.no_grad():
                fake = self.generator(torch.randn(n, self.latent_dim, device=self.device), y)
            real_logits, fake_logits = self.discriminator(real, y), self.discriminator(fake, y)
            loss_d = self._discriminator_loss(real_logits, fake_logits, y)
            self.optimizer_update(opt_d, loss_d)

        with self.frozen(self.discriminator):
            fake = self.generator(torch.randn(n, self.latent_dim, device=self.device), y)
            loss_g = self._generator_loss(self.discriminator(fake, y), y)
            self.optimizer_update(opt_g, loss_g)
        self.update_ema()

        accuracy = self.class_accuracy(real_logits.detach(), y)
        extra = {} if accuracy is None else {"d_class_acc": accuracy}
        self.log_adversarial(loss_d, loss_g, self.p_real(real_logits), self.p_real(fake_logits), n, **extra)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """D on held-out reals: acceptance (over-fitting signal) and, for heads that classify, accuracy."""
        real, y = batch
        y = self.check_labels(y)
        logits = self.discriminator(real, y).float()  # float32 metrics also under autocast
        logs = {"val/d_real": self.p_real(logits).mean()}
        accuracy = self.class_accuracy(logits, y)
        if accuracy is not None:
            logs["val/d_class_acc"] = accuracy
        self.log_dict(logs, batch_size=real.size(0), sync_dist=True)
