"""genface's diffusion and metric formulas against reference implementations used as oracles.

diffusers (DDPMScheduler, DDIMScheduler) for the linear and cosine schedules, the DDPM posterior and DDIM;
a line-by-line transcription of NVlabs' denoising-diffusion-gan for DD-GAN's VP schedule (it is not a
package); torch-fidelity for the Fréchet distance and KID. Every tolerance is stated where it is used: float64
against float64 is held to ~1e-10 relative or better, and where the oracle keeps float32 values the tolerance
is the float32 rounding that explains the difference, not more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

from genface.diffusion import NoiseSchedule, ddim_sample, ddim_timesteps, predict_x0, sample_posterior
from genface.metrics.fidkid import frechet_distance, kernel_inception_distance

F64 = torch.float64
#: One float32 rounding of a value, relative (the unit roundoff 2^-24), and two of them (torch.linspace in
#: float32 is within two roundings of the exact endpoint interpolation).
F32_ROUNDING = 2.0**-24
F32_TWO_ROUNDINGS = 2.0**-23


def diffusers_schedule(kind: str, T: int) -> dict:
    """diffusers' scheduler arguments for genface's schedule `kind` with T steps.

    linear: genface gives DDPM's endpoints (1e-4, 0.02) for T = 1000 and scales them by 1000/T
    (improved-diffusion), so diffusers gets the scaled endpoints. cosine: diffusers' "squaredcos_cap_v2" is
    Nichol & Dhariwal's cos² schedule with s = 0.008 and betas capped at 0.999, genface's defaults.
    """
    if kind == "linear":
        return {"beta_schedule": "linear", "beta_start": 1e-4 * 1000 / T, "beta_end": 0.02 * 1000 / T}
    return {"beta_schedule": "squaredcos_cap_v2"}


# ----- schedules -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "T"), [("linear", 1000), ("linear", 250), ("cosine", 1000), ("cosine", 50)])
def test_schedule_matches_diffusers(kind: str, T: int) -> None:
    ours = NoiseSchedule.from_config(kind, T)
    ref = DDPMScheduler(num_train_timesteps=T, **diffusers_schedule(kind, T))
    # diffusers stores its betas in float32: ours, rounded once more, must land within two float32 roundings.
    torch.testing.assert_close(ours.betas, ref.betas.to(F64), rtol=F32_TWO_ROUNDINGS, atol=0)
    # ᾱ_t = prod(1 - β_s). diffusers' float32 cumprod loses far more than our formula could (1 - 0.999 in
    # float32 keeps 4 digits), so the oracle's ᾱ is taken in float64 from its own betas. Those betas are off
    # by at most u = F32_TWO_ROUNDINGS relative, which moves α_s = 1 - β_s by u·β_s/α_s and ᾱ_t, to first
    # order, by u·Σ_{s<=t} β_s/α_s relative: that sum, per t, is the tolerance (plus float64 round-off).
    ref_alpha_bar = torch.cumprod(1.0 - ref.betas.to(F64), dim=0)
    bound = F32_TWO_ROUNDINGS * torch.cumsum(ours.betas / ours.alphas, dim=0) + 1e-13
    rel_err = (ours.alphas_cumprod - ref_alpha_bar).abs() / ref_alpha_bar
    assert (rel_err <= bound).all(), f"worst t {int((rel_err / bound).argmax())}: {rel_err.max():.3g} relative"


def nvlabs_ddgan_coefficients(T: int, beta_min: float, beta_max: float) -> dict[str, torch.Tensor]:
    """DD-GAN's schedule and posterior, transcribed from NVlabs/denoising-diffusion-gan (train_ddgan.py:
    `var_func_vp`, `get_sigma_schedule`, `Posterior_Coefficients`), kept in float64: the original casts its
    betas to float32 at the end, which would only add float32 noise to the comparison."""
    eps_small = 1e-3
    t = torch.from_numpy(np.arange(0, T + 1, dtype=np.float64) / T) * (1.0 - eps_small) + eps_small
    log_mean_coeff = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    var = 1.0 - torch.exp(2.0 * log_mean_coeff)
    alpha_bars = 1.0 - var
    betas = 1 - alpha_bars[1:] / alpha_bars[:-1]
    betas = torch.cat((torch.tensor([1e-8], dtype=F64), betas))  # the clean level's beta...
    betas = betas[1:]  # ...that Posterior_Coefficients drops again ("we don't need the zeros")
    alphas = 1 - betas
    alphas_cumprod = torch.cumprod(alphas, 0)
    alphas_cumprod_prev = torch.cat((torch.tensor([1.0], dtype=F64), alphas_cumprod[:-1]), 0)
    posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "posterior_variance": posterior_variance,
        "posterior_mean_coef1": betas * torch.sqrt(alphas_cumprod_prev) / (1 - alphas_cumprod),
        "posterior_mean_coef2": (1 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1 - alphas_cumprod),
        "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=1e-20)),
    }


@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_vp_schedule_and_posterior_match_nvlabs_ddgan(T: int) -> None:
    """DDGAN builds `NoiseSchedule.from_config("vp", T, beta_min=0.1, beta_max=20)` (the paper's values):
    its betas are 1 - ᾱ(τ_k)/ᾱ(τ_{k-1}) of the VP SDE's ᾱ(τ) = exp(-β_min·τ - ½(β_max - β_min)·τ²) at
    τ_k = 1e-3 + (1 - 1e-3)·k/T, and its posterior is DD-GAN's `sample_posterior`."""
    ours = NoiseSchedule.from_config("vp", T, beta_min=0.1, beta_max=20.0)
    ref = nvlabs_ddgan_coefficients(T, beta_min=0.1, beta_max=20.0)
    rtol = 1e-12  # float64 both sides, a handful of operations on values of order 1
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2"):
        torch.testing.assert_close(getattr(ours, name), ref[name], rtol=rtol, atol=0, msg=name)
    # log β̃ differs only at t = 0 for T > 1, where genface borrows log β̃_1 (DDPM's convention) and DD-GAN
    # clamps log 0 to log 1e-20; both samplers add no noise at t = 0, so that entry is never used.
    first = 0 if T == 1 else 1
    torch.testing.assert_close(
        ours.posterior_log_variance_clipped[first:], ref["posterior_log_variance_clipped"][first:], rtol=rtol, atol=0
    )
    # DD-GAN's p_sample: mean + (t != 0)·exp(½ log β̃)·noise, with the noise given.
    g = torch.Generator().manual_seed(T)
    x0, x_t, noise = (torch.randn(2 * T, 3, 4, 4, generator=g, dtype=F64) for _ in range(3))
    t = torch.arange(2 * T) % T

    def coef(name: str) -> torch.Tensor:
        return ref[name][t].reshape(-1, 1, 1, 1)

    mean = coef("posterior_mean_coef1") * x0 + coef("posterior_mean_coef2") * x_t
    nonzero = (1 - (t == 0).to(F64)).reshape(-1, 1, 1, 1)
    expected = mean + nonzero * torch.exp(0.5 * coef("posterior_log_variance_clipped")) * noise
    torch.testing.assert_close(sample_posterior(ours, x0, x_t, t, noise), expected, rtol=rtol, atol=1e-15)


# ----- DDPM posterior ------------------------------------------------------------------------------------
def float64_scheduler(scheduler: DDPMScheduler | DDIMScheduler, schedule: NoiseSchedule) -> None:
    """Give a diffusers scheduler our float64 ᾱ in place of its float32 one.

    Its step formulas read nothing else of the schedule, and `test_schedule_matches_diffusers` has checked the
    schedule itself against diffusers' own; so the step under test is compared at float64 precision.
    """
    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    one = torch.tensor(1.0, dtype=F64)
    if isinstance(scheduler, DDPMScheduler):
        scheduler.one = one
    else:
        scheduler.final_alpha_cumprod = one


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize(("pred_type", "diffusers_pred"), [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
def test_posterior_step_matches_diffusers_ddpm(kind: str, pred_type: str, diffusers_pred: str) -> None:
    """x_{t-1} = coef1·x̂0 + coef2·x_t + sqrt(β̃_t)·noise for every t of a 1000-step chain, x̂0 from the model
    output as DDPMScheduler.step derives it (variance "fixed_small" = β̃_t, no clipping), the same noise."""
    T = 1000
    ours = NoiseSchedule.from_config(kind, T)
    ref = DDPMScheduler(
        num_train_timesteps=T, clip_sample=False, variance_type="fixed_small", prediction_type=diffusers_pred,
        **diffusers_schedule(kind, T),
    )  # fmt: skip
    float64_scheduler(ref, ours)
    g = torch.Generator().manual_seed(0)
    x_t, out = torch.randn(2, 2, 3, 4, 4, generator=g, dtype=F64)
    for step in range(T):
        expected = ref.step(out, step, x_t, generator=torch.Generator().manual_seed(step)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(step), dtype=F64)
        t = torch.full((2,), step)
        got = sample_posterior(ours, predict_x0(ours, x_t, t, out, pred_type), x_t, t, noise)
        # float64 both sides; eps -> x0 multiplies by sqrt(1/ᾱ) (up to ~1e4 at the cosine schedule's end),
        # which the relative tolerance absorbs since x_{t-1} scales with it too
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=f"t={step}")


# ----- DDIM ----------------------------------------------------------------------------------------------
def test_ddim_timesteps_match_diffusers_trailing_spacing() -> None:
    """genface's int `steps` are diffusers' `timestep_spacing="trailing"` (steps_offset 0): T - 1 - round(k·T/n).

    They agree for every n of T = 1000 except where diffusers' own arithmetic departs from that formula: where
    some k·T/n is a half-integer (a tie: genface rounds k·T/n half-to-even, diffusers rounds T - k·T/n, one
    step apart), and where its float `np.arange(T, 0, -T/n)` yields n + 1 timesteps (e.g. n = 61).
    """
    T = 1000
    ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing", steps_offset=0)
    compared = 0
    for n in range(1, T + 1):
        ref.set_timesteps(n)
        tie = any((2 * k * T) % n == 0 and (2 * k * T // n) % 2 == 1 for k in range(n))
        if tie or len(ref.timesteps) != n:
            continue
        assert ddim_timesteps(T, n) == ref.timesteps.tolist(), f"steps={n}"
        compared += 1
    assert compared >= 850  # 877 of the 1000 with diffusers 0.42.1: the comparison covers most n


def linear_model(shape: tuple[int, ...], T: int, seed: int = 0):
    """A fixed random linear eps-predictor: eps = W·x + (t/T)·u, the same function on both sides."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    W = 0.2 * torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
    u = torch.randn(d, generator=g, dtype=F64)

    def model(x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=F64).reshape(-1, 1)
        return (x.flatten(1) @ W + t / T * u).reshape(x.shape)

    return model


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_trajectory_matches_diffusers(kind: str) -> None:
    """50 DDIM steps, eta = 0, on T = 1000, no clipping: diffusers' DDIMScheduler configured to match.

    `timestep_spacing="trailing"` with `steps_offset=0` picks genface's timesteps (999, 979, ..., 19; the same
    as "leading" with steps_offset=19 here); `set_alpha_to_one=True` makes the last step return x̂0, as
    genface does; `clip_sample=False` as `clip_x0=False`.
    """
    T, steps, shape = 1000, 50, (3, 8, 8)
    ours = NoiseSchedule.from_config(kind, T)
    ref = DDIMScheduler(
        num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
        timestep_spacing="trailing", prediction_type="epsilon", **diffusers_schedule(kind, T),
    )  # fmt: skip
    float64_scheduler(ref, ours)
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == ddim_timesteps(T, steps)
    model = linear_model(shape, T)
    x_T = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = x_T
    for t in ref.timesteps:
        x = ref.step(model(x, t), int(t), x, eta=0.0).prev_sample
    got = ddim_sample(model, ours, x_T, steps, eta=0.0, pred_type="eps", clip_x0=False)
    # float64 both sides over 50 steps; genface re-derives eps from x̂0 (exact in real arithmetic)
    torch.testing.assert_close(got, x, rtol=1e-10, atol=1e-10 * x.abs().max().item())


# ----- FID and KID ---------------------------------------------------------------------------------------
def features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """n correlated Gaussian features of dimension d, float64."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
    return scale * torch.randn(n, d, generator=g, dtype=F64) @ mix + shift


def fid_pair(n: int, d: int) -> tuple[dict, dict]:
    """torch-fidelity's statistics (mean, np.cov) of two different feature sets, both sides use them."""
    return (
        fid_features_to_statistics(features(n, d, seed=0)),
        fid_features_to_statistics(features(n, d, seed=1, shift=0.1, scale=1.2)),
    )


def genface_fid(s1: dict, s2: dict) -> float:
    return frechet_distance(*(torch.from_numpy(s[k]) for s in (s1, s2) for k in ("mu", "sigma")))


def test_frechet_distance_matches_torch_fidelity_full_rank() -> None:
    s1, s2 = fid_pair(n=3000, d=256)
    ref = fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID]
    # float64 both sides; the two take tr((Σ1Σ2)^½) by different eigen-solvers (general vs symmetric)
    assert genface_fid(s1, s2) == pytest.approx(ref, rel=1e-10)


def test_frechet_distance_matches_torch_fidelity_rank_deficient() -> None:
    """N = 500 < d = 512: both covariances have rank 499, so Σ1Σ2 has d - 499 = 13 zero eigenvalues.

    Each solver returns those as round-off of size ~ d·ε·‖Σ1‖‖Σ2‖ (ε = float64 epsilon), whose square roots,
    ~ sqrt(d·ε·‖Σ1‖‖Σ2‖), enter tr((Σ1Σ2)^½) on either side: twice that per null eigenvalue (FID has
    -2·tr) on each side bounds the difference.
    """
    d = 512
    s1, s2 = fid_pair(n=500, d=d)
    assert np.linalg.matrix_rank(s1["sigma"]) == 499
    ref = fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID]
    norms = np.linalg.norm(s1["sigma"], 2) * np.linalg.norm(s2["sigma"], 2)
    null = d - 499
    tol = 2 * 2 * null * math.sqrt(d * np.finfo(np.float64).eps * norms)
    assert abs(genface_fid(s1, s2) - ref) <= tol, (genface_fid(s1, s2), ref, tol)
    assert tol < 1e-6 * ref  # still a tight test: a part per million of the value


KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 50, 200, 2020


def kid_features() -> tuple[torch.Tensor, torch.Tensor]:
    return features(1000, 64, seed=2), features(800, 64, seed=3, shift=0.05, scale=1.1)


def test_kid_matches_torch_fidelity_on_the_same_subsets(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-fidelity draws each subset pair with `RandomState(seed).choice(n, m, replace=False)`, first side
    then second; genface draws fake then real with `torch.randperm(n)[:m]`. Feeding genface's draws from
    torch-fidelity's generator, in its order, makes both average MMD² over the very same subsets."""
    real, fake = kid_features()
    ref = kid_features_to_metric(
        fake, real, kid_subsets=KID_SUBSETS, kid_subset_size=KID_SUBSET_SIZE, rng_seed=KID_SEED, verbose=False
    )
    rng = np.random.RandomState(KID_SEED)
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: torch.from_numpy(rng.choice(n, KID_SUBSET_SIZE, replace=False)))
    mean, std = kernel_inception_distance(real, fake, KID_SUBSETS, KID_SUBSET_SIZE)
    # float64 both sides (torch-fidelity's numpy copies of float64 tensors); sums of 200² kernel values ~ 1
    assert mean == pytest.approx(ref[KEY_METRIC_KID_MEAN], rel=1e-10)
    assert std == pytest.approx(ref[KEY_METRIC_KID_STD], rel=1e-9)


def test_kid_with_its_own_subsets_agrees_with_torch_fidelity_within_sampling_error() -> None:
    """Each side averages S = 50 MMD² values of independent uniformly drawn subsets: given the features, the two
    means differ by a N(0, 2σ²/S) draw (σ: the per-subset spread). 5 standard errors allows that and nothing
    systematic."""
    real, fake = kid_features()
    ref = kid_features_to_metric(
        fake, real, kid_subsets=KID_SUBSETS, kid_subset_size=KID_SUBSET_SIZE, rng_seed=KID_SEED, verbose=False
    )
    mean, std = kernel_inception_distance(real, fake, KID_SUBSETS, KID_SUBSET_SIZE, seed=0)
    sigma = max(std, ref[KEY_METRIC_KID_STD])
    assert abs(mean - ref[KEY_METRIC_KID_MEAN]) <= 5 * sigma * math.sqrt(2 / KID_SUBSETS)
    assert ref[KEY_METRIC_KID_MEAN] > 10 * sigma * math.sqrt(2 / KID_SUBSETS)  # the sets do differ, visibly
    # the spreads estimate the same σ from 50 draws each: within a factor 1.5 (a ~3-sigma band of their ratio)
    assert 1 / 1.5 < std / ref[KEY_METRIC_KID_STD] < 1.5
