"""Diffusion U-Net in the DDPM / ADM / diffusers-UNet2DModel style.

ResNet blocks (GroupNorm, SiLU, time embedding as scale-shift of the second norm), self-attention at the
configured resolutions, skip connections from every encoder block. Residual branches and the output conv
start at zero (ADM), so an untrained net outputs zeros and early training is stable. Optional class embedding (index
`num_classes` is the "null" class for classifier-free guidance) and, for DD-GAN's generator, a latent z
injected through adaptive GroupNorm in every ResBlock. GroupNorm group counts follow `group_count`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TIME_EMBEDDINGS = ("sinusoidal", "fourier")


def group_count(channels: int, num_groups: int, min_channels_per_group: int) -> int:
    """GroupNorm's group count at width `channels`: the largest divisor of `channels` that is <= num_groups and
    leaves >= `min_channels_per_group` channels in each group (at least 1 group), so that any width works.

    min_channels_per_group=4 is NVlabs DD-GAN's and score_sde's `min(channels // 4, 32)` wherever that divides
    the width (every multiple of 4 up to 128, of 32 beyond). With 1 the rule is "largest divisor <= 32", which
    at widths <= 32 puts one channel in each group: an InstanceNorm, which discards every feature map's
    per-image mean and scale.
    """
    limit = max(1, min(num_groups, channels // min_channels_per_group))
    return next(g for g in range(limit, 0, -1) if channels % g == 0)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style embedding of (possibly fractional) timesteps, as in DDPM/ADM: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features (NCSN++ / score-SDE): suited to continuous t, e.g. in [0, 1]."""

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)
        self.pad = dim % 2

    def forward(self, t: Tensor) -> Tensor:
        args = 2 * math.pi * t.float()[:, None] * self.freqs[None]
        return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=1), (0, self.pad))


class PixelNorm(nn.Module):
    """Normalise each latent to unit RMS (StyleGAN / DD-GAN mapping network input)."""

    def forward(self, z: Tensor) -> Tensor:
        return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Norm(nn.Module):
    """GroupNorm, made adaptive to a style vector when style_dim > 0 (DD-GAN's AdaptiveGroupNorm): scale and
    shift are linear in the style, with zero bias so that a zero style leaves plain GroupNorm."""

    def __init__(self, channels: int, num_groups: int, min_channels_per_group: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels, num_groups, min_channels_per_group), channels)
        self.style = nn.Linear(style_dim, 2 * channels) if style_dim > 0 else None
        if self.style is not None:
            nn.init.zeros_(self.style.bias)

    def forward(self, x: Tensor, style: Tensor | None) -> Tensor:
        h = self.norm(x)
        if self.style is None:
            return h
        scale, shift = self.style(style)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + scale) + shift


