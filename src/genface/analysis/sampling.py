"""Stream samples of any GenerativeModule to disk: PNGs, latents, labels, classifier attributes, a grid.

A samples folder is owned by its manifest, ``samples.json``: it says which run wrote the folder and how many
images are complete, and is rewritten atomically after every batch. So a killed run can be finished exactly
(``resume``), an earlier run's files are replaced only on request (``overwrite``), and nothing else in the
folder is ever touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from genface.analysis.tables import write_json
from genface.models.base import GenerativeModule
from genface.models.classifier import Classifier
from genface.viz.grids import save_grid, save_png, to_uint8

log = logging.getLogger(__name__)

MANIFEST = "samples.json"
#: What `sample_to_disk` writes beside ``images/``; ``overwrite`` removes these (and their ``.partial`` and
#: ``.tmp`` forms) and the ``images/NNNNNN.png`` files, nothing else.
OWN_FILES = (
    MANIFEST, "latents.npy", "labels.npy", "attributes.npy", "attribute_names.json", "features.npy", "grid.png"
)
_OWN_IMAGE = re.compile(r"\d{6,}\.png(\.tmp)?")


def progress_bar(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=disable,
    )


def file_identity(path: str | Path) -> dict[str, Any]:
    """Resolved path, size and modification time of a file: enough to tell that a checkpoint was replaced
    (``last.ckpt`` of a run that trained on) without reading gigabytes."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _image_path(out: Path, index: int) -> Path:
    return out / "images" / f"{index:06d}.png"


def _remove_own_files(out: Path) -> None:
    """Delete what `sample_to_disk` writes (manifest first, so no manifest points at missing images)."""
    for name in OWN_FILES:
        for suffix in ("", ".partial", ".tmp"):
            (out / f"{name}{suffix}").unlink(missing_ok=True)
    if (out / "images").is_dir():
        with os.scandir(out / "images") as entries:
            for entry in entries:
                if _OWN_IMAGE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)


def _usage(out: Path) -> str:
    return (
        f"pass overwrite=true to replace the files genface sample writes in {out} ({MANIFEST}, "
        "images/NNNNNN.png, latents.npy, ...; other files stay), resume=true to finish a killed run with "
        "the same checkpoint, seed, n and batch_size, or another out=DIR"
    )


def _resume_point(out: Path, manifest: dict, identity: dict, batch_size: int) -> int:
    """Index of the first image to (re)generate; refuses a manifest of another run, naming the key."""
    for key, value in identity.items():
        if manifest.get(key) != value:
            raise ValueError(
                f"cannot resume {out}: {key} differs ({manifest.get(key)!r} in {out / MANIFEST}, "
                f"{value!r} now); resume with the same {key}, or {_usage(out)}"
            )
    done = int(manifest["complete"])
    missing = next((i for i in range(done) if not _image_path(out, i).is_file()), None)
    if missing is not None:
        log.warning("%s: image %d, listed as complete, is missing; regenerating its batch", out, missing)
        done = missing // batch_size * batch_size
    return done


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _grid_from_disk(out: Path, count: int) -> torch.Tensor:
    """The first `count` saved images as (count, 3, H, W) in [-1, 1] (a resumed run did not make them all)."""
    pixels = []
    for i in range(count):
        with Image.open(_image_path(out, i)) as img:
            pixels.append(np.asarray(img.convert("RGB")))
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


