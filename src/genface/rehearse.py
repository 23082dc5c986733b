"""`genface rehearse experiment=NAME`: a shipped recipe, unchanged, on a stand-in of its real dataset.

Everything a user's run does happens: the full-size model, the real DataModule reading the real on-disk
layout (rendered by `genface standin`, sized to what the recipe's splits and metrics need), metrics at
their configured N, every callback, checkpoints. A recipe that asks for GPUs runs on the machine's GPUs with
its own trainer and global batch (as many ranks as it asks for and the machine has), or as DDP over CPU processes
(`trainer=ddp_cpu`) where there is none. Only the length is cut: `steps` batches per epoch, two epochs, every periodic output
(FID, grids, checkpoints) forced to happen once, then a resume from `last.ckpt` for one more batch. Wall
time, peak memory and what the run wrote go to a JSON table (`table=`), from which
:func:`write_markdown` makes the docs table.

One thing can make a rehearsal impossible on a small machine: an iterative sampler's cost. A 64 px DDPM that
samples FID's 2,048 images with 1,000 ancestral steps runs its 92 M-parameter U-Net 2 million times, weeks
on 2 CPU cores. Before training, the rehearsal measures the cost of one network evaluation per image
(:func:`genface.budget.sampling_plan`) and, when everything the run samples (FID's fakes, sample grid, denoising paths)
would exceed `sampling_budget_h` hours, samples with DDIM over as many steps as the budget allows, never
fewer FID images, and records the measured cost and the projected time of the recipe's own sampler in
the table. Nothing else changes.

Memory is the other limit: a rank holds its share of the global batch, and DD-GAN's 128 px recipe, 48 images
per rank on 2 CPU ranks, had a rank killed by the kernel at 16.6 GiB on a 24 GiB machine.
`batch=N` sets the global batch of such a rehearsal and says so in the table's note; the recipe's own batch
is what it runs with on GPUs. Sampling that nothing may shorten (a GAN's FID images) is measured too, and a
rehearsal that would sample for longer than `max_h` hours is not started: its row says "not run" and why.

An analysis recipe (one with `sample`/`directions` settings, run by `genface analyze`) is rehearsed in both
halves: its generator's training as above (or, with `generator=PATH`, the checkpoint of the rehearsal of the
recipe it trains as, :data:`TRAINS_AS`), then `genface analyze task=all` on that generator and the rehearsed
classifier (`classifier=PATH`) with the recipe's settings. Its cost is measured first (:func:`analysis_plan`:
seconds per image generated and judged, images per task at the recipe's sizes); past `sampling_budget_h` the
sample count, edited latents and rejection cap shrink by one factor, pictures stay whole, and the note says so.

    genface rehearse experiment=ddgan_celebahq128 [steps=2] [out=DIR] [standin=DIR] [table=FILE]
                     [sampling_budget_h=1] [batch=N] [generator=CKPT] [classifier=CKPT] [max_h=2.5] [overrides]
    genface rehearse all table=docs/rehearsals.json     # every real-data recipe; also writes the .md table
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genface.budget import SAMPLING_BUDGET_H, analysis_plan, sampling_plan
from genface.data.layouts import FACADES_SPLITS, write_standin

#: DataModule class -> stand-in layout; recipes on embedded data (synthfaces, digits) need none.
LAYOUT_OF = {
    "CelebADataModule": "celeba",
    "CelebAHQDataModule": "celebahq",
    "MNISTDataModule": "mnist",
    "PairedFolderDataModule": "facades",
    "ImageFolderDataModule": "imagefolder",
}
#: Share of the validation partition in CelebA's list_eval_partition.txt (19,867 of 202,599).
CELEBA_VAL = 19867 / 202599
OWN_KEYS = ("steps", "out", "standin", "table", "n", "sampling_budget_h", "batch", "generator", "classifier", "max_h")
#: Hours of measured sampling that nothing may shorten (a GAN's FID images) beyond which a rehearsal is not
#: started: on 2 CPU cores DD-GAN's 256 px recipe samples its 2,112 images for longer than a working session.
MAX_H = 2.5
#: Every shipped recipe that reads a real dataset, with its stand-in layout, in an order where a stage
#: comes before the recipe that needs it, cheapest first (`genface rehearse all`).
REAL_DATA = {
    "cgan_mnist": "mnist",
    "cgan_multiclass_mnist": "mnist",
    "mnist_classifier": "mnist",
    "ddpm_unet2d_mnist": "mnist",
    "pix2pix_facades": "facades",
    "dcgan_dg1_celeba64": "celeba",
    "dcgan_coursework_celeba64": "celeba",
    "celeba_attr_resnet18_256": "celeba",
    "vaegan_celeba64": "celeba",
    "latent_diffusion_smiling_celeba64": "celeba",
    "ddgan_celebahq128": "celebahq",
    "ddgan_latent_analysis_celebahq128": "celebahq",
    "ddgan_celebahq256": "celebahq",
    # sampling 2,048 images through a 64 px U-Net for 100 or 1,000 steps: hours on 2 CPU cores, so last
    "ddpm_coursework_celeba64": "celeba",
    "ddpm_dlstudio_celeba64": "celeba",
}
#: Global batch of the rehearsals whose recipe batch exceeds a 24 GiB machine's memory as 2 CPU ranks (DD-GAN
#: at 128 px: the kernel killed a rank holding 16.6 GiB at 48 images per rank), used by `all` and the slow tests
#: where there is no GPU (on GPUs the recipe's batch ran: DD-GAN 256 px, 32 on one H200).
SMALL_MACHINE_BATCH = {"ddgan_celebahq128": 16, "ddgan_latent_analysis_celebahq128": 16, "ddgan_celebahq256": 4}
#: Overrides (and rehearsal keys) a recipe needs from earlier rehearsals, `{root}` being the rehearsals' folder.
NEEDS = {
    "latent_diffusion_smiling_celeba64": ["model.first_stage_ckpt={root}/vaegan_celeba64/run/checkpoints/last.ckpt"],
    "ddgan_latent_analysis_celebahq128": ["generator={root}/ddgan_celebahq128/run/checkpoints/last.ckpt",
                                          "classifier={root}/celeba_attr_resnet18_256/run/checkpoints/last.ckpt"],
}
#: Keys of `genface analyze`'s config that `genface train`'s lacks (tested): overrides of these go to the analysis.
ANALYSIS_KEYS = ("batch_size", "classifier", "device", "directions", "edit", "generator", "out", "progress",
                 "project", "reject", "sample", "samples", "task", "train_classifier")
#: Analysis recipes whose generator training is another recipe's, config for config (tested): `all` analyses
#: that rehearsal's checkpoint instead of training the same model twice.
TRAINS_AS = {"ddgan_latent_analysis_celebahq128": "ddgan_celebahq128"}


class BeyondMachine(RuntimeError):
    """The rehearsal would take longer than `max_h` on this machine (measured before it starts)."""

    def __init__(self, message: str, row: Rehearsal) -> None:
        super().__init__(message)
        self.row = row


@dataclass
class Rehearsal:
    """One row of the rehearsal table."""

    experiment: str
    status: str = "failed"
    standin: str = ""
    train_s: float = 0.0
    resume_s: float = 0.0
    peak_rss_mib: float = 0.0
    world_size: int = 1
    wrote: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    date: str = ""
    note: str = ""
    #: iterative samplers only: the recipe's sampler and steps, the measured seconds per network
    #: evaluation per image, the images sampled, the projected hours, and what the rehearsal ran instead
    sampling: dict[str, Any] = field(default_factory=dict)
    #: analysis recipes only: seconds of `genface analyze task=all`, and its measured cost plan
    analysis_s: float = 0.0
    analysis: dict[str, Any] = field(default_factory=dict)
    #: the GPU a recipe that asks for GPUs ran on; empty where it ran as CPU processes
    machine: str = ""


def visible_gpus() -> int:
    """CUDA devices this machine has (0 on a CPU machine, where GPU recipes rehearse as CPU processes)."""
    import torch

    return torch.cuda.device_count()


def is_analysis(cfg: DictConfig) -> bool:
    """A recipe that `genface analyze` runs: its generator's settings and `task: pipeline` (analysis.yaml's
    task that trains what is missing, then analyses)."""
    return cfg.get("task") == "pipeline"


def layout_of(cfg: DictConfig) -> str | None:
    return LAYOUT_OF.get(str(cfg.data.get("_target_", "")).rsplit(".", 1)[-1])


def needed_images(cfg: DictConfig, layout: str, world: int, steps: int) -> int:
    """How many stand-in images the recipe's splits need: FID's n_real from its split, and `steps` full global
    batches of training images."""
    batch = int(cfg.data.get("batch_size", 1))
    need = batch * steps + world
    fractions = list(cfg.data.get("split_fractions") or [0.9, 0.05, 0.05])
    share = {"celeba": {"train": 1 - 2 * CELEBA_VAL, "val": CELEBA_VAL, "test": CELEBA_VAL}}.get(
        layout, dict(zip(("train", "val", "test"), fractions)))
    for node in (cfg.get("metrics") or {}).values():
        if not isinstance(node, DictConfig) or "n_real" not in node:
            continue
        split, n_real = str(node.get("real_split", "val")), int(node.n_real)
        if split == "all" or cfg.data.get("subset"):
            need = max(need, n_real)
        else:
            need = max(need, math.ceil(n_real / max(share[split], 1e-9)) + 2)
    if cfg.data.get("subset"):
        need = max(need, int(cfg.data.subset))
    return need


def standin_size(layout: str, needed: int) -> int:
    """A stand-in size several recipes share (one CelebA stand-in of 25,000 serves every 64 px recipe):
    pix2pix's real 606 facades where they suffice, else `needed` rounded up to a multiple of 5,000."""
    if layout == "facades" and needed <= sum(FACADES_SPLITS):
        return sum(FACADES_SPLITS)
    return 5000 * math.ceil(needed / 5000)


