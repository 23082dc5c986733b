"""Dataset ids: names that differ whenever the pixels a DataModule yields may differ.

Prepared arrays and FID statistics are cached under a DataModule's ``dataset_id``, so the id carries
everything that changes pixels or splits: resolution, channels, options, the source path and, for folders,
a hash of their content.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from genface.data.images import DEFAULT_BACKGROUND, check_background, image_entries


def content_key(directory: Path, recursive: bool, *files: Path | None) -> str:
    """Hash of the image files under ``directory`` and of ``files``: names, sizes and modification times.

    Part of the dataset id of folder datasets, so that prepared arrays and FID statistics of an earlier
    content are not found. Cheap enough for CelebA's 200k images: one ``os.scandir`` walk and one ``stat``
    per file, no file is opened. A missing folder or file hashes as missing (ids exist before the data).
    """

    def row(name: str, stat: os.stat_result) -> str:
        return f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}"

    if directory.is_dir():
        rows = sorted(row(relative, entry.stat()) for relative, entry in image_entries(directory, recursive))
    else:
        rows = ["missing folder"]
    for path in files:
        if path is not None:
            rows.append(row(path.name, path.stat()) if path.exists() else f"{path.name}\0missing")
    return hashlib.sha1("\n".join(rows).encode()).hexdigest()


def path_key(*paths: str | Path | None) -> str:
    """Absolute, symlink-resolved form of ``paths``, hashed into dataset ids so two roots never collide."""
    return "|".join(str(Path(p).expanduser().resolve()) for p in paths if p is not None)


def make_dataset_id(
    name: str,
    resolution: int,
    channels: int,
    *options: str,
    key: str | None = None,
    content: str | None = None,
) -> str:
    """``name-<res>px-<rgb|grey>-<options>-<hash of key>-c<content>``: readable, distinct per pixel content.

    ``key`` names the source (:func:`path_key`), ``content`` is its :func:`content_key`: kept apart so that
    arrays prepared from an earlier content of the same folder can be recognised (:func:`earlier_versions`).
    """
    parts = [name, f"{resolution}px", "rgb" if channels == 3 else "grey", *options]
    if key:
        parts.append(hashlib.sha1(key.encode()).hexdigest()[:8])
    if content:
        parts.append(f"c{content[:8]}")
    return "-".join(parts)


_CONTENT_TAGGED = re.compile(r"(.+)-c[0-9a-f]{8}")


def earlier_versions(cache_path: Path) -> list[Path]:
    """Prepared-array directories beside ``cache_path`` that differ from it only in the content hash."""
    match = _CONTENT_TAGGED.fullmatch(cache_path.name)
    if match is None or not cache_path.parent.is_dir():
        return []
    return sorted(
        Path(entry.path)
        for entry in os.scandir(cache_path.parent)
        if entry.name != cache_path.name
        and (other := _CONTENT_TAGGED.fullmatch(entry.name)) is not None
        and other[1] == match[1]
    )


def background_tag(background: Sequence[int]) -> list[str]:
    """Dataset-id option for a non-default ``data.background`` (it changes the pixels of transparent images)."""
    levels = check_background(background)
    return [] if levels == DEFAULT_BACKGROUND else ["bg" + "-".join(map(str, levels))]
