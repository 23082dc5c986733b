"""Recipes are swappable parts: `experiment=NAME data=<any option>` composes, as a new user tries first
("the demo recipe on my own faces": `experiment=dcgan_synthfaces data=imagefolder data.root=DIR`).

A recipe sets under `data:` only keys that every DataModule of its kind accepts; the settings of one dataset
live in top-level nodes that the data options read by interpolation (`synthfaces.n`, `celebahq.subset`, and
`faces.attributes` for the attribute-labelled face sets), so another data option simply ignores them.
"""

from __future__ import annotations

import inspect
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from data_helpers import write_image_folder
from genface.config import CONF_DIR
from genface.data import CelebADataModule, ImageDataModule, ImageFolderDataModule
from genface.data.layouts import write_standin
from genface.data.paired import DerivedPairsDataModule, PairedDataModule, PairedFolderDataModule
from genface.train import train
from helpers import FAMILY_EXPERIMENTS

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
#: The recipes that run on CPU on embedded faces: what a new user starts from before pointing it at their own.
CPU_RECIPES = sorted(
    {*FAMILY_EXPERIMENTS.values(), "latent_analysis_synthfaces"} - {"pix2pix_edges2synthfaces"}
)
#: A user's own faces: an image folder (200 images: its 5 % validation split holds the 8 that smoke's FID
#: compares) and a CelebA-layout folder.
SWAPS = {
    "imagefolder": ("data=imagefolder", "data.root={root}/images", ImageFolderDataModule),
    "celeba": ("data=celeba", "data.root={root}/celeba", CelebADataModule),
}
#: Pix2Pix needs pairs: its demo swaps to pairs derived from CelebA, or to an AB folder.
PAIRED_SWAPS = {
    "paired_celeba": ("data=paired_celeba", "data.base.root={root}/celeba", DerivedPairsDataModule),
    "facades": ("data=facades", "data.root={root}/facades", PairedFolderDataModule),
}


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own_data")
    write_image_folder(root / "images", [f"{i}.png" for i in range(200)], size=(20, 20))
    write_standin("celeba", root / "celeba", n=30, workers=1, progress=False)
    write_standin("facades", root / "facades", n=12, size=32, workers=1, progress=False)
    return root


# ------------------------------------------------------------------------------------------ the rule


@cache
def recipe(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text())


def data_option(experiment: str) -> str:
    """The data option a recipe chooses, itself or through the recipe it extends (train.yaml's by default)."""
    for entry in recipe(experiment).get("defaults", []):
        if isinstance(entry, dict) and "override /data" in entry:
            return entry["override /data"]
        if isinstance(entry, str) and entry != "_self_":
            return data_option(entry)
    return "synthfaces"


def data_class(option: str) -> type:
    node = yaml.safe_load((CONF_DIR / "data" / f"{option}.yaml").read_text())
    if "_target_" not in node:  # an option that extends another (paired_gray: paired)
        return data_class(next(e for e in node["defaults"] if e != "_self_"))
    return get_class(node["_target_"])


def accepted(cls: type) -> set[str]:
    """The arguments a DataModule takes from `data:` (an image DataModule: its own and ImageDataModule's, as
    ImageDataModule decides which hyper-parameters to save: SynthFaces fixes CelebA's crop)."""
    names = set(inspect.signature(cls.__init__).parameters)
    if issubclass(cls, ImageDataModule):
        names |= set(inspect.signature(ImageDataModule.__init__).parameters)
    return names - {"self", "kwargs"}


def common_keys(paired: bool) -> set[str]:
    """The `data:` keys that every data option of a kind (image or paired) accepts."""
    classes = {data_class(p.stem) for p in (CONF_DIR / "data").glob("*.yaml")}
    return set.intersection(*(accepted(c) for c in classes if issubclass(c, PairedDataModule) == paired))


def test_common_keys_are_the_ones_recipes_need():
    image, paired = common_keys(paired=False), common_keys(paired=True)
    assert {"resolution", "channels", "batch_size", "num_workers", "hflip", "seed"} <= image
    assert not {"n", "attributes", "subset", "root", "split_fractions"} & image
    assert {"resolution", "channels", "source_channels", "batch_size", "num_workers"} <= paired


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_recipes_set_under_data_only_keys_every_data_option_of_their_kind_accepts(experiment):
    paired = issubclass(data_class(data_option(experiment)), PairedDataModule)
    extra = set(recipe(experiment).get("data") or {}) - common_keys(paired)
    assert not extra, (
        f"{experiment} sets data.{', data.'.join(sorted(extra))}, which some data options refuse: "
        "put each in a top-level node that the data options read (see conf/data/synthfaces.yaml)"
    )


# ------------------------------------------------------------------------------ recipes keep their data