def standin_args(cfg: DictConfig, layout: str) -> dict[str, Any]:
    """Options of the stand-in: images at the recipe's resolution where the layout takes a size."""
    if layout in ("celebahq", "imagefolder"):
        return {"size": int(cfg.data.resolution)}
    return {}


def asks_for_gpus(cfg: DictConfig) -> bool:
    """The recipe's trainer names GPUs (`trainer=gpu`/`ddp`), which a rehearsal keeps where the machine has some."""
    return str(cfg.trainer.get("accelerator", "auto")) in ("gpu", "cuda")


def fewer_gpus_note(cfg: DictConfig, gpus: int) -> str | None:
    """The table's note where the machine has fewer GPUs than the recipe's ranks (None where it has enough)."""
    from genface.check import _world_size

    asked = _world_size(cfg.trainer)[1]
    if asked <= gpus:
        return None
    return f"{gpus} GPU{'s' if gpus > 1 else ''} in place of the recipe's {asked}, the same global batch ({cfg.data.batch_size})"


def rehearsal_overrides(cfg: DictConfig, steps: int, gpus: int = 0) -> list[str]:
    """What the rehearsal changes: devices and length, nothing else. A recipe that asks for GPUs runs on the
    `gpus` this machine has (its own trainer, strategy and precision, as many ranks as it asks for and the
    machine holds, the same global batch), or as CPU processes where there are none."""
    # validation keeps the recipe's length: metrics computed over the validation loop (translation FID,
    # the classifier's calibrated cuts) must see the N the recipe configures
    out = ["trainer.max_epochs=2", f"trainer.limit_train_batches={steps}", "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1", "trainer.max_steps=-1"]
    devices = cfg.trainer.get("devices", 1)
    if asks_for_gpus(cfg) and gpus > 0:
        if fewer_gpus_note(cfg, gpus):
            out[:0] = [f"trainer.devices={gpus}"]
    elif asks_for_gpus(cfg):
        single = isinstance(devices, int) and devices == 1
        out[:0] = ["trainer=cpu", "trainer.devices=1"] if single else ["trainer=ddp_cpu", "trainer.devices=2"]
    for group in ("callbacks", "metrics"):
        for key, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and "every_n_epochs" in node and "_target_" in node:
                out.append(f"{group}.{key}.every_n_epochs=2")  # once, at the end of the second epoch
    return out


