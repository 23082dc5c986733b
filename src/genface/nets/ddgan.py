"""Denoising-Diffusion GAN networks (Xiao, Kreis & Vahdat, ICLR 2022).

Generator G(x_t, t, z) -> x0 prediction, and the time-conditioned discriminator D(x_{t-1}, x_t, t).

The generator is genface's diffusion U-Net (a diffusers-UNet2DModel / ADM-style net, with z injected by
adaptive GroupNorm in every ResBlock) and *not* the paper's NCSN++: the U-Net is already shared with
DDPM and latent diffusion, tested and Hydra-configurable, and what DD-GAN needs from its generator
(time embedding, AdaGN on a mapped z, x0 output squashed by tanh) it has. What differs from NCSN++:
no FIR up/down-sampling, no "progressive input" residual pyramid, no skip rescaling by 1/sqrt(2), and a
2-layer (not 1 + n_mlp = 4-layer) z mapping network of width 4 * base_channels (256 at base 64, the
paper's z_emb_dim).

The discriminator follows NVlabs' `Discriminator_small` / `Discriminator_large` layer for layer
(residual down-sampling blocks with a [1, 3, 3, 1] FIR blur, time embedding added after the first conv,
LeakyReLU 0.2, minibatch-stddev feature, sum pooling, one logit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genface.nets.unet import UNet, sinusoidal_embedding

#: Paper layouts as (in_mult, out_mult, downsample) per block, multiples of ngf. "small" (CIFAR-10,
#: 32 px) keeps one full-resolution block then halves 3 times; "large" (CelebA-HQ, LSUN 256) halves 6 times.
DISCRIMINATOR_LAYOUTS: dict[str, tuple[tuple[int, int, bool], ...]] = {
    "small": ((2, 2, False), (2, 4, True), (4, 8, True), (8, 8, True)),
    "large": ((2, 4, True), (4, 8, True), (8, 8, True), (8, 8, True), (8, 8, True), (8, 8, True)),
}


class DDGANGenerator(UNet):
    """G(x_t, t, z): the diffusion U-Net with a z_dim = `nz` latent, predicting x0 in [-1, 1] (tanh, as
    NCSN++ in DD-GAN does: the posterior sample is then a mix of images in range and the noisy input).

    GroupNorm groups and the default `min_channels_per_group` = 1 as in `UNet` (NCSN++'s rule is 4)."""

    def __init__(
        self,
        channels: int = 3,
        resolution: int = 32,
        nz: int = 100,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        num_groups: int = 32,
        min_channels_per_group: int = 1,
        time_embed: str = "sinusoidal",
        resblock_updown: bool = True,
    ) -> None:
        if nz < 1:
            raise ValueError(f"DD-GAN generator needs a latent: nz must be >= 1, got {nz}")
        super().__init__(
            in_channels=channels,
            out_channels=channels,
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            resolution=resolution,
            dropout=dropout,
            num_groups=num_groups,
            min_channels_per_group=min_channels_per_group,
            time_embed=time_embed,
            z_dim=nz,
            resblock_updown=resblock_updown,
        )
        self.channels, self.nz = channels, nz

    def forward(self, x_t: Tensor, t: Tensor, z: Tensor) -> Tensor:  # type: ignore[override]
        return torch.tanh(super().forward(x_t, t, z=z))


def _ddgan_init(layer: nn.Conv2d | nn.Linear, zero: bool = False) -> nn.Conv2d | nn.Linear:
    """NVlabs' `dense` / `conv2d` init: weights U(±sqrt(3 / fan_out)), fan_out = out_channels · k · k, zero
    biases; `zero` gives an all-zero layer (their init_scale=0). PyTorch's default init has a third of this
    variance, which shrinks the signal ~6x in variance per residual block, so a deep D starts (and can stay)
    nearly blind to its input."""
    fan_out = layer.weight.shape[0] * layer.weight[0][0].numel()
    bound = 0.0 if zero else math.sqrt(3.0 / fan_out)
    nn.init.uniform_(layer.weight, -bound, bound)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _fir_downsample(x: Tensor) -> Tensor:
    """Halve H and W with the [1, 3, 3, 1] FIR blur of StyleGAN2 / NCSN++ (score_sde's downsample_2d)."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device=x.device, dtype=x.dtype)
    k = torch.outer(k, k) / 64.0
    c = x.shape[1]
    return F.conv2d(x, k.expand(c, 1, 4, 4), stride=2, padding=1, groups=c)


class DownBlock(nn.Module):
    """DD-GAN's DownConvBlock: act -> conv -> + dense(t_emb) -> act -> [blur-down] -> conv (zero init),
    plus a 1x1 skip of the (blurred) input; the sum is scaled by 1/sqrt(2) to keep unit variance."""

    def __init__(self, in_ch: int, out_ch: int, t_emb_dim: int, downsample: bool, slope: float) -> None:
        super().__init__()
        self.conv1 = _ddgan_init(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.conv2 = _ddgan_init(nn.Conv2d(out_ch, out_ch, 3, padding=1), zero=True)
        self.dense_t = _ddgan_init(nn.Linear(t_emb_dim, out_ch))
        self.skip = _ddgan_init(nn.Conv2d(in_ch, out_ch, 1, bias=False))
        self.downsample, self.slope = downsample, slope

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        h = self.conv1(F.leaky_relu(x, self.slope))
        h = F.leaky_relu(h + self.dense_t(t_emb)[:, :, None, None], self.slope)
        if self.downsample:
            h, x = _fir_downsample(h), _fir_downsample(x)
        return (self.conv2(h) + self.skip(x)) / math.sqrt(2.0)


def minibatch_stddev(h: Tensor, group_size: int = 4) -> Tensor:
    """Append one feature map: the std of the features across groups of samples (StyleGAN2, DD-GAN).

    It lets D see the diversity of a batch, which penalises mode collapse. The group is the largest
    divisor of the batch that is <= group_size, so odd last batches (validation) work too.
    """
    b, c, height, width = h.shape
    group = next(g for g in range(min(b, group_size), 0, -1) if b % g == 0)
    y = h.reshape(group, -1, c, height, width)
    y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # (b // group,)
    y = y.repeat(group)[:, None, None, None].expand(b, 1, height, width)
    return torch.cat([h, y], dim=1)


class DDGANDiscriminator(nn.Module):
    """D(x_{t-1}, x_t, t) -> logit (B,): is x_{t-1} a real denoising of x_t at step t?

    Input is the channel concatenation of x_{t-1} and x_t (2C channels). `layout` "small" is the paper's
    32 px net (output at resolution/8), "large" its >= 128 px net (output at resolution/64); `ngf` scales
    every width (the paper uses 64), `t_emb_dim` the time embedding (256).
    """

    def __init__(
        self,
        channels: int = 3,
        resolution: int = 32,
        ngf: int = 64,
        t_emb_dim: int = 256,
        layout: str = "small",
        slope: float = 0.2,
        stddev_group: int = 4,
    ) -> None:
        super().__init__()
        if layout not in DISCRIMINATOR_LAYOUTS:
            raise ValueError(
                f"discriminator layout must be one of {sorted(DISCRIMINATOR_LAYOUTS)}, got {layout!r}"
            )
        blocks = DISCRIMINATOR_LAYOUTS[layout]
        factor = 2 ** sum(down for _, _, down in blocks)
        if resolution % factor:
            raise ValueError(
                f"the {layout!r} discriminator halves the image {int(math.log2(factor))} times, so "
                f"resolution must be a multiple of {factor}; got {resolution} (use 'small' below 64 px)"
            )
        self.channels, self.resolution, self.t_emb_dim = channels, resolution, t_emb_dim
        self.slope, self.stddev_group = slope, stddev_group
        self.t_mlp = nn.Sequential(
            _ddgan_init(nn.Linear(t_emb_dim, t_emb_dim)),
            nn.LeakyReLU(slope),
            _ddgan_init(nn.Linear(t_emb_dim, t_emb_dim)),
        )
        self.conv_in = _ddgan_init(nn.Conv2d(2 * channels, 2 * ngf, 1))
        self.blocks = nn.ModuleList(
            DownBlock(ngf * cin, ngf * cout, t_emb_dim, down, slope) for cin, cout, down in blocks
        )
        top = ngf * blocks[-1][1]
        # The paper zero-initialises this conv in the small net only.
        self.conv_out = _ddgan_init(nn.Conv2d(top + 1, top, 3, padding=1), zero=layout == "small")
        self.linear = _ddgan_init(nn.Linear(top, 1))

    def forward(self, x_prev: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        b = x_prev.shape[0]
        expected = (b, self.channels, self.resolution, self.resolution)
        if x_prev.shape != expected or x_t.shape != expected or t.shape != (b,):
            raise ValueError(
                f"discriminator expects x_prev and x_t of shape {expected} and t of shape ({b},); "
                f"got {tuple(x_prev.shape)}, {tuple(x_t.shape)}, {tuple(t.shape)}"
            )
        h = torch.cat([x_prev, x_t], dim=1)
        t_emb = F.leaky_relu(self.t_mlp(sinusoidal_embedding(t, self.t_emb_dim).to(h.dtype)), self.slope)
        h = self.conv_in(h)
        for block in self.blocks:
            h = block(h, t_emb)
        h = F.leaky_relu(self.conv_out(minibatch_stddev(h, self.stddev_group)), self.slope)
        return self.linear(h.sum(dim=(2, 3))).squeeze(1)
