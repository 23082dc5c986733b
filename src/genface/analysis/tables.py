"""Tables and the report folder of an analysis: Markdown + CSV + JSON that people and scripts can read."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Cell = str | int | float | None


def _fmt(value: Cell, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Cell]], digits: int = 3) -> str:
    """A Markdown table; floats with `digits` decimals, None/NaN as a dash."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_text(path: str | Path, text: str) -> Path:
    """Write atomically, so that a killed run never leaves half a table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=1, allow_nan=True) + "\n")


def write_report_index(out_dir: str | Path, sections: Sequence[tuple[str, str]], title: str) -> Path:
    """`<out_dir>/report.md`: one section per analysis task (its Markdown, links relative to `out_dir`)."""
    body = [f"# {title}", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.rstrip(), ""]
    return write_text(Path(out_dir) / "report.md", "\n".join(body))