def _run(command: list[str], log: Path) -> tuple[float, float]:
    """Run `command` with its output in `log`; (wall seconds, peak RSS in MiB of it and the ranks it waited for)."""
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"`{' '.join(command)}` exited with {proc.returncode} (log: {log}):\n{tail}")
    return time.monotonic() - start, usage.ru_maxrss / 1024


def rehearse(overrides: list[str], out: Path, steps: int = 2, standin: Path | None = None,
             n: int | None = None, sampling_budget_h: float = SAMPLING_BUDGET_H,
             batch: int | None = None, generator: Path | None = None,
             classifier: Path | None = None, max_h: float = MAX_H) -> Rehearsal:
    """Stand-in, training, resume and checks of one recipe, and an analysis recipe's analysis; raises on any
    failure (the row says why)."""
    from genface.check import _world_size
    from genface.config import compose_train

    settings = [o for o in overrides if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] in ANALYSIS_KEYS]
    overrides = [o for o in overrides if o not in settings]
    cfg = compose_train(overrides)
    experiment = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "?")
    row = Rehearsal(experiment=experiment, date=time.strftime("%Y-%m-%d"))
    notes = []
    if batch is not None and generator is None and batch != int(cfg.data.batch_size):  # batches only training
        notes.append(f"global batch {batch} (the recipe's {cfg.data.batch_size} does not fit this machine's memory)")
        overrides = [*overrides, f"data.batch_size={batch}"]
        cfg = compose_train(overrides)
    layout = layout_of(cfg)
    extra: list[str] = []
    gpus = visible_gpus() if asks_for_gpus(cfg) else 0
    if gpus:
        import torch

        row.machine = torch.cuda.get_device_name(0)
        notes += [note for note in [fewer_gpus_note(cfg, gpus)] if note]
    # measured first: a rehearsal this machine cannot run stops before rendering its stand-in
    try:  # what the training run samples (an analysis of a given generator trains nothing)
        row.sampling = (sampling_plan(cfg, sampling_budget_h, device="cuda" if gpus else "cpu")
                        if generator is None else {})
    except Exception as err:  # the training run below reports a broken recipe; the plan is only a measurement
        row.sampling = {"not_measured": f"{type(err).__name__}: {err}"[:300]}
    if "rehearsed_with" in row.sampling:
        short = row.sampling["rehearsed_with"]
        extra += ["model.sampler=ddim", f"model.sample_steps={short['steps']}", "model.eta=0"]
        notes.append(f"sampled with DDIM-{short['steps']}: the recipe's {row.sampling['sampler']}-"
                     f"{row.sampling['steps']} over {row.sampling['images']} images would take "
                     f"{row.sampling['projected_h']:.0f} h here")
    elif row.sampling.get("projected_h", 0) >= 0.5:  # nothing to shorten (a GAN, DD-GAN's fixed T): said only
        notes.append(f"sampling {row.sampling['images']} images takes {row.sampling['projected_h']:.1f} h here "
                     f"({row.sampling['s_per_image']} s each, measured)")
        if row.sampling["projected_h"] > max_h:
            row.status, row.note = "not run", "; ".join(notes) + f", more than max_h={max_h:g}: it needs a GPU"
            raise BeyondMachine(row.note, row)
    if layout and standin is None and not any(o.startswith("data.root=") for o in overrides):
        _, world = _world_size(cfg.trainer)
        count = n or standin_size(layout, needed_images(cfg, layout, min(world, 2), steps))
        options = standin_args(cfg, layout)
        standin = Path(cfg.paths.data_dir) / "standin" / "-".join(
            [layout, f"n{count}", *(f"{k}{v}" for k, v in options.items())])
        if not standin.is_dir():
            write_standin(layout, standin, n=count, **options)
        row.standin = f"{layout}, n={count}" + "".join(f", {k} {v}" for k, v in options.items())
    if standin is not None:
        extra.append(f"data.root={standin}")
    analysis = is_analysis(cfg)
    if analysis and (classifier is None or not Path(classifier).is_file()):
        raise ValueError(f"{experiment} analyses with a trained attribute classifier: give classifier=PATH (e.g. "
                         f"the checkpoint of `genface rehearse experiment=celeba_attr_resnet18_256`), got {classifier}")
    if (generator is not None or settings) and not analysis:
        raise ValueError(f"generator= and analysis settings ({settings}) are for analysis recipes; {experiment} "
                         "is not one (it has no `task: pipeline`)")
    out.mkdir(parents=True, exist_ok=True)
    run_dir, resume_dir = out / "run", out / "resume"
    for stale in (run_dir, resume_dir, out / "analysis"):  # a rehearsal proves what it writes itself
        shutil.rmtree(stale, ignore_errors=True)
    if generator is None:
        train_on = extra + rehearsal_overrides(cfg, steps, gpus)
        generator = _train_and_resume(row, [*overrides, *train_on], run_dir, resume_dir, out)
    else:
        trained_as = TRAINS_AS.get(experiment)
        notes.append(f"generator: the {trained_as} rehearsal's checkpoint (its training is {trained_as}'s, config "
                     "for config)" if trained_as else f"generator: {generator}")
    if analysis:
        _analyse(row, [*overrides, *settings], Path(generator), Path(classifier), out / "analysis", sampling_budget_h, notes)
    row.note = "; ".join(notes)
    row.status = "passed"
    return row


