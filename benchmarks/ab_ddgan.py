"""A/B of the DD-GAN synthfaces recipe: each candidate fix as a variant, all at one wall-clock budget, one table.

Every variant is `experiment=ddgan_synthfaces` as `bench_quality.py` trains it (its family `ddgan`) plus a few
Hydra overrides (`VARIANTS`); `dcgan`, the DCGAN recipe as bench_quality trains it, is the reference line. The
protocol is bench_quality's, run by its own functions (`train_and_score`): the same training-loop budget per
variant (`--budget-min`, default 10) at the same `--threads`, a checkpoint every `--kid-every-min`, resumable;
then Inception FID and KID of `--n-fid` seeded samples (default 512) against as many real images of the train
split (a low-N FID: comparable within this table only), KID in subsets of `--kid-subset-size` (default 256, half
of N, so that the ± over subsets is not zero), seconds per image and parameters. Each variant also gets a grid of
its first 64 scored samples from its final checkpoint, since a face is judged by looking at it.

`cosine` decays both learning rates per batch over the batches `baseline` managed in the same budget (its
global step / 2: one D and one G step per batch), so that the decay ends with the budget: `baseline` runs
first; `--cosine-steps N` states a count instead. The second round (`d16_cosine`, `d32`, `d16_b16`) combines
the first round's finding, a discriminator that stayed at chance at ngf 8 and learnt at 16, with the other
levers; `d16_cosine` decays over `wide_d`'s batches (`COSINE_FROM`).

Results in `--out` (default benchmarks/out/ab_ddgan/): per variant `variant.json` (its overrides: a rerun with
others is refused), `result.json`, `points/`, the run under `train/`, `samples.png`; then `ab_ddgan.md` and
`ab_ddgan.json`. Written atomically as they are known; a rerun skips what is done and resumes a partly spent budget.
    python -m benchmarks.ab_ddgan [--variants baseline,hflip] [--budget-min 10] [--cosine-steps N]
    python -m benchmarks.ab_ddgan --toy   # seconds per variant, debug=smoke nets, tiny extractor
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from datetime import date
from typing import Any

from omegaconf import OmegaConf

from benchmarks.bench_quality import (
    GRID_N,
    begin,
    finish_args,
    protocol_parser,
    sample_grid,
    samples_side_by_side,
    train_and_score,
)
from benchmarks.common import OUT, machine
from benchmarks.quality_train import FAMILIES, Stage, stage_overrides, write_json

log = logging.getLogger("ab_ddgan")

#: Settings per mode; explicit options win. `toy`: seconds per variant and the tests' tiny extractor.
MODES = {
    "full": dict(out=OUT / "ab_ddgan", budget_min=10.0, kid_every_min=5.0, n_fid=512, n_curve=128, batch=64,
                 extractor="inception", kid_subset_size=256, allow_low_n=True),
    "toy": dict(out=OUT / "ab_ddgan_toy", budget_min=0.05, kid_every_min=0.025, n_fid=32, n_curve=16, batch=16,
                extractor="tiny", kid_subset_size=16, allow_low_n=True),
}  # fmt: skip

#: name -> (family, overrides added to its recipe as bench_quality trains it), in the order they run.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "baseline": ("ddgan", ()),
    "hflip": ("ddgan", ("data.hflip=true",)),
    "cosine": ("ddgan", ("model.use_cosine=true",)),  # + model.cosine_steps, see cosine_steps()
    "wide_d": ("ddgan", ("model.discriminator.ngf=16",)),
    "t4": ("ddgan", ("model.num_timesteps=4",)),
    "wide_g": ("ddgan", ("model.generator.base_channels=32",)),
    "dcgan": ("dcgan", ()),
    # second round, on the first's finding (ngf 8: D at chance throughout; ngf 16: D learns, best KID)
    "d16_cosine": ("ddgan", ("model.discriminator.ngf=16", "model.use_cosine=true")),
    "d32": ("ddgan", ("model.discriminator.ngf=32",)),
    "d16_b16": ("ddgan", ("model.discriminator.ngf=16", "data.batch_size=16")),  # twice the updates per image
}
#: The A/B's base: the keys the variants change, at their values in `ddgan_synthfaces` as the first round measured
#: it (commit 7ea880b). Every DD-GAN variant composes on these, so the rounds reproduce whatever the shipped recipe
#: becomes (it takes the winner's values); a variant's own overrides replace them.
BASE = {"data.hflip": "false", "data.batch_size": "32", "model.use_cosine": "false", "model.num_timesteps": "2",
        "model.discriminator.ngf": "8", "model.generator.base_channels": "16"}  # fmt: skip
#: Variants whose cosine decay spans the batches another variant's run managed in the budget: name -> source.
COSINE_FROM = {"cosine": "baseline", "d16_cosine": "wide_d"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = protocol_parser(__doc__.splitlines()[0], MODES)
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    p.add_argument("--cosine-steps", type=int, help="batches of every cosine decay (default: COSINE_FROM's)")
    p.add_argument("--toy", action="store_true", help="seconds per variant, smoke nets, tiny extractor")
    args = p.parse_args(argv)
    args.mode = "toy" if args.toy else "full"
    finish_args(p, args, MODES)
    # bench_quality's settings that no variant uses: every one is a single-stage, unconditional recipe
    args.stage_one_share, args.judge = 0.5, None
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if args.cosine_steps is not None and args.cosine_steps < 1:
        p.error("--cosine-steps must be >= 1")
    args.variants.sort(key=list(VARIANTS).index)  # a COSINE_FROM source runs before the variant reading it
    return args


def cosine_steps(args: argparse.Namespace, name: str = "cosine") -> int:
    """`--cosine-steps`, or the batches that `COSINE_FROM[name]`'s run managed within the budget."""
    if args.cosine_steps is not None:
        return args.cosine_steps
    source = COSINE_FROM[name]
    final = args.out / source / FAMILIES["ddgan"][-1].name / "checkpoints" / "wall" / "final.json"
    if not final.is_file():
        raise LookupError(f"{name} decays over {source}'s batches: run --variants {source} first ({final} is "
                          "missing), or give --cosine-steps")  # fmt: skip
    return max(1, json.loads(final.read_text())["global_step"] // 2)


def variant_stages(name: str, args: argparse.Namespace) -> tuple[Stage, ...]:
    """The variant's stages: its family's, the last one with the variant's overrides added. Its overrides are
    kept in `variant.json`; a rerun that would resume the run with others is refused."""
    family, extra = VARIANTS[name]
    if name in COSINE_FROM:
        extra = (*extra, f"model.cosine_steps={cosine_steps(args, name)}")
    record, path = {"family": family, "overrides": list(extra)}, args.out / name / "variant.json"
    if path.is_file() and json.loads(path.read_text()) != record:
        raise RuntimeError(f"{path} holds other overrides than {record}; use another --out")
    write_json(path, record)
    own = {o.split("=", 1)[0] for o in extra}
    base = tuple(f"{k}={v}" for k, v in BASE.items() if k not in own) if family == "ddgan" else ()
    *first, last = FAMILIES[family]
    return (*first, replace(last, overrides=(*last.overrides, *base, *extra)))


def report(args: argparse.Namespace, protocol: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    """ab_ddgan.md (protocol, table, sample grids) and ab_ddgan.json; returns the markdown."""
    rows = []
    for name in VARIANTS:
        r = results.get(name)
        if r is None or "error" in r:
            rows.append(f"| {name} | {'not run yet' if r is None else 'failed: ' + r['error']} |" + " |" * 6)
            continue
        stage_name, stage = next(reversed(r["stages"].items()))
        extra = json.loads((args.out / name / "variant.json").read_text())["overrides"]
        recipe = f"`{stage['experiment']}`" + "".join(f" `{o}`" for o in extra)
        step = stage["final"]["global_step"]
        images = step // 2 * OmegaConf.load(args.out / name / stage_name / "config.yaml").data.batch_size
        rows.append(
            f"| {name} | {recipe} | {r['train_s'] / 60:.1f} | {step} ({images:,}) | "
            f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f} | {r['fid']:.2f} | {r['sample_s_per_image']:.4f} | "
            f"{r['params']['sampling'] / 1e6:.2f} M / {r['params']['trained'] / 1e6:.2f} M |"
        )
    done = [r for r in results.values() if "fid" in r]
    grids = samples_side_by_side(args.out, results, list(VARIANTS), args.out / "ab_ddgan_samples.png")
    ext = done[0]["extractor_protocol"] if done else args.extractor
    data_ids = ", ".join(sorted({r["dataset_id"] for r in done})) or "no variant scored yet"
    common = " ".join(stage_overrides(FAMILIES["ddgan"][-1], args.toy)[1:])
    md = "\n".join([
        "## DD-GAN synthfaces A/B (`ab_ddgan.py`)",
        "",
        f"{date.today().isoformat()}, {machine()}; `python -m benchmarks.ab_ddgan`, mode `{args.mode}`.",
        "",
        f"- Variants: `experiment=ddgan_synthfaces` as `bench_quality.py` trains it "
        f"(`{common}`) plus the overrides in its row; "
        "`dcgan`: the DCGAN recipe under the same protocol, the reference line.",
        f"- Data: synthfaces at 32 px ({data_ids}), train split.",
        f"- Budget: {args.budget_min:g} min of training-loop wall time per variant, {args.threads} torch thread(s) "
        "(bench_quality's clock: steps, validation and callbacks count; building, checkpoints and scoring do not).",
        f"- FID and KID: {ext}; N = {args.n_fid} fakes vs {args.n_fid} real images of the train split, latents "
        f"seeded {args.seed}; KID {args.kid_subsets} subsets of {args.kid_subset_size}. FID at this N is biased: "
        "compare it within this table only. The ± is KID's spread over subsets of the same samples, not a "
        "confidence interval: differences about that size are not resolved.",
        "- Steps: Lightning's global step (a D and a G update per batch), in brackets the images seen. s / image: "
        f"`generate` alone, batch {args.batch}. Params: the networks `generate` runs / everything trained.",
        "",
        "| variant | recipe + overrides | trained (min) | steps (images) | KID x 1e3 | FID | s / image | params |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Samples: the first {GRID_N} scored samples of each final checkpoint (EMA weights where kept), "
        "`<variant>/samples.png`:",
        "",
        f"![The first {GRID_N} scored samples of each variant]({grids.name})" if grids else "(none scored yet)",
    ])  # fmt: skip
    (args.out / "ab_ddgan.md").write_text(md)
    write_json(args.out / "ab_ddgan.json", {"protocol": protocol, "machine": machine(), "results": results})
    return md


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, score and picture the variants; returns what was trained and scored by this call."""
    args = parse_args(argv)
    protocol, results = begin(args, list(VARIANTS), args.variants)
    summary: dict[str, Any] = {"trained": {}, "scored": {}, "failed": {}}
    for name in args.variants:  # one at a time: a COSINE_FROM variant reads its source's finished run
        try:
            stages = variant_stages(name, args)
        except (LookupError, RuntimeError) as err:
            log.error("%s: %s", name, err)
            results[name], summary["failed"][name] = {"error": str(err)[:200]}, str(err)
            continue
        part = train_and_score(args, {name: stages}, results)
        for key in summary:
            summary[key].update(part[key])
        if "fid" in results[name]:
            try:
                sample_grid(name, results[name], args)
            except Exception as err:  # noqa: BLE001 - a picture must not cost the other variants their run
                log.exception("%s: no sample grid", name)
                summary["failed"][name] = f"samples.png: {err}"
    report(args, protocol, results)
    log.info("wrote %s", args.out / "ab_ddgan.md")
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
