"""FID evaluation cost: the first evaluation (computes real statistics) vs the second (loads them).

Inception extractor (the offline TorchScript copy), a DCGAN at 32 px against synthfaces' val split,
the same N on both sides. The second run differs only by finding the real statistics on disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_dcgan_loop import configs
from benchmarks.common import record
from genface.data import SynthFacesDataModule
from genface.metrics.extractors import build_extractor
from genface.metrics.scoring import evaluate_generator
from genface.models.dcgan import DCGAN


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--extractor", default="inception")
    args = parser.parse_args()
    extractor = build_extractor(args.extractor)
    model = DCGAN(**configs()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        dm = SynthFacesDataModule(root=str(Path(tmp) / "faces"), n=max(400, 10 * args.n), resolution=32)
        real = dm.split_dataset("val")
        common = dict(
            n_fake=args.n, n_real=args.n, real_id=dm.dataset_id + "-val", batch_size=32, kid_subset_size=args.n // 2,
            kid_subsets=20, allow_low_n=True, cache_dir=Path(tmp) / "fid", progress=False,
        )
        extractor(torch.zeros(2, 3, 32, 32))  # TorchScript profiles its first calls: keep that out of both
        extractor(torch.zeros(2, 3, 32, 32))
        timings, results = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            results.append(evaluate_generator(model, real, extractor, **common))
            timings.append(time.perf_counter() - t0)
    record(
        "fid_cached_real_stats",
        {
            "setup": f"{args.extractor} extractor, {args.n} real + {args.n} fake at 32 px, DCGAN generator",
            "first_eval_s": round(timings[0], 2),
            "second_eval_s": round(timings[1], 2),
            "ratio_first_over_second": round(timings[0] / timings[1], 2),
            "fid": results[0]["fid"],
            "same_fid_both_times": results[0]["fid"] == results[1]["fid"],
        },
    )


if __name__ == "__main__":
    main()
