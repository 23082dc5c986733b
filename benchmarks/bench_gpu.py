"""The GPU path in one unattended run: training, sampling, FID and data-loading throughput, peak memory, the
largest DD-GAN batch. Untrained weights and synthetic inputs: no dataset is needed.

Every model is built from a shipped recipe (`experiment=NAME`, composed as `genface train` composes it, then
`hydra.utils.instantiate(cfg.model)`), at the recipe's resolution and per-GPU batch, and trained by Lightning
itself: `trainer.fit` on one device with `limit_train_batches`, fed one synthetic batch that already sits on the
device (so the step is timed, not the loader), timed by a callback after `WARMUP` batches between two device
synchronisations. The same `genface.callbacks.performance.Performance` callback as in `callbacks=default`
sets TF32, cuDNN autotuning, channels-last and torch.compile per configuration:

  fp32          trainer.precision=32-true, TF32 off, contiguous (the baseline of every speed-up)
  bf16          bf16-mixed, TF32 on, contiguous
  bf16+cl       bf16-mixed, TF32, channels-last: what trainer=gpu / trainer=ddp with callbacks=default run
  bf16+cl+cmp   the same with torch.compile of every net (DD-GAN: the generator only, see Performance)

Sampling (`generate`, the Generative contract, as FID and `genface sample` call it) is timed at batch 1 and
100 in float32 (TF32) and under bf16 autocast: DD-GAN T=2 128 px, DDPM DDIM-50 and 1000 ancestral steps
64 px, DCGAN 64 px. FID: images/s through `build_extractor("inception")` at 299 px (float32 by design). Data:
genface's own train loader (`GlobalBatchLoaders`) over a prepared uint8 cache of synthetic images against the
images/s each recipe's training step consumes. Largest batch: DD-GAN 128 px bf16+cl, doubling then bisecting
on CUDA out-of-memory.

The whole run keeps to `--budget` seconds (default 450 s, under the 8 minutes it is meant for): the cheap
measurements come first, torch.compile last; an item that would start after the budget is skipped, one
running when it ends is stopped, each with a note in the table. Results: <out>/bench_gpu.json and .md
(GPU name and date in both). Exits with status 1 and a one-line message when asked for CUDA without a GPU.

    python -m benchmarks.bench_gpu                    # make bench-gpu
    python -m benchmarks.bench_gpu --device cpu --quick   # every code path at toy sizes (smoke of the script)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor
from torch.utils.data import DataLoader

from genface.callbacks.performance import Performance, to_channels_last
from genface.config import compose_train
from genface.data.base import GlobalBatchLoaders
from genface.data.datasets import CachedImageDataset

OUT = Path(__file__).parent / "out"
WARMUP, TIMED = 3, 10  # DD-GAN's R1 runs every 10th batch: 10 timed batches hold exactly one
COMPILE_WARMUP = 4  # the first batches compile (and recompile for toggled requires_grad)

#: family -> (recipe, overrides for the benchmark)
RECIPES: dict[str, tuple[str, list[str]]] = {
    "ddgan": ("ddgan_celebahq128", []),
    "dcgan": ("dcgan_dg1_celeba64", []),
    "ddpm": ("ddpm_dlstudio_celeba64", []),
    "classifier": ("celeba_attr_resnet18_256", []),
    "pix2pix": ("pix2pix_facades", []),
    # the GAN phase, which is most of the recipe's 190k steps (disc_start 30000)
    "vaegan": ("vaegan_celeba64", ["model.disc_start=0"]),
    "latent_diffusion": ("latent_diffusion_smiling_celeba64", []),
    "cgan": ("cgan_mnist", []),
}
#: configuration -> (trainer.precision, Performance switches)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("32-true", dict(tf32=False, channels_last=False)),
    "bf16": ("bf16-mixed", dict(tf32=True, channels_last=False)),
    "bf16+cl": ("bf16-mixed", dict(tf32=True, channels_last=True)),
    "bf16+cl+cmp": ("bf16-mixed", dict(tf32=True, channels_last=True, compile=True)),
}
#: DD-GAN differentiates its discriminator twice (R1): torch.compile has no double backward
COMPILE_NETS = {"ddgan": ["generator"]}

log = logging.getLogger("bench_gpu")


class BudgetSpent(Exception):
    """The run's time budget ran out during an item."""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Raise BudgetSpent inside the block when the budget runs out (SIGALRM: the main thread only)."""
        left = self.left()
        if left <= 1:
            raise BudgetSpent("budget spent before the item started")

        def stop(signum, frame):
            raise BudgetSpent(f"budget of {self.seconds:.0f} s spent")

        previous = signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, left)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class Bench:
    """The device, the sizes (full or --quick), the results and notes, the budget."""

    def __init__(self, device: torch.device, quick: bool, budget: float) -> None:
        self.device, self.quick, self.budget = device, quick, Budget(budget)
        self.results: dict[str, Any] = {"training": [], "sampling": [], "fid": [], "data": [], "max_batch": []}
        self.notes: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))

    # ----- helpers ------------------------------------------------------------------------------------------
    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_memory(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2) if self.cuda else None

    def item(self, section: str, what: str, fn: Callable[[], dict[str, Any] | None]) -> None:
        """Run one measurement; skipped (with a note) once the budget is spent, stopped when it runs out."""
        if self.budget.left() <= 1:
            self.notes.append(f"{section} / {what}: skipped, time budget spent")
            self.results[section].append({"what": what, "skipped": "time budget spent"})
            return
        start = time.monotonic()
        try:
            with self.budget.guard():
                row = fn()
        except BudgetSpent as err:
            self.notes.append(f"{section} / {what}: stopped, {err}")
            row = {"skipped": f"stopped: {err}"}
        except Exception as err:  # one failing item must not lose the others' results
            log.exception("%s / %s failed", section, what)
            self.notes.append(f"{section} / {what}: failed, {type(err).__name__}: {' '.join(str(err).split())[:300]}")
            row = {"skipped": f"failed: {type(err).__name__}"}
        finally:
            self.reset_memory()
        if row is not None:
            row = {"what": what, **row, "item_s": round(time.monotonic() - start, 1)}
            self.results[section].append(row)
            print(f"[{self.budget.seconds - self.budget.left():6.1f} s] {section}: {json.dumps(row)}", flush=True)

    def compose(self, family: str, *extra: str) -> DictConfig:
        recipe, overrides = RECIPES[family]
        # --quick: toy sizes by the project's own debug=smoke overlays (narrow nets, 32 px, T 50), batch 4
        quick = ["debug=smoke", "data.batch_size=4"] if self.quick else []
        return compose_train([f"experiment={recipe}", f"paths.log_dir={self.tmp}/logs", *overrides, *quick, *extra])

    def build(self, family: str, cfg: DictConfig) -> pl.LightningModule:
        if family == "latent_diffusion" and cfg.model.get("first_stage") is None:
            # an untrained first stage from the stage-one recipe (the costs do not depend on its weights)
            stage_one = self.compose("vaegan")
            with open_dict(cfg):
                cfg.model.first_stage = OmegaConf.to_container(stage_one.model.autoencoder, resolve=True)
        return instantiate(cfg.model)


