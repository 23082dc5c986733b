"""Run every benchmark in one session (same machine state) and print their JSON records."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("bench_dcgan_loop", "bench_data_cache", "bench_fid_cache", "bench_diffusion_nfe")

if __name__ == "__main__":
    for name in BENCHMARKS + tuple(sys.argv[1:]):
        subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=True)
