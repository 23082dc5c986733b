"""Shared bits of the benchmark scripts: machine description, timing, result records."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

OUT = Path(__file__).parent / "out"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads, no GPU"


def add_device_args(parser) -> None:
    """--device and --threads, common to the model benchmarks."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)


def setup_torch(args) -> torch.device:
    """Thread count and seed from `args`; returns the device to run on."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Minimum wall time over repeats: the least disturbed measurement on a shared machine."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def record(name: str, result: dict) -> dict:
    result = {"benchmark": name, "date": date.today().isoformat(), "machine": machine(), **result}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result