# ----- training --------------------------------------------------------------------------------------------------
def per_gpu_batch(cfg: DictConfig) -> int:
    """The recipe's batch per GPU: data.batch_size is global, split over trainer.devices x num_nodes GPUs."""
    trainer = cfg.trainer
    gpus = trainer.get("devices", 1) if str(trainer.get("accelerator")) in ("gpu", "cuda") else 1
    world = (gpus if isinstance(gpus, int) and gpus > 0 else 1) * int(trainer.get("num_nodes", 1) or 1)
    return max(1, int(cfg.data.batch_size) // world)


def synthetic_batch(family: str, cfg: DictConfig, model: pl.LightningModule, n: int, device) -> tuple[Tensor, Tensor]:
    """One batch shaped as the recipe's DataModule yields it, on `device`."""
    res, channels = int(cfg.data.resolution), int(cfg.data.channels)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, channels, res, res, generator=g) * 2 - 1).to(device)
    if family == "pix2pix":
        source = torch.rand(n, int(cfg.data.get("source_channels", channels)), res, res, generator=g) * 2 - 1
        return source.to(device), images
    if family == "cgan":
        return images, torch.randint(0, model.num_classes, (n,), generator=g).to(device)
    if family == "classifier":
        return images, (torch.rand(n, len(model.class_names), generator=g) < 0.5).float().to(device)
    if family in ("vaegan", "latent_diffusion") and int(cfg.model.get("num_classes", 0)):
        return images, (torch.rand(n, 1, generator=g) < 0.5).float().to(device)  # one attribute (Smiling)
    return images, torch.zeros(n, 0, device=device)


