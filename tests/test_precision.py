"""Mixed precision and the speed switches on CPU: one bf16-mixed training step per family (finite losses, float32
weights, EMA shadows and schedules), bf16 samples against float32 ones, channels-last, the Performance callback
(torch.compile and its eager fallback), the trainer defaults, and a smoke run of benchmarks/bench_gpu.py.

What autocast does differs between devices (CUDA runs pow/exp/sum/softplus/group_norm in float32, a CPU in
bfloat16), so the tests below check the places that must be float32 on both: GAN losses, the VAE posterior and
the latents latent diffusion trains on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from genface.callbacks.performance import Performance, compile_nets, nets, to_channels_last
from genface.losses import discriminator_loss, generator_loss
from helpers import StepRecorder, TinyImages, tiny_trainer
from test_cgan import TinyLabelled, tiny_cgan
from test_classifier import StripesData, tiny_classifier
from test_dcgan import tiny_dcgan
from test_ddgan import tiny_ddgan
from test_ddpm import tiny_ddpm
from test_latent_diffusion import tiny_ldm
from test_pix2pix import TinyPairs, tiny_pix2pix
from test_vaegan import TinySmiling, tiny_vaegan

ROOT = Path(__file__).resolve().parents[1]
#: Measured max |bf16 autocast sample - float32 sample| in [-1, 1] units, same latents, 2 seeds: DCGAN, cGAN,
#: Pix2Pix, classifier (probabilities) < 0.002; DD-GAN 0.017, DDPM (100 ancestral steps) 0.023, latent diffusion
#: (4 DDIM steps) 0.013, VAE-GAN 0.034. bf16 keeps ~3 significant digits; 0.1 leaves room for other CPUs.
SAMPLE_ATOL = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")


def perturb(module: nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Move zero-initialised output layers off zero, so that samples depend on every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory) -> str:
    """A tiny VAE (flat 16-d latent) after one training step: latent diffusion's frozen first stage."""
    tmp = tmp_path_factory.mktemp("first_stage")
    model = tiny_vaegan(gan=False)
    trainer = tiny_trainer(tmp, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, TinyImages(n=8, resolution=16))
    trainer.save_checkpoint(tmp / "vae.ckpt")
    return str(tmp / "vae.ckpt")


@dataclass
class Family:
    """A tiny model of one family, its data, the nets `Performance` should find, and how it makes images."""

    build: Callable[[str], nn.Module]
    data: Callable[[], object]
    nets: set[str]
    make: Callable[[nn.Module], torch.Tensor]
    #: zero-initialised output layers (U-Nets, DD-GAN, the VAE's decoder) that `perturb` must move first
    zero_init: bool = False


def _sample(model) -> torch.Tensor:
    z = model.sample_latents(4, generator=torch.Generator().manual_seed(1))
    return model.generate(z, model.default_labels(4))


def _translate(model) -> torch.Tensor:
    return model.translate(TinyPairs(n=4, resolution=32).pairs.tensors[0])


