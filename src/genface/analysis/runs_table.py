"""One table of every run under a directory: a run, a multirun (one numbered job per run) or an Optuna study.

Reads only what `genface train` already writes in each run directory: `.hydra/overrides.yaml` and
`.hydra/config.yaml` (what was asked, the objective key), `.hydra/hydra.yaml` (a search's direction),
`report/metrics.json` (per-epoch metrics, written at the end of fit) or else `csv/metrics.csv`,
`diverged.json` (the divergence guard) and `<task_name>.log` (timestamps, errors); and, for a study,
`optimization_results.yaml` of the Optuna sweeper. No checkpoint is loaded and nothing runs, so it works offline
and on runs of any genface version that wrote these files.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from genface.analysis.tables import markdown_table, write_csv, write_text

#: Metric keys read as "the" FID and KID of a run, first found wins (generated samples, then reconstructions).
FID_KEYS = ("val/fid", "val/rfid")
KID_KEYS = ("val/kid_mean", "val/rkid_mean")
#: The columns besides the override keys (which come between `status` and `objective`; `note` only when a run
#: has one); `sort` and `filter` take these and any override key.
FIXED_COLUMNS = ("run", "status", "objective", "fid", "kid", "steps", "wall", "note")
_LOG_RECORD = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^\]]*\]\[(\w+)\] - ")

Value = str | float | int | None


@dataclass
class Run:
    """One run directory, summarised; `history` holds its per-epoch (or per-step) metric rows."""

    name: str
    path: Path
    overrides: dict[str, str]
    status: str  # finished | failed | diverged
    note: str
    objective_key: str | None
    objective: float | None
    fid: float | None
    kid: float | None
    steps: int | None
    wall: float | None  # seconds
    history: list[dict[str, float]] = field(repr=False)

    def value(self, column: str) -> Value:
        """The cell of `column`: a fixed column or an override key (None where the run lacks it)."""
        if column in FIXED_COLUMNS:
            return self.name if column == "run" else getattr(self, column)
        return self.overrides.get(column)


@dataclass
class Study:
    """What the Optuna sweeper wrote in `optimization_results.yaml`."""

    best_value: float
    best_params: dict[str, object]


@dataclass
class RunsTable:
    """The runs under `root` and the override keys that tell them apart."""

    root: Path
    runs: list[Run]
    study: Study | None
    override_keys: list[str]

    @property
    def columns(self) -> list[str]:
        notes = ["note"] if any(r.note for r in self.runs) else []
        return ["run", "status", *self.override_keys, "objective", "fid", "kid", "steps", "wall", *notes]


def find_run_dirs(root: Path) -> list[Path]:
    """`root` itself if it is a run, else every run below it (a directory holding `.hydra/overrides.yaml`),
    multirun jobs in job-number order."""
    if (root / ".hydra" / "overrides.yaml").is_file():
        return [root]
    runs = [p.parent.parent for p in root.rglob(".hydra/overrides.yaml")]
    return sorted(runs, key=lambda p: _job_order(p.relative_to(root)))


def _job_order(rel: Path) -> list[tuple[int, int | str]]:
    """Multirun jobs are numbered directories: 2 before 10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in rel.parts]


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """`key=value` overrides as Hydra records them; `+`/`++` prefixes dropped, `~key` kept as a key."""
    out = {}
    for line in lines:
        key, _, value = str(line).lstrip("+").partition("=")
        out[key] = value
    return out


def read_history(run: Path) -> list[dict[str, float]]:
    """Per-epoch rows of `report/metrics.json`; without it (a run that did not finish), the rows of
    `csv/metrics.csv` with their empty cells dropped; [] when neither exists."""
    report = run / "report" / "metrics.json"
    if report.is_file():
        return [{k: float(v) for k, v in row.items()} for row in json.loads(report.read_text())]
    metrics_csv = run / "csv" / "metrics.csv"
    if not metrics_csv.is_file():
        return []
    with open(metrics_csv, newline="") as f:  # a killed run may leave a short last row: its gaps are dropped
        rows = [{k: _as_float(v) for k, v in row.items() if k} for row in csv.DictReader(f)]
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def _select(conf: object, key: str) -> object:
    """`key` of a saved config, None where it is absent or its interpolation cannot be resolved here."""
    return OmegaConf.select(conf, key, default=None, throw_on_resolution_failure=False)


def _objective_key_and_direction(run: Path, cfg: object) -> tuple[str | None, str]:
    """The key a search optimises (`objective`, else `metrics.monitor`) and "min"/"max": the sweeper's
    direction if the run was a trial, else the best-checkpoint callback's mode."""
    key = _select(cfg, "objective") or _select(cfg, "metrics.monitor")
    direction = None
    hydra_yaml = run / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        direction = _select(OmegaConf.load(hydra_yaml), "hydra.sweeper.direction")
    if not isinstance(direction, str):
        direction = _select(cfg, "callbacks.model_checkpoint.mode")
    mode = "max" if str(direction).lower() in ("max", "maximize") else "min"
    return (str(key) if key else None), mode


