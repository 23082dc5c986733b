"""Schedules, forward process, posterior, prediction types and the DDPM/DDIM samplers."""

from __future__ import annotations

import math

import pytest
import torch

from genface.diffusion import (
    NoiseSchedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    extract,
    latent_generators,
    make_betas,
    predict_eps,
    predict_x0,
    q_posterior,
    q_sample,
    q_sample_pair,
    sample_posterior,
    target_for,
)

KINDS_T = [
    ("linear", 1000),
    ("linear", 50),
    ("cosine", 1000),
    ("cosine", 7),
    ("sigmoid", 100),
    ("vp", 1),
    ("vp", 2),
    ("vp", 4),
]


# ----- schedules ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "T"), KINDS_T)
def test_schedule_is_a_valid_diffusion(kind: str, T: int) -> None:
    s = NoiseSchedule.from_config(kind, T)
    assert s.betas.dtype == torch.float64 and s.betas.shape == (T,)
    assert ((s.betas > 0) & (s.betas < 1)).all()
    ab = s.alphas_cumprod
    assert ((ab > 0) & (ab < 1)).all()
    assert (ab[1:] < ab[:-1]).all()


@pytest.mark.parametrize(("kind", "T"), KINDS_T)
def test_posterior_matches_gaussian_conditioning(kind: str, T: int) -> None:
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): precision-weighted product of two Gaussians."""
    s = NoiseSchedule.from_config(kind, T)
    b, a, ab_prev = s.betas, s.alphas, s.alphas_cumprod_prev
    closed = b * (1 - ab_prev) / (1 - s.alphas_cumprod)
    torch.testing.assert_close(s.posterior_variance, closed, rtol=1e-12, atol=0)
    assert s.posterior_variance[0] == 0 and ab_prev[0] == 1
    for t in range(1, T):
        precision = a[t] / b[t] + 1 / (1 - ab_prev[t])
        x0, x_t = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-1.2]], dtype=torch.float64)
        mean, var, log_var = q_posterior(s, x0, x_t, torch.tensor([t]))
        expected_mean = (a[t].sqrt() / b[t] * x_t + ab_prev[t].sqrt() / (1 - ab_prev[t]) * x0) / precision
        torch.testing.assert_close(mean, expected_mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(var.squeeze(), 1 / precision, rtol=1e-9, atol=0)
        torch.testing.assert_close(log_var.squeeze(), (1 / precision).log(), rtol=1e-9, atol=1e-12)
    if T > 1:  # DDPM's clipping: step 0 borrows step 1's variance
        assert s.posterior_log_variance_clipped[0] == s.posterior_variance[1].log()


def test_linear_known_values() -> None:
    s = NoiseSchedule.from_config("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=0.01)
    short = make_betas("linear", 250)  # DDPM endpoints scaled by 1000/T
    assert short[0].item() == pytest.approx(4e-4) and short[-1].item() == pytest.approx(0.08)
    with pytest.raises(ValueError, match="beta_end"):
        make_betas("linear", 10)


def test_cosine_known_values() -> None:
    T, s_ = 1000, 0.008

    def f(t: float) -> float:
        return math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2

    s = NoiseSchedule.from_config("cosine", T)
    assert s.betas[0].item() == pytest.approx(1 - f(1) / f(0), rel=1e-9)
    assert s.alphas_cumprod[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    assert s.betas[-1].item() == 0.999  # clipped


def test_sigmoid_is_symmetric_at_midpoint() -> None:
    """With start=-start=end and tau=1, ᾱ(1/2) = 1/2 exactly; index t holds τ=(t+1)/T."""
    s = NoiseSchedule.from_config("sigmoid", 10)
    assert s.alphas_cumprod[4].item() == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("T", [1, 2])
def test_vp_by_hand(T: int) -> None:
    def alpha_bar(tau: float) -> float:
        return math.exp(-0.1 * tau - 0.5 * (20 - 0.1) * tau**2)

    taus = [1e-3 + (1 - 1e-3) * k / T for k in range(T + 1)]
    expected = [1 - alpha_bar(taus[k + 1]) / alpha_bar(taus[k]) for k in range(T)]
    s = NoiseSchedule.from_config("vp", T)
    assert s.betas.tolist() == pytest.approx(expected, rel=1e-12)
    # The clean level is τ_0 = eps_small: ᾱ_t is normalised by it, as DD-GAN's cumulative products are.
    assert s.alphas_cumprod[-1].item() == pytest.approx(alpha_bar(1.0) / alpha_bar(1e-3), rel=1e-12)


def test_schedule_errors() -> None:
    with pytest.raises(ValueError, match=r"allowed kinds: \['cosine', 'linear', 'sigmoid', 'vp'\]"):
        make_betas("quadratic", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allowed options"):
        make_betas("vp", 2, beta_mn=0.1)
    assert make_betas("vp", 2, beta_max=10.0)[0] < make_betas("vp", 2)[0]
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        NoiseSchedule(torch.tensor([0.1, 1.0]))


# ----- forward process and conversions ------------------------------------------------------------------
def test_extract_broadcasts_for_any_rank_and_dtype() -> None:
    s = NoiseSchedule.from_config("linear", 100)
    t = torch.tensor([0, 99])
    for x in (torch.zeros(2, 5), torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16)):
        c = extract(s.sqrt_alphas_cumprod, t, x)
        assert c.shape == (2,) + (1,) * (x.ndim - 1) and c.dtype == x.dtype
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        extract(s.betas, torch.tensor([1, 2, 3]), torch.zeros(2, 5))


def test_q_sample_moments() -> None:
    s = NoiseSchedule.from_config("linear", 1000)
    g = torch.Generator().manual_seed(0)
    n, step = 40_000, 300
    x0 = torch.full((n, 2), 0.7, dtype=torch.float64)
    x0[:, 1] = -0.4
    t = torch.full((n,), step)
    x_t = q_sample(s, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    ab = s.alphas_cumprod[step].item()
    se = math.sqrt((1 - ab) / n)
    torch.testing.assert_close(x_t.mean(0), math.sqrt(ab) * x0[0], rtol=0, atol=5 * se)
    torch.testing.assert_close(x_t.var(0), torch.full((2,), 1 - ab, dtype=torch.float64), rtol=0.03, atol=0)


def test_q_sample_pair_is_consistent_with_marginals() -> None:
    """x_t of the pair is linear in its noises: zero noise gives sqrt(ᾱ_t)·x0, the noise weights sum to 1-ᾱ_t."""
    s = NoiseSchedule.from_config("vp", 4)
    x0 = torch.randn(4, 6, dtype=torch.float64)
    t = torch.arange(4)
    zero, one = torch.zeros_like(x0), torch.ones_like(x0)
    x_prev, x_t = q_sample_pair(s, x0, t, zero, zero)
    torch.testing.assert_close(x_t, s.sqrt_alphas_cumprod[t, None] * x0)
    torch.testing.assert_close(x_prev[0], x0[0])
    torch.testing.assert_close(x_prev[1:], s.sqrt_alphas_cumprod[t[1:] - 1, None] * x0[1:])
    w_prev = q_sample_pair(s, x0, t, one, zero)[1] - x_t
    w_step = q_sample_pair(s, x0, t, zero, one)[1] - x_t
    torch.testing.assert_close((w_prev**2 + w_step**2)[:, 0], 1 - s.alphas_cumprod)
    assert torch.equal(q_sample_pair(s, x0, t, one, zero)[0][0], x0[0])  # no noise on the data itself


@pytest.mark.parametrize(("kind", "T"), [("linear", 1000), ("cosine", 100), ("vp", 2)])
@pytest.mark.parametrize("pred_type", ["eps", "x0", "v"])
def test_prediction_round_trips(kind: str, T: int, pred_type: str) -> None:
    s = NoiseSchedule.from_config(kind, T)
    g = torch.Generator().manual_seed(1)
    t = torch.linspace(0, T - 1, 8).long()
    x0 = torch.rand(8, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = q_sample(s, x0, t, eps)
    out = target_for(pred_type, x0, eps, s, t)
    torch.testing.assert_close(predict_x0(s, x_t, t, out, pred_type), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(predict_eps(s, x_t, t, out, pred_type), eps, rtol=0, atol=1e-9)


def test_v_definition_and_pred_type_errors() -> None:
    s = NoiseSchedule.from_config("cosine", 10)
    x0, eps, t = torch.ones(2, 3), torch.full((2, 3), 2.0), torch.tensor([3, 3])
    ab = s.alphas_cumprod[3].item()
    torch.testing.assert_close(
        target_for("v", x0, eps, s, t), torch.full((2, 3), math.sqrt(ab) * 2 - math.sqrt(1 - ab))
    )
    with pytest.raises(ValueError, match=r"allowed: \['eps', 'x0', 'v'\]"):
        predict_x0(s, x0, t, x0, "score")  # type: ignore[arg-type]


def test_posterior_mean_of_true_x0_matches_ddpm_eps_form() -> None:
    """DDPM eq. 11: μ(x_t, x0) = (x_t - β_t/sqrt(1-ᾱ_t)·eps)/sqrt(α_t) when x_t = q_sample(x0, eps)."""
    s = NoiseSchedule.from_config("linear", 200)
    t = torch.tensor([1, 50, 199])
    x0 = torch.randn(3, 5, dtype=torch.float64)
    eps = torch.randn(3, 5, dtype=torch.float64)
    x_t = q_sample(s, x0, t, eps)
    mean, _, _ = q_posterior(s, x0, x_t, t)
    b, a, ab = s.betas[t, None], s.alphas[t, None], s.alphas_cumprod[t, None]
    torch.testing.assert_close(mean, (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt())


def test_sample_posterior_adds_no_noise_at_t0() -> None:
    s = NoiseSchedule.from_config("vp", 2)
    x0, x_t, noise = torch.zeros(2, 4), torch.ones(2, 4), torch.full((2, 4), 3.0)
    t = torch.tensor([0, 1])
    mean, var, _ = q_posterior(s, x0, x_t, t)
    out = sample_posterior(s, x0, x_t, t, noise)
    torch.testing.assert_close(out[0], mean[0])
    torch.testing.assert_close(out[1], mean[1] + var[1].sqrt() * 3.0)


# ----- samplers -------------------------------------------------------------------------------------------
def _toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear 'denoiser' whose x0 estimates leave [-1, 1], so clipping is exercised."""
    scale = (t.to(x.dtype) / 10 + 1).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x * scale) * 1.5 - 0.2 * x


