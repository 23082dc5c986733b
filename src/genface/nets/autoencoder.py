"""KL-regularised convolutional autoencoder (first stage of latent diffusion) and a VGG perceptual loss.

Encoder: residual blocks with self-attention at chosen resolutions, down-sampling between levels (seed 002,
latent-diffusion's `Encoder`). The latent is either spatial, (z_channels, r, r) with r = resolution /
2**(len(channel_mult) - 1) (latent-diffusion's f = 4 or 8), or flat, a `latent_dim`-vector from a linear
layer on the flattened bottleneck (seed 002's 256-d latent). The decoder mirrors the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genface.nets.unet import AttentionBlock

#: Indices of ReLU outputs in torchvision's VGG16 `features` (relu1_2, relu2_2, relu3_3, relu4_3), LPIPS' taps.
VGG16_TAPS = (3, 8, 15, 22)
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(next(g for g in range(min(32, channels), 0, -1) if channels % g == 0), channels)


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
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)

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
        latent_dim: if set, a flat latent of this size (seed 002: 256) instead of a spatial one.
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
    ) -> None:
        super().__init__()
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
                dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
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
        state = torch.load(path, map_location="cpu", weights_only=True)
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
