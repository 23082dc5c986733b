"""PatchGAN discriminator of Pix2Pix (Isola et al. 2017): one logit per overlapping N x N patch.

Layout of pytorch-CycleGAN-and-pix2pix's `NLayerDiscriminator`: a 4x4/2 convolution without norm,
`n_layers - 1` more 4x4/2 convolutions + norm, one 4x4/1 convolution + norm, and a 4x4/1 convolution to
one channel; LeakyReLU(0.2) between. With `n_layers=3, ndf=64` on a 6-channel input (source and target
concatenated) that is the 70x70 PatchGAN: 2,768,705 parameters with the reference's bias-free
convolutions before batch norm (`bias=False`), 2,769,601 with those biases (`bias=True`, the cGAN / Pix2Pix / DDPM lab's count).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from genface.nets.dcgan import dcgan_init

Norm = Literal["batch", "instance"]


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """Batch norm (the reference's pix2pix default) or affine-free instance norm (its CycleGAN default)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    raise ValueError(f"norm must be 'batch' or 'instance', got {kind!r}")


def patch_receptive_field(n_layers: int) -> int:
    """Side of the input patch one output logit sees: 16, 34, 70, 142, ... for 1, 2, 3, 4 layers."""
    field = 4 + 3  # the two stride-1 4x4 convolutions at the top
    for _ in range(n_layers):
        field = (field - 1) * 2 + 4
    return field


class PatchGAN(nn.Module):
    """(N, in_channels, H, W) -> patch logits (N, 1, H', W'); H' = H / 2**n_layers - 2.

    Args:
        in_channels: source + target channels (the discriminator is conditional on the source).
        ndf: channels of the first layer, doubled per layer up to 8 * ndf.
        n_layers: stride-2 layers; 3 gives 70x70 patches (`receptive_field`).
        norm: "batch" or "instance".
        bias: biases on the convolutions followed by a norm (redundant before batch norm, which is why
            the reference leaves them out; the cGAN / Pix2Pix / DDPM lab counts them).
    """

    def __init__(
        self, in_channels: int = 6, ndf: int = 64, n_layers: int = 3, norm: Norm = "batch", bias: bool = False
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"PatchGAN n_layers must be >= 1, got {n_layers}")
        self.n_layers, self.receptive_field = n_layers, patch_receptive_field(n_layers)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for n in range(1, n_layers + 1):
            out, stride = ndf * min(2**n, 8), 2 if n < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=bias), norm_layer(norm, out), nn.LeakyReLU(0.2, True)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)  # N(0, 0.02) as the reference's init_weights('normal')

    @property
    def min_size(self) -> int:
        """Smallest input side that leaves at least one patch: floor(side / 2**n_layers) - 2 >= 1."""
        return 3 * 2**self.n_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"PatchGAN with n_layers={self.n_layers} needs inputs of at least {self.min_size}x{self.min_size} "
                f"px, got {tuple(x.shape[-2:])}; lower model.discriminator.n_layers or raise data.resolution"
            )
        return self.net(x)