def _train_and_resume(row: Rehearsal, command: list[str], run_dir: Path, resume_dir: Path, out: Path) -> Path:
    """Two short epochs of the recipe, then a resume from last.ckpt for one batch; fills the row's training
    columns and returns the checkpoint."""
    from genface.check import _world_size
    from genface.config import compose_train
    from genface.models import load_module

    base = [sys.executable, "-m", "genface", "train", *command]
    row.world_size = _world_size(compose_train(command).trainer)[1]
    row.train_s, rss = _run([*base, f"hydra.run.dir={run_dir}"], out / "train.log")
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise RuntimeError(f"the rehearsal wrote no {last}")
    load_module(last)
    resume = [f"ckpt_path={last}", "trainer.max_epochs=3", "trainer.limit_train_batches=1", "metrics=none",
              f"hydra.run.dir={resume_dir}"]
    # the resume checks that training continues; FID was proven above (metrics=none drops its overrides)
    # and the callbacks act on its one epoch (the third), so that it writes its own last.ckpt
    again = [a.replace("every_n_epochs=2", "every_n_epochs=1") for a in base if not a.startswith("metrics.")]
    row.resume_s, rss_resume = _run([*again, *resume], out / "resume.log")
    if not (resume_dir / "checkpoints" / "last.ckpt").is_file():
        raise RuntimeError(f"the resume wrote no {resume_dir}/checkpoints/last.ckpt")
    row.peak_rss_mib = max(rss, rss_resume)
    row.wrote = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                       if p.is_file() and not p.name.endswith((".log", ".yaml")) and ".hydra" not in p.parts)
    report = run_dir / "report" / "metrics.json"
    if report.is_file():
        for epoch in json.loads(report.read_text()):  # one dict per epoch; keep each metric's latest value
            row.metrics.update({k: float(v) for k, v in epoch.items()
                                if isinstance(v, (int, float)) and math.isfinite(v) and "/" in k})
    return last


