"""Residual MLP denoiser for flat latents (the VAE-GAN latent-diffusion study's 256-d VAE latent), with the UNet's calling convention.

A flat latent has no spatial structure for convolutions to exploit, so the denoiser is a stack of
pre-norm residual MLP blocks whose normalisation is modulated by the time (+ class) embedding (the
scale-shift conditioning of ADM's ResBlocks). As in `genface.nets.unet.UNet`, class index `num_classes`
is the null label of classifier-free guidance and the output layer starts at zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genface.nets.unet import sinusoidal_embedding


class _Block(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.body = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        return h + self.body(self.norm(h) * (1 + scale) + shift)


class LatentDenoiser(nn.Module):
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
        self.blocks = nn.ModuleList(_Block(hidden, dropout) for _ in range(num_blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        if x.shape[1:] != (self.dim,):
            raise ValueError(f"LatentDenoiser expects latents (B, {self.dim}), got {tuple(x.shape)}")
        if t.shape != (b,):
            raise ValueError(f"timesteps t must have shape (B,) = ({b},), got {tuple(t.shape)}")
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(x.dtype))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((b,), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(y)
        elif y is not None:
            raise ValueError("labels y were given but the LatentDenoiser was built with num_classes=0")
        emb = nn.functional.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
