"""Write the recipe tables of docs/experiments.md and docs/reproductions.md from the recipes themselves.

Every recipe (src/genface/conf/experiment/NAME.yaml) documents itself in its header comment. Lines
`#| key: text` are the fields the tables show; a `#|` line without a key continues the field above:

  what      (required) what the recipe trains, in a line
  study     the study it reproduces, one of STUDIES
  reported  what the study reported: numbers with their protocol
  differs   every way the recipe differs from its study, and why (required with `study`; tests/test_docs.py)
  measured  what genface measured with the recipe (date, machine)
  verified  what the tests here check about it (parameter counts are asserted in tests/)
  needs     what a real run needs that a CPU checkout lacks (data, GPUs)

The settings and protocol columns are read from the composed config (data, batch, epochs, optimiser,
sampler, FID), so they cannot drift from the recipe. Each table sits between `<!-- recipes:KIND -->` and
`<!-- /recipes:KIND -->`; the prose around it is written by hand.

    python docs/gen_experiments.py           # rewrite both tables
    python docs/gen_experiments.py --check   # list the rows that differ, exit 1 (tests/test_docs.py)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from genface.config import CONF_DIR

DOCS = Path(__file__).resolve().parent
FIELDS = ("what", "study", "reported", "differs", "measured", "verified", "needs")
#: The studies the project reproduces, by the names the project gives them, in the reproductions table's order.
STUDIES = (
    "the DD-GAN latent-analysis study",
    "DLStudio's DG1 study",
    "the VAE-GAN latent-diffusion study",
    "the DCGAN/diffusion coursework report",
    "the cGAN / Pix2Pix / DDPM lab",
    "the DD-GAN paper (Xiao, Kreis & Vahdat, ICLR 2022)",
)
_FIELD_LINE = re.compile(r"#\|\s?(?:(\w+):\s*)?(.*)$")
_NUMBER = re.compile(r"\d(?:[\d,.]*\d)?")


@dataclass(frozen=True)
class Recipe:
    """One experiment: its documentation fields and what its composed config says."""

    name: str
    fields: dict[str, str]
    settings: str
    protocol: str

    def get(self, key: str) -> str:
        return self.fields.get(key, "–")


def read_fields(path: Path) -> dict[str, str]:
    """The `#|` fields of a recipe's header comment (the lines before the first YAML line)."""
    fields: dict[str, str] = {}
    key = None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = _FIELD_LINE.match(line)
        if match is None:
            continue
        name, text = match.groups()
        if name is not None:
            if name not in FIELDS:
                raise ValueError(f"{path}: unknown field `#| {name}:`; allowed: {', '.join(FIELDS)}")
            key = name
            fields[key] = text.strip()
        elif key is None:
            raise ValueError(f"{path}: a `#|` continuation line before any `#| key:` line")
        else:
            fields[key] = f"{fields[key]} {text.strip()}".strip()
    if "what" not in fields:
        raise ValueError(f"{path}: the header has no `#| what:` line (what the recipe trains)")
    if fields.get("study", STUDIES[0]) not in STUDIES:
        raise ValueError(f"{path}: `#| study: {fields['study']}` is not one of: {'; '.join(STUDIES)}")
    for key in ("reported", "differs"):
        if key in fields and "study" not in fields:
            raise ValueError(f"{path}: `#| {key}:` needs a `#| study:` line naming the study it refers to")
    return fields


def compose_recipe(name: str) -> DictConfig:
    """`genface train experiment=NAME`'s config, with Hydra's runtime choices (which data, model, metrics)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}"], return_hydra_config=True)


def _num(x: float) -> str:
    """1e-4, 2.5e-4, 0.75, 500: how papers write learning rates and betas."""
    if x and abs(x) < 0.01:
        mantissa, exponent = f"{x:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"


def _optimiser(node: DictConfig) -> str:
    name = str(node._target_).rsplit(".", 1)[-1]
    betas = node.get("betas")
    return f"{name} {_num(node.lr)}" + (f", β ({', '.join(_num(b) for b in betas)})" if betas else "")


def _optimisers(model: DictConfig) -> str:
    """`optimizer`, or one per network (`optimizer_g`, `optimizer_d`, `optimizer_ae`: "G ...; D ...")."""
    found = {
        key.removeprefix("optimizer").lstrip("_").upper(): _optimiser(node)
        for key, node in model.items()
        if str(key).startswith("optimizer") and isinstance(node, DictConfig)
    }
    if len(set(found.values())) == 1:
        return next(iter(found.values()))
    return "; ".join(f"{net} {text}" for net, text in found.items())


def settings(cfg: DictConfig) -> str:
    """Data, model option, batch, length and optimiser of a composed recipe."""
    choices = cfg.hydra.runtime.choices
    trainer = cfg.trainer
    length = f"{trainer.max_epochs} epochs"
    if (
        trainer.get("accelerator") == "gpu"
        and isinstance(trainer.get("devices"), int)
        and trainer.devices > 1
    ):
        length += f" on {trainer.devices} GPUs"
    return (
        f"`data={choices.data}` {cfg.data.resolution} px, `model={choices.model}`, batch {cfg.data.batch_size}, "
        f"{length}, {_optimisers(cfg.model)}"
    )


def _sampling(model: DictConfig) -> str | None:
    """How a diffusion-family recipe samples (FID, grids, `genface sample`), or None for one-pass models."""
    if "sampler" in model:
        T = model.schedule.T
        if model.sampler == "ancestral":
            return f"ancestral sampling over all T={T} steps"
        return f"DDIM, {model.sample_steps} of T={T} steps, η {_num(model.eta)}"
    if "num_timesteps" in model:
        return f"T={model.num_timesteps} denoising steps"
    return None


def _evaluation(cfg: DictConfig) -> str:
    fid = OmegaConf.select(cfg, "metrics.fid")
    callbacks = cfg.get("callbacks") or {}
    if cfg.get("task") == "pipeline":
        return f"analysis pipeline: {cfg.sample.n:,} samples with attributes, directions, edits, rejection sampling"
    if fid is not None and str(fid._target_).endswith("TranslationFID"):
        return f"val L1 (best checkpoint) and FID/KID of translations ({fid.extractor}) every {fid.every_n_epochs} epochs"
    if fid is not None:
        kind = "rFID/rKID of reconstructions" if fid.get("source") == "reconstructions" else "FID/KID"
        real = "the whole dataset" if fid.real_split == "all" else f"the {fid.real_split} split"
        return (
            f"{kind} ({fid.extractor}, {fid.n_fake:,} samples vs {fid.n_real:,} images of {real}) "
            f"every {fid.every_n_epochs} epochs"
        )
    if "classifier_report" in callbacks and cfg.get("test"):
        return "per-attribute accuracy, balanced accuracy, F1 and AUROC on the test split"
    return "sample grids only"


def protocol(cfg: DictConfig) -> str:
    """How a recipe's numbers are measured: sampler (diffusion families) and evaluation."""
    parts = [_sampling(cfg.model), _evaluation(cfg)]
    if "conditional_accuracy" in (cfg.get("callbacks") or {}):
        parts.append("conditional accuracy by an independent classifier")
    return "; ".join(p for p in parts if p)


