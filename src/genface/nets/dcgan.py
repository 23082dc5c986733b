"""DCGAN generator and discriminator (4-2-1 topology), width and resolution configurable.

With `resolution=64, width=64, latent_dim=100` these are exactly DLStudio's DG1 pair from DLStudio's DG1 study:
GeneratorDG1 (transposed convs without bias, 3,576,704 parameters) and DiscriminatorDG1 (convs with
bias, no batch norm on the first layer, 2,766,529 parameters). The discriminator returns logits; DG1's
final sigmoid lives in the loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ALLOWED_RESOLUTIONS = (16, 32, 64, 128, 256)


def _num_stages(resolution: int) -> int:
    if resolution not in ALLOWED_RESOLUTIONS:
        raise ValueError(
            f"DCGAN resolution must be one of {ALLOWED_RESOLUTIONS} (4x4 doubled by 4-2-1 layers), got {resolution}"
        )
    return int(math.log2(resolution)) - 2


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.'s initialisation: conv weights N(0, 0.02), batch-norm scale N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (N, latent_dim) -> image (N, channels, resolution, resolution) in [-1, 1].

    Starts at 4x4 with width * 2**(stages-1) channels and halves the channels at every doubling.
    `num_classes > 0` makes it conditional: a one-hot label is concatenated to z (cGAN input).
    """

    def __init__(
        self,
        latent_dim: int = 100,
        width: int = 64,
        resolution: int = 64,
        channels: int = 3,
        bias: bool = False,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        stages = _num_stages(resolution)
        self.latent_dim, self.resolution, self.channels, self.num_classes = (
            latent_dim,
            resolution,
            channels,
            num_classes,
        )
        ch = width * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim + num_classes, ch, 4, 1, 0, bias=bias),
            nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
        ]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=bias), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=bias), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if y is None:
                raise ValueError("conditional DCGANGenerator needs labels y")
            y = nn.functional.one_hot(y, self.num_classes).to(z.dtype) if y.dim() == 1 else y.to(z.dtype)
            z = torch.cat([z, y], dim=1)
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """image -> one logit per image. No batch norm after the first convolution, LeakyReLU(0.2)."""

    def __init__(
        self,
        width: int = 64,
        resolution: int = 64,
        channels: int = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        stages = _num_stages(resolution)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=bias), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(stages - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=bias), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch, 1, 4, 1, 0, bias=bias)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()
