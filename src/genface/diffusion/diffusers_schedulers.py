"""diffusers' schedulers as genface samplers: one table of names, configured from genface's own schedule.

Every scheduler gets the model's betas (`trained_betas`), its prediction type under diffusers' name
(eps -> "epsilon", x0 -> "sample", v -> "v_prediction") and "trailing" timestep spacing, so that, like
genface's DDIM, sampling starts at t = T-1 from x_T = the latent (times the scheduler's
`init_noise_sigma`, which the Euler-type schedulers divide out again before the network sees it) and
visits integer timesteps only. Clipping is genface's, the same for every scheduler: with `clip_x0` the
network's output is converted to x0, clipped to [-1, 1] and converted back (as genface's DDIM re-derives
eps from the clipped x0); the schedulers' own clipping and thresholding stay off.

Stochastic schedulers (`STOCHASTIC`) draw their noise from `generator`: one generator, or one per sample
(diffusers' `randn_tensor` accepts a list), which is how DDPM keeps `generate(latents)` deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import (
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from rich.progress import track
from torch import Tensor

from genface.diffusion.gaussian import PredType, check_pred_type, predict_eps, predict_x0, target_for
from genface.diffusion.samplers import Generators, ModelFn, SamplingPath, path_indices
from genface.diffusion.schedules import NoiseSchedule

#: genface's prediction types under diffusers' names.
DIFFUSERS_PRED_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}

#: sampler name -> (diffusers scheduler class, its options beyond the schedule and prediction type).
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    # DPM-Solver++(2M), Lu et al. 2022: second-order multistep in x0, the usual 10-25 step choice
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # UniPC, Zhao et al. 2023: predictor-corrector multistep (bh2)
    "unipc": (UniPCMultistepScheduler, {}),
    # DEIS, Zhang & Chen 2023: exponential-integrator multistep (order 2)
    "deis": (DEISMultistepScheduler, {}),
    # Karras et al. 2022's samplers of the probability-flow ODE in sigma space
    "euler": (EulerDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),  # second order: 2 * sample_steps - 1 network evaluations
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),  # stochastic
    # DDPM's ancestral sampler over `sample_steps` respaced steps (variance β̃), stochastic
    "ddpm": (DDPMScheduler, {"variance_type": "fixed_small", "clip_sample": False}),
}
#: Schedulers that add fresh noise at each step.
STOCHASTIC = frozenset({"euler_ancestral", "ddpm"})


def make_scheduler(name: str, schedule: NoiseSchedule, pred_type: PredType, **options: Any) -> SchedulerMixin:
    """The diffusers scheduler `name` of `SCHEDULERS` on genface's `schedule` (its betas, T, "trailing"
    timesteps) for a network of prediction type `pred_type`; `options` override the scheduler's settings."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown diffusers sampler {name!r}; allowed: {', '.join(SCHEDULERS)}")
    check_pred_type(pred_type)
    cls, defaults = SCHEDULERS[name]
    return cls(
        num_train_timesteps=schedule.num_timesteps,
        trained_betas=schedule.betas.tolist(),
        prediction_type=DIFFUSERS_PRED_TYPES[pred_type],
        timestep_spacing="trailing",
        **{**defaults, **options},
    )


def scheduler_timesteps(name: str, schedule: NoiseSchedule, pred_type: PredType, steps: int) -> list[int]:
    """The timesteps at which scheduler `name` evaluates the network for `steps` steps, in order (a
    second-order scheduler such as heun visits most twice): one network evaluation each."""
    scheduler = make_scheduler(name, schedule, pred_type)
    scheduler.set_timesteps(steps)
    return [round(float(t)) for t in scheduler.timesteps]


def _clipped_output(
    schedule: NoiseSchedule, x_t: Tensor, t: Tensor, out: Tensor, pred_type: PredType
) -> tuple[Tensor, Tensor]:
    """(output whose x0 is clipped to [-1, 1], that x0): x0 from the output, clipped, and the output of the
    same prediction type re-derived from it and x_t."""
    x0 = predict_x0(schedule, x_t, t, out, pred_type).clamp(-1.0, 1.0)
    eps = predict_eps(schedule, x_t, t, x0, "x0")
    return target_for(pred_type, x0, eps, schedule, t), x0


@torch.no_grad()
def diffusers_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x_T: Tensor,
    sampler: str,
    steps: int,
    pred_type: PredType = "eps",
    clip_x0: bool = True,
    generator: Generators | None = None,
    return_path: bool = False,
    progress: bool = False,
    path_every: int = 1,
) -> Tensor | tuple[Tensor, SamplingPath]:
    """Sample with the diffusers scheduler `sampler` (a key of `SCHEDULERS`) in `steps` steps from x_T.

    The network is called as `model_fn(x_t, t)` with the variance-preserving x_t and integer timesteps t
    (B,), as genface's own samplers call it. `generator` feeds the stochastic schedulers (one, or one per
    sample); deterministic ones draw nothing. The path (`return_path`) keeps every `path_every`-th network
    evaluation and the last, as (x_t fed to the network, predicted x0), CPU copies.
    """
    scheduler = make_scheduler(sampler, schedule, pred_type)
    scheduler.set_timesteps(steps, device=x_T.device)
    noise_kw: dict[str, Any] = {}
    if sampler in STOCHASTIC:
        noise_kw["generator"] = list(generator) if isinstance(generator, Sequence) else generator
    timesteps = scheduler.timesteps
    kept = set(path_indices(len(timesteps), path_every)) if return_path else set()
    x, path = x_T * scheduler.init_noise_sigma, []
    for k, step in enumerate(track(timesteps, f"{sampler} sampling", disable=not progress)):
        x_in = scheduler.scale_model_input(x, step)
        t = torch.full((x.shape[0],), round(float(step)), device=x.device, dtype=torch.long)
        out = model_fn(x_in, t)
        if out.shape != x_in.shape:
            raise ValueError(
                f"model_fn returned shape {tuple(out.shape)} for input {tuple(x_in.shape)}; they must match"
            )
        if clip_x0:
            out, x0 = _clipped_output(schedule, x_in, t, out, pred_type)
        elif k in kept:
            x0 = predict_x0(schedule, x_in, t, out, pred_type)
        if k in kept:
            path.append((x_in.cpu(), x0.cpu()))
        x = scheduler.step(out, step, x, return_dict=False, **noise_kw)[0]
    return (x, path) if return_path else x


def ddpm_pipeline_scheduler(schedule: NoiseSchedule, pred_type: PredType, clip_x0: bool) -> DDPMScheduler:
    """The DDPMScheduler a diffusers `DDPMPipeline` needs to sample as genface's ancestral sampler does:
    genface's betas and prediction type, posterior variance β̃ ("fixed_small"), x0 clipped to [-1, 1] when the
    model clips, and "trailing" timesteps so that a pipeline run with fewer steps starts at t = T-1."""
    check_pred_type(pred_type)
    return DDPMScheduler(
        num_train_timesteps=schedule.num_timesteps,
        trained_betas=schedule.betas.tolist(),
        prediction_type=DIFFUSERS_PRED_TYPES[pred_type],
        variance_type="fixed_small",
        clip_sample=clip_x0,
        clip_sample_range=1.0,
        timestep_spacing="trailing",
    )