def _oracle(s: NoiseSchedule, x0: torch.Tensor, pred_type: str):
    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = extract(s.alphas_cumprod, t, x_t)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return target_for(pred_type, x0, eps, s, t)  # type: ignore[arg-type]

    return model_fn


def test_ddim_timesteps() -> None:
    ts = ddim_timesteps(1000, 50)
    assert ts[0] == 999 and ts[-1] == 19 and len(ts) == 50
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ddim_timesteps(7, 7) == list(range(6, -1, -1))
    assert ddim_timesteps(10, [0, 9, 4, 4]) == [9, 4, 0]
    with pytest.raises(ValueError, match=r"\[1, T=10\]"):
        ddim_timesteps(10, 11)
    with pytest.raises(ValueError, match=r"within \[0, 9\]"):
        ddim_timesteps(10, [3, 10])


def test_ddim_eta0_is_deterministic_and_draws_no_randomness() -> None:
    s = NoiseSchedule.from_config("cosine", 40)
    x_T = torch.randn(3, 2, 4, 4)
    g = torch.Generator().manual_seed(5)
    rng, g_state = torch.get_rng_state(), g.get_state()
    a = ddim_sample(_toy_model, s, x_T, steps=8, generator=g)
    b = ddim_sample(_toy_model, s, x_T.clone(), steps=8)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(g.get_state(), g_state)
    assert not torch.equal(a, ddim_sample(_toy_model, s, x_T, steps=8, eta=1.0, generator=g))


