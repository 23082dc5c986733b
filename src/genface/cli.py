"""`genface <command> [hydra overrides]`: one console command over the Hydra apps in conf/."""

from __future__ import annotations

import importlib
import os
import sys

from genface.launch import command_of, hand_over

COMMANDS = {
    "train": ("genface.train", "fit a model: genface train experiment=dcgan_synthfaces"),
    "check": ("genface.check", "preflight of a recipe, no training: genface check experiment=NAME data.root=DIR"),
    "rehearse": ("genface.rehearse", "run a shipped recipe unchanged, cut short, on its stand-in: genface rehearse experiment=NAME"),
    "standin": ("genface.standin", "render synthfaces in a real dataset's layout: genface standin celeba out=DIR n=3000"),
    "sample": ("genface.sample", "write samples of a checkpoint: genface sample ckpt=PATH n=1000"),
    "evaluate": ("genface.evaluate", "FID/KID of folders or a checkpoint: genface evaluate real=DIR fake=DIR"),
    "analyze": ("genface.analyze", "latent directions and edits: genface analyze all generator=G classifier=C"),
    "prepare": ("genface.prepare", "decode a dataset once into the array cache: genface prepare data=celeba"),
    "runs": ("genface.runs", "a table and plot of a run, multirun or study: genface runs DIR"),
    "export": ("genface.export", "a checkpoint as a diffusers DDPMPipeline folder: genface export ckpt=PATH out=DIR"),
    "sweep-wandb": ("genface.sweeps", "a `wandb sweep` YAML from a search: genface sweep-wandb hparams_search=dcgan ..."),
}


def usage() -> str:
    lines = ["usage: genface <command> [overrides...] [-m] [--cfg job] [--help]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Each command is a Hydra app over conf/: see `genface <command> --help`."]
    return "\n".join(lines)


def unwritable_output(args: list[str]) -> str | None:
    """Why runs could not be written where these overrides put them, or None. Hydra creates the run folder
    (and its log file) before any genface code runs and fails there with a bare traceback; this says which
    folder and how to move it, before Hydra starts. Only what argv and the environment decide is checked."""
    given = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith(("+", "~", "-")))
    folder = given.get("hydra.run.dir") or given.get("paths.log_dir") or os.environ.get("GENFACE_LOG_DIR")
    if not folder:
        root = given.get("paths.root_dir") or os.environ.get("GENFACE_ROOT") or os.getcwd()
        folder = os.path.join(root, "logs")
    if "${" in folder:  # an interpolation: Hydra resolves it, and reports what fails
        return None
    path = os.path.abspath(os.path.expanduser(folder))
    existing = next(p for p in (path, *_parents(path)) if os.path.exists(p))
    if os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK):
        return None
    what = "is not a folder" if not os.path.isdir(existing) else "is not writable"
    return (f"genface: runs would be written under {path}, but {existing} {what}; "
            "give a writable folder with paths.log_dir=DIR (or GENFACE_LOG_DIR=DIR)")


def _parents(path: str) -> list[str]:
    out = []
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    found = command_of(argv[1:], COMMANDS)
    if found is None:
        asked = len(argv) > 1 and argv[1] in ("-h", "--help")
        print(usage(), file=sys.stdout if asked else sys.stderr)
        raise SystemExit(0 if asked else 2)
    command, args = found
    problem = unwritable_output(args) if command in ("train", "sample", "evaluate", "analyze") else None
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[command][0])
    hand_over(argv[0], command, args)
    module.main()
