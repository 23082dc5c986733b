"""An installed genface needs no checkout: a wheel of the repo, installed into a fresh venv, trains a shipped
recipe and a user's own recipe from another folder (`--config-dir`), from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from genface.config import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
#: What a user's own recipe in their own folder looks like: a shipped recipe with a few settings changed.
USER_EXPERIMENT = """\
# @package _global_
defaults:
  - dcgan_synthfaces
  - _self_

task_name: mine
seed: 7
model:
  generator:
    width: 16
"""


def build_wheel(out: Path) -> Path:
    """The wheel of the working tree, built from a copy so that nothing (build/, *.egg-info) lands in it."""
    tree = out / "tree"
    (tree / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(
        REPO / "src" / "genface", tree / "src" / "genface", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         "-w", str(out / "dist"), str(tree)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = (out / "dist").glob("genface-*.whl")
    return wheel


def install_in_fresh_venv(wheel: Path, venv: Path) -> Path:
    """A venv holding only the wheel's genface; its python, which finds genface's dependencies in this venv.

    Nothing can be downloaded here, so the dependencies come from the running venv's site-packages, added
    as a plain path by a .pth line: site-packages folders added that way are not scanned for .pth files,
    so the running venv's editable genface (a .pth pointing at src/) stays invisible. The wheel is
    unpacked into the new site-packages, which precedes that path on sys.path.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    (site / "genface_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return python


@pytest.mark.slow
def test_wheel_installs_and_trains_shipped_and_user_recipes_outside_the_repo(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()

    # The config tree travels in the wheel, every file of it; nothing but the package and its metadata does.
    shipped = {f"genface/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert {"genface/conf/train.yaml", "genface/conf/experiment/dcgan_synthfaces.yaml"} <= shipped
    assert shipped <= set(names), sorted(shipped - set(names))
    modules = {f"genface/{p.relative_to(REPO / 'src' / 'genface').as_posix()}"
               for p in (REPO / "src" / "genface").rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))
    assert all(n.startswith(("genface/", "genface-")) for n in names), names
    leaked = [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/")) or "/test_" in n
              or n.endswith(("conftest.py", ".md"))]
    assert not leaked, leaked

    python = install_in_fresh_venv(wheel, tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"  # a user's working folder, far from any checkout
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENFACE_", "PYTHONPATH", "HYDRA_"))}
    env["GENFACE_ROOT"] = str(elsewhere)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=600)

    where = run("-c", "import genface, genface.config as c; print(genface.__file__); print(c.CONF_DIR)")
    assert where.returncode == 0, where.stderr
    module_file, conf_dir = (Path(line) for line in where.stdout.split())
    venv = tmp_path / "venv"
    assert module_file.is_relative_to(venv) and conf_dir.is_relative_to(venv), where.stdout
    assert not module_file.is_relative_to(REPO)

    shipped_run = elsewhere / "shipped"
    res = run("-m", "genface", "train", "experiment=dcgan_synthfaces", "debug=smoke",
              f"hydra.run.dir={shipped_run}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (shipped_run / "checkpoints" / "last.ckpt").is_file()
    assert (elsewhere / "data").is_dir()  # data/ goes where genface runs (GENFACE_ROOT), not into the package

    user_conf = tmp_path / "myconf"
    (user_conf / "experiment").mkdir(parents=True)
    (user_conf / "experiment" / "mine.yaml").write_text(USER_EXPERIMENT)
    user_run = elsewhere / "mine"
    res = run("-m", "genface", "train", "--config-dir", str(user_conf), "experiment=mine", "debug=smoke",
              f"hydra.run.dir={user_run}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (user_run / "checkpoints" / "last.ckpt").is_file()
    composed = yaml.safe_load((user_run / ".hydra" / "config.yaml").read_text())
    # the user's experiment (seed 7), narrowed by debug=smoke's DCGAN overlay (width 8 over its 16)
    assert composed["model"]["generator"]["width"] == 8 and composed["seed"] == 7
    hydra_node = yaml.safe_load((user_run / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_node["runtime"]["choices"]["experiment"] == "mine"
    sources = {f"{s['schema']}://{s['path']}" for s in hydra_node["runtime"]["config_sources"]}
    assert {"pkg://genface.conf", f"file://{user_conf}"} <= sources, sources
