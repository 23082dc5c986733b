"""`genface runs`: the table, status, sorting, filtering and plot of run folders, as `genface train` writes them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

from genface import cli
from genface.analysis.runs_table import filter_runs, gather, sort_runs
from genface.runs import main as runs_main
from test_sweeps import genface, sweep_dirs

TRACEBACK = """Traceback (most recent call last):
  File "train.py", line 1, in main
ValueError: Invalid learning rate: -1.0"""


def log_line(second: float, message: str, level: str = "INFO", name: str = "genface.train") -> str:
    minutes, seconds = divmod(second, 60)
    return f"[2026-01-02 10:{int(minutes):02d}:{seconds:06.3f}".replace(".", ",") + f"][{name}][{level}] - {message}"


def write_run(
    run: Path,
    overrides: list[str],
    history: list[dict] | None = None,
    csv_rows: list[dict] | None = None,
    log: list[str] | None = None,
    diverged: dict | None = None,
    direction: str | None = None,
) -> Path:
    """A run folder with the files genface writes: .hydra/, report/metrics.json (finished runs only),
    csv/metrics.csv, <task_name>.log and diverged.json, each only when given."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"task_name": "demo", "objective": "${metrics.monitor}", "metrics": {"monitor": "val/fid"},
              "callbacks": {"model_checkpoint": {"mode": "min"}}}  # fmt: skip
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if direction:
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"direction": direction}}}))
    if history is not None:
        (run / "report").mkdir()
        (run / "report" / "metrics.json").write_text(json.dumps(history, indent=1))
    if csv_rows is not None:
        (run / "csv").mkdir()
        keys = list(dict.fromkeys(k for row in csv_rows for k in row))
        with open(run / "csv" / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows(csv_rows)
    if log is not None:
        (run / "demo.log").write_text("\n".join(log) + "\n")
    if diverged is not None:
        (run / "diverged.json").write_text(json.dumps(diverged))
    return run


def history(*fids: float, kid: float = 0.5) -> list[dict]:
    """Per-epoch rows of a run whose FID was measured each epoch, 10 steps per epoch."""
    return [{"epoch": e + 1, "step": 10 * (e + 1), "val/fid": f, "val/kid_mean": kid + e} for e, f in enumerate(fids)]


def finished_log(seconds: float) -> list[str]:
    return [log_line(0, "genface check: plan"), "  trainer: cpu x 1", log_line(seconds, "objective val/fid = 1")]


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """A 5-job multirun: two finished runs, one diverged, one crashed, one killed before its report."""
    root = tmp_path / "multirun"
    common = ["experiment=dcgan_synthfaces", "debug=smoke"]
    write_run(root / "0", [*common, "model.loss=bce", "lr=2e-4"], history(30.0, 20.0, 25.0), log=finished_log(65.5))
    write_run(root / "1", [*common, "model.loss=hinge", "lr=1e-4"], history(40.0, 35.0), log=finished_log(30))
    write_run(
        root / "2", [*common, "model.loss=bce", "lr=1e-2"],
        csv_rows=[{"epoch": 0, "step": 10, "val/fid": 90.0}, {"epoch": 0, "step": 12, "train/loss_d_step": "nan"}],
        log=[log_line(0, "start"), log_line(3, "run failed, the sweep goes on", "ERROR"), "TrainingDiverged: ..."],
        diverged={"global_step": 13, "epoch": 1, "bad_losses": {"train/loss_d": "nan"}},
    )  # fmt: skip
    write_run(
        root / "10", [*common, "model.loss=hinge", "lr=-1"], csv_rows=[{"epoch": 0, "step": 0, "lr-Adam": -1}],
        log=[log_line(0, "start"), log_line(1, "run failed, the sweep goes on without it: /x", "ERROR"), TRACEBACK],
    )  # fmt: skip
    write_run(
        root / "3", [*common, "model.loss=bce", "lr=3e-4"], csv_rows=[{"epoch": 0, "step": 20, "val/fid": 50.0}],
        log=[log_line(0, "start"), log_line(7, "real FID statistics: computing")],
    )  # fmt: skip
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table_rows_hold_the_varying_overrides_and_each_runs_numbers(multirun: Path) -> None:
    table = gather(multirun)
    assert [r.name for r in table.runs] == ["0", "1", "2", "3", "10"]  # jobs in number order
    assert table.override_keys == ["model.loss", "lr"]  # experiment and debug are the same everywhere
    first = table.runs[0]
    assert (first.status, first.objective_key, first.objective, first.fid, first.kid) == ("finished", "val/fid", 20.0, 25.0, 2.5)
    assert (first.steps, first.wall, first.overrides["lr"]) == (30, 65.5, "2e-4")
    assert table.columns == ["run", "status", "model.loss", "lr", "objective", "fid", "kid", "steps", "wall", "note"]


def test_status_of_diverged_crashed_and_killed_runs(multirun: Path) -> None:
    runs = {r.name: r for r in gather(multirun).runs}
    assert (runs["0"].status, runs["0"].note) == ("finished", "")
    diverged = runs["2"]
    assert diverged.status == "diverged" and diverged.steps == 13 and "train/loss_d" in diverged.note
    assert diverged.objective == 90.0  # from csv/metrics.csv: a run that did not finish has no report/
    crashed = runs["10"]
    assert (crashed.status, crashed.note) == ("failed", "ValueError: Invalid learning rate: -1.0")
    killed = runs["3"]
    assert killed.status == "failed" and killed.note.startswith("no report/") and killed.steps == 20
    assert killed.wall == 7.0


def test_a_finished_run_whose_log_ends_with_an_error_is_failed(tmp_path: Path) -> None:
    log = [*finished_log(5), log_line(6, "could not write the sample grid", "ERROR")]
    (run,) = gather(write_run(tmp_path / "run", ["model.loss=bce"], history(3.0), log=log)).runs
    assert (run.status, run.note) == ("failed", "could not write the sample grid")


def test_maximised_objective_and_a_single_run_shows_all_its_overrides(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", ["experiment=x", "+lr=1e-3"], history(3.0, 1.0, 2.0), direction="maximize")
    table = gather(run_dir)
    (run,) = table.runs
    assert run.objective == 3.0 and table.override_keys == ["experiment", "lr"]  # `+` dropped
    assert run.wall is not None  # no log: the span of the run's file times


def test_sorting_numbers_as_numbers_and_missing_values_last(multirun: Path) -> None:
    table = gather(multirun)
    assert [r.name for r in sort_runs(table, "objective").runs] == ["0", "1", "3", "2", "10"]
    assert [r.name for r in sort_runs(table, "-objective").runs] == ["2", "3", "1", "0", "10"]
    assert [r.name for r in sort_runs(table, "lr").runs] == ["10", "1", "0", "3", "2"]  # -1 < 1e-4 < 2e-4 ...
    assert [r.name for r in sort_runs(table, "status").runs][:2] == ["2", "3"]  # text: diverged < failed
    with pytest.raises(ValueError, match="unknown column 'nope'.*model.loss"):
        sort_runs(table, "nope")


def test_filtering_by_status_override_and_number(multirun: Path) -> None:
    table = gather(multirun)
    assert [r.name for r in filter_runs(table, ["status=finished"]).runs] == ["0", "1"]
    assert [r.name for r in filter_runs(table, ["model.loss=bce", "status=failed"]).runs] == ["3"]
    assert [r.name for r in filter_runs(table, ["lr=0.0002"]).runs] == ["0"]  # 2e-4 as a number
    assert [r.name for r in filter_runs(table, ["steps=30"]).runs] == ["0"]
    with pytest.raises(ValueError, match="KEY=VALUE"):
        filter_runs(table, ["status"])
    with pytest.raises(ValueError, match="unknown column 'loss'"):
        filter_runs(table, ["loss=bce"])


def test_cli_writes_markdown_csv_and_plot_of_a_study(multirun: Path, tmp_path: Path, capsys) -> None:
    (multirun / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "best_params": {"lr": 2e-4}, "best_value": 20.0})
    )
    cli.main(["genface", "runs", str(multirun), "sort=objective", "filter=model.loss=bce", f"out={tmp_path / 'out'}"])
    printed = capsys.readouterr().out
    markdown = (tmp_path / "out" / "runs.md").read_text()
    assert "Optuna study: best value 20 (run 0): lr=0.0002." in markdown and markdown in printed
    assert "| 0 | finished | bce | 0.0002 | 20 | 25 | 2.5 | 30 | 0:01:06 |" in markdown
    table = rows(tmp_path / "out" / "runs.csv")
    assert [(r["run"], r["status"], r["wall_s"]) for r in table] == [("0", "finished", "65.5"), ("3", "failed", "7.0"), ("2", "diverged", "3.0")]
    assert (tmp_path / "out" / "runs.png").stat().st_size > 0

    runs_main([str(multirun), "--sort=-fid", "--filter", "status=finished"])  # argparse-style; writes into DIR
    assert [r["run"] for r in rows(multirun / "runs.csv")] == ["1", "0"]
    assert (multirun / "runs.png").is_file()


