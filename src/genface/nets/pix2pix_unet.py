"""Pix2Pix U-Net generator (Isola et al. 2017) with skip connections and decoder dropout.

Same layers as pytorch-CycleGAN-and-pix2pix's `UnetGenerator` (`unet_256`: 8 downsamplings, `unet_128`:
7), written as an explicit encoder/decoder loop instead of nested blocks. Level i (0-based) has
ngf * min(2**i, 8) channels. Encoder: 4x4/2 convolutions, LeakyReLU(0.2) before, norm after (none on the
first and the innermost). Decoder: ReLU, 4x4/2 transposed convolution on [skip, upsampled] channels, norm;
tanh at the top. Dropout(0.5) follows the decoder levels between the 8*ngf levels (levels 4 .. n-2, the
reference's `num_downs - 5` middle blocks: three for unet_256). Convolutions carry biases only with
instance norm (the reference's rule), except the last transposed convolution, which always has one.

The input side must be a multiple of 2**num_downs: other sides are padded (edge replication) up to the
next multiple and the output is cropped back; sides so small that padding would more than double them
are refused with a message that names `num_downs`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genface.nets.dcgan import dcgan_init
from genface.nets.patchgan import Norm, norm_layer


class UNetGenerator(nn.Module):
    """source (N, in_channels, H, W) -> translation (N, out_channels, H, W) in [-1, 1].

    Args:
        in_channels, out_channels: source and target channels.
        num_downs: stride-2 levels; 8 (unet_256) and 7 (unet_128) bring 256 / 128 px down to 1x1.
        ngf: channels of the first level.
        norm: "batch" (reference pix2pix) or "instance".
        dropout: probability of the decoder dropout (0 disables it; the paper's noise source).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: Norm = "batch",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_downs < 2:
            raise ValueError(f"UNetGenerator num_downs must be >= 2, got {num_downs}")
        self.in_channels, self.out_channels, self.num_downs = in_channels, out_channels, num_downs
        bias = norm == "instance"
        ch = [ngf * min(2**i, 8) for i in range(num_downs)]
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in range(num_downs):
            inner, outer = ch[i], (in_channels if i == 0 else ch[i - 1])
            down: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            down.append(nn.Conv2d(outer, inner, 4, 2, 1, bias=bias))
            if 0 < i < num_downs - 1:
                down.append(norm_layer(norm, inner))
            self.downs.append(nn.Sequential(*down))

            up_in = inner if i == num_downs - 1 else 2 * inner
            if i == 0:
                up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, out_channels, 4, 2, 1), nn.Tanh()]
            else:
                up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer, 4, 2, 1, bias=bias), norm_layer(norm, outer)]
                if dropout and 4 <= i <= num_downs - 2:
                    up.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*up))
        dcgan_init(self)  # N(0, 0.02) as the reference's init_weights('normal')

    def _padding(self, side: int) -> int:
        period = 2**self.num_downs
        padded = -(-side // period) * period
        if padded > 2 * side:
            raise ValueError(
                f"UNetGenerator with num_downs={self.num_downs} halves the input {self.num_downs} times and needs "
                f"sides that are multiples of {period}; {side} px would be padded to {padded}. Use "
                f"model.generator.num_downs <= {int(math.log2(side))} for {side} px inputs"
            )
        return padded - side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNetGenerator expects {self.in_channels}-channel sources, got {x.shape[1]} channels")
        h, w = x.shape[-2:]
        ph, pw = self._padding(h), self._padding(w)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        for i in reversed(range(self.num_downs)):
            if i < self.num_downs - 1:
                x = torch.cat([skips[i], x], dim=1)
            x = self.ups[i](x)
        return x[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
