"""Writes a synthfaces dataset folder in torchvision's CelebA layout, safely under concurrent runs.

``generate_synthfaces(root)`` writes ``img_align_celeba/000001.png ...``, ``list_attr_celeba.txt`` and
``list_eval_partition.txt`` plus ``synthfaces.json``; the images are PNG, not JPEG. Every image is a pure
function of ``(seed, index)``, so a dataset is byte-identical whatever the number of worker processes.
``synthfaces.json`` is written last and atomically, and a lock file serialises runs that ask for the same
folder, so an interrupted or concurrent run is never mistaken for a finished one. :func:`render_chunks`,
the rendering across worker processes, also renders the stand-ins (:mod:`genface.data.layouts`).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from genface.data.celeba import ATTR_FILE, CELEBA_ATTRIBUTES, IMAGE_DIR, PARTITION_FILE, write_celeba_lists
from genface.data.splits import check_fractions
from genface.data.synthfaces.attributes import ATTRIBUTES, face_rng, sample_attributes
from genface.data.synthfaces.renderer import VERSION, render_face

META_FILE = "synthfaces.json"
LOCK_FILE = ".synthfaces.lock"

#: Saves one rendered face: ``(index, uint8 (size, size, 3) image, its 40 labels in +1/-1)``.
Saver = Callable[[int, np.ndarray, np.ndarray], None]
#: The 40 CelebA labels (+1/-1) of face ``index`` of ``seed``, given the attributes it was drawn with.
Labeller = Callable[[dict[str, bool], int, int], np.ndarray]


def worker_count(workers: int | None) -> int:
    """``workers`` checked, or up to 2 processes (as many as there are cores) when None."""
    workers = min(2, os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (or null for up to 2), got {workers}")
    return workers


def true_labels(attrs: dict[str, bool], seed: int, index: int) -> np.ndarray:
    """The renderer's truth as 40 CelebA labels: drawn attributes as drawn, the others -1."""
    return np.array([1 if attrs.get(a, False) else -1 for a in CELEBA_ATTRIBUTES], dtype=np.int8)


def _render_chunk(job: tuple[Saver, Labeller, int, int, int, int]) -> tuple[int, np.ndarray]:
    """Worker: render faces ``start..stop-1`` at ``size`` px, hand each to ``save``; return their labels."""
    save, label, seed, size, start, stop = job
    rows = np.empty((stop - start, len(CELEBA_ATTRIBUTES)), dtype=np.int8)
    for index in range(start, stop):
        rng = face_rng(seed, index)
        attrs = sample_attributes(rng)
        rows[index - start] = label(attrs, seed, index)
        save(index, render_face(attrs, rng, size), rows[index - start])
    return start, rows