class ResBlock(nn.Module):
    """Pre-activation residual block; the time/class embedding modulates the second norm (ADM scale-shift).
    `resample` "up"/"down" turns it into a BigGAN-style up/downsampling block (ADM's resblock_updown)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        dropout: float,
        num_groups: int,
        min_channels_per_group: int,
        style_dim: int,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = Norm(in_ch, num_groups, min_channels_per_group, style_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = Norm(out_ch, num_groups, min_channels_per_group, style_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.resample = resample

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, emb: Tensor, style: Tensor | None) -> Tensor:
        h = F.silu(self.norm1(x, style))
        h = self.conv1(self._resample(h))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h, style) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(self._resample(x)) + h


class AttentionBlock(nn.Module):
    """Spatial multi-head self-attention with a residual connection; heads of 64 channels (ADM). GroupNorm
    groups as `group_count`."""

    def __init__(self, channels: int, num_groups: int, min_channels_per_group: int = 1) -> None:
        super().__init__()
        self.heads = max(1, channels // 64)
        self.norm = nn.GroupNorm(group_count(channels, num_groups, min_channels_per_group), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """A sequence of layers where ResBlocks also receive the embedding and the style vector."""

    def forward(self, x: Tensor, emb: Tensor, style: Tensor | None) -> Tensor:
        for layer in self:
            x = layer(x, emb, style) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """Diffusion U-Net: `forward(x, t, y=None, z=None)` returns a tensor shaped like x.

    t: (B,) timesteps, integer or float. y: (B,) class indices in [0, num_classes]; num_classes is the
    null class, also used when y is None. z: (B, z_dim) latent of DD-GAN's generator.

    GroupNorm: at most `num_groups` groups, at least `min_channels_per_group` channels per group (see
    `group_count`). The shipped configs set 4, the NVlabs DD-GAN / score_sde rule. The code default is 1
    because GroupNorm's parameters have the same shape whatever its group count: a net config that lacks the
    key, such as the hyper-parameters of a checkpoint saved before the key existed, must rebuild the
    normalisation its weights were trained with, not load silently into another one.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        resolution: int = 64,
        dropout: float = 0.0,
        num_classes: int = 0,
        num_groups: int = 32,
        min_channels_per_group: int = 1,
        time_embed: str = "sinusoidal",
        z_dim: int = 0,
        resblock_updown: bool = False,
    ) -> None:
        super().__init__()
        channel_mult = tuple(channel_mult)
        if not channel_mult or num_res_blocks < 1 or base_channels < 1:
            raise ValueError(
                f"channel_mult must be non-empty and num_res_blocks, base_channels >= 1; got channel_mult="
                f"{channel_mult}, num_res_blocks={num_res_blocks}, base_channels={base_channels}"
            )
        factor = 2 ** (len(channel_mult) - 1)
        if resolution % factor:
            raise ValueError(
                f"resolution={resolution} must be divisible by 2**(len(channel_mult)-1) = {factor} "
                f"(channel_mult={channel_mult} downsamples {len(channel_mult) - 1} times)"
            )
        reached = [resolution // 2**i for i in range(len(channel_mult))]
        missing = sorted(set(attention_resolutions) - set(reached))
        if missing:
            raise ValueError(
                f"attention_resolutions {missing} are never reached; with resolution={resolution} and "
                f"channel_mult={channel_mult} the U-Net works at resolutions {reached}"
            )
        if time_embed not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embed must be one of {list(TIME_EMBEDDINGS)}, got {time_embed!r}")
        if num_groups < 1 or min_channels_per_group < 1:
            raise ValueError(
                "num_groups and min_channels_per_group must be >= 1 (min_channels_per_group: 4 = NVlabs DD-GAN / "
                "score_sde groups, 1 = the largest divisor of the width <= num_groups); got "
                f"num_groups={num_groups}, min_channels_per_group={min_channels_per_group}"
            )
        if num_classes < 0 or z_dim < 0:
            raise ValueError(f"num_classes and z_dim must be >= 0, got {num_classes} and {z_dim}")

        self.in_channels, self.resolution = in_channels, resolution
        self.num_classes, self.z_dim = num_classes, z_dim
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.fourier = FourierEmbedding(base_channels) if time_embed == "fourier" else None
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.z_mlp = (
            nn.Sequential(
                PixelNorm(), nn.Linear(z_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU()
            )
            if z_dim > 0
            else None
        )
        style_dim = emb_dim if z_dim > 0 else 0

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(
                cin, cout, emb_dim, dropout, num_groups, min_channels_per_group, style_dim, resample
            )

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, num_groups, min_channels_per_group)

        ch = base_channels * channel_mult[0]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        skips, res_now = [ch], resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, base_channels * mult)]
                ch = base_channels * mult
                if res_now in attention_resolutions:
                    layers.append(attention(ch))
                self.down.append(Stage(layers))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(
                    Stage(
                        [
                            res(ch, ch, "down")
                            if resblock_updown
                            else nn.Conv2d(ch, ch, 3, stride=2, padding=1)
                        ]
                    )
                )
                skips.append(ch)
                res_now //= 2

        self.middle = Stage([res(ch, ch), attention(ch), res(ch, ch)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), base_channels * mult)]
                ch = base_channels * mult
                if res_now in attention_resolutions:
                    layers.append(attention(ch))
                if level > 0 and i == num_res_blocks:
                    layers.append(res(ch, ch, "up") if resblock_updown else Upsample(ch))
                    res_now *= 2
                self.up.append(Stage(layers))

        self.out = nn.Sequential(
            nn.GroupNorm(group_count(ch, num_groups, min_channels_per_group), ch),
            nn.SiLU(),
            _zero(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, z: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        if x.shape[1:] != (self.in_channels, self.resolution, self.resolution):
            raise ValueError(
                f"UNet expects input (B, {self.in_channels}, {self.resolution}, {self.resolution}), "
                f"got {tuple(x.shape)}"
            )
        if t.shape != (b,):
            raise ValueError(f"timesteps t must have shape (B,) = ({b},), got {tuple(t.shape)}")
        t_feat = self.fourier(t) if self.fourier is not None else sinusoidal_embedding(t, self.base_channels)
        emb = self.time_mlp(t_feat.to(x.dtype))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((b,), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(y)
        elif y is not None:
            raise ValueError("labels y were given but the UNet was built with num_classes=0")
        style = None
        if self.z_mlp is not None:
            if z is None or z.shape != (b, self.z_dim):
                got = None if z is None else tuple(z.shape)
                raise ValueError(
                    f"UNet built with z_dim={self.z_dim} needs z of shape ({b}, {self.z_dim}), got {got}"
                )
            style = self.z_mlp(z)
        elif z is not None:
            raise ValueError("a latent z was given but the UNet was built with z_dim=0")

        h = self.conv_in(x)
        hs = [h]
        for stage in self.down:
            h = stage(h, emb, style)
            hs.append(h)
        h = self.middle(h, emb, style)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb, style)
        return self.out(h)
