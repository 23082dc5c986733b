"""Pure-torch Gaussian diffusion shared by DDPM, DD-GAN and latent diffusion: schedules, forward process,
posterior, prediction-type conversions and the DDPM/DDIM samplers."""

from genface.diffusion.gaussian import (
    PRED_TYPES,
    PredType,
    extract,
    predict_eps,
    predict_x0,
    q_posterior,
    q_sample,
    q_sample_pair,
    sample_posterior,
    target_for,
)
from genface.diffusion.samplers import (
    SamplingPath,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    latent_generators,
    path_indices,
)
from genface.diffusion.schedules import NoiseSchedule, ScheduleKind, make_betas

__all__ = [
    "PRED_TYPES",
    "NoiseSchedule",
    "PredType",
    "SamplingPath",
    "ScheduleKind",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "extract",
    "latent_generators",
    "make_betas",
    "path_indices",
    "predict_eps",
    "predict_x0",
    "q_posterior",
    "q_sample",
    "q_sample_pair",
    "sample_posterior",
    "target_for",
]