def _classify(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.predict_proba(StripesData(n=8).x)


def _vaegan() -> nn.Module:
    model = tiny_vaegan()
    model.enable_ema(0.9)  # VAE-GAN takes no ema_decay argument: its EMA shadows are checked all the same
    return model


FAMILIES: dict[str, Family] = {
    "dcgan": Family(lambda _: tiny_dcgan(ema_decay=0.9), lambda: TinyImages(n=16, batch_size=8),
                    {"generator", "discriminator"}, _sample),
    "cgan": Family(lambda _: tiny_cgan(ema_decay=0.9), lambda: TinyLabelled(n=16, batch_size=8),
                   {"generator", "discriminator"}, _sample),
    "pix2pix": Family(lambda _: tiny_pix2pix(), lambda: TinyPairs(n=8, batch_size=4),
                      {"generator", "discriminator"}, _translate),
    # ancestral, as the DLStudio recipe samples (a few DDIM steps: test_ddim_samples_under_bf16_autocast)
    "ddpm": Family(lambda _: tiny_ddpm(ema_decay=0.9, sampler="ancestral"), lambda: TinyImages(n=16, batch_size=8),
                   {"net"}, _sample, zero_init=True),
    "ddgan": Family(lambda _: tiny_ddgan(ema_decay=0.9, r1_gamma=1.0, lazy_reg=1), lambda: TinyImages(n=16, batch_size=8),
                    {"generator", "discriminator"}, _sample, zero_init=True),
    "vaegan": Family(lambda _: _vaegan(), lambda: TinyImages(n=16, batch_size=8), {"autoencoder", "discriminator"},
                     _sample, zero_init=True),
    "latent_diffusion": Family(lambda ckpt: tiny_ldm(ckpt, ema_decay=0.9), lambda: TinySmiling(n=16, batch_size=8),
                               {"net", "first_stage"}, _sample, zero_init=True),
    "classifier": Family(lambda _: tiny_classifier(), lambda: StripesData(n=16, batch_size=8), {"net"}, _classify),
}  # fmt: skip


def fit(model: nn.Module, data, tmp_path, steps: int = 1, **kw) -> StepRecorder:
    recorder = StepRecorder()
    callbacks = [recorder, *kw.pop("callbacks", [])]
    trainer = tiny_trainer(
        tmp_path, max_epochs=1, limit_train_batches=steps, limit_val_batches=0, callbacks=callbacks, **kw
    )
    trainer.fit(model, data)
    return recorder


def float_dtypes(tensors) -> set[torch.dtype]:
    return {t.dtype for t in tensors if t.is_floating_point()}


# ----- one bf16-mixed step per family ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_mixed_step_keeps_the_float32_parts_float32(name, first_stage, tmp_path):
    family = FAMILIES[name]
    torch.manual_seed(0)
    model = family.build(first_stage)
    net_inputs: list[torch.dtype] = []
    if name in ("ddpm", "ddgan"):  # x_t, as the forward process hands it to the network
        net = model.net if name == "ddpm" else model.generator
        net.register_forward_pre_hook(lambda _, args: net_inputs.append(args[0].dtype))
    rec = fit(model, family.data(), tmp_path, precision="bf16-mixed")

    losses = {k: v for k, v in rec.rows[-1].items() if "loss" in k or k.endswith(("/kl", "/rec", "/r1"))}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert float_dtypes(model.parameters()) == {torch.float32}
    if getattr(model, "ema", None) is not None:
        shadows = [b for n, b in model.ema.named_buffers() if n not in ("decay", "num_updates")]
        assert shadows and float_dtypes(shadows) == {torch.float32}
        assert model.ema.decay.dtype == torch.float64
    if hasattr(model, "schedule"):
        s = model.schedule
        coefficients = [s.betas, s.alphas_cumprod, s.sqrt_recipm1_alphas_cumprod, s.posterior_mean_coef1]
        assert float_dtypes(coefficients) == {torch.float64} and all(
            c.device.type == "cpu" for c in coefficients
        )
    if name in ("ddpm", "ddgan"):  # x_t = q_sample(x0 float32): coefficients applied in float32, not bf16
        assert set(net_inputs) == {torch.float32}
    if name == "ddgan":
        assert "train/r1" in rec.rows[-1] and math.isfinite(rec.rows[-1]["train/r1"])


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_autocast_samples_are_close_to_float32_samples(name, first_stage):
    family = FAMILIES[name]
    torch.manual_seed(0)
    model = family.build(first_stage)
    if family.zero_init:
        perturb(model)
    if getattr(model, "ema", None) is not None:  # generate() would use the EMA: a copy of the initial weights
        model.ema = None
    if name == "latent_diffusion":
        model.latent_scale.fill_(1.0)
    full = family.make(model).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = family.make(model)
    assert half.dtype in (torch.bfloat16, torch.float32) and half.shape == full.shape
    diff = (half.float() - full).abs().max().item()
    assert diff < SAMPLE_ATOL, f"{name}: max |bf16 - float32| = {diff:.4f}"
    assert torch.isfinite(half).all()


def test_ddim_samples_under_bf16_autocast_differ_in_a_few_pixels_only():
    """A few-step DDIM chain from an untrained U-Net amplifies any perturbation of its first step by up to
    1/sqrt(alpha_bar_T) (~150) before x0 is clipped: bf16 moves a few pixels by up to ~0.9 (measured 0.6-0.9;
    rounding the latents alone to bf16 moves them by up to ~0.6), the mean by ~0.001."""
    torch.manual_seed(0)
    model = tiny_ddpm(sampler="ddim", sample_steps=5)
    perturb(model)
    z = model.sample_latents(8, generator=torch.Generator().manual_seed(1))
    full = model.generate(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        diff = (model.generate(z).float() - full).abs()
    assert diff.mean() < 0.01 and (diff > SAMPLE_ATOL).float().mean() < 0.01, (diff.mean(), diff.max())


@pytest.mark.parametrize("name", FAMILIES)
def test_channels_last_gives_the_same_outputs_and_trains(name, first_stage, tmp_path):
    """The Performance callback converts on CUDA only; the conversion itself is checked here on CPU."""
    family = FAMILIES[name]
    torch.manual_seed(0)
    model = family.build(first_stage)
    if family.zero_init:
        perturb(model)
    if name == "latent_diffusion":
        model.latent_scale.fill_(1.0)
    before = family.make(model).float()
    to_channels_last(model)
    convs = [p for p in model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    torch.testing.assert_close(family.make(model).float(), before, atol=1e-4, rtol=1e-4)
    rec = fit(model, family.data(), tmp_path)
    assert all(math.isfinite(v) for k, v in rec.rows[-1].items() if "loss" in k)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


@pytest.mark.parametrize("name", FAMILIES)
def test_performance_finds_the_nets_of_every_family(name, first_stage):
    model = FAMILIES[name].build(first_stage)
    assert set(nets(model)) == FAMILIES[name].nets


def test_16_mixed_grad_scaler_reaches_manual_optimisation(tmp_path):
    """trainer.precision=16-mixed (GPUs without bf16): Lightning's GradScaler scales every `manual_backward` of
    the GANs' `optimizer_update` and unscales, checks and steps every optimizer.step (CPU float16 here)."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    calls = {"scale": 0, "step": 0, "update": 0}

    class CountingScaler(torch.amp.GradScaler):
        def scale(self, outputs):
            calls["scale"] += 1
            return super().scale(outputs)

        def step(self, optimizer, *args, **kwargs):
            calls["step"] += 1
            return super().step(optimizer, *args, **kwargs)

        def update(self, new_scale=None):
            calls["update"] += 1
            return super().update(new_scale)

    torch.manual_seed(0)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=CountingScaler("cpu"))
    rec = fit(
        tiny_ddgan(r1_gamma=1.0, lazy_reg=1),
        TinyImages(n=32, batch_size=8),
        tmp_path,
        steps=3,
        plugins=[plugin],
    )
    assert calls == {"scale": 6, "step": 6, "update": 6}  # D and G: two backward passes and steps per batch
    assert all(math.isfinite(v) for r in rec.rows for k, v in r.items() if "loss" in k)


# ----- float32 where it matters, under any autocast ---------------------------------------------------------------
#: R1 of the first batch under mixed precision vs the float32 trainer's (same seed, same weights). Its pass runs
#: in float32 with autocast off, so only the order of float32 operations may differ (measured: equal); a bf16
#: discriminator pass moved it by ~1 %.
R1_RTOL = 1e-5


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_ddgan_r1_is_float32_and_equals_the_float32_penalty(precision, tmp_path, monkeypatch):
    """R1 takes the input gradient of D's float32, unscaled output (16-mixed: the GradScaler scales D's whole
    loss afterwards, R1 included), so the penalty is the float32 trainer's."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    import genface.models.ddgan as ddgan_module

    seen: list[tuple[torch.dtype, torch.dtype, torch.dtype, float]] = []
    original = ddgan_module.r1_penalty

    def recording(logits, inputs):
        r1 = original(logits, inputs)
        seen.append((logits.dtype, inputs.dtype, r1.dtype, float(r1)))
        return r1

    monkeypatch.setattr(ddgan_module, "r1_penalty", recording)
    mixed = (
        {"precision": precision}
        if precision == "bf16-mixed"
        else {"plugins": [MixedPrecision("16-mixed", "cpu")]}
    )
    for name, kw in (("float32", {}), (precision, mixed)):
        torch.manual_seed(0)
        model = tiny_ddgan(r1_gamma=1.0, lazy_reg=1)
        perturb(model.discriminator)  # its zero-initialised output layer has no input gradient yet
        fit(model, TinyImages(n=8, batch_size=8), tmp_path / name, **kw)
    (*full_dtypes, full), (*mixed_dtypes, value) = seen
    assert mixed_dtypes == full_dtypes == [torch.float32] * 3
    assert full > 0 and value == pytest.approx(full, rel=R1_RTOL)


def test_gan_losses_are_float32_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = nn.Linear(4, 1)(torch.randn(8, 4))
        assert logits.dtype == torch.bfloat16
        for kind in ("bce", "hinge", "lsgan"):
            assert discriminator_loss(kind, logits, logits).dtype == torch.float32
            assert generator_loss(kind, logits).dtype == torch.float32


def test_vae_kl_and_latents_are_float32_under_autocast():
    model = tiny_vaegan(gan=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        posterior = model.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
        assert posterior.kl().dtype == torch.float32
        assert posterior.sample().dtype == torch.float32 and posterior.mode().dtype == torch.float32


def test_latent_diffusion_forward_process_is_float32_under_autocast(first_stage, tmp_path):
    model = tiny_ldm(first_stage)
    seen: list[torch.dtype] = []
    model.net.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    fit(model, TinySmiling(n=16, batch_size=8), tmp_path, precision="bf16-mixed")
    assert set(seen) == {torch.float32}


# ----- the Performance callback -------------------------------------------------------------------------------
def _failing_backend(gm, example_inputs):
    raise RuntimeError("no C compiler in this test")


def _dcgan_curve(tmp_path, steps: int = 4, callbacks=()) -> list[tuple[float, float]]:
    torch.manual_seed(0)
    model = tiny_dcgan()
    rec = fit(model, TinyImages(n=32, batch_size=8), tmp_path, steps=steps, callbacks=list(callbacks))
    return [(r["train/loss_d_step"], r["train/loss_g_step"]) for r in rec.rows]


def test_performance_does_nothing_on_cpu_by_default(tmp_path):
    benchmark, matmul = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    torch.manual_seed(0)
    model = tiny_dcgan()
    fit(model, TinyImages(n=16, batch_size=8), tmp_path, callbacks=[Performance()])
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(net._compiled_call_impl is None for net in nets(model).values())
    assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == (benchmark, matmul)


def test_compile_falls_back_to_eager_naming_the_net_and_the_error(tmp_path, caplog):
    eager = _dcgan_curve(tmp_path / "eager")
    perf = Performance(compile=True, compile_options={"backend": _failing_backend})
    with caplog.at_level(logging.WARNING, logger="genface.callbacks.performance"):
        fallback = _dcgan_curve(tmp_path / "fallback", callbacks=[perf])
    assert set(perf.compiled) == {"generator", "discriminator"}
    assert all(s.startswith("eager (BackendCompilerFailed") for s in perf.compiled.values()), perf.compiled
    for name in ("generator", "discriminator"):
        assert any(
            f"torch.compile of {name} failed" in r.message and "no C compiler in this test" in r.message
            for r in caplog.records
        )
    assert fallback == eager  # the failing call is re-run eagerly: nothing is lost


def test_compile_keeps_parameter_names_and_checkpoints():
    model = tiny_dcgan(ema_decay=0.9)
    keys = list(model.state_dict())
    status = compile_nets(model, {"backend": _failing_backend})
    assert status == {"generator": "compiled", "discriminator": "compiled"}
    assert list(model.state_dict()) == keys  # nn.Module.compile: no `_orig_mod.` prefix
    assert compile_nets(model) == {}  # already compiled: left alone


def test_compile_nets_must_name_nets_of_the_module():
    with pytest.raises(
        ValueError, match=r"names \['net'\], not nets of DCGAN: choose among \['discriminator', 'generator'\]"
    ):
        compile_nets(tiny_dcgan(), only=["net"])


def test_a_compiled_discriminator_trains_with_ddgans_r1(tmp_path):
    """torch.compile's graphs have no double backward; DD-GAN takes R1 in an eager pass of its own
    (`discriminator.forward`), so that the discriminator can be compiled too."""
    torch.manual_seed(0)
    perf = Performance(compile=True, compile_options={"backend": "aot_eager"}, compile_nets=["discriminator"])
    model = tiny_ddgan(r1_gamma=1.0, lazy_reg=1)
    perturb(model.discriminator)  # its zero-initialised output layer has no input gradient yet
    rec = fit(model, TinyImages(n=16, batch_size=8), tmp_path, callbacks=[perf])
    assert perf.compiled == {"discriminator": "compiled"}
    assert math.isfinite(rec.rows[-1]["train/r1_step"]) and rec.rows[-1]["train/r1_step"] > 0


@pytest.mark.slow
def test_ddgan_with_a_compiled_generator_trains_with_r1(tmp_path):
    torch.manual_seed(0)
    perf = Performance(compile=True, compile_options={"backend": "aot_eager"}, compile_nets=["generator"])
    rec = fit(
        tiny_ddgan(r1_gamma=1.0, lazy_reg=1),
        TinyImages(n=16, batch_size=8),
        tmp_path,
        steps=2,
        callbacks=[perf],
    )
    assert perf.compiled == {"generator": "compiled"}
    assert all(math.isfinite(r["train/r1_step"]) and math.isfinite(r["train/loss_d_step"]) for r in rec.rows)


@pytest.mark.slow
def test_compiled_dcgan_trains_like_eager(tmp_path):
    """torch.compile (inductor, which needs a C compiler on CPU) against eager: same loss curve to a tolerance.
    Minutes on 2 cores (compilation of G and D, forward and backward)."""
    eager = _dcgan_curve(tmp_path / "eager")
    perf = Performance(compile=True)
    compiled = _dcgan_curve(tmp_path / "compiled", callbacks=[perf])
    failed = {n: s for n, s in perf.compiled.items() if s != "compiled"}
    if failed:
        assert compiled == eager  # the documented fallback: eager nets, the eager curve
        pytest.skip(f"torch.compile cannot compile here, the nets stayed eager: {failed}")
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-3, atol=1e-4)


# ----- configs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("trainer", "precision"),
    [
        ("default", "32-true"),
        ("cpu", "32-true"),
        ("ddp_cpu", "32-true"),
        ("gpu", "bf16-mixed"),
        ("ddp", "bf16-mixed"),
    ],
)
def test_trainer_precision_defaults(trainer, precision, compose_train):
    cfg = compose_train(f"trainer={trainer}")
    assert cfg.trainer.get("precision", "32-true") == precision


def test_default_callbacks_hold_the_performance_switches(compose_train):
    cfg = compose_train()
    perf = instantiate(cfg.callbacks.performance)
    assert isinstance(perf, Performance)
    assert (perf.tf32, perf.cudnn_benchmark, perf.channels_last, perf.compile) == (True, True, True, False)
    cfg = compose_train(
        "callbacks.performance.compile=true", "callbacks.performance.compile_options.mode=max-autotune"
    )
    perf = instantiate(cfg.callbacks.performance)
    assert perf.compile and perf.compile_options == {"mode": "max-autotune"}


# ----- the GPU benchmark's own smoke --------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_gpu_runs_every_code_path_on_cpu(tmp_path):
    """`--device cpu --quick`: each section of the GPU benchmark at toy sizes (about 2.5 minutes on 2 busy cores)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu", "--device", "cpu", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    record = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert record["notes"] == [], record["notes"]  # nothing failed, nothing skipped
    trained = {(r["family"], r["config"]) for r in record["training"]}
    assert {f for f, _ in trained} == set(FAMILIES) and {c for f, c in trained if f == "dcgan"} == {
        "fp32",
        "bf16",
        "bf16+cl",
        "bf16+cl+cmp",
    }
    assert all(
        r["images_per_s"] > 0 for section in ("training", "sampling", "fid", "data") for r in record[section]
    )
    assert record["max_batch"][0]["largest_batch_per_gpu"] >= 4
    table = (tmp_path / "bench_gpu.md").read_text()
    assert all(
        title in table for title in ("## training", "## sampling", "## FID", "## data loading", "## largest")
    )


def test_bench_gpu_without_a_gpu_says_so_and_measures_nothing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 1 and "no CUDA GPU is visible" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "bench_gpu.json").exists()