#: Each recipe's own data, as they were when the dataset-specific keys sat under `data:` (cached renders of
#: synthfaces are found by the root, which names n, resolution and seed). Command-line overrides still win.
OWN_DATA = {
    ("data=synthfaces",): {"n": 10000, "attributes": None, "root": "synthfaces_n10000_r64_s0"},
    ("experiment=dcgan_synthfaces",): {"n": 10000, "resolution": 32, "batch_size": 64, "attributes": None,
                                       "root": "synthfaces_n10000_r32_s0"},
    ("experiment=dcgan_synthfaces", "data.n=500"): {"n": 500, "root": "synthfaces_n500_r32_s0"},
    ("experiment=dcgan_synthfaces", "synthfaces.n=500"): {"n": 500, "root": "synthfaces_n500_r32_s0"},
    ("experiment=synthfaces_attr",): {"n": 36000, "resolution": 64, "hflip": True, "attributes": None},
    ("experiment=cgan_synthfaces",): {"n": 10000, "attributes": ["Smiling", "Male", "Eyeglasses"]},
    ("experiment=cgan_synthfaces", "model.condition=[Smiling,Wearing_Hat]"): {
        "attributes": ["Smiling", "Wearing_Hat"]
    },
    ("experiment=vaegan_synthfaces",): {"n": 10000, "attributes": ["Smiling"]},
    ("experiment=latent_diffusion_synthfaces",): {"n": 10000, "attributes": ["Smiling"]},
    ("experiment=latent_diffusion_smiling_celeba64",): {
        "attributes": ["Smiling"], "hflip": False, "crop": 178
    },
    ("experiment=vaegan_celeba64",): {"attributes": ["Smiling"]},
    ("experiment=celeba_attr_resnet18_256",): {"attributes": None},
    ("experiment=ddgan_celebahq128",): {"subset": 5000, "attributes": None},
    ("experiment=ddgan_latent_analysis_celebahq128",): {"subset": 5000},
    ("experiment=ddgan_celebahq256",): {"subset": None},
    ("experiment=pix2pix_edges2synthfaces",): {"base.n": 10000, "base.attributes": None, "resolution": 64,
                                               "base.root": "synthfaces_n10000_r64_s0"},
}


@pytest.mark.parametrize("overrides", list(OWN_DATA), ids=" ".join)
def test_recipes_keep_their_own_data(compose_train, overrides):
    data = OmegaConf.to_container(compose_train(*overrides).data, resolve=True)
    for key, want in OWN_DATA[overrides].items():
        got = data
        for part in key.split("."):
            got = got[part]
        if key.endswith("root"):
            assert Path(got).name == want, (key, got)
        else:
            assert got == want, (key, got)


# -------------------------------------------------------------------------------------------- swaps


def swapped(compose_train, experiment: str, swap: tuple[str, str, type], root: Path):
    option, root_override, cls = swap
    cfg = compose_train(f"experiment={experiment}", option, root_override.format(root=root))
    datamodule = instantiate(cfg.data)
    assert type(datamodule) is cls
    for key, value in (recipe(experiment).get("data") or {}).items():  # the recipe's common keys carry over
        assert cfg.data[key] == value, key
    return cfg, datamodule


@pytest.mark.parametrize("swap", list(SWAPS))
@pytest.mark.parametrize("experiment", CPU_RECIPES)
def test_cpu_recipes_compose_with_a_users_own_faces(compose_train, own_data, experiment, swap):
    cfg, datamodule = swapped(compose_train, experiment, SWAPS[swap], own_data)
    assert instantiate(cfg.model) is not None
    assert not {"synthfaces", "celebahq"} & set(cfg.data)  # the other datasets' nodes stay out of `data`
    if swap == "celeba" and "faces" in recipe(experiment):  # a conditioning recipe keeps its attributes
        assert datamodule.class_names == OmegaConf.to_container(cfg.faces.attributes, resolve=True)


@pytest.mark.parametrize("swap", list(PAIRED_SWAPS))
def test_pix2pix_demo_composes_with_other_pairs(compose_train, own_data, swap):
    cfg, datamodule = swapped(compose_train, "pix2pix_edges2synthfaces", PAIRED_SWAPS[swap], own_data)
    model = instantiate(cfg.model)
    assert model.hparams.generator["in_channels"] == datamodule.source_channels


def test_demo_recipe_trains_on_a_users_image_folder(compose_train, own_data):
    """The first thing a new user tries; debug=smoke keeps a folder that exists (it stands in only for absent
    data)."""
    cfg = compose_train(
        "experiment=dcgan_synthfaces", "data=imagefolder", f"data.root={own_data}/images", "debug=smoke",
        "logger=none", "~callbacks.progress",
    )
    _, trainer = train(cfg)
    datamodule = trainer.datamodule
    assert isinstance(datamodule, ImageFolderDataModule)
    assert datamodule.root == own_data / "images" and trainer.global_step > 0
    assert (Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt").is_file()
