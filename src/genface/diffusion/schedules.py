"""Noise schedules: beta sequences and the per-timestep coefficients every Gaussian diffusion needs.

Timesteps are indexed t = 0..T-1 as in DDPM code: x_t is the *(t+1)*-th noisy level, ᾱ_t = prod_{s<=t} α_s,
and x_{-1} is the data x_0. Coefficients are computed once in float64 on the CPU and cast to the caller's
device and dtype when gathered (see `genface.diffusion.gaussian.extract`), so the same schedule serves
float32, bfloat16 and CPU/GPU code without precision loss in the products.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

ScheduleKind = Literal["linear", "cosine", "sigmoid", "vp"]


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear schedule; the endpoints are given for T=1000 and scaled by 1000/T (improved-diffusion),
    so a shorter chain reaches about the same final noise level."""
    scale = 1000.0 / T
    start, end = scale * beta_start, scale * beta_end
    if end >= 1.0:
        raise ValueError(
            f"linear schedule with T={T}: beta_end scaled by 1000/T is {end:.3g} >= 1; use T >= "
            f"{math.floor(1000 * beta_end) + 1}, a smaller beta_end, or kind='cosine'/'vp' for short chains"
        )
    return torch.linspace(start, end, T, dtype=torch.float64)


def _betas_from_alpha_bar(alpha_bar: Tensor, max_beta: float) -> Tensor:
    """Discretise a continuous ᾱ(τ) sampled at τ = 0, 1/T, ..., 1 into T betas (Nichol & Dhariwal)."""
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021): ᾱ(τ) = cos²((τ + s)/(1 + s)·π/2), betas clipped at 0.999."""
    tau = torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64)
    f = torch.cos((tau + s) / (1.0 + s) * math.pi / 2) ** 2
    return _betas_from_alpha_bar(f / f[0], max_beta)


def sigmoid_betas(
    T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> Tensor:
    """Sigmoid schedule of Chen (2023), "On the importance of noise scheduling for diffusion models":
    ᾱ(τ) = (σ(end/tau) - σ((τ(end-start)+start)/tau)) / (σ(end/tau) - σ(start/tau)), discretised like the
    cosine schedule (as lucidrains' denoising-diffusion-pytorch does). This is *not* diffusers'
    "sigmoid", which puts a sigmoid on the betas themselves (GeoDiff)."""
    steps = torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alpha_bar = (v_end - torch.sigmoid((steps * (end - start) + start) / tau)) / (v_end - v_start)
    return _betas_from_alpha_bar(alpha_bar / alpha_bar[0], max_beta)


def vp_betas(T: int, beta_min: float = 0.1, beta_max: float = 20.0, eps_small: float = 1e-3) -> Tensor:
    """DD-GAN's discretised VP-SDE schedule (Xiao et al. 2022, `get_sigma_schedule` in NVlabs'
    train_ddgan.py), valid for any T including T=1, 2, 4.

    τ_k = eps_small + (1 - eps_small)·k/T for k = 0..T, var(τ) = 1 - exp(-beta_min·τ - ½(beta_max-beta_min)·τ²),
    ᾱ = 1 - var, beta_k = 1 - ᾱ(τ_k)/ᾱ(τ_{k-1}). DD-GAN prepends a "first" beta of 1e-8 for the clean level
    (its index 0 is the data); that entry is dropped here because our index 0 is already the first noisy
    level, so these T betas equal DD-GAN's `Posterior_Coefficients.betas` and ᾱ_t = ᾱ(τ_{t+1})/ᾱ(τ_0).
    """
    t = torch.arange(T + 1, dtype=torch.float64) / T * (1.0 - eps_small) + eps_small
    var = 1.0 - torch.exp(-beta_min * t - 0.5 * (beta_max - beta_min) * t**2)
    alpha_bar = 1.0 - var
    return 1.0 - alpha_bar[1:] / alpha_bar[:-1]


_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
    "vp": vp_betas,
}


def make_betas(kind: ScheduleKind, T: int, **kw: float) -> Tensor:
    """Betas (T,) float64 of a named schedule; `kw` overrides that schedule's constants."""
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown noise schedule kind {kind!r}; allowed kinds: {sorted(_SCHEDULES)}")
    if T < 1:
        raise ValueError(f"number of timesteps T must be >= 1, got {T}")
    fn = _SCHEDULES[kind]
    allowed = [p for p in inspect.signature(fn).parameters if p != "T"]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"schedule {kind!r} got unknown options {unknown}; allowed options: {allowed}")
    return fn(T, **kw)


class NoiseSchedule:
    """All per-timestep coefficients of a discrete Gaussian diffusion, as float64 CPU tensors of shape (T,).

    Names follow DDPM/improved-diffusion so formulas can be checked against the papers line by line.
    """

    def __init__(self, betas: Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"betas must lie in (0, 1), got min {betas.min().item():.3g}, max {betas.max().item():.3g}"
            )
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(coef1·x_0 + coef2·x_t, β̃_t); β̃_0 = 0 because x_{-1} = x_0 is known.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log β̃_0 = -inf, so, as in DDPM, step 0 borrows β̃_1 (used only by likelihood terms; samplers add
        # no noise at t=0). A one-step chain has no β̃_1 and clamps instead, as DD-GAN does.
        if len(betas) > 1:
            clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        else:
            clipped = self.posterior_variance.clamp(min=1e-20)
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )

    @classmethod
    def from_config(cls, kind: ScheduleKind, T: int, **kw: float) -> NoiseSchedule:
        """Build from a named schedule, e.g. `NoiseSchedule.from_config("vp", 2)` for DD-GAN."""
        return cls(make_betas(kind, T, **kw))

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def __len__(self) -> int:
        return len(self.betas)

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.num_timesteps}, beta[0]={self.betas[0].item():.3g}, "
            f"beta[-1]={self.betas[-1].item():.3g}, alpha_bar[-1]={self.alphas_cumprod[-1].item():.3g})"
        )
