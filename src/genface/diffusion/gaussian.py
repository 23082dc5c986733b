"""Forward process, posterior and prediction-type conversions of a Gaussian diffusion.

Everything takes the timesteps `t` as a long tensor (B,) and works for inputs of any rank: images
(B, C, H, W) as well as flat latents (B, D), because coefficients are gathered to shape (B, 1, ..., 1).
Prediction types: "eps" (the noise, DDPM), "x0" (the clean sample; DD-GAN's generator) and "v"
(Salimans & Ho 2022: v = sqrt(ᾱ)·eps - sqrt(1-ᾱ)·x0).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from genface.diffusion.schedules import NoiseSchedule

PredType = Literal["eps", "x0", "v"]
PRED_TYPES: tuple[str, ...] = ("eps", "x0", "v")


def check_pred_type(pred_type: str) -> None:
    if pred_type not in PRED_TYPES:
        raise ValueError(f"unknown prediction type {pred_type!r}; allowed: {list(PRED_TYPES)}")


def extract(coef: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """coef[t] as shape (B, 1, ..., 1) matching x's rank, on x's device and in x's dtype.

    The gather happens in float64 so that the cast to a low-precision dtype happens once, at the end.
    """
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"timesteps must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
    out = coef.to(t.device)[t.long()]
    return out.to(x.dtype).reshape(x.shape[0], *([1] * (x.ndim - 1)))


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(ᾱ_t)·x0, (1-ᾱ_t)·I) with the given standard-normal noise."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def q_sample_pair(
    schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise_prev: Tensor, noise_step: Tensor
) -> tuple[Tensor, Tensor]:
    """Jointly draw (x_{t-1}, x_t) from the forward chain, with x_{-1} = x0 (DD-GAN's `q_sample_pairs`).

    x_{t-1} ~ q(x_{t-1} | x_0) and x_t = sqrt(α_t)·x_{t-1} + sqrt(β_t)·noise_step, so the discriminator sees
    a real pair of consecutive levels; `noise_prev` is unused where t = 0.
    """
    at_data = (t == 0).reshape(-1, *([1] * (x0.ndim - 1)))
    x_prev = torch.where(at_data, x0, q_sample(schedule, x0, (t - 1).clamp(min=0), noise_prev))
    x_t = extract(schedule.alphas.sqrt(), t, x0) * x_prev + extract(schedule.betas.sqrt(), t, x0) * noise_step
    return x_prev, x_t


def q_posterior(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0); the last two shaped (B, 1, ..., 1)."""
    mean = (
        extract(schedule.posterior_mean_coef1, t, x_t) * x0
        + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    )
    var = extract(schedule.posterior_variance, t, x_t)
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, var, log_var


def sample_posterior(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Draw x_{t-1} ~ q(x_{t-1} | x_t, x_0); where t = 0 the mean is returned (no noise is added)."""
    mean, _, log_var = q_posterior(schedule, x0, x_t, t)
    nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
    return mean + nonzero * torch.exp(0.5 * log_var) * noise


def predict_x0(
    schedule: NoiseSchedule, x_t: Tensor, t: Tensor, model_out: Tensor, pred_type: PredType
) -> Tensor:
    """The model's estimate of x_0 from its raw output."""
    check_pred_type(pred_type)
    if pred_type == "x0":
        return model_out
    if pred_type == "eps":
        return (
            extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * model_out
        )
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t
        - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * model_out
    )


def predict_eps(
    schedule: NoiseSchedule, x_t: Tensor, t: Tensor, model_out: Tensor, pred_type: PredType
) -> Tensor:
    """The model's estimate of the noise eps from its raw output."""
    check_pred_type(pred_type)
    if pred_type == "eps":
        return model_out
    if pred_type == "x0":
        return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - model_out) / extract(
            schedule.sqrt_recipm1_alphas_cumprod, t, x_t
        )
    return (
        extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
        + extract(schedule.sqrt_alphas_cumprod, t, x_t) * model_out
    )


def target_for(pred_type: PredType, x0: Tensor, noise: Tensor, schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """The regression target of a model with this prediction type for x_t = q_sample(schedule, x0, t, noise)."""
    check_pred_type(pred_type)
    if pred_type == "eps":
        return noise
    if pred_type == "x0":
        return x0
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * noise
        - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0
    )