def render_chunks(
    n: int, seed: int, size: int, save: Saver, label: Labeller, workers: int, chunk: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Render faces ``0..n-1`` in chunks of ``chunk`` across ``workers`` processes (in this one when 1);
    yields ``(first index, labels)`` of each chunk as it finishes. ``save`` and ``label`` must pickle
    (module-level functions, or partials of them)."""
    jobs = [(save, label, seed, size, a, min(a + chunk, n)) for a in range(0, n, chunk)]
    if workers == 1 or len(jobs) == 1:
        yield from map(_render_chunk, jobs)
        return
    # The platform's default start method (fork on Linux): spawn/forkserver would re-import the caller's
    # __main__ (breaking `python -`, unguarded scripts); the workers touch only numpy and PIL.
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap_unordered(_render_chunk, jobs)


def _image_name(index: int) -> str:
    return f"{index + 1:06d}.png"


def _save_png(img_dir: Path, index: int, face: np.ndarray, labels: np.ndarray) -> None:
    Image.fromarray(face).save(img_dir / _image_name(index), format="PNG", compress_level=3)


_OWN_IMAGE = re.compile(r"^\d{6}\.png$")


def _read_meta(root: Path) -> dict | None:
    try:
        meta = json.loads((root / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_complete(root: str | Path, n: int, resolution: int, seed: int, *,
                split_fractions: tuple[float, float, float] | None = None) -> bool:  # fmt: skip
    """True when ``root`` holds a finished synthfaces dataset made with exactly these parameters.

    ``synthfaces.json`` is written last, so its presence with matching parameters (and the last image
    and both label files) means the generation ran to the end.
    """
    root = Path(root)
    meta = _read_meta(root)
    if meta is None:
        return False
    wanted = {
        "n": n,
        "resolution": resolution,
        "seed": seed,
        "version": VERSION,
        "attributes": list(ATTRIBUTES),
    }
    if split_fractions is not None:
        wanted["split_fractions"] = [float(f) for f in split_fractions]
    if any(meta.get(k) != v for k, v in wanted.items()):
        return False
    files = (root / ATTR_FILE, root / PARTITION_FILE, root / IMAGE_DIR / _image_name(n - 1))
    return all(f.is_file() for f in files)


def _clear(root: Path) -> None:
    """Remove what a previous (partial or different) synthfaces run left, and nothing else."""
    img_dir = root / IMAGE_DIR
    if img_dir.is_dir():
        foreign = [p.name for p in img_dir.iterdir() if not _OWN_IMAGE.match(p.name)]
        if foreign:
            raise FileExistsError(
                f"{img_dir} holds files synthfaces did not write (e.g. {foreign[0]!r}); it looks like a real "
                "dataset. Give generate_synthfaces an empty or synthfaces-only folder."
            )
    leftovers = [root / f for f in (META_FILE, META_FILE + ".tmp", ATTR_FILE, PARTITION_FILE)]
    images = sorted(img_dir.iterdir()) if img_dir.is_dir() else []
    if images or any(f.exists() for f in leftovers):
        print(
            f"synthfaces: {root} holds an incomplete or different dataset; regenerating it.", file=sys.stderr
        )
    for f in images + leftovers:
        f.unlink(missing_ok=True)


def _partition(n: int, split_fractions: tuple[float, float, float]) -> np.ndarray:
    """Contiguous train/val/test blocks, like CelebA's official partition."""
    n_train = int(round(n * split_fractions[0]))
    n_val = min(n - n_train, int(round(n * split_fractions[1])))
    return np.repeat([0, 1, 2], [n_train, n_val, n - n_train - n_val])


def generate_synthfaces(
    root: str | Path,
    n: int = 10000,
    resolution: int = 64,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthfaces dataset in CelebA layout under ``root`` and return ``root``.

    A finished dataset with the same parameters is reused as is; a partial or different one is
    replaced (with a message on stderr). ``synthfaces.json`` is written last and atomically, so an
    interrupted run is never mistaken for a finished one.
    """
    root = Path(root)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8 pixels, got {resolution}")
    fractions = check_fractions(split_fractions, key="split_fractions")
    workers = worker_count(workers)
    if is_complete(root, n, resolution, seed, split_fractions=fractions):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / LOCK_FILE):  # two runs (multirun jobs, tests) asking for the same folder at once
        if is_complete(root, n, resolution, seed, split_fractions=fractions):
            return root  # the other run finished it while this one waited
        _render(root, n, resolution, seed, fractions, workers, progress)
    return root


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An advisory lock file held for the block (no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # Windows: no concurrent-render protection
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _render(
    root: Path, n: int, resolution: int, seed: int, fractions: tuple[float, ...], workers: int, progress: bool
) -> None:
    _clear(root)
    img_dir = root / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)

    chunk = max(1, min(250, n // (8 * workers)))
    labels = np.empty((n, len(CELEBA_ATTRIBUTES)), dtype=np.int8)
    results = render_chunks(n, seed, resolution, partial(_save_png, img_dir), true_labels, workers, chunk)
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("synthfaces"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("render", total=n)
            for start, rows in results:
                labels[start : start + len(rows)] = rows
                bar.advance(task, len(rows))
    else:
        for start, rows in results:
            labels[start : start + len(rows)] = rows

    names = [_image_name(i) for i in range(n)]
    write_celeba_lists(root, names, labels, _partition(n, fractions))
    meta = {"n": n, "resolution": resolution, "seed": seed, "split_fractions": list(fractions),
            "attributes": list(ATTRIBUTES), "version": VERSION}  # fmt: skip
    tmp = root / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, root / META_FILE)
