"""GAN losses and regularisers shared by every adversarial family.

Discriminators return raw logits; the sigmoid of seed 001's DG1 is folded into the numerically
stable `binary_cross_entropy_with_logits` (same parameters, same optimum).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GANLoss = Literal["bce", "non_saturating", "hinge", "lsgan"]
GAN_LOSSES = ("bce", "non_saturating", "hinge", "lsgan")


def _check(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"model.loss={kind!r} is not a GAN loss; allowed: {', '.join(GAN_LOSSES)}")


def discriminator_loss(kind: GANLoss, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Loss the discriminator minimises, given its logits on real and generated samples."""
    _check(kind)
    if kind in ("bce", "non_saturating"):
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return 0.5 * ((real_logits - 1) ** 2).mean() + 0.5 * (fake_logits**2).mean()


def generator_loss(kind: GANLoss, fake_logits: torch.Tensor) -> torch.Tensor:
    """Loss the generator minimises. BCE uses the non-saturating form (-log D(G(z))), as DCGAN does."""
    _check(kind)
    if kind in ("bce", "non_saturating"):
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    return 0.5 * ((fake_logits - 1) ** 2).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 = E ||∇_x D(x)||² on real data (Mescheder et al. 2018); `real_inputs` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()