def _analyse(row: Rehearsal, overrides: list[str], generator: Path, classifier: Path,
             out: Path, budget_h: float, notes: list[str]) -> None:
    """`genface analyze task=all` with the recipe's settings on `generator` and `classifier`, cut to the budget."""
    from genface.config import compose_train

    cfg = compose_train(overrides, config_name="analyze")  # the recipe's analysis settings over analyze.yaml's
    row.analysis = analysis_plan(cfg, generator, classifier, budget_h)
    sizes = row.analysis.get("rehearsed_with", {})
    if sizes:
        notes.append("analysed " + ", ".join(f"{k}={v}" for k, v in sizes.items()) + " (the recipe's "
                     f"{cfg.sample.n}/{cfg.edit.n}/{cfg.reject.max_images} would take "
                     f"{row.analysis['projected_h']:.1f} h here at {row.analysis['s_per_image']} s per image)")
    command = [sys.executable, "-m", "genface", "analyze", *overrides, "task=all", f"generator={generator}",
               f"classifier={classifier}", f"hydra.run.dir={out}", *(f"{k}={v}" for k, v in sizes.items())]
    row.analysis_s, rss = _run(command, out.parent / "analysis.log")
    if not (out / "report.md").is_file():
        raise RuntimeError(f"the analysis wrote no {out}/report.md")
    notes.append(f"analysis (genface analyze task=all) {row.analysis_s / 60:.1f} min")
    row.peak_rss_mib = max(row.peak_rss_mib, rss)
    row.wrote += sorted(str(p.relative_to(out.parent)) for p in out.rglob("*")
                        if p.is_file() and p.suffix in (".md", ".png", ".npz", ".json") and ".hydra" not in p.parts
                        and "images" not in p.parts)


def append_row(table: Path, row: Rehearsal) -> None:
    """Keep one row per experiment (the newest) in the JSON table, written atomically."""
    rows = json.loads(table.read_text()) if table.is_file() else []
    rows = [r for r in rows if r["experiment"] != row.experiment] + [asdict(row)]
    table.parent.mkdir(parents=True, exist_ok=True)
    tmp = table.with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(rows, key=lambda r: r["experiment"]), indent=1) + "\n")
    os.replace(tmp, table)