def _log_file(run: Path, cfg: object) -> Path | None:
    """`<task_name>.log` (Hydra's job log), else the only `*.log` there."""
    named = run / f"{_select(cfg, 'task_name')}.log"
    if named.is_file():
        return named
    logs = sorted(run.glob("*.log"))
    return logs[0] if len(logs) == 1 else None


@dataclass
class LogSummary:
    """What a run's log says: seconds from its first to its last record, its last error, whether it ends there."""

    wall: float | None = None
    error: str | None = None
    ends_with_error: bool = False


def read_log(log: Path | None) -> LogSummary:
    """Parse Hydra's `[time][logger][LEVEL] - message` records; an error's text is the last line of its
    record (the exception line when a traceback follows)."""
    if log is None:
        return LogSummary()
    lines = log.read_text(errors="replace").splitlines()
    records = [(i, m.group(1), m.group(2)) for i, line in enumerate(lines) if (m := _LOG_RECORD.match(line))]
    if not records:
        return LogSummary()
    first, last = (datetime.strptime(r[1], "%Y-%m-%d %H:%M:%S,%f") for r in (records[0], records[-1]))
    errors = [n for n, (_, _, level) in enumerate(records) if level in ("ERROR", "CRITICAL")]
    error = None
    if errors:
        start = records[errors[-1]][0]
        end = records[errors[-1] + 1][0] if errors[-1] + 1 < len(records) else len(lines)
        block = [line.strip() for line in lines[start:end] if line.strip()]
        error = _LOG_RECORD.sub("", block[-1]) if len(block) == 1 else block[-1]
    return LogSummary((last - first).total_seconds(), error, bool(errors) and errors[-1] == len(records) - 1)


def _file_time_span(run: Path) -> float | None:
    """Wall time without a log: from `.hydra/config.yaml` (written at the start) to the newest file."""
    start = (run / ".hydra" / "config.yaml").stat().st_mtime
    return max(p.stat().st_mtime for p in run.rglob("*") if p.is_file()) - start


def _last(history: list[dict[str, float]], keys: Sequence[str]) -> float | None:
    """The last logged value of the first of `keys` that was logged."""
    for key in keys:
        values = [row[key] for row in history if key in row]
        if values:
            return values[-1]
    return None


def read_run(path: Path, root: Path) -> Run:
    """Summarise one run directory (see the module docstring for the files read)."""
    history = read_history(path)
    cfg = OmegaConf.load(path / ".hydra" / "config.yaml")
    key, mode = _objective_key_and_direction(path, cfg)
    scores = [row[key] for row in history if key in row and math.isfinite(row[key])] if key else []
    log = read_log(_log_file(path, cfg))
    diverged = path / "diverged.json"
    finished = (path / "report" / "metrics.json").is_file()
    steps = max((int(row["step"]) for row in history if "step" in row), default=None)
    if diverged.is_file():
        report = json.loads(diverged.read_text())
        status = "diverged"
        what = report.get("bad_losses") or report.get("non_finite_parameters")
        note = f"at step {report.get('global_step')}: {what}"
        steps = report.get("global_step", steps)
    elif log.ends_with_error or not finished:
        status, note = "failed", log.error or "no report/ (killed, or still running)"
    else:
        status, note = "finished", ""
    return Run(
        name=str(path.relative_to(root)) if path != root else path.name,
        path=path,
        overrides=parse_overrides(yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()) or []),
        status=status,
        note=note,
        objective_key=key,
        objective=(max if mode == "max" else min)(scores) if scores else None,
        fid=_last(history, FID_KEYS),
        kid=_last(history, KID_KEYS),
        steps=steps,
        wall=log.wall if log.wall is not None else _file_time_span(path),
        history=history,
    )


