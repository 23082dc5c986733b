"""GAN losses and regularisers shared by every adversarial family, and the VGG perceptual loss.

Discriminators return raw logits; the sigmoid of DLStudio's DG1 study's DG1 is folded into the numerically
stable `binary_cross_entropy_with_logits` (same parameters, same optimum).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genface.safe_load import safe_load

GANLoss = Literal["bce", "non_saturating", "hinge", "lsgan"]
GAN_LOSSES = ("bce", "non_saturating", "hinge", "lsgan")


def _check(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"model.loss={kind!r} is not a GAN loss; allowed: {', '.join(GAN_LOSSES)}")


def discriminator_loss(kind: GANLoss, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Loss the discriminator minimises, given its logits on real and generated samples (in float32, also
    under bf16/fp16 autocast: softplus and the means must not round)."""
    _check(kind)
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind in ("bce", "non_saturating"):
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return 0.5 * ((real_logits - 1) ** 2).mean() + 0.5 * (fake_logits**2).mean()


def generator_loss(kind: GANLoss, fake_logits: torch.Tensor) -> torch.Tensor:
    """Loss the generator minimises (in float32). BCE uses the non-saturating form (-log D(G(z))), as DCGAN does."""
    _check(kind)
    fake_logits = fake_logits.float()
    if kind in ("bce", "non_saturating"):
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    return 0.5 * ((fake_logits - 1) ** 2).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 = E ||∇_x D(x)||² on real data (Mescheder et al. 2018); `real_inputs` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


#: Indices of ReLU outputs in torchvision's VGG16 `features` (relu1_2, relu2_2, relu3_3, relu4_3), LPIPS' taps.
VGG16_TAPS = (3, 8, 15, 22)
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGGPerceptual(nn.Module):
    """Distance between VGG16 features of two images (LPIPS' taps, unit-normalised channels, no learned
    weights). The weights come from a file, never from the network: torchvision's `vgg16-397923af.pth` or
    any state dict holding `features.N.weight/bias` up to the deepest tap."""

    def __init__(self, weights_path: str | Path, taps: Sequence[int] = VGG16_TAPS) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.perceptual.weights: no VGG16 weights file at {path} (expected torchvision's vgg16 state "
                "dict, e.g. vgg16-397923af.pth); set model.perceptual.weights=null to train without perceptual loss"
            )
        self.taps = sorted(set(taps))
        layers: list[nn.Module] = []
        ch = 3
        for v in _VGG16_CFG:
            if len(layers) > self.taps[-1]:
                break
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU(inplace=False)]
                ch = v
        self.features = nn.Sequential(*layers[: self.taps[-1] + 1])
        state = safe_load(path)
        wanted = self.features.state_dict().keys()
        missing = [k for k in wanted if f"features.{k}" not in state]
        if missing:
            raise ValueError(
                f"model.perceptual.weights={path} lacks VGG16 keys {['features.' + k for k in missing[:4]]}"
            )
        self.features.load_state_dict({k: state[f"features.{k}"] for k in wanted})
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> VGGPerceptual:
        return super().train(False)  # a frozen feature extractor: dropout/batch statistics never apply

    def _feats(self, x: Tensor) -> list[Tensor]:
        x = ((x.expand(-1, 3, -1, -1) + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """(N,) perceptual distance between images in [-1, 1]."""
        return sum(
            F.mse_loss(a, b, reduction="none").sum(1).mean((1, 2))
            for a, b in zip(self._feats(x), self._feats(y))
        )
