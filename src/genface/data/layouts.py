"""Stand-ins: synthfaces rendered into the exact on-disk layout of every real dataset genface reads.

Why: the real-data recipes read CelebA, CelebA-HQ, MNIST and CMP Facades through loaders the embedded
sets never touch. A stand-in has the real dataset's file names, formats, image sizes, label files and
split proportions, so those loaders (and whole recipes, unchanged: `genface rehearse`) run on it in
tests and dress rehearsals, with no download. One writer per layout (``LAYOUTS``); docs/standin.md
says what each writes.

Labels: the attributes synthfaces draws are the renderer's ground truth; the seven it does not draw
are filled at random from CelebA's marginal rates (``FILLED_RATES``). Every image is a pure function
of ``(seed, index, size)``, so a stand-in is byte-identical whatever the number of worker processes.
:func:`write_standin` writes into ``<out>.partial-<pid>`` and renames it to ``out`` only when complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from genface.data.celeba import CELEBA_ATTRIBUTES, IMAGE_DIR, write_attribute_file, write_celeba_lists
from genface.data.synthfaces import ATTRIBUTES, face_rng
from genface.data.synthfaces.writer import Saver, render_chunks, worker_count

#: Images of CelebA's official train / val / test partitions (list_eval_partition.txt: 202,599 in all).
CELEBA_SPLITS = (162_770, 19_867, 19_962)
#: Width x height of aligned-and-cropped CelebA (img_align_celeba).
CELEBA_SIZE = (178, 218)
#: Pairs of CMP Facades' train / val / test folders as pix2pix distributes them.
FACADES_SPLITS = (400, 100, 106)
#: Images of MNIST's training and test (t10k) files.
MNIST_FILES = (60_000, 10_000)
#: Positives among CelebA's 202,599 images (list_attr_celeba.txt) of the attributes synthfaces does not
#: draw, i.e. CelebA's marginal rates, which fill those columns of a stand-in's attribute file.
CELEBA_POSITIVES = {
    "Attractive": 103_833,
    "Bags_Under_Eyes": 41_446,
    "Double_Chin": 9_459,
    "High_Cheekbones": 92_189,
    "Oval_Face": 57_567,
    "Pointy_Nose": 56_210,
    "Straight_Hair": 42_222,
}
FILLED_RATES = {name: count / sum(CELEBA_SPLITS) for name, count in CELEBA_POSITIVES.items()}
JPEG_QUALITY = 95


# ------------------------------------------------------------------------------------------ labels
def split_counts(n: int, weights: Sequence[int]) -> list[int]:
    """``n`` items divided in the proportions ``weights`` (cumulative rounding, so they sum to ``n``).

    Every split gets at least one item, so a small stand-in still exercises every split of a recipe.
    """
    if n < len(weights):
        raise ValueError(f"n={n} is too few for {len(weights)} splits: give n >= {len(weights)}")
    edges = np.floor(n * np.cumsum(weights) / sum(weights) + 0.5).astype(int)
    counts = np.diff(edges, prepend=0)
    while (counts == 0).any():
        counts[np.argmax(counts)] -= 1
        counts[np.argmin(counts)] += 1
    return counts.tolist()


def standin_labels(attrs: dict[str, bool], seed: int, index: int) -> np.ndarray:
    """The 40 CelebA labels (+1/-1, CelebA's column order) of face ``index``.

    Drawn attributes are ``attrs`` (the renderer's truth); the others come from CelebA's marginal rates
    on a stream of their own, so they never change the pixels. Straight_Hair is not set on wavy or bald
    heads, whose hair the picture contradicts.
    """
    stream = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))
    values = dict(attrs)
    for (name, rate), u in zip(FILLED_RATES.items(), stream.random(len(FILLED_RATES))):
        values[name] = bool(u < rate)
    values["Straight_Hair"] &= not (attrs["Wavy_Hair"] or attrs["Bald"])
    return np.array([1 if values[name] else -1 for name in CELEBA_ATTRIBUTES], dtype=np.int8)


# --------------------------------------------------------------------------------------- rendering
def render_faces(
    n: int, seed: int, size: int, save: Saver, workers: int | None, progress: bool, desc: str
) -> np.ndarray:
    """Render faces ``0..n-1`` at ``size`` px, hand each to ``save`` (in the workers); labels (n, 40)."""
    workers = worker_count(workers)
    chunk = max(1, min(100, n // (8 * workers)))
    labels = np.empty((n, len(CELEBA_ATTRIBUTES)), dtype=np.int8)
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for start, rows in render_chunks(n, seed, size, save, standin_labels, workers, chunk):
            labels[start : start + len(rows)] = rows
            bar.update(len(rows))
    return labels


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="JPEG", quality=JPEG_QUALITY)


# ------------------------------------------------------------------------------------------ celeba
def _celeba_name(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def _save_celeba(image_dir: Path, index: int, face: np.ndarray, labels: np.ndarray) -> None:
    """A 178 px face padded (mirrored rows) to 178 x 218: the loaders' centred 178 crop is the face itself."""
    pad = (CELEBA_SIZE[1] - CELEBA_SIZE[0]) // 2
    _save_jpeg(image_dir / _celeba_name(index), np.pad(face, ((pad, pad), (0, 0), (0, 0)), mode="reflect"))


def write_celeba(
    out: Path, n: int = 3000, seed: int = 0, *, workers: int | None = None, progress: bool = True
) -> None:
    """torchvision's CelebA layout: img_align_celeba/*.jpg, list_attr_celeba.txt, list_eval_partition.txt."""
    counts = split_counts(n, CELEBA_SPLITS)
    image_dir = out / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    save = partial(_save_celeba, image_dir)
    labels = render_faces(n, seed, CELEBA_SIZE[0], save, workers, progress, "standin celeba")
    names = [_celeba_name(i) for i in range(n)]
    write_celeba_lists(out, names, labels, np.repeat([0, 1, 2], counts))


# ---------------------------------------------------------------------------------------- celebahq
def _save_numbered(folder: Path, index: int, face: np.ndarray, labels: np.ndarray) -> None:
    _save_jpeg(folder / f"{index}.jpg", face)


def write_celebahq(
    out: Path,
    n: int = 5000,
    seed: int = 0,
    *,
    size: int = 256,
    workers: int | None = None,
    progress: bool = True,
) -> None:
    """CelebA-HQ: 0.jpg ... (size x size) and CelebAMask-HQ-attribute-anno.txt."""
    out.mkdir(parents=True, exist_ok=True)
    labels = render_faces(n, seed, size, partial(_save_numbered, out), workers, progress, "standin celebahq")
    names = [f"{i}.jpg" for i in range(n)]
    write_attribute_file(out / "CelebAMask-HQ-attribute-anno.txt", names, CELEBA_ATTRIBUTES, labels)


# ----------------------------------------------------------------------------------------- facades
#: 12 flat label colours (CMP Facades has 12 classes), from the jet colour map as its label images.
_JET = np.clip(1.5 - np.abs(4 * np.linspace(0.0, 1.0, 12)[:, None] - np.array([3.0, 2.0, 1.0])), 0, 1)
FACADE_PALETTE = np.round(255 * _JET).astype(np.uint8)


def label_map(photo: np.ndarray) -> np.ndarray:
    """A facade-style label map of ``photo`` (uint8 (H, W, 3)): flat rectangles of ``FACADE_PALETTE``.

    The photo is averaged over a grid (32 x 32 cells at 128 px and up, cells of at least 4 px below) and
    each cell gets a class: 6 luminance bands, each split into warm (red above blue: skin, hair) and cool;
    a 3 x 3 mode filter merges speckles into regions. Blocky, flat and few-coloured like a facade label
    map, and tied to the photo's layout.
    """
    h, w, _ = photo.shape
    cells = max(1, w // max(4, w // 32))
    grid = np.asarray(Image.fromarray(photo).resize((cells, cells), Image.Resampling.BOX), dtype=np.int32)
    luma = (grid @ np.array([299, 587, 114])) // 1000
    warm = grid[..., 0] > grid[..., 2] + 16
    classes = Image.fromarray((np.minimum(luma * 6 // 256, 5) * 2 + warm).astype(np.uint8))
    classes = np.asarray(classes.filter(ImageFilter.ModeFilter(3)))
    return np.asarray(Image.fromarray(FACADE_PALETTE[classes]).resize((w, h), Image.Resampling.NEAREST))


def _save_facade(out: Path, counts: Sequence[int], index: int, face: np.ndarray, labels: np.ndarray) -> None:
    """Pair ``index`` (global) -> ``<split>/<k>.jpg``: photo (A) left, its label map (B) right."""
    ends = np.cumsum(counts)
    part = int(np.searchsorted(ends, index, side="right"))
    k = index - (int(ends[part - 1]) if part else 0) + 1
    split = ("train", "val", "test")[part]
    _save_jpeg(out / split / f"{k}.jpg", np.concatenate([face, label_map(face)], axis=1))


def write_facades(
    out: Path,
    n: int = sum(FACADES_SPLITS),
    seed: int = 0,
    *,
    size: int = 256,
    workers: int | None = None,
    progress: bool = True,
) -> None:
    """pix2pix's AB layout: {train,val,test}/1.jpg ... (2 size x size; default 400/100/106 pairs)."""
    counts = split_counts(n, FACADES_SPLITS)
    for split in ("train", "val", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
    render_faces(n, seed, size, partial(_save_facade, out, counts), workers, progress, "standin facades")


# ------------------------------------------------------------------------------------------- mnist
def mnist_digit(images: np.ndarray, targets: np.ndarray, seed: int, index: int) -> tuple[np.ndarray, int]:
    """Digit ``index``: a random 8 x 8 ``load_digits`` image (0..16) warped onto 28 x 28 (uint8, 0..255).

    MNIST-like framing: about 20 px tall, centred, ink 255 on 0; a random rotation (+-12 degrees), scale
    (0.85-1.1) and shift (+-1.5 px) per image, so n > 1797 does not repeat pixels.
    """
    rng = face_rng(seed, index)
    k = int(rng.integers(len(targets)))
    angle, scale = np.deg2rad(rng.uniform(-12, 12)), 2.5 * rng.uniform(0.85, 1.1)
    cx, cy = 14 + rng.uniform(-1.5, 1.5, 2)
    c, s = np.cos(angle) / scale, np.sin(angle) / scale
    affine = (c, s, 4 - c * cx - s * cy, -s, c, 4 + s * cx - c * cy)  # output (x, y) -> 8 x 8 input
    glyph = Image.fromarray(np.round(images[k] * 255 / 16).astype(np.uint8))
    warped = glyph.transform((28, 28), Image.Transform.AFFINE, affine, Image.Resampling.BICUBIC, fillcolor=0)
    return np.asarray(warped), int(targets[k])


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file: magic 0x0000080<ndim> (unsigned bytes), big-endian dimensions, then the data."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(out: Path, n: int = 7000, seed: int = 0, *, progress: bool = True) -> None:
    """torchvision's MNIST/raw/ idx files (uncompressed), 60,000 : 10,000 train : t10k."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    indices = tqdm(range(n), desc="standin mnist", unit="img", disable=not progress)
    pairs = [mnist_digit(digits.images, digits.target, seed, i) for i in indices]
    images = np.stack([p[0] for p in pairs])
    labels = np.array([p[1] for p in pairs], dtype=np.uint8)
    n_train = split_counts(n, MNIST_FILES)[0]
    raw = out / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, part in (("train", slice(0, n_train)), ("t10k", slice(n_train, n))):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[part])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[part])


# ------------------------------------------------------------------------------------- imagefolder
def _save_in_class(out: Path, attribute: str, index: int, face: np.ndarray, labels: np.ndarray) -> None:
    positive = labels[CELEBA_ATTRIBUTES.index(attribute)] == 1
    folder = out / (attribute if positive else f"Not_{attribute}")
    Image.fromarray(face).save(folder / f"{index + 1:06d}.png", format="PNG", compress_level=3)


def write_imagefolder(
    out: Path,
    n: int = 1000,
    seed: int = 0,
    *,
    size: int = 64,
    attribute: str = "Smiling",
    workers: int | None = None,
    progress: bool = True,
) -> None:
    """Class folders ``<attribute>/`` and ``Not_<attribute>/`` of PNGs (data=imagefolder labels=subfolders)."""
    if attribute not in ATTRIBUTES:
        raise ValueError(
            f"attribute={attribute!r} is not drawn by synthfaces; allowed: {', '.join(ATTRIBUTES)}"
        )
    for folder in (attribute, f"Not_{attribute}"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    render_faces(
        n, seed, size, partial(_save_in_class, out, attribute), workers, progress, "standin imagefolder"
    )


# ------------------------------------------------------------------------------------- front door
@dataclass(frozen=True)
class Layout:
    """A writer, the options it takes (``size``, ``attribute``), whether it renders faces (and so takes
    ``workers``), and how a recipe reads the result."""

    write: Callable[..., None]
    options: frozenset[str]
    renders: bool
    use: str


LAYOUTS: dict[str, Layout] = {
    "celeba": Layout(write_celeba, frozenset(), True, "data=celeba data.root={out}"),
    "celebahq": Layout(
        write_celebahq,
        frozenset({"size"}),
        True,
        "data=celebahq data.root={out} [data.attr_file=CelebAMask-HQ-attribute-anno.txt]",
    ),
    "facades": Layout(write_facades, frozenset({"size"}), True, "data=facades data.root={out}"),
    "mnist": Layout(write_mnist, frozenset(), False, "data=mnist data.root={out}"),
    "imagefolder": Layout(
        write_imagefolder,
        frozenset({"size", "attribute"}),
        True,
        "data=imagefolder data.root={out} data.labels=subfolders",
    ),
}


def write_standin(
    layout: str,
    out: str | Path,
    n: int | None = None,
    seed: int = 0,
    *,
    size: int | None = None,
    attribute: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the ``layout`` stand-in to ``out`` and return ``out``.

    ``n``, ``size``, ``attribute`` and ``workers`` left at None take the layout's defaults; a ``size`` or
    ``attribute`` the layout does not take is an error (``workers`` is ignored where nothing is rendered).
    A non-empty ``out`` is refused unless ``overwrite``. The files go to ``<out>.partial-<pid>`` first,
    which replaces ``out`` only once complete (and is removed if writing fails), so a folder named
    ``out`` is always a whole stand-in.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not a stand-in layout; allowed: {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    options = {key: value for key, value in (("size", size), ("attribute", attribute)) if value is not None}
    unknown = sorted(set(options) - spec.options)
    if unknown:
        takes = ", ".join(sorted(spec.options)) or "none"
        raise ValueError(
            f"{', '.join(unknown)} does not apply to layout={layout} (its options: {takes}); leave it unset"
        )
    if workers is not None and spec.renders:  # mnist renders no faces: nothing to spread
        options["workers"] = workers
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 (or null for the layout's default), got {n}")
    if size is not None and size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out={out} is a file; give a folder to write the {layout} stand-in into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"out={out} is not empty; give a new or empty folder, or overwrite=true to replace its contents"
        )
    partial_dir = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial_dir, ignore_errors=True)
    partial_dir.mkdir(parents=True)
    try:
        args = {} if n is None else {"n": n}
        spec.write(partial_dir, seed=seed, progress=progress, **args, **options)
        _replace(partial_dir, out)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    return out


def _replace(complete: Path, out: Path) -> None:
    """Move the finished folder to ``out``; an existing ``out`` is removed only after the move."""
    if not out.exists():
        os.replace(complete, out)
        return
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(complete, out)
    shutil.rmtree(old)
