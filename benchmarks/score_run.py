"""Score a `genface train` run made outside `bench_quality.py`'s budget (a shipped recipe run to its last epoch,
with its own learning-rate schedule) under the protocol of a `bench_quality.py` output folder, and add it to
that folder's table, curve and samples.

bench_quality trains every family for the same budget and replaces epoch counts by it, so a recipe whose
schedule is defined over its epochs (DD-GAN's cosine decay over 12 epochs) is not measured as shipped. This
script measures the shipped run itself: train it with bench_quality's clock added (no budget; marks every
`every_s` seconds of training-loop time, the clock in every checkpoint, `final.ckpt` when the last epoch ends),
then score it here with the folder's protocol (the same reals, N, seed, extractor and KID subsets, read from its
`protocol.json`), for a comparison with the families trained there for about as long:

    python -m genface train experiment=ddgan_synthfaces hydra.run.dir=RUN \\
        +callbacks.wall_clock_budget._target_=benchmarks.quality_train.WallClockBudget \\
        +callbacks.wall_clock_budget.budget_s=null +callbacks.wall_clock_budget.every_s=780 \\
        +callbacks.wall_clock_budget.dirpath=RUN/checkpoints/wall
    python -m benchmarks.bench_quality --families dcgan --budget-min 65 --kid-every-min 13 --out OUT
    python -m benchmarks.score_run RUN --name ddgan_recipe --out OUT

Writes `OUT/<name>/result.json` (`"external": true`, the run's folder), `points/` for the curve,
`samples.png` and, for a diffusion family, `path.png` (its denoising steps for 4 seeded latents), then rewrites OUT's `quality.md`, `quality.json` and pictures with the run as an extra row.
The real statistics are the folder's cached ones, so the run must use the same data (its dataset id is checked
against the folder's results). A run without `final.ckpt` (still training, stopped early, or trained without the
clock) is refused, naming what is missing, before anything is loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import instantiate

from benchmarks import bench_quality
from benchmarks.quality_train import compose_run, final_info, mark_infos

log = logging.getLogger("bench_quality")

#: Overrides of the run that only time or place it (bench_quality's clock, its folder, the data folder): they
#: are left out of the recipe's overrides in the report.
HARNESS_PREFIXES = ("+callbacks.wall_clock_budget.", "hydra.", "paths.", "logger.csv.version=", "ckpt_path=")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the run's folder (hydra.run.dir of its `genface train`)")
    p.add_argument("--out", type=Path, required=True, help="a bench_quality output folder (its protocol.json)")
    p.add_argument("--name", help="the run's row in the table (default: the run folder's name)")
    p.add_argument("--judge", help="classifier checkpoint for conditional accuracy, as bench_quality's --judge")
    p.add_argument("--n-cond", type=int, default=512, help="samples judged for conditional accuracy")
    p.add_argument("--readme", action="store_true", help="print the folder's report when done")
    args = p.parse_args(argv)
    protocol_path = args.out / "protocol.json"
    if not protocol_path.is_file():
        p.error(f"{protocol_path} not found: --out must be a bench_quality output folder (run it first)")
    protocol = json.loads(protocol_path.read_text())
    for key, value in protocol.items():
        setattr(args, key, value)
    args.allow_low_n = bench_quality.MODES[args.mode]["allow_low_n"]
    args.name = args.name or args.run.name
    if args.name in bench_quality.FAMILIES:
        p.error(f"--name {args.name} is a bench_quality family's row; give the run another name")
    if final_info(args.run) is None:
        wall = args.run / "checkpoints" / "wall"
        p.error(
            f"{wall / 'final.ckpt'} (and its .json) not found: the run is still training, stopped early, or was "
            "trained without bench_quality's clock (+callbacks.wall_clock_budget..., see this script's help)"
        )
    return args


def run_overrides(run: Path) -> list[str]:
    """The command-line overrides of the run's `genface train` (Hydra's record of them)."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        raise SystemExit(f"{path} not found: {run} is not the folder of a `genface train` run")
    return list(yaml.safe_load(path.read_text()) or [])


def record_of(run: Path) -> dict[str, Any]:
    """The run as bench_quality's `train_family` would describe it: one stage, its clocked final and marks."""
    overrides = run_overrides(run)
    experiment = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "?")
    recipe = [f"experiment={experiment}"] + [
        o for o in overrides if not o.startswith(("experiment=", *HARNESS_PREFIXES))
    ]
    final = final_info(run)
    return {
        "run_dir": str(run),
        "stages": {"train": {"experiment": experiment, "overrides": recipe, "final": final}},
        "final": final,
        "marks": [m for m in mark_infos(run) if m["name"] != "final"],
        "overrides": overrides,
    }


def datamodule_of(run: Path, overrides: list[str]) -> tuple[Any, str]:
    """The run's DataModule and FID cache folder, composed from its own overrides (its data folder included)."""
    cfg = compose_run(overrides, run, data_dir=None)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule, f"{cfg.paths.cache_dir}/fid"


def path_picture(name: str, args: argparse.Namespace, result: dict[str, Any]) -> Path | None:
    """`OUT/<name>/path.png`: x_t and the predicted x_0 along the sampling chain (at most 10 evenly spaced steps)
    of the final checkpoint for 4 latents seeded `seed`; None for a model without `generate_with_path`."""
    from genface.models import load_module
    from genface.viz.diffusion import path_strip
    from genface.viz.grids import save_png

    path = args.out / name / "path.png"
    model = load_module(bench_quality.final_checkpoint(args.out, name, result))
    if not hasattr(model, "generate_with_path"):
        return None
    latents = model.sample_latents(4, generator=torch.Generator().manual_seed(args.seed))
    labels = model.default_labels(4) if model.num_classes else None
    _, steps = model.generate_with_path(latents, labels)
    return save_png(path_strip(steps, n_rows=4, columns=min(len(steps), 10)), path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Score the run into the folder and rewrite the folder's report; returns the run's result."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    record = record_of(args.run)
    datamodule, cache_dir = datamodule_of(args.run, record["overrides"])
    names = bench_quality.result_names(args.out)
    results = bench_quality.load_results(args.out, names, [args.name])
    ids = {r["dataset_id"] for r in results.values() if "dataset_id" in r}
    if ids and ids != {datamodule.dataset_id}:
        raise SystemExit(f"{args.run}: data {datamodule.dataset_id} differs from {args.out}'s ({ids})")
    scorer = bench_quality.Scorer(args, datamodule, cache_dir)
    extra = {"external": True, "run_dir": str(args.run)}
    result = bench_quality.score_family(args.name, record, datamodule, scorer, args, extra)
    result.pop("scored")
    results[args.name] = result
    bench_quality.sample_grid(args.name, result, args)
    path_picture(args.name, args, result)
    md = bench_quality.report(args, {k: getattr(args, k) for k in bench_quality.PROTOCOL_KEYS}, results)
    if args.readme:
        print(md)
    log.info("%s: KID %.4f, FID %.2f after %.1f min; wrote %s", args.name, result["kid_mean"], result["fid"],
             result["train_s"] / 60, args.out / "quality.md")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
