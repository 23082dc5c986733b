"""Pictures of the latent-space analysis: metric bars, heatmaps, 2-D projections, edit strips.

Plots go through matplotlib (Agg) and are written atomically like the other viz helpers; image strips
are (H, W, 3) uint8 arrays for `genface.viz.grids.save_png`. Small images (16-32 px) are enlarged with
nearest-neighbour so that strips stay readable next to their text labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from genface.viz.grids import grid_image, stack_rows, to_uint8
from genface.viz.plots import _save, plt

_PAD = 2  # grid_image's padding
#: Height of one caption line of `captioned_grid` (PIL's default font), in pixels.
LINE_HEIGHT = 12
#: A caption line: its text and RGB colour.
Caption = tuple[str, tuple[int, int, int]]


def metric_bars(
    names: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str,
    reference: float | None = None,
    xlabel: str = "",
) -> Path:
    """Horizontal grouped bars, one group per name and one bar per series; optional dashed reference line."""
    k, m = len(names), len(series)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * k * max(1, m) ** 0.5))
    height = 0.8 / max(1, m)
    y = np.arange(k)
    for j, (label, values) in enumerate(series.items()):
        ax.barh(y + (j - (m - 1) / 2) * height, np.asarray(values, dtype=float), height=height, label=label)
    if reference is not None:
        ax.axvline(reference, color="black", linestyle="--", linewidth=1, label=f"{reference:g}")
    ax.set_yticks(y, list(names), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, Path(path))


def heatmap(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    path: str | Path,
    title: str,
    vmax: float | None = None,
    annotate: bool | None = None,
    colour_label: str = "",
) -> Path:
    """A diverging (blue-white-red, centred on 0) heatmap; values are printed when it is small enough."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(rows), len(cols)):
        raise ValueError(f"heatmap of shape {matrix.shape} for {len(rows)} rows x {len(cols)} columns")
    vmax = vmax or float(np.nanmax(np.abs(matrix))) or 1.0
    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 + 0.3 * len(cols)), max(2.5, 1.2 + 0.3 * len(rows))))
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(len(cols)), list(cols), rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    if annotate if annotate is not None else matrix.size <= 400:
        for (i, j), v in np.ndenumerate(matrix):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7 if matrix.size <= 100 else 5)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=colour_label)
    ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))


def scatter_2d(
    points: np.ndarray, values: np.ndarray, path: str | Path, title: str, colour_label: str
) -> Path:
    """2-D embedding coloured by a per-point value in [0, 1] (an attribute probability)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=values, cmap="coolwarm", vmin=0, vmax=1, s=6, alpha=0.8)
    fig.colorbar(sc, ax=ax, label=colour_label)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, Path(path))


def enlarge(images: torch.Tensor, min_size: int) -> torch.Tensor:
    """Nearest-neighbour upscaling by an integer factor until the side is at least `min_size`."""
    factor = max(1, -(-min_size // images.shape[-1]))
    return F.interpolate(images.float(), scale_factor=factor, mode="nearest") if factor > 1 else images


def column_header(texts: Sequence[str], cell: int, width: int) -> np.ndarray:
    """A white strip with one label centred over each column of a `grid_image` of cells of side `cell`."""
    canvas = Image.new("RGB", (width, 14), "white")
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(texts):
        x = _PAD + j * (cell + _PAD) + cell // 2 - 3 * len(text)
        draw.text((max(0, x), 1), text, fill="black")
    return np.asarray(canvas)


def image_table(
    images: torch.Tensor,
    col_labels: Sequence[str],
    row_labels: Sequence[str] | None = None,
    min_size: int = 64,
) -> np.ndarray:
    """(rows, cols, C, H, W) in [-1, 1] -> one picture with a header over the columns and a label per row."""
    if images.ndim != 5 or images.shape[1] != len(col_labels):
        raise ValueError(f"expected images (rows, {len(col_labels)}, C, H, W), got {tuple(images.shape)}")
    rows = [grid_image(enlarge(row, min_size), nrow=row.shape[0], padding=_PAD) for row in images]
    cell = enlarge(images[0, :1], min_size).shape[-1]
    header = column_header(col_labels, cell, rows[0].shape[1])
    labels = ["", *row_labels] if row_labels is not None else None
    return stack_rows([header, *rows], labels=labels, gap=2)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """`text`, cut and ended with "..." where it is wider than `width` pixels."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def captioned_grid(
    images: torch.Tensor,
    captions: Sequence[Sequence[Caption]],
    columns: int = 4,
    min_size: int = 64,
    min_width: int = 140,
) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] in rows of `columns`, each over its coloured caption lines.

    Cells are max(side, `min_width`) pixels wide (small images are enlarged to `min_size` first) and as
    tall as the image plus the longest caption; lines too wide for a cell are cut with "...".
    """
    if len(captions) != len(images) or columns < 1:
        raise ValueError(f"captioned_grid: {len(images)} images, {len(captions)} captions, columns={columns}")
    faces = to_uint8(enlarge(images, min_size))
    side = faces.shape[1]
    width, height = max(side, min_width), side + LINE_HEIGHT * max((len(c) for c in captions), default=0)
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (_PAD + columns * (width + _PAD), _PAD + rows * (height + _PAD)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (face, lines) in enumerate(zip(faces, captions)):
        x, y = _PAD + (i % columns) * (width + _PAD), _PAD + (i // columns) * (height + _PAD)
        canvas.paste(Image.fromarray(face), (x + (width - side) // 2, y))
        for k, (text, colour) in enumerate(lines):
            draw.text((x + 1, y + side + k * LINE_HEIGHT), _fit(draw, text, width - 2), fill=colour)
    return np.asarray(canvas)
