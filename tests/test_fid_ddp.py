"""FID under real 2-rank CPU DDP (strategy "ddp", not ddp_spawn) equals the single-process value on the
same fake samples: the fake statistics are summed across ranks exactly once, the real ones not at all."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from genface.metrics.extractors import build_extractor
from genface.metrics.fidkid import FIDKID
from genface.metrics.scoring import generate_fake_batches
from genface.metrics.stats import compute_real_stats

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fid_worker.py"
_spec = importlib.util.spec_from_file_location("ddp_fid_worker", SCRIPT)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_reference() -> dict:
    """What the two ranks computed, in one process: rank r's share from seed + r, same batches."""
    model = worker.build_model()
    extractor = build_extractor("tiny")
    metric = FIDKID(extractor, kid_subset_size=worker.KID_SUBSET)
    real = worker.FakeFaces().split_dataset("val")
    metric.set_real(compute_real_stats(extractor, real, worker.N_REAL, worker.BATCH, progress=False))
    for rank in range(2):
        for images in generate_fake_batches(model, worker.N_FAKE, worker.BATCH, worker.SEED, rank, 2):
            metric.update(images)
    return metric.compute()


def test_ddp_fid_equals_single_process(tmp_path):
    out = tmp_path / "result.json"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2
    ddp, expected = result["values"], single_process_reference()
    assert ddp["n_fake"] == expected["n_fake"] == worker.N_FAKE
    for key in ("fid", "kid_mean", "kid_std"):
        assert abs(ddp[key] - expected[key]) / abs(expected[key]) < 1e-6, key
    assert result["logged"]["val/fid"] == pytest.approx(expected["fid"], rel=1e-6)  # logged as float32
    assert (tmp_path / "fid_protocol.json").is_file()
