"""GPU speed switches for any genface module: TF32, cuDNN autotuning, channels-last memory, torch.compile.

In `callbacks=default`, so every run has them. On a CUDA device TF32, cuDNN autotuning and channels-last are on
by default; they change results by rounding only (TF32 rounds the inputs of float32 matmuls and convolutions to
10 mantissa bits, where bf16 autocast keeps 7). `compile` is off by default (minutes of compilation per run,
recompiles on new shapes). On a CPU the first three do nothing; `compile` works there too (with a C compiler).

Channels-last converts every 4-D weight and buffer of the module. What is compiled is found generically: the
module's *nets*, its direct children that are `nn.Module`s with a `forward` of their own and parameters
(`generator`, `discriminator`, `net`, `autoencoder`, `first_stage`, ...), never the LightningModule itself (its
`training_step` stays Python), nor metrics, nor containers such as the EMA shadows. `nn.Module.compile` compiles
a net in place, so parameter names, state dicts, checkpoints and EMA keep working; a net whose compilation fails
(no C compiler, an unsupported op) logs a warning naming the net and the error and stays eager: the run goes
on, slower.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import Metric, MetricCollection

log = logging.getLogger(__name__)


def nets(module: nn.Module) -> dict[str, nn.Module]:
    """The networks of a LightningModule: its direct children with a forward of their own and parameters,
    metrics and containers (ModuleDict, EMA shadows) excluded."""
    return {
        name: child
        for name, child in module.named_children()
        if type(child).forward is not nn.Module.forward
        and not isinstance(child, Metric | MetricCollection)
        and next(child.parameters(), None) is not None
    }


def to_channels_last(module: nn.Module) -> None:
    """Every 4-D parameter and buffer of `module` (conv kernels, EMA shadows of them) in channels-last memory,
    in place: parameters stay the same objects, so optimisers built before keep them. Inputs follow: a
    convolution with a channels-last kernel returns channels-last activations."""
    module.to(memory_format=torch.channels_last)


class _EagerFallback:
    """A compiled net's call: the compiled function, or, once it fails where the eager net does not, the
    eager net for good (with a warning naming the net and the error)."""

    def __init__(self, name: str, net: nn.Module, compiled: Callable[..., Any], status: dict[str, str]) -> None:
        self.name, self.net, self.compiled, self.status = name, net, compiled, status

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:
            # If the eager net raises too, the error is the net's own and propagates from here unchanged.
            out = self.net._call_impl(*args, **kwargs)
            self.net._compiled_call_impl = None  # every later call runs eagerly
            self.status[self.name] = f"eager ({type(err).__name__}: {' '.join(str(err).split())[:300]})"
            log.warning(
                "torch.compile of %s failed, so %s stays eager (callbacks.performance.compile=false silences "
                "this): %s: %s", self.name, self.name, type(err).__name__, str(err).strip()[:2000],
            )  # fmt: skip
            return out


def compile_nets(
    module: nn.Module,
    options: dict[str, Any] | None = None,
    status: dict[str, str] | None = None,
    only: list[str] | None = None,
) -> dict[str, str]:
    """`torch.compile` the nets of `module` (all, or those named in `only`) in place (`nn.Module.compile`),
    each with the eager fallback.

    Returns `status` (a new dict by default) with {net name: "compiled"} added; an entry turns to
    "eager (error)" when that net's compilation fails, which happens on its first call. Nets already compiled
    are left alone; a name in `only` that is no net of the module is an error."""
    status = {} if status is None else status
    found = nets(module)
    unknown = sorted(set(only or ()) - set(found))
    if unknown:
        raise ValueError(
            f"callbacks.performance.compile_nets names {unknown}, not nets of {type(module).__name__}: "
            f"choose among {sorted(found)}"
        )
    for name, net in found.items():
        if net._compiled_call_impl is not None or (only is not None and name not in only):
            continue
        net.compile(**(options or {}))
        # nn.Module.compile stores torch.compile(net._call_impl) here; the fallback wraps it.
        net._compiled_call_impl = _EagerFallback(name, net, net._compiled_call_impl, status)
        status[name] = "compiled"
    return status


class Performance(pl.Callback):
    """TF32, cuDNN autotuning and channels-last on CUDA; optional torch.compile of the module's nets.

    Args:
        tf32: TensorFloat-32 matmuls and convolutions on Ampere and later GPUs (10-bit mantissa inputs, float32
            accumulation): `torch.set_float32_matmul_precision("high")`, `torch.backends.cuda.matmul.allow_tf32`
            and `torch.backends.cudnn.allow_tf32`. Affects only what runs in float32 (under `bf16-mixed` that is
            what autocast leaves in float32); float64 statistics (FID/KID) never use it.
        cudnn_benchmark: let cuDNN time its algorithms on the first batch of each shape and keep the fastest
            (genface's inputs have a fixed size). Left off when `trainer.deterministic` is set.
        channels_last: convert the module's 4-D weights (and so its activations) to channels-last memory, which
            Tensor Cores read without transposes; done in `setup`, before DDP wraps the module, and again at fit
            start for nets a module builds in its own `setup`.
        compile: `torch.compile` each net in place (`compile_options` are torch.compile's keyword arguments,
            e.g. {mode: max-autotune}); also on CPU. Compilation happens on each net's first call; one that
            fails logs a warning naming the net and the error and keeps the net eager.
        compile_nets: the names of the nets to compile (null: all). A net whose output is differentiated twice
            (a gradient penalty through it with create_graph, as DD-GAN's R1 through its discriminator) must
            stay out: torch.compile's graphs have no double backward, and that error comes from the loss's
            backward, where no fallback can catch it (DD-GAN: compile_nets=[generator]).
    """

    def __init__(
        self,
        tf32: bool = True,
        cudnn_benchmark: bool = True,
        channels_last: bool = True,
        compile: bool = False,
        compile_options: dict[str, Any] | None = None,
        compile_nets: list[str] | None = None,
    ) -> None:
        self.tf32, self.cudnn_benchmark, self.channels_last = bool(tf32), bool(cudnn_benchmark), bool(channels_last)
        self.compile, self.compile_options = bool(compile), dict(compile_options or {})
        self.compile_nets = None if compile_nets is None else [str(n) for n in compile_nets]
        #: net name -> "compiled" or "eager (why)": what compile did (filled lazily, on each net's first call).
        self.compiled: dict[str, str] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        on_cuda = trainer.strategy.root_device.type == "cuda"
        if on_cuda:
            self._cuda_flags()
        self._prepare(pl_module, on_cuda)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # nets a module builds in its own setup() (which runs after the callbacks' setup)
        self._prepare(pl_module, trainer.strategy.root_device.type == "cuda")

    def _cuda_flags(self) -> None:
        if self.tf32:
            # The legacy switches, not `fp32_precision`: Lightning reads torch.get_float32_matmul_precision(),
            # which raises once the two APIs are mixed.
            torch.set_float32_matmul_precision("high")
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.cudnn_benchmark:
            if torch.are_deterministic_algorithms_enabled():
                log.info("callbacks.performance.cudnn_benchmark is ignored: trainer.deterministic is set")
            else:
                torch.backends.cudnn.benchmark = True

    def _prepare(self, pl_module: pl.LightningModule, on_cuda: bool) -> None:
        if on_cuda and self.channels_last:
            to_channels_last(pl_module)
        if self.compile:
            before = set(self.compiled)
            compile_nets(pl_module, self.compile_options, self.compiled, self.compile_nets)
            if set(self.compiled) - before:
                log.info("torch.compile (on first call) of: %s", ", ".join(sorted(set(self.compiled) - before)))