def write_markdown(table: Path, out: Path) -> None:
    """The docs table of a JSON rehearsal table."""
    rows = json.loads(table.read_text())

    def minutes(seconds: float) -> str:  # `-`: not run by this rehearsal (an analysis of another's checkpoint)
        return f"{seconds / 60:.1f} min" if seconds else "-"

    def ranks(r: dict[str, Any]) -> str:  # processes, and the GPU they ran on where the recipe's GPUs were there
        return f"{r['world_size']} x {r['machine']}" if r.get("machine") else str(r["world_size"])

    lines = [
        "| recipe | status | stand-in | ranks | train (2 epochs) | resume | peak RSS | FID / KID at the recipe's N | wrote |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ran = r["status"] != "not run"  # a rehearsal stopped by its measurement rendered, ran and used nothing
        rss = f"{r['peak_rss_mib'] / 1024:.1f} GiB" if ran else "-"
        fid = ", ".join(f"{k} {v:.4g}" for k, v in r["metrics"].items() if k.startswith("val/") and
                        any(m in k for m in ("fid", "kid_mean"))) or "-"
        kinds = sorted({w.split("/")[0] if "/" in w else w for w in r["wrote"]})
        lines.append(
            f"| `{r['experiment']}` | {r['status']}{' (' + r['note'] + ')' if r['note'] else ''} | "
            f"{(r['standin'] or 'embedded') if ran else '-'} | {ranks(r) if ran else '-'} | "
            f"{minutes(r['train_s'])} | {minutes(r['resume_s'])} | "
            f"{rss} | {fid} | {', '.join(kinds) or '-'} |"
        )
    out.write_text("\n".join(lines) + "\n")


def _one(experiment: str, overrides: list[str], own: dict[str, str], out: Path) -> Rehearsal:
    row = Rehearsal(experiment=experiment, date=time.strftime("%Y-%m-%d"))
    try:
        row = rehearse(overrides, out, steps=int(own.get("steps", 2)),
                       standin=Path(own["standin"]) if own.get("standin") else None,
                       n=int(own["n"]) if own.get("n") else None,
                       sampling_budget_h=float(own.get("sampling_budget_h", SAMPLING_BUDGET_H)),
                       batch=int(own["batch"]) if own.get("batch") else None,
                       generator=Path(own["generator"]) if own.get("generator") else None,
                       classifier=Path(own["classifier"]) if own.get("classifier") else None,
                       max_h=float(own.get("max_h", MAX_H)))
    except BeyondMachine as err:  # measured, not started: the row says why
        row = err.row
        print(f"genface rehearse {experiment}: NOT RUN: {err}", file=sys.stderr)
    except Exception as err:
        row.note = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        print(f"genface rehearse {experiment}: FAILED: {err}", file=sys.stderr)
    if own.get("table"):
        table = Path(own["table"])
        append_row(table, row)
        write_markdown(table, table.with_suffix(".md"))
    print(json.dumps(asdict(row), indent=1))
    return row


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a in ("-h", "--help") for a in args):
        print(__doc__)
        raise SystemExit(0 if args else 2)
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in OWN_KEYS}
    overrides = [a for a in args if a.split("=", 1)[0] not in OWN_KEYS]
    root = Path(own.get("out") or Path("logs") / "rehearse").absolute()
    if overrides[:1] == ["all"]:  # every real-data recipe, each in <out>/<experiment>
        rows = []
        for experiment in REAL_DATA:
            needs = [need.format(root=root) for need in NEEDS.get(experiment, [])]
            keys = {k: v for k, v in (n.split("=", 1) for n in needs) if k in OWN_KEYS}
            if experiment in SMALL_MACHINE_BATCH and not visible_gpus():  # on GPUs the recipe's own batch
                keys["batch"] = str(SMALL_MACHINE_BATCH[experiment])
            rows.append(_one(experiment, [f"experiment={experiment}", *overrides[1:],
                                          *(n for n in needs if n.split("=", 1)[0] not in OWN_KEYS)],
                             {**keys, **own}, root / experiment))
        raise SystemExit(0 if all(r.status == "passed" for r in rows) else 1)
    if not any(o.startswith("experiment=") for o in overrides):
        raise SystemExit("genface rehearse needs experiment=NAME (a shipped recipe) or `all`")
    experiment = next(o.split("=", 1)[1] for o in overrides if o.startswith("experiment="))
    row = _one(experiment, overrides, own, root if own.get("out") else root / experiment)
    raise SystemExit(0 if row.status == "passed" else 1)


if __name__ == "__main__":
    main()
