"""Data loading: the prepared uint8 array cache vs decoding image files, through train_dataloader.

synthfaces (PNG files) at 64 px, batch 64, no workers; images/s over whole epochs, alternating runs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import best_of, record
from genface.data import SynthFacesDataModule


def epoch(dm: SynthFacesDataModule) -> int:
    dm._datasets.clear()
    return sum(len(x) for x, _ in dm.train_dataloader())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(root=str(Path(tmp) / "faces"), n=args.n, resolution=args.resolution, batch_size=64)
        files = SynthFacesDataModule(**common, use_cache=False)
        files.prepare_data()
        cached = SynthFacesDataModule(**common, cache_dir=str(Path(tmp) / "cache"))
        t_prepare = best_of(lambda: cached.prepare_cache(progress=False), 1)
        for dm in (files, cached):
            dm.setup("fit")
        n = epoch(files)
        t_files, t_cache = [], []
        for _ in range(args.repeats):
            t_files.append(best_of(lambda: epoch(files), 1))
            t_cache.append(best_of(lambda: epoch(cached), 1))
    record(
        "data_cache_vs_files",
        {
            "setup": f"synthfaces {args.n} PNGs at {args.resolution} px, train_dataloader batch 64, 0 workers",
            "files_img_per_s": round(n / min(t_files), 1),
            "cache_img_per_s": round(n / min(t_cache), 1),
            "ratio_cache_over_files": round(min(t_files) / min(t_cache), 2),
            "prepare_seconds": round(t_prepare, 2),
        },
    )


if __name__ == "__main__":
    main()
