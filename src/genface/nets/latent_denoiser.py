"""Denoisers for flat latents (the VAE-GAN latent-diffusion study's 256-d VAE latent), with the UNet's calling convention.

A flat latent has no spatial structure for convolutions to exploit, so both denoisers are made of pre-norm
residual MLP blocks whose normalisation is modulated by the time (+ class) embedding (the scale-shift
conditioning of ADM's ResBlocks): `LatentDenoiser` is a stack of them at one width; `LatentUNet` is a U-Net over
the vector (the study's conditional U-Net: widths growing then shrinking, 256-512-1024-512-256 at its sizes, time
and class embeddings at every level) with skip connections between the levels of equal width. As in
`genface.nets.unet.UNet`, class index `num_classes` is the null label of classifier-free guidance and the
output layer starts at zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genface.nets.unet import sinusoidal_embedding


class FiLMBlock(nn.Module):
    """h + MLP(LayerNorm(h) · (1 + scale) + shift), (scale, shift) a linear map of the embedding (size `emb_dim`,
    default `hidden`); the last layer starts at zero, so the block starts as the identity."""

    def __init__(self, hidden: int, dropout: float, emb_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(emb_dim or hidden, 2 * hidden)
        self.body = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        return h + self.body(self.norm(h) * (1 + scale) + shift)


class _FlatDenoiser(nn.Module):
    """Input checks and the time (+ class) embedding shared by the flat-latent denoisers."""

    dim: int
    num_classes: int
    time_dim: int
    time_mlp: nn.Module
    class_embed: nn.Embedding | None

    def _embed(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        b = x.shape[0]
        name = type(self).__name__
        if x.shape[1:] != (self.dim,):
            raise ValueError(f"{name} expects latents (B, {self.dim}), got {tuple(x.shape)}")
        if t.shape != (b,):
            raise ValueError(f"timesteps t must have shape (B,) = ({b},), got {tuple(t.shape)}")
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(x.dtype))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((b,), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(y)
        elif y is not None:
            raise ValueError(f"labels y were given but the {name} was built with num_classes=0")
        return nn.functional.silu(emb)


def _zero_out(hidden: int, dim: int) -> nn.Sequential:
    out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))
    nn.init.zeros_(out[-1].weight)
    nn.init.zeros_(out[-1].bias)
    return out


class LatentDenoiser(_FlatDenoiser):
    """`forward(x (B, dim), t (B,), y (B,) | None) -> (B, dim)`.

    Args:
        dim: latent size. hidden, num_blocks: width and depth. num_classes: 0 for unconditional.
        dropout: inside the residual blocks. time_dim: size of the sinusoidal timestep features.
    """

    def __init__(
        self,
        dim: int = 256,
        hidden: int = 1024,
        num_blocks: int = 4,
        num_classes: int = 0,
        dropout: float = 0.0,
        time_dim: int = 128,
    ) -> None:
        super().__init__()
        if min(dim, hidden, num_blocks, time_dim) < 1 or num_classes < 0:
            raise ValueError(
                f"LatentDenoiser: dim, hidden, num_blocks, time_dim must be >= 1 and num_classes >= 0; got {dim}, "
                f"{hidden}, {num_blocks}, {time_dim}, {num_classes}"
            )
        self.dim, self.num_classes, self.time_dim = dim, num_classes, time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_embed = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(FiLMBlock(hidden, dropout) for _ in range(num_blocks))
        self.out = _zero_out(hidden, dim)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self._embed(x, t, y)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class LatentUNet(_FlatDenoiser):
    """`forward(x (B, dim), t (B,), y (B,) | None) -> (B, dim)`: a conditional U-Net over the latent vector.

    Level i has width hidden · mult[i] and `num_blocks` FiLM residual blocks on the way down and on the way up;
    linear maps change the width between levels, and on the way up each level first merges (concatenation,
    linear) the activation it kept on the way down. Every block is conditioned on the time (+ class) embedding,
    of size hidden · mult[-1].

    Args:
        dim: latent size. hidden, mult: widths per level. num_blocks: blocks per level and direction.
        num_classes: 0 for unconditional. dropout: inside the blocks. time_dim: sinusoidal timestep features.
    """

    def __init__(
        self,
        dim: int = 256,
        hidden: int = 256,
        mult: Sequence[int] = (1, 2, 4),
        num_blocks: int = 1,
        num_classes: int = 0,
        dropout: float = 0.0,
        time_dim: int = 256,
    ) -> None:
        super().__init__()
        mult = tuple(mult)
        if not mult or min(dim, hidden, num_blocks, time_dim, *mult) < 1 or num_classes < 0:
            raise ValueError(
                f"LatentUNet: dim, hidden, num_blocks, time_dim and every mult must be >= 1, mult non-empty and "
                f"num_classes >= 0; got dim={dim}, hidden={hidden}, mult={mult}, num_blocks={num_blocks}, "
                f"time_dim={time_dim}, num_classes={num_classes}"
            )
        self.dim, self.num_classes, self.time_dim = dim, num_classes, time_dim
        widths = [hidden * m for m in mult]
        emb = widths[-1]
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_embed = nn.Embedding(num_classes + 1, emb) if num_classes else None
        self.inp = nn.Linear(dim, widths[0])

        def blocks(width: int) -> nn.ModuleList:
            return nn.ModuleList(FiLMBlock(width, dropout, emb) for _ in range(num_blocks))

        self.down = nn.ModuleList(blocks(w) for w in widths)
        self.merge = nn.ModuleList(nn.Linear(2 * w, w) for w in widths)
        self.up = nn.ModuleList(blocks(w) for w in widths)
        self.widen = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.narrow = nn.ModuleList(nn.Linear(b, a) for a, b in zip(widths, widths[1:]))
        self.out = _zero_out(widths[0], dim)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self._embed(x, t, y)
        h, skips = self.inp(x), []
        for level, level_blocks in enumerate(self.down):
            for block in level_blocks:
                h = block(h, emb)
            skips.append(h)
            if level < len(self.widen):
                h = self.widen[level](h)
        for level in reversed(range(len(self.up))):
            h = self.merge[level](torch.cat([h, skips[level]], dim=1))
            for block in self.up[level]:
                h = block(h, emb)
            if level > 0:
                h = self.narrow[level - 1](h)
        return self.out(h)
