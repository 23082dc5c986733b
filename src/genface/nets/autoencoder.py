"""KL-regularised convolutional autoencoder (first stage of latent diffusion); its perceptual loss is in losses.py.

Encoder: residual blocks with self-attention at chosen resolutions, down-sampling between levels (the VAE-GAN latent-diffusion study,
latent-diffusion's `Encoder`). The latent is either spatial, (z_channels, r, r) with r = resolution /
2**(len(channel_mult) - 1) (latent-diffusion's f = 4 or 8), or flat, a `latent_dim`-vector from a linear
layer on the flattened bottleneck (the VAE-GAN latent-diffusion study's 256-d latent). The decoder mirrors the encoder;
it up-samples by nearest-neighbour interpolation + 3x3 convolution (latent-diffusion's `Decoder`, the default, the
layout of every earlier checkpoint) or by a learned 4x4 stride-2 transposed convolution between the residual blocks
(the VAE-GAN latent-diffusion study's decoder: "transposed convolutions with residual connections").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genface.nets.unet import AttentionBlock, group_count

UPSAMPLERS = ("interpolate", "transposed")


def _norm(channels: int) -> nn.GroupNorm:
    # the largest divisor <= 32 (rule 1): the layout every trained autoencoder checkpoint has
    return nn.GroupNorm(group_count(channels, 32, 1), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU, 3x3 conv) x 2, 1x1 skip when the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(cin),
            nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=1),
            _norm(cout),
            nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))): reparameterised samples, the mode and KL to N(0, I) per image."""

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        # float32 under mixed precision: the KL, the reparameterised sample and the latents diffusion trains on
        self.mean, self.logvar = mean.float(), logvar.float().clamp(-30.0, 20.0)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(
            self.mean.shape, generator=generator, device="cpu" if generator else self.mean.device
        )
        return self.mean + torch.exp(0.5 * self.logvar) * eps.to(self.mean.device, self.mean.dtype)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """(N,) KL(q || N(0, I)) summed over latent dimensions."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    """Image (N, channels, R, R) in [-1, 1] <-> latent (N, *latent_shape).

    Args:
        channels, resolution: the images.
        base_channels, channel_mult: width per level; len(channel_mult) - 1 down-samplings.
        num_res_blocks: residual blocks per level (encoder; the decoder has one more, as in LDM).
        attention_resolutions: feature-map sides with a self-attention block.
        z_channels: channels of the spatial latent (ignored when `latent_dim` is set).
        latent_dim: if set, a flat latent of this size (the VAE-GAN latent-diffusion study: 256) instead of a spatial one.
        upsample: how the decoder doubles the side: "interpolate" (nearest + 3x3 conv) or "transposed" (4x4
            stride-2 ConvTranspose2d, the study's; 7·C² more weights per up-sampling at width C).
    """

    def __init__(
        self,
        channels: int = 3,
        resolution: int = 64,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (16,),
        z_channels: int = 4,
        latent_dim: int | None = None,
        upsample: str = "interpolate",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLERS:
            raise ValueError(
                f"autoencoder.upsample={upsample!r} is not allowed; allowed: {', '.join(UPSAMPLERS)}"
            )
        mult = tuple(channel_mult)
        factor = 2 ** (len(mult) - 1)
        if not mult or num_res_blocks < 1 or resolution % factor:
            raise ValueError(
                f"autoencoder: need non-empty channel_mult, num_res_blocks >= 1 and resolution divisible by "
                f"2**(len(channel_mult)-1) = {factor}; got channel_mult={mult}, num_res_blocks={num_res_blocks}, "
                f"resolution={resolution}"
            )
        if latent_dim is not None and latent_dim < 1 or z_channels < 1:
            raise ValueError(
                f"autoencoder: latent_dim (or null) and z_channels must be >= 1, got {latent_dim}, {z_channels}"
            )
        self.channels, self.resolution, self.latent_dim = channels, resolution, latent_dim
        self.bottleneck = resolution // factor
        widths = [base_channels * m for m in mult]
        self.latent_shape: tuple[int, ...] = (
            (latent_dim,) if latent_dim else (z_channels, self.bottleneck, self.bottleneck)
        )

        enc: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        ch, side = widths[0], resolution
        for level, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(ResBlock(ch, w))
                ch = w
                if side in attention_resolutions:
                    enc.append(AttentionBlock(ch, 32))
            if level < len(widths) - 1:
                enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                side //= 2
        enc += [ResBlock(ch, ch), AttentionBlock(ch, 32), ResBlock(ch, ch), _norm(ch), nn.SiLU()]
        flat = ch * self.bottleneck**2
        if latent_dim:
            enc += [nn.Conv2d(ch, ch, 3, padding=1), nn.Flatten(), nn.Linear(flat, 2 * latent_dim)]
        else:
            enc.append(nn.Conv2d(ch, 2 * z_channels, 3, padding=1))
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = (
            [nn.Linear(latent_dim, flat), nn.Unflatten(1, (ch, self.bottleneck, self.bottleneck))]
            if latent_dim
            else [nn.Conv2d(z_channels, ch, 3, padding=1)]
        )
        dec += [ResBlock(ch, ch), AttentionBlock(ch, 32), ResBlock(ch, ch)]
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                dec.append(ResBlock(ch, w))
                ch = w
                if side in attention_resolutions:
                    dec.append(AttentionBlock(ch, 32))
            if level > 0:
                dec += (
                    [nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1)]
                    if upsample == "transposed"
                    else [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
                )
                side *= 2
        dec += [_norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's output convolution, where the adaptive GAN weight compares gradients."""
        return self.decoder[-1].weight

    def encode(self, x: Tensor) -> DiagonalGaussian:
        if x.shape[1:] != (self.channels, self.resolution, self.resolution):
            raise ValueError(
                f"autoencoder expects images (N, {self.channels}, {self.resolution}, {self.resolution}), "
                f"got {tuple(x.shape)}"
            )
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor) -> Tensor:
        """Latents (N, *latent_shape) -> images, unbounded (callers clamp to [-1, 1] for display)."""
        if z.shape[1:] != self.latent_shape:
            raise ValueError(
                f"autoencoder expects latents (N, {', '.join(map(str, self.latent_shape))}), got {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(self, x: Tensor, sample: bool = True) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        return self.decode(posterior.sample() if sample else posterior.mode()), posterior