def load_recipes() -> list[Recipe]:
    recipes = []
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        cfg = compose_recipe(path.stem)
        recipes.append(Recipe(path.stem, read_fields(path), settings(cfg), protocol(cfg)))
    return recipes


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def experiments_table(recipes: list[Recipe]) -> str:
    return _table(
        ["experiment", "study", "what", "settings", "reported", "measured here"],
        [
            [f"`{r.name}`", r.get("study"), r.get("what"), r.settings, r.get("reported"), r.get("measured")]
            for r in recipes
        ],
    )


def reproductions_table(recipes: list[Recipe]) -> str:
    rows = [
        [
            r.fields["study"],
            r.get("reported"),
            f"`{r.name}`",
            r.get("differs"),
            r.protocol,
            r.get("verified"),
            r.get("needs"),
        ]
        for r in sorted(
            (r for r in recipes if "study" in r.fields),
            key=lambda r: (STUDIES.index(r.fields["study"]), r.name),
        )
    ]
    differs = "differs from the study (and why)"
    return _table(["study", "reported", "recipe", differs, "protocol here", "verified here", "needs"], rows)


#: file -> (marker, table builder)
TABLES: dict[str, tuple[str, Callable[[list[Recipe]], str]]] = {
    "experiments.md": ("experiments", experiments_table),
    "reproductions.md": ("reproductions", reproductions_table),
}


def _span(text: str, marker: str, path: Path) -> tuple[int, int]:
    start, end = f"<!-- recipes:{marker} -->\n", f"<!-- /recipes:{marker} -->"
    if start not in text or end not in text:
        raise ValueError(f"{path} lacks the markers {start.strip()} ... {end} around its table")
    return text.index(start) + len(start), text.index(end)


def _rows(table: str) -> dict[str, str]:
    """Table rows by their recipe name (the cell that is one backticked word)."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        names = [c.strip("`") for c in cells if re.fullmatch(r"`\w+`", c)]
        if names:
            rows[names[0]] = line
    return rows


def _row_problems(doc: str, fresh: str, where: str) -> list[str]:
    problems = []
    old, new = _rows(doc), _rows(fresh)
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            problems.append(f"{where}: no row for recipe `{name}`")
        elif name not in new:
            problems.append(f"{where}: row `{name}` names no recipe")
        elif old[name] != new[name]:
            said, says = _NUMBER.findall(old[name]), _NUMBER.findall(new[name])
            detail = f"numbers {said} where the recipe gives {says}" if said != says else "its text"
            problems.append(f"{where}: row `{name}` differs from the recipe in {detail}")
    return problems or [f"{where}: the table's header or order differs from the recipes"]


def check(recipes: list[Recipe]) -> list[str]:
    """What in the docs' tables disagrees with the recipes (empty when they agree)."""
    problems = []
    for file, (marker, build) in TABLES.items():
        path = DOCS / file
        text = path.read_text()
        start, end = _span(text, marker, path)
        fresh = build(recipes) + "\n"
        if text[start:end] != fresh:
            problems += _row_problems(text[start:end], fresh, f"docs/{file}")
    return problems


def write(recipes: list[Recipe]) -> list[Path]:
    written = []
    for file, (marker, build) in TABLES.items():
        path = DOCS / file
        text = path.read_text()
        start, end = _span(text, marker, path)
        path.write_text(text[:start] + build(recipes) + "\n" + text[end:])
        written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="report rows that differ from the recipes, exit 1"
    )
    args = parser.parse_args()
    recipes = load_recipes()
    if args.check:
        problems = check(recipes)
        print("\n".join(problems) or "docs agree with the recipes")
        return 1 if problems else 0
    for path in write(recipes):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