class StepTimer(pl.Callback):
    """Wall time of the training batches after `warmup`, the device synchronised at both ends."""

    def __init__(self, bench: Bench, warmup: int, last: int) -> None:
        self.bench, self.warmup, self.last = bench, warmup, last
        self.images, self.t0, self.elapsed = 0, 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.bench.sync()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.images += int(batch[0].shape[0])
        if batch_idx == self.last:
            self.bench.sync()
            self.elapsed = time.perf_counter() - self.t0


def set_tf32(on: bool) -> None:
    """TF32 for float32 matmuls and convolutions, on or off (PyTorch's default: convolutions on, matmuls off);
    the Performance callback only ever turns it on, so the fp32 baseline turns it off here."""
    torch.set_float32_matmul_precision("high" if on else "highest")
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def fit(bench: Bench, family: str, cfg: DictConfig, batch: int, precision: str, perf: dict[str, Any],
        warmup: int, timed: int) -> tuple[StepTimer, pl.LightningModule]:  # fmt: skip
    """`trainer.fit` of the recipe's model on one synthetic batch repeated, timed after `warmup` batches."""
    torch.manual_seed(0)
    if bench.cuda:
        set_tf32(bool(perf.get("tf32", True)))
    model = bench.build(family, cfg)
    data = synthetic_batch(family, cfg, model, batch, bench.device)
    timer = StepTimer(bench, warmup, warmup + timed - 1)
    trainer = pl.Trainer(
        accelerator="gpu" if bench.cuda else "cpu", devices=1, precision=precision, max_epochs=1,
        limit_train_batches=warmup + timed, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(bench.tmp), callbacks=[Performance(**perf), timer],
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader([data] * (warmup + timed), batch_size=None))
    if timer.elapsed is None:
        raise RuntimeError("the timed batches did not all run")
    return timer, model


def bench_training(bench: Bench, family: str, config: str) -> dict[str, Any]:
    precision, switches = CONFIGS[config]
    perf = {"cudnn_benchmark": True, **switches}
    compiling = perf.get("compile", False)
    if compiling:
        perf["compile_nets"] = COMPILE_NETS.get(family)
        if bench.quick:  # dynamo's tracing without inductor's C++: the code path, in seconds
            perf["compile_options"] = {"backend": "eager"}
    cfg = bench.compose(family)
    batch = per_gpu_batch(cfg)
    bench.reset_memory()
    warmup = (COMPILE_WARMUP if compiling else WARMUP) if not bench.quick else 1
    timer, model = fit(bench, family, cfg, batch, precision, perf, warmup, 2 if bench.quick else TIMED)
    row = {
        "family": family, "recipe": RECIPES[family][0], "config": config, "resolution": int(cfg.data.resolution),
        "batch": batch, "images_per_s": round(timer.images / timer.elapsed, 1),
        "step_s": round(timer.elapsed / (timer.images / batch), 4), "peak_gib": bench.peak_gib(),
    }  # fmt: skip
    if compiling:
        callback = next(c for c in model.trainer.callbacks if isinstance(c, Performance))
        row["compiled"] = dict(callback.compiled)
    return row


# ----- sampling --------------------------------------------------------------------------------------------------
SAMPLERS: dict[str, tuple[str, list[str]]] = {
    "dcgan 64 px": ("dcgan", []),
    "ddgan T=2 128 px": ("ddgan", []),
    "ddpm DDIM-50 64 px": ("ddpm", ["model.sampler=ddim", "model.sample_steps=50"]),
    "ddpm ancestral-1000 64 px": ("ddpm", ["model.sampler=ancestral"]),
}