@pytest.mark.parametrize(
    ("where", "args", "message"),
    [
        ("empty", [], "no runs under .*overrides.yaml"),
        ("missing", [], "no such directory"),
        ("run", ["sort=bogus"], "unknown column 'bogus'; columns: run, status, .*, model.loss"),
    ],
)
def test_cli_errors_name_the_problem(tmp_path: Path, capsys, where: str, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "run", ["model.loss=bce"], history(3.0))
    with pytest.raises(SystemExit) as exit_:
        runs_main([str(tmp_path / where), *args])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_real_three_trial_optuna_smoke_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    genface(
        "train", "hparams_search=dcgan", "experiment=dcgan_synthfaces", "debug=smoke", "logger=csv",
        "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={storage}", tmp_path=tmp_path,
    )  # fmt: skip
    (sweep,) = sweep_dirs(tmp_path)
    runs_main([str(sweep)])
    study = optuna.load_study(study_name="debug-dcgan", storage=storage)
    table = rows(sweep / "runs.csv")
    assert [r["run"] for r in table] == ["0", "1", "2"] and {r["status"] for r in table} == {"finished"}
    assert list(table[0])[2:4] == ["model.optimizer_g.lr", "model.optimizer_g.betas.0"]  # what the search varied
    for trial, row in zip(study.trials, table):
        assert float(row["objective"]) == pytest.approx(trial.value, rel=1e-6)
        assert float(row["model.optimizer_g.lr"]) == pytest.approx(trial.params["model.optimizer_g.lr"])
        assert int(row["steps"]) > 0 and float(row["wall_s"]) > 0 and row["fid"] and row["kid"]
    assert f"(run {study.best_trial.number})" in (sweep / "runs.md").read_text()
    assert (sweep / "runs.png").stat().st_size > 0