def varying_override_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value is not the same in every run (all of them for a single run), in first-seen order."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def gather(root: str | Path) -> RunsTable:
    """Read every run under `root` (a run, multirun or study directory, or any folder above them)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    dirs = find_run_dirs(root)
    if not dirs:
        raise FileNotFoundError(
            f"no runs under {root}: a run directory holds .hydra/overrides.yaml, as `genface train` writes it"
        )
    runs = []
    for d in dirs:
        try:
            runs.append(read_run(d, root))
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read the run {d}: {err}") from err
    results = root / "optimization_results.yaml"
    study = None
    if results.is_file():
        data = yaml.safe_load(results.read_text())
        study = Study(best_value=float(data["best_value"]), best_params=dict(data.get("best_params") or {}))
    return RunsTable(root=root, runs=runs, study=study, override_keys=varying_override_keys(runs))


def _check_column(table: RunsTable, column: str) -> None:
    known = [*FIXED_COLUMNS, *dict.fromkeys(k for run in table.runs for k in run.overrides)]
    if column not in known:
        raise ValueError(f"unknown column {column!r}; columns: {', '.join(known)}")


def _as_float(value: Value) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def filter_runs(table: RunsTable, filters: Sequence[str]) -> RunsTable:
    """Keep the runs that match every `KEY=VALUE` (as text, or as numbers when both sides are numbers)."""
    runs = table.runs
    for item in filters:
        key, sep, wanted = item.partition("=")
        if not sep or not key:
            raise ValueError(f"a filter is KEY=VALUE, e.g. status=finished or model.loss=bce; got {item!r}")
        _check_column(table, key)

        def match(run: Run, key: str = key, wanted: str = wanted) -> bool:
            value = run.value(key)
            number, wanted_number = _as_float(value), _as_float(wanted)
            if number is not None and wanted_number is not None:
                return number == wanted_number
            return value is not None and str(value) == wanted

        runs = [run for run in runs if match(run)]
    return RunsTable(table.root, runs, table.study, table.override_keys)


def sort_runs(table: RunsTable, key: str) -> RunsTable:
    """Sort by a column, ascending, or descending as `-KEY`; runs without a value go last either way.
    Numbers sort as numbers when every value of the column is one."""
    descending = key.startswith("-")
    column = key.removeprefix("-")
    _check_column(table, column)
    present = [run for run in table.runs if run.value(column) not in (None, "")]
    missing = [run for run in table.runs if run.value(column) in (None, "")]
    numeric = all(_as_float(run.value(column)) is not None for run in present)
    present.sort(key=lambda r: _as_float(r.value(column)) if numeric else str(r.value(column)), reverse=descending)
    return RunsTable(table.root, present + missing, table.study, table.override_keys)


def _cell(column: str, value: Value) -> Value:
    """A Markdown cell: numbers to 4 significant digits (learning rates stay readable), wall time as h:mm:ss."""
    if value is None or value == "":
        return None
    if column == "wall":
        seconds = round(float(value))
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if column in ("run", "status", "note"):
        return str(value)
    number = _as_float(value)
    if number is None or isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit()):
        return str(value)
    return f"{number:.4g}"


def best_run(table: RunsTable) -> Run | None:
    """The study's best trial: the run whose objective is the sweeper's `best_value`."""
    if table.study is None:
        return None
    scored = [run for run in table.runs if run.objective is not None]
    best = min(scored, key=lambda r: abs(r.objective - table.study.best_value), default=None)
    if best is None or not math.isclose(best.objective, table.study.best_value, rel_tol=1e-6):
        return None
    return best


def summary(table: RunsTable) -> str:
    """The lines above the table: what the numeric columns are, and the study's best trial."""
    keys = sorted({run.objective_key for run in table.runs if run.objective_key})
    lines = [
        f"{len(table.runs)} run(s) under `{table.root}`. objective: the best `{'`, `'.join(keys) or '–'}` of each "
        f"run; fid, kid: the last {FID_KEYS[0]}, {KID_KEYS[0]} ({FID_KEYS[1]}, {KID_KEYS[1]} for reconstructions); "
        "steps: global steps; "
        "wall: first to last log record (else file times)."
    ]
    if table.study is not None:
        best = best_run(table)
        where = f" (run {best.name})" if best else ""
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in table.study.best_params.items())
        lines.append(f"Optuna study: best value {table.study.best_value:.6g}{where}: {params}.")
    return "\n\n".join(lines) + "\n"


def to_markdown(table: RunsTable) -> str:
    columns = table.columns
    rows = [[_cell(c, run.value(c)) for c in columns] for run in table.runs]
    return summary(table) + "\n" + markdown_table(columns, rows)


def write_table(table: RunsTable, out_dir: str | Path) -> list[Path]:
    """`<out_dir>/runs.md` (summary + table) and `<out_dir>/runs.csv` (full precision, wall in seconds)."""
    out_dir = Path(out_dir)
    columns = table.columns
    header = ["wall_s" if c == "wall" else c for c in columns]
    rows = [[run.value(c) for c in columns] for run in table.runs]
    return [write_text(out_dir / "runs.md", to_markdown(table)), write_csv(out_dir / "runs.csv", header, rows)]


def curve_key(table: RunsTable) -> str | None:
    """The metric of the curves chart: FID if any run logged it, else KID."""
    for key in (*FID_KEYS, *KID_KEYS):
        if any(key in row for run in table.runs for row in run.history):
            return key
    return None


def curves(table: RunsTable, key: str) -> dict[str, list[tuple[float, float]]]:
    """Each run's (global step, value) points of `key`, for runs that logged it."""
    out = {}
    for run in table.runs:
        points = [(row["step"], row[key]) for row in run.history if key in row and "step" in row]
        if points:
            out[run.name] = points
    return out
