"""`genface runs DIR [--sort KEY] [--filter KEY=VALUE ...] [--out DIR]`: one table and one plot of every run
under DIR (a run, a multirun, an Optuna study, or any folder above them).

Writes `runs.md`, `runs.csv` and `runs.png` into DIR (or `--out`) and prints the table. Hydra-style
`sort=KEY filter=KEY=VALUE out=DIR` work as well. Columns: run, status (finished / failed / diverged), the
overrides that differ between runs, objective (the best value of the run's objective key), fid, kid (last
values), steps, wall (h:mm:ss; seconds in the CSV) and a note on failures. `--sort -KEY` sorts descending.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genface.analysis.runs_table import (
    FIXED_COLUMNS,
    best_run,
    curve_key,
    curves,
    filter_runs,
    gather,
    sort_runs,
    to_markdown,
    write_table,
)
from genface.viz.run_curves import plot_runs

_HYDRA_STYLE = ("sort", "filter", "out")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """argparse flags, with Hydra-style `sort=`, `filter=`, `out=` turned into them first."""
    argv = [f"--{arg}" if arg.partition("=")[0] in _HYDRA_STYLE else arg for arg in argv]
    parser = argparse.ArgumentParser(
        prog="genface runs",
        description="A table (runs.md, runs.csv) and a plot (runs.png) of every run under DIR.",
        epilog="Hydra-style sort=KEY filter=KEY=VALUE out=DIR are accepted too. Columns: "
        f"{', '.join(FIXED_COLUMNS)} and any override key (e.g. model.loss).",
    )
    parser.add_argument("dir", type=Path, help="a run, multirun or Optuna study directory (or a folder above them)")
    parser.add_argument("--sort", metavar="KEY", help="sort by a column, descending as --sort=-KEY")
    parser.add_argument(
        "--filter", metavar="KEY=VALUE", action="append", default=[], help="keep matching runs (repeatable: all must match)"
    )
    parser.add_argument("--out", metavar="DIR", type=Path, help="where to write runs.md/.csv/.png (default: DIR)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        table = filter_runs(gather(args.dir), args.filter)
        shown = sort_runs(table, args.sort) if args.sort else table
    except (FileNotFoundError, ValueError) as err:  # exit 2 like a usage error: the arguments name no usable runs
        print(f"genface runs: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    out = args.out or args.dir
    written = write_table(shown, out)
    key = curve_key(table)
    best = best_run(table)
    # Optuna keeps a value for completed trials only: a crashed or diverged run is a failed trial
    finished = [run for run in table.runs if run.status == "finished" and run.objective is not None]
    trials = [(run.name, run.objective) for run in finished] if table.study else []
    objective_keys = sorted({run.objective_key for run in table.runs if run.objective_key})
    plot = plot_runs(
        out / "runs.png",
        curves(table, key) if key else {},
        curve_label=key or "",
        trials=trials,
        objective_label=", ".join(objective_keys) or "objective",
        best=best.name if best else None,
    )
    print(to_markdown(shown))
    print("wrote:", *written, *([plot] if plot else []), sep="\n  ")


if __name__ == "__main__":
    main()
