"""Conditional discriminators for the cGAN family: one DCGAN trunk, four ways to use the condition.

The generator is `genface.nets.dcgan.DCGANGenerator` with `num_classes`: it concatenates the condition
(one-hot class, or the 0/1 attribute vector as it comes) to z. Discriminator heads:

- ``concat``: the condition as constant maps concatenated to the image channels (the cGAN / Pix2Pix / DDPM lab's cGAN);
  one real/fake logit.
- ``projection`` (Miyato & Koyama 2018): logit = ψ(φ(x)) + <W c, φ(x)>, c the one-hot / multi-hot
  condition: the label enters as an inner product with the features, not as input channels.
- ``multiclass``: the cGAN / Pix2Pix / DDPM lab's (K+1)-way discriminator: K real classes + "generated", no label input.
- ``acgan`` (Odena et al. 2017): a real/fake logit plus K auxiliary class (or attribute) logits.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genface.nets.dcgan import DCGANDiscriminator, dcgan_init

Head = Literal["concat", "projection", "multiclass", "acgan"]
HEADS: tuple[str, ...] = ("concat", "projection", "multiclass", "acgan")


def condition_vector(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (N,) -> one-hot (N, K); attribute vectors (N, K) pass through as float."""
    if y.dim() == 1:
        return F.one_hot(y.long(), num_classes).float()
    if y.dim() != 2 or y.shape[1] != num_classes:
        raise ValueError(f"expected class indices (N,) or condition vectors (N, {num_classes}), got {tuple(y.shape)}")
    return y.float()


class ConditionalDiscriminator(nn.Module):
    """(image, condition) -> logits (N, out_features): 1 (concat, projection), K+1 (multiclass), 1+K (acgan).

    The trunk is DCGAN's 4-2-1 feature stack (`DCGANDiscriminator.features`, down to 4x4); its last 4x4
    convolution is replaced by this head's, with as many outputs as the head needs.
    """

    def __init__(
        self,
        head: Head,
        num_classes: int,
        width: int = 64,
        resolution: int = 32,
        channels: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"model.head={head!r} is not a discriminator head; allowed: {', '.join(HEADS)}")
        if num_classes < 1:
            raise ValueError(f"a conditional discriminator needs num_classes >= 1, got {num_classes}")
        self.head, self.num_classes = head, num_classes
        in_channels = channels + num_classes if head == "concat" else channels
        trunk = DCGANDiscriminator(width, resolution, in_channels, bias)
        self.features = trunk.features
        feature_channels = trunk.head.in_channels
        self.out_features = {"concat": 1, "projection": 1, "multiclass": num_classes + 1, "acgan": 1 + num_classes}[head]
        self.out = nn.Conv2d(feature_channels, self.out_features, 4, 1, 0, bias=bias)
        self.embed = nn.Linear(num_classes, feature_channels * 16, bias=False) if head == "projection" else None
        dcgan_init(self.out)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = condition_vector(y, self.num_classes).to(x.dtype)
        if self.head == "concat":
            x = torch.cat([x, c[:, :, None, None].expand(-1, -1, *x.shape[-2:])], dim=1)
        h = self.features(x)
        logits = self.out(h).flatten(1)
        if self.embed is not None:
            logits = logits + (self.embed(c) * h.flatten(1)).sum(1, keepdim=True)
        return logits