@torch.no_grad()
def sample_to_disk(
    model: GenerativeModule,
    out_dir: str | Path,
    n: int,
    batch_size: int = 64,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    grid_size: int = 64,
    progress: bool = True,
    classifier: Classifier | None = None,
    save_features: bool = False,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> dict:
    """Generate `n` images in batches, never holding more than one batch in memory.

    Writes `images/000000.png ...` (each atomically: a temp file renamed into place), `latents.npy` (n, D)
    float32 (memory-mapped as `latents.npy.partial` while filling), `labels.npy` for conditional models,
    `grid.png` of the first `grid_size`, and the manifest `samples.json`: n, seed, batch_size, latent_dim,
    the model's `sampling_protocol`, `provenance` (e.g. the checkpoint's :func:`file_identity`), `complete`
    (images done so far, rewritten atomically after each batch), `finished` (set last) and the throughput
    (`seconds`, `images_per_s`, `seconds_per_image` of the whole loop, `generate_seconds_per_image` of the
    model alone).
    Latents are drawn from one seeded generator: the same seed and batch size give the same samples.

    With a `classifier` it also writes `attributes.npy` (n, A) float32 probabilities of each image and
    `attribute_names.json`, and with `save_features` its penultimate features `features.npy` (n, F),
    all streamed like the latents: what `genface analyze` works from.

    An existing non-empty `out_dir` is refused unless `overwrite` (its :data:`OWN_FILES` and numbered images
    are removed first; other files stay) or `resume` (a killed run with the same settings and provenance is
    finished: its latent draws are replayed, not its images regenerated).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other: resume finishes a run, overwrite replaces one")
    if save_features and classifier is None:
        raise ValueError("save_features needs a classifier (its penultimate features are saved)")
    out = Path(out_dir)
    if model.num_classes and labels is None:
        labels = model.default_labels(n)
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for n={n} samples")
    label_array = None if labels is None else labels.cpu().numpy()
    # What must match for `resume` to continue a run; through JSON so that it compares equal to a manifest.
    identity = {
        "n": n, "seed": seed, "batch_size": batch_size, "latent_dim": model.latent_dim,
        "model": type(model).__name__, "sampling": model.sampling_protocol,
        "attributes": None if classifier is None else len(classifier.class_names), "features": save_features,
        "labels": None if label_array is None else hashlib.sha1(label_array.tobytes()).hexdigest(),
        **(provenance or {}),
    }  # fmt: skip
    identity = json.loads(json.dumps(identity))

    start, seconds, generate_seconds = 0, 0.0, 0.0
    if resume:
        if not (out / MANIFEST).is_file():
            raise FileNotFoundError(
                f"resume=true but {out} holds no {MANIFEST} of a genface sample run: drop resume=true, or pass "
                "the out=DIR of the run to finish"
            )
        manifest = json.loads((out / MANIFEST).read_text())
        start = _resume_point(out, manifest, identity, batch_size)
        if manifest.get("finished"):
            log.info("%s already holds all %d samples of this run", out, n)
            return manifest
        seconds, generate_seconds = float(manifest["seconds"]), float(manifest["generate_seconds"])
        log.info("%s: resuming at image %d of %d", out, start, n)
    elif overwrite:
        _remove_own_files(out)
    elif out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and genface sample does not mix runs: {_usage(out)}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def array(name: str, width: int) -> np.memmap:
        path = out / f"{name}.npy.partial"
        if start == 0:
            return open_memmap(path, mode="w+", dtype=np.float32, shape=(n, width))
        if not path.exists():  # a run killed while it renamed its finished arrays into place
            path = out / f"{name}.npy"
        filled = np.load(path, mmap_mode="r+")
        if filled.shape != (n, width):
            raise ValueError(
                f"cannot resume {out}: {path.name} has shape {filled.shape}, not {(n, width)}; {_usage(out)}"
            )
        return filled

    if start == 0:
        if label_array is not None:
            _save_npy(out / "labels.npy", label_array)
        if classifier is not None:
            write_json(out / "attribute_names.json", list(classifier.class_names))
    arrays = {"latents": array("latents", model.latent_dim)}
    if classifier is not None:
        classifier.eval()
        arrays["attributes"] = array("attributes", classifier.num_outputs)
    if save_features:
        probe = torch.zeros(1, *model.image_shape, device=classifier.device)
        arrays["features"] = array("features", classifier.features(probe).shape[1])

    def manifest_with(complete: int, finished: bool = False) -> dict:
        rates = {}
        if complete and seconds:
            rates = {"images_per_s": complete / seconds, "seconds_per_image": seconds / complete,
                     "generate_seconds_per_image": generate_seconds / complete}  # fmt: skip
        return {**identity, "complete": complete, "finished": finished, "images": "images/{:06d}.png",
                "seconds": seconds, "generate_seconds": generate_seconds, **rates}  # fmt: skip

    write_json(out / MANIFEST, manifest_with(start))
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("sampling", total=n, completed=start)
        for first in range(0, n, batch_size):
            k = min(batch_size, n - first)
            z = model.sample_latents(k, generator=gen)
            if first < start:  # replay the draws of a resumed run's finished batches
                continue
            began = time.perf_counter()
            y = labels[first : first + k] if labels is not None else None
            images = model.generate(z, y)
            if images.is_cuda:
                torch.cuda.synchronize(images.device)
            generated = time.perf_counter()
            arrays["latents"][first : first + k] = z.float().cpu().numpy()
            if classifier is not None:
                x = images.to(classifier.device)
                arrays["attributes"][first : first + k] = classifier.predict_proba(x).float().cpu().numpy()
                if save_features:
                    arrays["features"][first : first + k] = classifier.features(x).float().cpu().numpy()
            for i, img in enumerate(to_uint8(images)):
                save_png(img, _image_path(out, first + i))
            for filled in arrays.values():
                filled.flush()
            seconds += time.perf_counter() - began
            generate_seconds += generated - began
            write_json(out / MANIFEST, manifest_with(first + k))
            bar.advance(task, k)
    for name in list(arrays):
        filled = arrays.pop(name)
        filled.flush()
        os.replace(filled.filename, out / f"{name}.npy")
    save_grid(_grid_from_disk(out, min(grid_size, n)), out / "grid.png")
    meta = manifest_with(n, finished=True)
    write_json(out / MANIFEST, meta)
    return meta


def check_complete(folder: str | Path) -> None:
    """Refuse a samples folder (or its ``images/``) whose manifest says its run stopped part-way."""
    folder = Path(folder)
    for root in (folder, folder.parent) if folder.name == "images" else (folder,):
        path = root / MANIFEST
        if path.is_file():
            meta = json.loads(path.read_text())
            if not meta.get("finished", True):  # manifests of older genface were written only when finished
                raise ValueError(
                    f"{root} is incomplete: {meta['complete']} of {meta['n']} samples ({path}); finish it "
                    f"with `genface sample ... out={root} resume=true` (same ckpt, seed, n and batch_size)"
                )


@dataclass
class Samples:
    """A `sample_to_disk` folder opened for analysis; the arrays are memory-mapped, never loaded whole."""

    root: Path
    latents: np.ndarray
    attributes: np.ndarray | None
    attribute_names: list[str]
    features: np.ndarray | None
    labels: np.ndarray | None
    meta: dict

    def need_attributes(self) -> np.ndarray:
        if self.attributes is None:
            raise FileNotFoundError(
                f"{self.root} has no attributes.npy: sample with a classifier "
                "(genface sample ckpt=G classifier=C out=...)"
            )
        return self.attributes


def load_samples(root: str | Path) -> Samples:
    """Open a folder written by `sample_to_disk` (`genface sample`); an incomplete folder is an error."""
    root = Path(root)
    meta_file = root / "samples.json"
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{root} is not a complete samples folder (no samples.json): write one with "
            "`genface sample ckpt=G classifier=C out=DIR` or `genface analyze sample`"
        )
    check_complete(root)
    meta = json.loads(meta_file.read_text())

    def optional(name: str) -> np.ndarray | None:
        path = root / name
        return np.load(path, mmap_mode="r") if path.is_file() else None

    latents = np.load(root / "latents.npy", mmap_mode="r")
    attributes = optional("attributes.npy")
    names_file = root / "attribute_names.json"
    names = json.loads(names_file.read_text()) if names_file.is_file() else []
    if attributes is not None and attributes.shape != (len(latents), len(names)):
        raise ValueError(
            f"{root}: attributes.npy has shape {attributes.shape}, expected ({len(latents)}, {len(names)}) "
            "from latents.npy and attribute_names.json"
        )
    return Samples(root, latents, attributes, names, optional("features.npy"), optional("labels.npy"), meta)
