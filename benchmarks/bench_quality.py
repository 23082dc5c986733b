"""Quality at equal budget: every generative family, one protocol, one table and a KID-vs-time plot.

Protocol (each number in the output says its own settings):
- Data: embedded synthfaces at 32 px as the shipped CPU recipes set it (10,000 faces, seed 0: one dataset id,
  checked equal across families), trained on its train split.
- Training: each family's shipped CPU recipe (`experiment=<family>_synthfaces`; latent diffusion = the
  VAE-GAN stage one `vaegan_synthfaces` + `latent_diffusion_synthfaces`) with the few overrides listed in the
  output, for the same wall-clock budget of training-loop time (`--budget-min`, `--threads` torch threads).
  Latent diffusion spends `--stage-one-share` of its budget on stage one. Checkpoints every `--kid-every-min`.
- Scoring, after training and off the budget, from the checkpoints: FID and KID of `--n-fid` samples (seeded
  latents, the Generative contract's `generate`) against `--n-fid` real images of the train split (real
  statistics cached by genface's real-stats cache); KID of the first `--n-curve` samples at every checkpoint
  for the curve; sampling seconds per image (generate only, batch `--batch`); parameters (sampling networks
  and everything trained); conditional accuracy of cGAN and latent diffusion by a judge classifier (`--judge`,
  genface's `ConditionalAccuracy`), stated as skipped without one.

Results in `--out` (default benchmarks/out/quality/): `<family>/result.json`, `<family>/points/<ckpt>.json`,
the runs under `<family>/<stage>/`, `quality.md`, `quality.json`, `quality_vs_time.png`. Every file is
written atomically as soon as it is known, so a rerun skips what is done and resumes a family whose budget is
partly spent from its newest checkpoint with the budget left.
    python -m benchmarks.bench_quality [--families dcgan,ddpm] [--budget-min 20] [--judge CKPT] [--readme]
    python -m benchmarks.bench_quality --toy   # seconds per family, debug=smoke nets, tiny extractor
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import time
import traceback
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from torchmetrics.utilities import dim_zero_cat

from benchmarks.common import OUT, machine
from benchmarks.quality_train import FAMILIES, Stage, compose_run, train_family, write_json

log = logging.getLogger("bench_quality")

#: Settings per mode; explicit options win. `toy`: the tests' tiny extractor, never a reported FID.
MODES = {
    "full": dict(out=OUT / "quality", budget_min=20.0, kid_every_min=5.0, n_fid=2048, n_curve=512, batch=64,
                 extractor="inception", kid_subset_size=1000, allow_low_n=False),
    "quick": dict(out=OUT / "quality_quick", budget_min=2.0, kid_every_min=1.0, n_fid=512, n_curve=128, batch=64,
                  extractor="inception", kid_subset_size=1000, allow_low_n=True),
    "toy": dict(out=OUT / "quality_toy", budget_min=0.05, kid_every_min=0.025, n_fid=32, n_curve=16, batch=16,
                extractor="tiny", kid_subset_size=1000, allow_low_n=True),
}  # fmt: skip
#: Settings that define the protocol: a rerun into the same --out must use the same ones. The judge is not one of
#: them: a rerun with another `--judge` (or `--n-cond`) re-judges the conditional families' final checkpoints.
PROTOCOL_KEYS = ("mode", "budget_min", "kid_every_min", "stage_one_share", "threads", "n_fid", "n_curve", "batch",
                 "extractor", "seed", "kid_subsets", "kid_subset_size")  # fmt: skip
REAL_SPLIT = "train"
#: Samples in each `samples.png`: the first GRID_N of the scored stream.
GRID_N = 64


def protocol_parser(description: str, modes: dict[str, dict[str, Any]]) -> argparse.ArgumentParser:
    """The options of the protocol, shared with the scripts that run it on other sets of recipes (ab_ddgan.py);
    those left unset take the mode's value (`finish_args`), the help says the full mode's."""
    full = modes["full"]
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--budget-min", type=float, help=f"training wall-clock budget per run ({full['budget_min']:g})"
    )
    p.add_argument(
        "--kid-every-min", type=float, help=f"checkpoint (curve point) interval ({full['kid_every_min']:g})"
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for training and scoring")
    p.add_argument("--n-fid", type=int, help=f"fakes and reals for FID/KID ({full['n_fid']})")
    p.add_argument(
        "--n-curve", type=int, help=f"fakes per curve point, against the --n-fid reals ({full['n_curve']})"
    )
    p.add_argument("--batch", type=int, help=f"sampling and feature batch ({full['batch']})")
    p.add_argument("--extractor", choices=("inception", "tiny"), help="feature extractor (toy: tiny)")
    p.add_argument("--allow-low-n", action="store_true", default=None, help="FID below the feature dimension")
    p.add_argument(
        "--seed", type=int, default=1234, help="seed of the scored latents (genface's FID default)"
    )
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, help=f"KID subset size ({full['kid_subset_size']})")
    p.add_argument("--data-dir", help="paths.data_dir of the runs (default: genface's, ./data)")
    p.add_argument("--out", type=Path)
    return p


def finish_args(
    p: argparse.ArgumentParser, args: argparse.Namespace, modes: dict[str, dict[str, Any]]
) -> None:
    """Fill the options left unset from `modes[args.mode]` and check them."""
    for key, value in modes[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.kid_every_min <= 0 or args.budget_min <= 0:
        p.error("--budget-min and --kid-every-min must be > 0")
    if args.n_curve > args.n_fid:
        p.error("--n-curve must not exceed --n-fid")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = protocol_parser(__doc__.splitlines()[0], MODES)
    p.add_argument(
        "--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}"
    )
    p.add_argument("--stage-one-share", type=float, default=0.5, help="latent diffusion's VAE-GAN share")
    p.add_argument("--judge", help="genface classifier checkpoint for conditional accuracy (synthfaces_attr)")
    p.add_argument("--n-cond", type=int, default=512, help="samples judged for conditional accuracy")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 min per family, N 512 (low-N FID): a dry run")
    mode.add_argument("--toy", action="store_true", help="seconds per family, smoke nets, tiny extractor")
    p.add_argument("--readme", action="store_true", help="print the README section when done")
    args = p.parse_args(argv)
    args.mode = "toy" if args.toy else "quick" if args.quick else "full"
    finish_args(p, args, MODES)
    args.judge = str(Path(args.judge).resolve()) if args.judge else None
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        p.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    if not 0 < args.stage_one_share < 1:
        p.error("--stage-one-share must lie in (0, 1)")
    return args


def check_protocol(args: argparse.Namespace) -> dict[str, Any]:
    """Write `protocol.json`, or refuse to mix results of another protocol in the same --out."""
    protocol = {key: getattr(args, key) for key in PROTOCOL_KEYS}
    path = args.out / "protocol.json"
    if path.is_file():
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in protocol.items() if before.get(k) != v}
        if changed:
            raise SystemExit(
                f"{args.out} holds results of another protocol ({changed}: was, now); use another --out"
            )
    write_json(path, protocol)
    return protocol


# ----- scoring ---------------------------------------------------------------------------------------------
class Scorer:
    """FID/KID of a generator's seeded samples against the train split's cached real statistics. The extractor
    and the real statistics are built on first use: a rerun with nothing left to score loads neither."""

    def __init__(self, args: argparse.Namespace, datamodule: Any, cache_dir: str) -> None:
        self.args, self.datamodule, self.cache_dir = args, datamodule, cache_dir

    @functools.cached_property
    def extractor(self) -> Any:
        from genface.metrics import build_extractor

        return build_extractor(self.args.extractor)

    @functools.cached_property
    def real(self) -> Any:
        from genface.data.base import real_images
        from genface.metrics import load_or_compute_real_stats

        dm = self.datamodule
        return load_or_compute_real_stats(self.extractor, real_images(dm, REAL_SPLIT), dm.dataset_id, REAL_SPLIT,
                                          self.args.n_fid, self.cache_dir, batch_size=self.args.batch)  # fmt: skip

    def samples(self, model: Any, n: int) -> tuple[Any, float]:
        """An FIDKID metric fed with the first `n` samples of the seeded stream; seconds spent in generate."""
        from genface.metrics import FIDKID
        from genface.metrics.scoring import generate_fake_batches

        metric = FIDKID(self.extractor, self.args.kid_subsets, self.args.kid_subset_size,
                        kid_max_features=max(n, 2), allow_low_n=self.args.allow_low_n)  # fmt: skip
        metric.set_real(self.real)
        batches, seconds = generate_fake_batches(model, n, self.args.batch, self.args.seed), 0.0
        while True:
            start = time.perf_counter()
            images = next(batches, None)
            seconds += time.perf_counter() - start
            if images is None:
                return metric, seconds
            metric.update(images)

    def curve_kid(self, metric: Any) -> tuple[float, float]:
        """KID of the first --n-curve samples held by `metric`, against all the reals."""
        from genface.metrics.fidkid import kernel_inception_distance

        fakes = dim_zero_cat(metric.fake_features)[: self.args.n_curve]
        real = torch.from_numpy(self.real.features)
        return kernel_inception_distance(real, fakes, self.args.kid_subsets, self.args.kid_subset_size)


class AttributeView:
    """A model conditioned on one binary attribute through class labels 0/1 (latent diffusion on Smiling:
    num_classes=2), seen as an attribute-conditional model with (N, 1) 0/1 labels: the form genface's
    `ConditionalAccuracy` judges. DDPM's `generate` accepts such labels for num_classes=2."""

    label_kind = "attributes"
    num_classes = 1

    def __init__(self, model: Any, attribute: str) -> None:
        self.model, self.condition = model, [attribute]
        self.device = model.device

    def default_labels(self, n: int) -> torch.Tensor:
        return (torch.arange(n) % 2).float()[:, None]

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.sample_latents(n, generator=generator)

    def generate(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.generate(latents, labels)

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.float().reshape(-1, 1)


def conditional_accuracy(model: Any, datamodule: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Share of `--n-cond` samples whose every requested attribute the judge confirms (and per attribute), with
    the judge's accuracy on real validation images as the ceiling; skipped, saying why, without a judge."""
    if not args.judge:
        return {"skipped": "no judge classifier given (--judge CKPT: a synthfaces_attr run's checkpoint)"}
    from genface.callbacks.conditional_accuracy import ConditionalAccuracy
    from genface.models import load_module

    if getattr(model, "condition", None):
        target = model
    elif (
        model.num_classes == 2 and datamodule.label_kind == "attributes" and len(datamodule.class_names) == 1
    ):
        target = AttributeView(model, datamodule.class_names[0])
    else:
        return {"skipped": f"labels of {type(model).__name__} name no attributes a judge could check"}
    judge = ConditionalAccuracy(args.judge, n=args.n_cond, batch_size=args.batch)
    judge.classifier = judge.attach(load_module(args.judge), target)
    counts = judge.counts(target)
    k = target.num_classes
    result = {"cond_acc": float(counts[0] / counts[1]), "n": int(counts[1]), "judge": args.judge}
    result["per_attribute"] = {
        name: float(counts[2 + i] / counts[2 + k + i]) for i, name in enumerate(target.condition)
    }
    # The ceiling, as the callback computes it during training (it reads only trainer.datamodule).
    result["judge_on_real"] = judge._real_accuracy_of(SimpleNamespace(datamodule=datamodule), target)
    return result


def param_counts(model: Any, stage_one: Any | None) -> dict[str, int]:
    """Parameters of the networks `generate` runs (EMA target, plus latent diffusion's first stage) and of
    everything trained within the budget (both stages; the frozen first stage counted once)."""
    sampling = [getattr(model, model.ema_target_name)] + (
        [model.first_stage] if stage_one is not None else []
    )
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if stage_one is not None:
        trained += sum(p.numel() for p in stage_one.parameters())
    return {"sampling": sum(p.numel() for net in sampling for p in net.parameters()), "trained": trained}


def score_family(
    family: str, record: dict[str, Any], datamodule: Any, scorer: Scorer, args, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Curve points of the marks, then the final scores; each JSON written as it is known, none recomputed.
    `extra` joins the result record (score_run.py's `external` and `run_dir`)."""
    from genface.models import load_module

    run_dir, folder = Path(record["run_dir"]), args.out / family
    wall = run_dir / "checkpoints" / "wall"
    scored = []
    for info in record["marks"]:
        path = folder / "points" / f"{info['name']}.json"
        if not path.is_file():
            n = math.ceil(args.n_curve / args.batch) * args.batch  # whole batches: the stream's first n_curve
            metric, _ = scorer.samples(load_module(wall / info["checkpoint"]), n)
            kid_mean, kid_std = scorer.curve_kid(metric)
            write_json(path, {**info, "kid_mean": kid_mean, "kid_std": kid_std, "n_fake": args.n_curve})
            scored.append(info["name"])
    result_path = folder / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        judged = result["conditional"] or {}
        if (
            result["conditional"] is not None
            and args.judge
            and (judged.get("judge"), judged.get("n")) != (args.judge, args.n_cond)
        ):
            model = load_module(wall / record["final"]["checkpoint"])
            result["conditional"] = conditional_accuracy(model, datamodule, args)
            write_json(result_path, result)
            scored.append("conditional")
        return {"scored": scored, **result}
    final = record["final"]
    model = load_module(wall / final["checkpoint"])
    metric, seconds = scorer.samples(model, args.n_fid)
    values = metric.compute()
    kid_mean, kid_std = scorer.curve_kid(metric)
    write_json(folder / "points" / "final.json", {**final, "kid_mean": kid_mean, "kid_std": kid_std,
                                                  "n_fake": args.n_curve})  # fmt: skip
    stage_one = None
    if len(record["stages"]) > 1:
        first = next(iter(record["stages"].values()))["final"]
        stage_one = load_module(run_dir.parent / next(iter(record["stages"])) / "checkpoints" / "wall" /
                                first["checkpoint"])  # fmt: skip
    result = {
        "family": family,
        "stages": record["stages"],
        "train_s": final["elapsed_s"],
        "steps": {name: s["final"]["global_step"] for name, s in record["stages"].items()},
        "dataset_id": datamodule.dataset_id,
        "fid": values["fid"], "kid_mean": values["kid_mean"], "kid_std": values["kid_std"],
        "n_fake": values["n_fake"], "n_real": scorer.real.n, "real_split": REAL_SPLIT,
        "extractor": scorer.extractor.name, "extractor_protocol": scorer.extractor.protocol,
        "features": scorer.extractor.num_features,
        "sampling": model.sampling_protocol, "sample_s_per_image": seconds / args.n_fid, "sample_batch": args.batch,
        "params": param_counts(model, stage_one),
        "conditional": conditional_accuracy(model, datamodule, args) if model.num_classes else None,
        "date": date.today().isoformat(), "machine": machine(), **(extra or {}),
    }  # fmt: skip
    write_json(result_path, result)
    return {"scored": [*scored, "final"], **result}


def final_checkpoint(out: Path, name: str, result: dict[str, Any]) -> Path:
    """The sampling stage's final checkpoint of a scored run: under `out/<name>/<stage>/` for the families,
    in the run's own folder (`run_dir`) for score_run.py's runs."""
    stage, info = next(reversed(result["stages"].items()))
    run_dir = Path(result["run_dir"]) if "run_dir" in result else out / name / stage
    return run_dir / "checkpoints" / "wall" / info["final"]["checkpoint"]


def sample_grid(name: str, result: dict[str, Any], args: argparse.Namespace) -> Path:
    """`<out>/<name>/samples.png`: the first GRID_N scored samples (the same seeded stream, so the same latents
    and labels as the scores saw) of the sampling stage's final checkpoint; kept when already there."""
    from genface.metrics.scoring import generate_fake_batches
    from genface.models import load_module
    from genface.viz.grids import save_grid

    path = args.out / name / "samples.png"
    if not path.is_file():
        model = load_module(final_checkpoint(args.out, name, result))
        images = torch.cat(list(generate_fake_batches(model, GRID_N, args.batch, args.seed)))
        save_grid(images, path, nrow=8)
    return path


def sample_grids(args: argparse.Namespace, results: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
    """`samples.png` of every scored run that lacks one (a picture's failure is reported, not fatal)."""
    for name, result in results.items():
        if "fid" not in result:
            continue
        try:
            sample_grid(name, result, args)
        except Exception as err:  # noqa: BLE001 - a picture must not cost the other runs their report
            log.exception("%s: no sample grid", name)
            summary["failed"][name] = f"samples.png: {err}"


def samples_side_by_side(out: Path, results: dict[str, dict[str, Any]], names: list[str], path: Path) -> Path | None:
    """The runs' `samples.png` in one row, each under its name and KID (None when no run has a grid yet)."""
    from PIL import Image

    from genface.viz.grids import save_png, side_by_side

    shown = [n for n in names if "fid" in results.get(n, {}) and (out / n / "samples.png").is_file()]
    if not shown:
        return None
    pictures = []
    for name in shown:
        with Image.open(out / name / "samples.png") as png:
            pictures.append(np.asarray(png.convert("RGB")))
    labels = [f"{n}: KID {1e3 * results[n]['kid_mean']:.1f}e-3" for n in shown]
    return save_png(side_by_side(pictures, labels), path)


# ----- report ----------------------------------------------------------------------------------------------
def curve_points(out: Path, family: str) -> list[dict[str, Any]]:
    folder = out / family / "points"
    points = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(points, key=lambda p: p["elapsed_s"])


def cond_cell(conditional: dict[str, Any] | None) -> str:
    if conditional is None:
        return "-"
    if "skipped" in conditional:
        return "skipped (no judge)"
    return f"{conditional['cond_acc']:.3f} ({conditional['judge_on_real']:.3f})"


def report(args: argparse.Namespace, protocol: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    """quality.md (protocol, table, overrides), quality.json and quality_vs_time.png; returns the markdown."""
    from genface.viz.plots import plot_curves

    rows, history = [], []
    names = [*FAMILIES, *sorted(set(results) - set(FAMILIES))]  # then score_run.py's runs
    for family in names:
        r = results.get(family)
        if r is None:
            rows.append(f"| {family} | not run yet |" + " |" * 8)
            continue
        if "error" in r:
            rows.append(f"| {family} | failed: {r['error']} |" + " |" * 8)
            continue
        recipe = " + ".join(s["experiment"] for s in r["stages"].values())
        recipe = f"`{recipe}` to its end" if r.get("external") else f"`{recipe}`"
        steps = " + ".join(str(v) for v in r["steps"].values())
        rows.append(
            f"| {family} | {recipe} | {r['train_s'] / 60:.1f} | {steps} | {r['fid']:.2f} | "
            f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f} | {cond_cell(r['conditional'])} | "
            f"{r['sample_s_per_image']:.4f} | {r['params']['sampling'] / 1e6:.2f} M | {r['params']['trained'] / 1e6:.2f} M |"
        )
        history += [
            {"training minutes": p["elapsed_s"] / 60, family: p["kid_mean"]}
            for p in curve_points(args.out, family)
        ]
    done = [results[n] for n in names if "fid" in results.get(n, {})]  # in table order
    ext = done[0]["extractor_protocol"] if done else args.extractor
    low_n = any(r["n_fake"] < r["features"] for r in done)
    title = f"KID ({args.extractor}, {args.n_curve} fakes vs {args.n_fid} reals) vs training time"
    plot = plot_curves(history, names, args.out / "quality_vs_time.png", title, "training minutes", "KID")
    grids = samples_side_by_side(args.out, results, names, args.out / "quality_samples.png")
    data_ids = ", ".join(sorted({r["dataset_id"] for r in done})) or "no family scored yet"
    sampling = "; ".join(f"{r['family']} {r['sampling'] or 'one pass'}" for r in done) or "n/a"
    overrides = "\n".join(
        f"- {r['family']} / {name}: " + (f"`{' '.join(s['overrides'][1:])}`" if s["overrides"][1:] else "none")
        for r in done
        for name, s in r["stages"].items()
    )
    low_n_note = " FID below the feature dimension: biased, comparable only at this N." if low_n else ""
    judged = [r["conditional"] for r in done if r["conditional"] and "judge" in r["conditional"]]
    judge = ", ".join(sorted({c["judge"] for c in judged})) or "none given, so skipped"
    n_judged = " / ".join(sorted({str(c["n"]) for c in judged})) or str(args.n_cond)
    protocol_lines = [
        f"- Data: synthfaces at 32 px ({data_ids}), every family trained on its train split.",
        f"- Budget: {args.budget_min:g} min of training-loop wall time per family, {args.threads} torch thread(s): "
        "steps, validation and the recipe's remaining callbacks count; building, preflight, checkpoint writes and "
        f"scoring do not. Latent diffusion gives {args.stage_one_share:.0%} of it to its VAE-GAN stage one.",
        f"- FID and KID: {ext}; {args.n_fid} fakes vs {args.n_fid} real images of the train split (statistics "
        f"cached), KID {args.kid_subsets} subsets of {args.kid_subset_size}, latents seeded {args.seed}.{low_n_note}",
        *(["- Rows marked *to its end* (`score_run.py`): the shipped recipe run unchanged to its last epoch, with "
           "its own schedule, outside the budget; its minutes are its training-loop clock, counted the same way."]
          if len(names) > len(FAMILIES) else []),
        f"- Curve: KID of the first {args.n_curve} of those fakes vs the same reals, at checkpoints every "
        f"{args.kid_every_min:g} min of training.",
        f"- s / image: `generate` alone, batch {args.batch} ({sampling}). Steps: Lightning's global step (a GAN's "
        "generator and discriminator updates both count). Params: the networks `generate` runs / everything trained.",
        f"- Conditional accuracy: share of {n_judged} samples whose every requested attribute the judge confirms "
        f"(genface `ConditionalAccuracy`; judge: {judge}); in brackets the judge on real validation images.",
    ]
    table = [
        "| family | recipe | trained (min) | steps | FID | KID x 1e3 | cond. acc. | s / image | params (sampling) "
        "| params (trained) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    md = "\n".join(
        [
            "## Quality at equal budget (`bench_quality.py`)",
            "",
            f"{date.today().isoformat()}, {machine()}; `python -m benchmarks.bench_quality`, mode `{args.mode}`.",
            "",
            *protocol_lines,
            "",
            *table,
            "",
            "Overrides of the shipped recipes (beyond `experiment=`):",
            overrides or "- none yet",
            *(["", f"![KID vs training time]({plot.name})"] if plot else []),
            *(["", f"Samples at the end of the budget, the first {GRID_N} scored of each family (EMA weights where "
                   "kept):", "", f"![The first {GRID_N} scored samples of each family]({grids.name})"]
              if grids else []),
            "",
        ]
    )
    (args.out / "quality.md").write_text(md)
    write_json(args.out / "quality.json", {"protocol": protocol, "machine": machine(), "results": results})
    return md


def family_datamodule(record: dict[str, Any], args: argparse.Namespace) -> tuple[Any, str]:
    """The DataModule and FID cache folder of a family's sampling stage, as its run composed them."""
    stage = list(record["stages"].values())[-1]
    cfg = compose_run(stage["overrides"], Path(record["run_dir"]), args.data_dir)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule, f"{cfg.paths.cache_dir}/fid"


def result_names(out: Path) -> list[str]:
    """The families, then the runs `score_run.py` added to `out` (folders with a result.json of their own)."""
    extra = sorted(p.parent.name for p in out.glob("*/result.json") if p.parent.name not in FAMILIES)
    return [*FAMILIES, *extra]


def load_results(out: Path, names: list[str], skip: list[str]) -> dict[str, dict[str, Any]]:
    """Results already in `out` of those `names` not in `skip` (the ones this call trains and scores anew)."""
    paths = {name: out / name / "result.json" for name in names if name not in skip}
    return {name: json.loads(path.read_text()) for name, path in paths.items() if path.is_file()}


def train_and_score(
    args: argparse.Namespace, runs: dict[str, tuple[Stage, ...]], results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Train and score every run (a name and its stages, in `args.out/name/`), adding its result (or its error) to
    `results`; returns what was trained, scored and failed. One run's failure leaves the others running."""
    summary: dict[str, Any] = {"trained": {}, "scored": {}, "failed": {}}
    scorer = None
    for name, stages in runs.items():
        try:
            record = train_family(name, stages, args.out, args.budget_min * 60, args.kid_every_min * 60,
                                  args.stage_one_share, args.toy, args.data_dir)  # fmt: skip
            datamodule, cache_dir = family_datamodule(record, args)
            scorer = scorer or Scorer(args, datamodule, cache_dir)
            ids = {r["dataset_id"] for r in results.values() if "dataset_id" in r} | {datamodule.dataset_id}
            if len(ids) > 1:  # the protocol's "same data": never score against another set's statistics
                raise RuntimeError(f"{name}: data {datamodule.dataset_id} differs from the others' ({ids})")
            outcome = score_family(name, record, datamodule, scorer, args)
        except Exception as err:  # noqa: BLE001 - one run's failure must not lose the others' hours
            log.error("%s failed:\n%s", name, traceback.format_exc())
            message = " ".join(f"{type(err).__name__}: {err}".replace("|", "/").split())  # one table cell
            results[name] = {"error": message[:200]}
            summary["failed"][name] = str(err)
            continue
        summary["trained"][name] = record["trained"]
        summary["scored"][name] = outcome.pop("scored")
        results[name] = outcome
    return summary


def begin(args: argparse.Namespace, names: list[str], chosen: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's common start (here and in ab_ddgan.py): logging, threads, the output folder, the protocol check
    against an earlier run's, and the results so far of `names` (`chosen` being rerun)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return check_protocol(args), load_results(args.out, names, chosen)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, score and report the families; returns what was trained and scored by this call."""
    args = parse_args(argv)
    protocol, results = begin(args, result_names(args.out), args.families)
    summary = train_and_score(args, {family: FAMILIES[family] for family in args.families}, results)
    sample_grids(args, results, summary)
    md = report(args, protocol, results)
    if args.readme:
        print(md)
    log.info("wrote %s", args.out / "quality.md")
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