@pytest.mark.parametrize("clip_x0", [True, False])
@pytest.mark.parametrize("pred_type", ["eps", "v"])
def test_ddim_eta1_all_steps_equals_ddpm(clip_x0: bool, pred_type: str) -> None:
    T = 30
    s = NoiseSchedule.from_config("cosine", T)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    noises = torch.randn(T - 1, *x_T.shape, generator=g, dtype=torch.float64)
    ddpm = ddpm_sample(_toy_model, s, x_T, pred_type, clip_x0=clip_x0, noises=noises)
    ddim = ddim_sample(_toy_model, s, x_T, T, eta=1.0, pred_type=pred_type, noises=noises, clip_x0=clip_x0)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("pred_type", ["eps", "x0", "v"])
def test_oracle_recovers_x0(pred_type: str) -> None:
    s = NoiseSchedule.from_config("linear", 1000)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    x_T = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    oracle = _oracle(s, x0, pred_type)
    torch.testing.assert_close(ddim_sample(oracle, s, x_T, 4, pred_type=pred_type), x0, rtol=0, atol=1e-9)
    small = NoiseSchedule.from_config("vp", 4)
    x_small = ddpm_sample(_oracle(small, x0, pred_type), small, x_T, pred_type, generator=g)
    torch.testing.assert_close(x_small, x0, rtol=0, atol=1e-9)