def bench_sampling(bench: Bench, name: str, batch: int, autocast: bool) -> dict[str, Any]:
    family, overrides = SAMPLERS[name]
    cfg = bench.compose(family, *overrides)
    if bench.quick and family == "ddpm":
        with open_dict(cfg):
            cfg.model.sample_steps = min(int(cfg.model.sample_steps), int(cfg.model.schedule.T))
    model = bench.build(family, cfg).to(bench.device).eval()
    if bench.cuda:  # what a GPU run has: TF32, channels-last (callbacks.performance)
        set_tf32(True)
        to_channels_last(model)
    latents = model.sample_latents(batch, generator=torch.Generator().manual_seed(0))
    bench.reset_memory()

    def run() -> Tensor:
        with torch.autocast(bench.device.type, dtype=torch.bfloat16, enabled=autocast):
            return model.generate(latents)

    run()  # warm-up (cuDNN autotuning, allocations)
    repeats = 1 if getattr(model, "sampler", "") == "ancestral" or bench.quick else 3
    bench.sync()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    bench.sync()
    seconds = (time.perf_counter() - start) / repeats
    return {
        "sampler": name, "px": model.image_shape[-1], "precision": "bf16 autocast" if autocast else "fp32 (TF32)",
        "batch": batch,
        "steps": model.sampling_protocol.get("steps", getattr(model, "num_timesteps", 1)),
        "images_per_s": round(batch / seconds, 2), "s_per_image": round(seconds / batch, 5),
        "peak_gib": bench.peak_gib(),
    }  # fmt: skip


# ----- FID ---------------------------------------------------------------------------------------------------------
def bench_fid(bench: Bench, batch: int, resolution: int) -> dict[str, Any]:
    from genface.metrics.extractors import build_extractor

    extractor = build_extractor("inception").to(bench.device)
    images = torch.rand(batch, 3, resolution, resolution, device=bench.device) * 2 - 1
    extractor(images)  # warm-up
    repeats = 1 if bench.quick else 5
    bench.sync()
    start = time.perf_counter()
    for _ in range(repeats):
        extractor(images)
    bench.sync()
    seconds = (time.perf_counter() - start) / repeats
    return {"extractor": extractor.protocol, "input_px": resolution, "batch": batch,
            "images_per_s": round(batch / seconds, 1), "peak_gib": bench.peak_gib()}  # fmt: skip


# ----- data loading ---------------------------------------------------------------------------------------------
class CacheLoaders(GlobalBatchLoaders):
    """genface's train loader (global batch, pinned memory on CUDA, persistent workers, prefetch) over a
    prepared uint8 cache, without a DataModule around it."""

    def __init__(self, images_path: Path, n: int, batch_size: int, num_workers: int) -> None:
        self.batch_size, self.num_workers, self.trainer = batch_size, num_workers, None
        self.dataset_id = images_path.stem
        self.dataset = CachedImageDataset(images_path, np.zeros(n, dtype=np.int64))

    def split_dataset(self, split: str, augment: bool = False) -> CachedImageDataset:
        return self.dataset


def bench_data(bench: Bench, family: str, demand: float | None) -> dict[str, Any]:
    cfg = bench.compose(family)
    res, channels, batch = int(cfg.data.resolution), int(cfg.data.channels), per_gpu_batch(cfg)
    workers = int(cfg.data.get("num_workers", 0))
    workers = min(max(workers, 1), 2) if bench.quick else workers  # the worker path too, at toy size
    n = batch * (4 if bench.quick else 20)
    path = bench.tmp / f"cache-{res}px-{channels}ch.npy"
    if not path.exists():
        np.save(path, np.random.default_rng(0).integers(0, 256, (n, res, res, channels), dtype=np.uint8))
    loader = CacheLoaders(path, n, batch, workers).train_dataloader()
    for images, _ in loader:  # one epoch to start the (persistent) workers and fill the page cache
        images.to(bench.device, non_blocking=True)
    count, start = 0, time.perf_counter()
    for _ in range(2):
        for images, _ in loader:
            images.to(bench.device, non_blocking=True)
            count += images.shape[0]
    bench.sync()
    rate = count / (time.perf_counter() - start)
    del loader
    return {
        "family": family, "resolution": res, "batch": batch, "num_workers": workers, "images_per_s": round(rate, 1),
        "training_demand_images_per_s": demand, "headroom": round(rate / demand, 2) if demand else None,
    }  # fmt: skip


# ----- the largest DD-GAN batch ----------------------------------------------------------------------------------
def fits(bench: Bench, family: str, cfg: DictConfig, batch: int) -> bool:
    """Two training steps (the second holds Adam's states) at `batch` without running out of memory."""
    bench.reset_memory()
    precision = "bf16-mixed" if bench.cuda else "32-true"
    try:
        fit(bench, family, cfg, batch, precision, {"tf32": True, "channels_last": True}, 1, 1)
        return True
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError, or a library's failed workspace allocation
        if isinstance(err, torch.cuda.OutOfMemoryError) or "ALLOC_FAILED" in str(err) or "out of memory" in str(err):
            return False
        raise
    finally:
        bench.reset_memory()


