"""DDPM ancestral and DDIM samplers over any `model_fn(x_t, t) -> output`.

Guidance (classifier-free, classifier) is the caller's business: wrap `model_fn`. Randomness is explicit:
a `torch.Generator`, one generator per sample (`latent_generators`: each sample's noise then depends on
that sample alone, not on the batch it is drawn in), or `noises`, one standard-normal tensor per step that
adds noise. The last two make a sample a deterministic function of its inputs - what the Generative
contract needs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch
from rich.progress import track
from torch import Tensor

from genface.diffusion.gaussian import PredType, check_pred_type, predict_eps, predict_x0, q_posterior
from genface.diffusion.schedules import NoiseSchedule

ModelFn = Callable[[Tensor, Tensor], Tensor]
#: One generator for the whole batch, or one per sample (row of x_T).
Generators = torch.Generator | Sequence[torch.Generator]
#: (x_t fed to the model, predicted x0) per step, CPU copies so long chains do not fill GPU memory.
SamplingPath = list[tuple[Tensor, Tensor]]


def ddim_timesteps(T: int, steps: int | Sequence[int]) -> list[int]:
    """Timesteps visited by DDIM, descending.

    An int picks evenly spaced "trailing" timesteps (Lin et al. 2024): T - 1 - round(k·T/steps) for
    k = 0..steps-1, so T-1 always comes first and steps = T visits every step. diffusers'
    `timestep_spacing="trailing"` picks the same steps except where k·T/steps ends in exactly .5 (it rounds
    the other way) and for a few counts where its float `arange` yields steps + 1 timesteps (tests/test_oracles.py).
    A sequence is taken as a set of timesteps in [0, T-1], visited in descending order.
    """
    if isinstance(steps, int):
        if not 1 <= steps <= T:
            raise ValueError(f"DDIM steps must lie in [1, T={T}], got {steps}")
        spacing = torch.round(torch.arange(steps, dtype=torch.float64) * T / steps).long()
        return (T - 1 - spacing).tolist()
    chosen = sorted({int(s) for s in steps}, reverse=True)
    if not chosen or chosen[0] > T - 1 or chosen[-1] < 0:
        raise ValueError(f"DDIM timesteps must be a non-empty set within [0, {T - 1}], got {list(steps)}")
    return chosen


def latent_generators(latents: Tensor) -> list[torch.Generator]:
    """One CPU generator per row of `latents`, seeded by a hash of the row's float32 bytes.

    A stochastic sampler fed these draws its per-step noise as a deterministic function of each sample's
    latent (x_T): the same latent gives the same image on any device and in any batch, without packing
    T x C x H x W noise values into the latent. Any change of the latent, however small, draws unrelated
    noise, so latent directions and edits need a deterministic sampler (DDIM with eta = 0).
    """
    rows = latents.detach().reshape(latents.shape[0], -1).to("cpu", torch.float32).contiguous().numpy()
    return [
        torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little"))
        for row in rows
    ]


def _noise_source(
    noises: Sequence[Tensor] | Tensor | None, count: int, generator: Generators | None, like: Tensor
) -> Callable[[int], Tensor]:
    """Return k -> the noise of the k-th noisy step, taken from `noises` or drawn from `generator`
    (one generator for the batch, or one per sample)."""
    if noises is not None:
        if len(noises) != count:
            raise ValueError(
                f"noises must hold one tensor per noise-adding step ({count}), got {len(noises)}"
            )

        def given(k: int) -> Tensor:
            noise = noises[k]
            if noise.shape != like.shape:
                raise ValueError(f"noises[{k}] has shape {tuple(noise.shape)}, expected {tuple(like.shape)}")
            return noise.to(like.device, like.dtype)

        return given

    if generator is not None and not isinstance(generator, torch.Generator):
        generators = list(generator)
        if len(generators) != like.shape[0]:
            raise ValueError(f"one generator per sample: got {len(generators)} for a batch of {like.shape[0]}")

        def per_sample(k: int) -> Tensor:
            draws = [torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype) for g in generators]
            return torch.stack(draws).to(like.device)

        return per_sample

    def drawn(k: int) -> Tensor:
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)

    return drawn


def path_indices(count: int, every: int) -> list[int]:
    """Which of `count` sampling steps a sampling path keeps: every `every`-th one and the last."""
    if every < 1:
        raise ValueError(f"a path keeps every k-th step: k (path_every) must be >= 1, got {every}")
    return [k for k in range(count) if k % every == 0 or k == count - 1]


def _predict_x0(
    model_fn: ModelFn, schedule: NoiseSchedule, x: Tensor, step: int, pred_type: PredType, clip_x0: bool
) -> tuple[Tensor, Tensor]:
    """Run the model at timestep `step` and return (t, predicted x0), clipped to [-1, 1] if asked."""
    t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
    out = model_fn(x, t)
    if out.shape != x.shape:
        raise ValueError(
            f"model_fn returned shape {tuple(out.shape)} for input {tuple(x.shape)}; they must match"
        )
    x0 = predict_x0(schedule, x, t, out, pred_type)
    return t, (x0.clamp(-1.0, 1.0) if clip_x0 else x0)


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x_T: Tensor,
    pred_type: PredType = "eps",
    generator: Generators | None = None,
    clip_x0: bool = True,
    noises: Sequence[Tensor] | Tensor | None = None,
    return_path: bool = False,
    progress: bool = False,
    path_every: int = 1,
) -> Tensor | tuple[Tensor, SamplingPath]:
    """Ancestral sampling through all T steps: x_{t-1} ~ q(x_{t-1} | x_t, x0_pred) with variance β̃_t.

    `noises`: T-1 tensors shaped like x_T, used at t = T-1, ..., 1 in that order (t = 0 adds none).
    Returns x_0, or (x_0, path) when `return_path`; the path keeps every `path_every`-th step and the last.
    """
    check_pred_type(pred_type)
    T = schedule.num_timesteps
    noise = _noise_source(noises, T - 1, generator, x_T)
    kept = set(path_indices(T, path_every)) if return_path else set()
    x, path = x_T, []
    for k, step in enumerate(track(range(T - 1, -1, -1), "DDPM sampling", total=T, disable=not progress)):
        t, x0 = _predict_x0(model_fn, schedule, x, step, pred_type, clip_x0)
        if k in kept:
            path.append((x.cpu(), x0.cpu()))
        mean, _, log_var = q_posterior(schedule, x0, x, t)
        x = mean + torch.exp(0.5 * log_var) * noise(k) if step > 0 else mean
    return (x, path) if return_path else x


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x_T: Tensor,
    steps: int | Sequence[int],
    eta: float = 0.0,
    pred_type: PredType = "eps",
    generator: Generators | None = None,
    noises: Sequence[Tensor] | Tensor | None = None,
    clip_x0: bool = True,
    return_path: bool = False,
    progress: bool = False,
    path_every: int = 1,
) -> Tensor | tuple[Tensor, SamplingPath]:
    """DDIM (Song et al. 2021) over the timesteps of `ddim_timesteps(T, steps)`.

    eta = 0 is deterministic and draws no random numbers; eta = 1 with every step is DDPM's ancestral
    sampler. As in guided-diffusion, eps is re-derived from the (clipped) x0, which keeps that identity
    exact with clipping. `noises`: len(timesteps)-1 tensors, one per step except the last (which adds none).
    The path (`return_path`) keeps every `path_every`-th step and the last.
    """
    check_pred_type(pred_type)
    if eta < 0:
        raise ValueError(f"DDIM eta must be >= 0, got {eta}")
    timesteps = ddim_timesteps(schedule.num_timesteps, steps)
    noise = _noise_source(noises, len(timesteps) - 1, generator, x_T)
    kept = set(path_indices(len(timesteps), path_every)) if return_path else set()
    x, path = x_T, []
    pairs = list(zip(timesteps, timesteps[1:] + [-1]))
    for k, (step, prev) in enumerate(track(pairs, "DDIM sampling", disable=not progress)):
        t, x0 = _predict_x0(model_fn, schedule, x, step, pred_type, clip_x0)
        if k in kept:
            path.append((x.cpu(), x0.cpu()))
        if prev < 0:
            x = x0
            continue
        eps = predict_eps(schedule, x, t, x0, "x0")
        ab, ab_prev = schedule.alphas_cumprod[step].item(), schedule.alphas_cumprod[prev].item()
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * noise(k)
    return (x, path) if return_path else x