def test_samplers_on_flat_latents_with_paths() -> None:
    """Latent diffusion samples flat (B, D) latents; paths hold one (x_t, x0) pair per step."""
    s = NoiseSchedule.from_config("linear", 50)
    x_T = torch.randn(4, 16)
    out, path = ddim_sample(_toy_model, s, x_T, [49, 30, 10, 0], clip_x0=False, return_path=True)
    assert out.shape == (4, 16) and len(path) == 4
    assert torch.equal(path[0][0], x_T) and torch.equal(path[-1][1], out)
    out, path = ddpm_sample(
        _toy_model, s, x_T, "eps", generator=torch.Generator().manual_seed(0), return_path=True
    )
    assert out.shape == (4, 16) and len(path) == 50 and path[-1][0].shape == (4, 16)


def test_paths_keep_every_kth_step_and_the_last() -> None:
    s = NoiseSchedule.from_config("cosine", 10)
    x_T = torch.randn(2, 3)
    full, path = ddpm_sample(_toy_model, s, x_T, "eps", torch.Generator().manual_seed(0), return_path=True)
    out, thin = ddpm_sample(
        _toy_model, s, x_T, "eps", torch.Generator().manual_seed(0), return_path=True, path_every=4
    )
    assert torch.equal(out, full) and len(thin) == 4  # steps 0, 4, 8 and the last (9)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(thin, [path[k] for k in (0, 4, 8, 9)]))
    _, thin = ddim_sample(_toy_model, s, x_T, 5, return_path=True, path_every=3)
    assert len(thin) == 3  # steps 0, 3 and the last (4)
    with pytest.raises(ValueError, match=r"k \(path_every\) must be >= 1"):
        ddim_sample(_toy_model, s, x_T, 5, return_path=True, path_every=0)


def test_per_sample_generators_make_each_sample_a_function_of_its_latent() -> None:
    s = NoiseSchedule.from_config("cosine", 12)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    gens = [g.get_state() for g in latent_generators(x_T)]
    assert all(torch.equal(a, b) for a, b in zip(gens, [g.get_state() for g in latent_generators(x_T.clone())]))
    assert not torch.equal(gens[0], gens[1])  # different latents, different noise
    batch = ddpm_sample(_toy_model, s, x_T, "eps", latent_generators(x_T))
    alone = ddpm_sample(_toy_model, s, x_T[1:2], "eps", latent_generators(x_T[1:2]))
    torch.testing.assert_close(alone, batch[1:2])  # the batch a sample is drawn in does not matter
    stochastic = ddim_sample(_toy_model, s, x_T, 6, eta=1.0, generator=latent_generators(x_T))
    assert torch.equal(stochastic, ddim_sample(_toy_model, s, x_T, 6, eta=1.0, generator=latent_generators(x_T)))
    with pytest.raises(ValueError, match="one generator per sample: got 2 for a batch of 3"):
        ddpm_sample(_toy_model, s, x_T, "eps", latent_generators(x_T[:2]))


def test_ddpm_generator_reproducible_and_progress_bar_runs() -> None:
    s = NoiseSchedule.from_config("cosine", 6)
    x_T = torch.randn(2, 1, 2, 2)

    def run(seed: int, progress: bool = False) -> torch.Tensor:
        return ddpm_sample(_toy_model, s, x_T, "eps", torch.Generator().manual_seed(seed), progress=progress)

    assert torch.equal(run(0), run(0, progress=True))
    assert not torch.equal(run(0), run(1))


def test_sampler_errors() -> None:
    s = NoiseSchedule.from_config("cosine", 6)
    x_T = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"one tensor per noise-adding step \(5\)"):
        ddpm_sample(_toy_model, s, x_T, "eps", noises=torch.zeros(6, 2, 3))
    with pytest.raises(ValueError, match=r"noises\[0\] has shape"):
        ddim_sample(_toy_model, s, x_T, 3, eta=0.5, noises=torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="must match"):
        ddim_sample(lambda x, t: torch.cat([x, x], 1), s, x_T, 3)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(_toy_model, s, x_T, 3, eta=-1.0)