def bench_max_batch(bench: Bench, family: str, cap: int) -> dict[str, Any]:
    cfg = bench.compose(family)
    low, high = 0, None  # largest batch known to fit, smallest known not to
    batch = per_gpu_batch(cfg)
    while high is None and batch <= cap:
        if fits(bench, family, cfg, batch):
            low, batch = batch, batch * 2
        else:
            high = batch
    while high is not None and high - low > max(1, low // 16):  # within ~6 %
        mid = (low + high) // 2
        low, high = (mid, high) if fits(bench, family, cfg, mid) else (low, mid)
    if low:
        fits(bench, family, cfg, low)  # again, for the peak memory of the largest batch
    return {
        "model": f"{family} {int(cfg.data.resolution)} px, {'bf16+cl' if bench.cuda else 'fp32'}",
        "largest_batch_per_gpu": low,
        "bound": f">= {low} (search capped at {cap})" if high is None else f"{low} fits, {high} does not",
        "peak_gib": bench.peak_gib(),
    }  # fmt: skip


# ----- the run ---------------------------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
                            "host": platform.node(), "cpu_cores": os.cpu_count()}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported())  # fmt: skip
    else:
        info["gpu"] = f"none ({device.type}: smoke of the script, not a measurement)"
    return info


def run(bench: Bench) -> None:
    """Most useful first, so that a spent budget skips the least: eager training, float32 sampling, FID, data,
    the largest batch, torch.compile of DD-GAN and DCGAN, bf16 sampling, torch.compile of the rest.

    --quick runs every code path once at toy sizes instead: each family in fp32, DCGAN in every configuration
    (bf16 on a CPU without bf16 instructions is slow for the other families' ops), each sampler at batch 1,
    and DCGAN for the data loader and the batch search."""
    families = list(RECIPES)

    def train(names: list[str], configs: tuple[str, ...]) -> None:
        for config in configs:
            for family in names:
                bench.item("training", f"{family} {config}", lambda f=family, c=config: bench_training(bench, f, c))

    def sampling(names: list[str], batches: tuple[int, ...], autocast: bool) -> None:
        for name in names:
            for batch in batches:
                what = f"{name} batch {batch} {'bf16' if autocast else 'fp32'}"
                bench.item("sampling", what, lambda n=name, b=batch: bench_sampling(bench, n, b, autocast))

    def fid(batch: int, resolution: int) -> None:
        bench.item("fid", "inception 299 px", lambda: bench_fid(bench, batch, resolution))

    def data(names: list[str]) -> None:
        demand = {r["family"]: r["images_per_s"] for r in bench.results["training"] if r.get("config") == "bf16+cl"}
        for family in names:
            bench.item("data", f"{family} cache", lambda f=family: bench_data(bench, f, demand.get(f)))

    if bench.quick:
        train(families, ("fp32",))
        train(["dcgan"], ("bf16", "bf16+cl", "bf16+cl+cmp"))
        sampling(list(SAMPLERS), (1,), autocast=False)
        sampling(["dcgan 64 px"], (4,), autocast=True)
        fid(2, 64)
        data(["dcgan"])
        bench.item("max_batch", "dcgan", lambda: bench_max_batch(bench, "dcgan", 16))
        return
    train(families, ("fp32", "bf16", "bf16+cl"))
    sampling(list(SAMPLERS), (1, 100), autocast=False)
    fid(100, 256)
    data(["classifier", "ddgan", "dcgan"])
    bench.item("max_batch", "ddgan", lambda: bench_max_batch(bench, "ddgan", 4096))
    train(families[:2], ("bf16+cl+cmp",))
    sampling(list(SAMPLERS), (1, 100), autocast=True)
    train(families[2:], ("bf16+cl+cmp",))


# ----- the report ------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(info: dict[str, Any], results: dict[str, Any], notes: list[str], budget: float, wall: float) -> str:
    lines = [
        f"# bench_gpu: {info['gpu']}, {info['date']}", "",
        ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("gpu", "date")) + f"; wall {wall:.0f} s of a "
        f"{budget:.0f} s budget. Untrained weights, synthetic inputs; images/s at steady state.", "",
        "## training (trainer.fit, one device, the recipe's per-GPU batch)", "",
        "| family | recipe | px | batch | " + " | ".join(CONFIGS) + " | peak GiB (" + " / ".join(CONFIGS) + ") |",
        "|" + "---|" * (4 + len(CONFIGS) + 1),
    ]  # fmt: skip
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results["training"]:
        if "family" in r:
            rows.setdefault(r["family"], {})[r["config"]] = r
    for family, by_config in rows.items():
        first = next(iter(by_config.values()))
        base = by_config.get("fp32", {}).get("images_per_s")
        cells = []
        for config in CONFIGS:
            r = by_config.get(config)
            if r is None:
                cells.append("-")
                continue
            speedup = f" ({r['images_per_s'] / base:.2f}x)" if base and config != "fp32" else ""
            eager = [n for n, s in r.get("compiled", {}).items() if s != "compiled"]
            cells.append(f"{_fmt(r['images_per_s'])}{speedup}" + (f" eager: {', '.join(eager)}" if eager else ""))
        peaks = " / ".join(_fmt(by_config.get(c, {}).get("peak_gib")) for c in CONFIGS)
        lines.append(f"| {family} | {first['recipe']} | {first['resolution']} | {first['batch']} | "
                     + " | ".join(cells) + f" | {peaks} |")  # fmt: skip
    lines += ["", "images/s (speed-up over fp32); -: not measured (see the notes).", "", "## sampling (generate(), the Generative contract)", "",
              "| sampler | px | precision | batch | steps | images/s | s/image | peak GiB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["sampling"]:
        if "sampler" in r:
            lines.append(f"| {r['sampler']} | {r['px']} | {r['precision']} | {r['batch']} | {r['steps']} | "
                         f"{_fmt(r['images_per_s'])} "
                         f"| {_fmt(r['s_per_image'])} | {_fmt(r['peak_gib'])} |")  # fmt: skip
    lines += ["", "## FID feature extraction (float32, autocast off by design)", "",
              "| extractor | input px | batch | images/s | peak GiB |", "|---|---|---|---|---|"]
    for r in results["fid"]:
        if "extractor" in r:
            lines.append(f"| {r['extractor']} | {r['input_px']} | {r['batch']} | {_fmt(r['images_per_s'])} | "
                         f"{_fmt(r['peak_gib'])} |")  # fmt: skip
    lines += ["", "## data loading (prepared uint8 cache -> genface's train loader -> device) vs the training step",
              "", "| recipe of | px | batch | workers | loader images/s | bf16+cl step images/s | headroom |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["data"]:
        if "family" in r:
            lines.append(f"| {r['family']} | {r['resolution']} | {r['batch']} | {r['num_workers']} | "
                         f"{_fmt(r['images_per_s'])} | {_fmt(r['training_demand_images_per_s'])} | {_fmt(r['headroom'])} |")
    lines += ["", "## largest batch that fits (binary search on CUDA out-of-memory)", "",
              "| model | largest batch per GPU | search | peak GiB |", "|---|---|---|---|"]
    for r in results["max_batch"]:
        if "model" in r:
            lines.append(f"| {r['model']} | {r['largest_batch_per_gpu']} | {r['bound']} | {_fmt(r['peak_gib'])} |")
    lines += ["", "## notes", ""] + ([f"- {n}" for n in notes] or ["- none: every item ran"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --quick: a smoke run)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: every code path in seconds")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default 450)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for bench_gpu.json and bench_gpu.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench_gpu: no CUDA GPU is visible here, so nothing was measured. Run it on a GPU machine "
            "(make bench-gpu), or `python -m benchmarks.bench_gpu --device cpu --quick` for a smoke run of the script."
        )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    bench = Bench(device, args.quick, args.budget)
    info = device_info(device)
    print(f"bench_gpu on {info['gpu']}: budget {args.budget:.0f} s", flush=True)
    try:
        run(bench)
    finally:
        wall = bench.budget.seconds - bench.budget.left()
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"benchmark": "bench_gpu", **info, "quick": args.quick, "budget_s": args.budget,
                  "wall_s": round(wall, 1), "warmup_batches": WARMUP, "timed_batches": TIMED,
                  **bench.results, "notes": bench.notes}  # fmt: skip
        (args.out / "bench_gpu.json").write_text(json.dumps(record, indent=1))
        (args.out / "bench_gpu.md").write_text(markdown(info, bench.results, bench.notes, args.budget, wall))
        print(f"bench_gpu: {wall:.0f} s, results in {args.out}/bench_gpu.json and bench_gpu.md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
