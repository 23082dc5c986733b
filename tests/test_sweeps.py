"""Optuna searches (hparams_search), launchers (submitit), W&B tags/groups and W&B sweep files."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from genface import sweeps
from genface.config import CONF_DIR
from helpers import FAMILY_EXPERIMENTS
from test_train import TINY


def compose_with_hydra(tmp_path, *overrides: str):
    """`genface train overrides...` as composed by the app, the `hydra` node included."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs", *overrides],
            return_hydra_config=True,
        )


@pytest.fixture
def hydra_config():
    """Make a composed config the running app's (HydraConfig), as in a job; unset afterwards."""
    yield lambda cfg: HydraConfig.instance().set_config(cfg)
    HydraConfig.instance().cfg = None


def genface(*args: str, tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python -m genface args...` in tmp_path, data and runs there, one thread, W&B offline. Its own process
    group: on a timeout every process it started (submitit's jobs too) is killed."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(
        GENFACE_DATA_DIR=str(tmp_path / "data"),
        GENFACE_LOG_DIR=str(tmp_path / "logs"),
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
    )
    cmd = [sys.executable, "-m", "genface", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(args)}\n{out[-2000:]}{err[-2000:]}")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def sweep_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "logs").glob("*/multiruns/*"))


def history_min(run_dir: Path, key: str) -> float:
    history = json.loads((run_dir / "report" / "metrics.json").read_text())
    return min(row[key] for row in history if key in row)


# ---------------------------------------------------------------- search configs


def test_there_is_a_search_per_family():
    searches = {p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml")}
    assert set(FAMILY_EXPERIMENTS) | {"optuna"} == searches


@pytest.mark.parametrize("family", sorted(FAMILY_EXPERIMENTS))
def test_family_search_composes_with_its_experiment(family, tmp_path):
    cfg = compose_with_hydra(tmp_path, f"hparams_search={family}", f"experiment={FAMILY_EXPERIMENTS[family]}")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert cfg.hydra.mode.name == "MULTIRUN" and sweeper.max_failure_rate == 1.0
    assert sweeper.study_name == f"{cfg.task_name}-{family}"
    # every searched key exists in the run's config, and Optuna reads every expression as a distribution
    distributions, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert len(distributions) >= 2 and not fixed
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key
    # the objective is what the best checkpoint monitors, in the direction the sweeper optimises
    checkpoint = cfg.callbacks.model_checkpoint
    assert cfg.objective and checkpoint.monitor == cfg.objective
    assert {"min": "minimize", "max": "maximize"}[checkpoint.mode] == sweeper.direction
    # and the same space makes a valid W&B sweep
    sweep = sweeps.wandb_sweep_config([f"hparams_search={family}", f"experiment={FAMILY_EXPERIMENTS[family]}"])
    assert set(sweep["parameters"]) == set(sweeper.params)
    assert sweep["metric"] == {"name": f"best/{cfg.objective}", "goal": sweeper.direction}


def test_gan_searches_tie_the_discriminator_optimizer_to_the_generator(tmp_path):
    cfg = compose_with_hydra(
        tmp_path, "hparams_search=dcgan", "experiment=dcgan_synthfaces", "model.optimizer_g.lr=0.00031", "model.optimizer_g.betas.0=0.2"
    )
    assert cfg.model.optimizer_d.lr == 0.00031 and list(cfg.model.optimizer_d.betas) == [0.2, 0.999]


def test_best_objective_prefers_the_checkpoint_best_over_the_last_value(tmp_path):
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/fid", mode="min")
    best.best_model_score = torch.tensor(1.5)
    other = ModelCheckpoint(dirpath=tmp_path, monitor="val/kid_mean")
    other.best_model_score = torch.tensor(0.1)
    last = {"val/fid": torch.tensor(4.0), "val/l1": torch.tensor(0.25)}
    trainer = SimpleNamespace(checkpoint_callbacks=[other, best], callback_metrics=last)
    assert sweeps.best_objective(trainer, "val/fid") == 1.5
    assert sweeps.best_objective(trainer, "val/l1") == 0.25  # no checkpoint monitors it: the last value
    assert sweeps.best_objective(trainer, "val/missing") is None and sweeps.best_objective(trainer, None) is None
    best.best_model_score = None  # never evaluated (e.g. FID epochs not reached): the last value
    assert sweeps.best_objective(trainer, "val/fid") == 4.0


def test_an_optuna_trial_without_its_objective_fails_naming_the_key(tmp_path, hydra_config):
    trainer = SimpleNamespace(checkpoint_callbacks=[], callback_metrics={"train/loss_d": torch.tensor(0.7)})
    cfg = compose_with_hydra(tmp_path, "hparams_search=dcgan", "experiment=dcgan_synthfaces", "hydra.job.num=0")
    hydra_config(cfg)
    with pytest.raises(ValueError, match=r"objective='val/kid_mean' is None in this run; metrics logged: train/loss_d"):
        sweeps.run_objective(trainer, cfg.objective)
    trainer.callback_metrics["val/kid_mean"] = torch.tensor(float("nan"))  # a diverged run: Optuna needs a number
    with pytest.raises(ValueError, match="is nan"):
        sweeps.run_objective(trainer, cfg.objective)
    hydra_config(compose_with_hydra(tmp_path, "experiment=dcgan_synthfaces"))  # a single run may lack it
    assert sweeps.run_objective(SimpleNamespace(checkpoint_callbacks=[], callback_metrics={}), "val/kid_mean") is None


# ---------------------------------------------------------------- W&B tags, groups, names


def test_wandb_tags_group_and_name_follow_the_run(tmp_path, hydra_config, monkeypatch):
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    cfg = compose_with_hydra(tmp_path, "experiment=pix2pix_edges2synthfaces", "logger=wandb", "tags=[mine,demo]")
    hydra_config(cfg)
    wandb_cfg = cfg.logger.wandb
    # user tags first, then family, dataset (the base set of derived pairs) and experiment, each once
    assert list(wandb_cfg.tags) == ["mine", "demo", "pix2pix", "synthfaces", "pix2pix_edges2synthfaces"]
    assert wandb_cfg.group is None and wandb_cfg.name == "pix2pix_edges2synthfaces"

    sweep = ["hydra.mode=MULTIRUN", "hydra.job.num=3", f"hydra.sweep.dir={tmp_path}/sweep_0412"]
    cfg = compose_with_hydra(tmp_path, "experiment=vaegan_synthfaces", "logger=wandb", *sweep)
    hydra_config(cfg)
    assert cfg.logger.wandb.group == "vaegan_synthfaces-sweep_0412" and cfg.logger.wandb.name == "vaegan_synthfaces-3"
    assert list(cfg.logger.wandb.tags)[-3:] == ["vaegan", "synthfaces", "vaegan_synthfaces"]
    # a study kept in a storage spans invocations: its name is the group
    cfg = compose_with_hydra(
        tmp_path, "experiment=vaegan_synthfaces", "logger=wandb", "hparams_search=vaegan", f"hydra.sweeper.storage=sqlite:///{tmp_path}/s.db", *sweep
    )
    hydra_config(cfg)
    assert cfg.logger.wandb.group == "vaegan_synthfaces-vaegan"
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    assert cfg.logger.wandb.group == "wandb-sweep-abc123"


def test_wandb_tags_without_a_running_app(compose_train):
    cfg = compose_train("model=ddpm_tiny", "data=digits", "logger=wandb", "tags=[x]")
    assert list(cfg.logger.wandb.tags) == ["x", "ddpm", "digits"]


# ---------------------------------------------------------------- W&B sweep files


def test_wandb_sweep_file_is_valid_and_its_command_composes(tmp_path, monkeypatch):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    from genface import cli

    out = tmp_path / "sweep.yaml"
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setenv("GENFACE_COMMAND", "")
    fixed = ["hparams_search=dcgan", "experiment=dcgan_synthfaces", "trainer.max_epochs=3"]
    cli.main(["genface", "sweep-wandb", *fixed, "--out", str(out)])
    config = yaml.safe_load(out.read_text())
    sweeps.check_wandb_sweep(config)
    assert config["method"] == "bayes" and config["metric"] == {"name": "best/val/kid_mean", "goal": "minimize"}
    assert config["parameters"] == {
        "model.optimizer_g.lr": {"distribution": "log_uniform_values", "min": 2e-5, "max": 1e-3},
        "model.optimizer_g.betas.0": {"distribution": "uniform", "min": 0.0, "max": 0.9},
    }
    # what a W&B agent runs, with sampled values, built by wandb's own argument formatting
    args = create_sweep_command_args({"args": {"model.optimizer_g.lr": {"value": 1.7e-05}, "model.optimizer_g.betas.0": {"value": 0.25}}})
    command = []
    for token in config["command"]:
        macro = token[2:-1] if token.startswith("${") else None
        command += {"env": ["/usr/bin/env"]}.get(macro, args.get(macro, [token])) if macro else [token]
    assert command[:3] == ["/usr/bin/env", "genface", "train"] and command[-2:] == ["model.optimizer_g.lr=1.7e-05", "model.optimizer_g.betas.0=0.25"]
    cfg = compose_with_hydra(tmp_path, *command[3:])
    assert cfg.hydra.mode.name == "RUN"  # one run per agent call, although the search file asks for a multirun
    assert cfg.model.optimizer_g.lr == 1.7e-05 and cfg.model.optimizer_d.lr == 1.7e-05
    assert cfg.model.optimizer_d.betas[0] == 0.25 and cfg.trainer.max_epochs == 3
    assert cfg.logger.wandb.offline is False and cfg.objective == "val/kid_mean"


@pytest.mark.parametrize(
    ("overrides", "method", "message"),
    [
        (["experiment=dcgan_synthfaces"], "bayes", "hparams_search="),
        (["hparams_search=optuna"], "bayes", "search space is empty"),
        (["hparams_search=dcgan", "logger=csv"], "bayes", "logger"),
        (["hparams_search=dcgan"], "hyperband", "allowed: grid, random, bayes"),
    ],
)
def test_wandb_sweep_refuses_what_it_cannot_express(overrides, method, message):
    with pytest.raises(ValueError, match=message):
        sweeps.wandb_sweep_config(overrides, method=method)


def test_check_wandb_sweep_names_the_bad_key():
    good = {"method": "bayes", "metric": {"name": "best/val/fid", "goal": "minimize"}, "command": ["${args_no_hyphens}"]}
    sweeps.check_wandb_sweep({**good, "parameters": {"a": {"values": [1, 2]}, "b": {"distribution": "uniform", "min": 0, "max": 1}}})
    bad = [
        ({"a": {"distribution": "log_uniform_values", "min": 0.0, "max": 1.0}}, "parameters.a: needs 0 < min < max"),
        ({"a": {"distribution": "beta", "a": 1}}, "parameters.a: distribution 'beta' is not allowed"),
        ({"a": {"distribution": "uniform", "min": 1}}, "parameters.a: uniform needs max"),
        ({"a": {"values": []}}, "parameters.a.values"),
    ]
    for parameters, message in bad:
        with pytest.raises(ValueError, match=message):
            sweeps.check_wandb_sweep({**good, "parameters": parameters})
    with pytest.raises(ValueError, match="method=grid takes value/values only"):
        sweeps.check_wandb_sweep({**good, "method": "grid", "parameters": {"a": {"distribution": "uniform", "min": 0, "max": 1}}})
    with pytest.raises(ValueError, match="goal"):
        sweeps.check_wandb_sweep({**good, "metric": {"name": "x", "goal": "lower"}, "parameters": {"a": {"value": 1}}})


# ---------------------------------------------------------------- launchers


class _Submitted(Exception):
    """Raised instead of calling sbatch."""


def test_slurm_launcher_submits_one_ddp_job_per_run(tmp_path, monkeypatch):
    import submitit
    from submitit.slurm.slurm import SlurmExecutor

    cfg = compose_with_hydra(
        tmp_path, "experiment=ddgan_celebahq128", "trainer=ddp", "trainer.devices=3", "hydra/launcher=slurm", "hydra.launcher.partition=a30"
    )
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg.tasks_per_node == cfg.trainer.devices == launcher_cfg.gpus_per_node == 3
    assert launcher_cfg.nodes == cfg.trainer.num_nodes == 1 and cfg.trainer.strategy._target_.endswith("DDPStrategy")

    # The plugin's own launch(), up to the submission: the sbatch script submitit would send, per run.
    submitted = {}

    def capture(executor, fn, *job_args):
        submitted["script"] = executor._executor._make_submission_file_text("srun python job.py", "uid")
        submitted["jobs"] = len(job_args[0])
        raise _Submitted

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun here
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    launcher = instantiate(launcher_cfg)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    with pytest.raises(_Submitted):
        launcher.launch([["model.r1_gamma=0.5"], ["model.r1_gamma=2"]], initial_job_idx=0)
    script = submitted["script"]
    assert submitted["jobs"] == 2
    for line in ("--partition=a30", "--ntasks-per-node=3", "--gpus-per-node=3", "--nodes=1", "--time=1440", "--cpus-per-task=8", "--job-name=ddgan_celebahq128"):
        assert f"#SBATCH {line}" in script, line

    cfg = compose_with_hydra(tmp_path, "experiment=dcgan_synthfaces", "trainer=gpu", "hydra/launcher=slurm")
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.partition is None


@pytest.mark.slow  # 24 s: keeps `make test` under 10 minutes
@pytest.mark.timeout(300)
def test_submitit_local_runs_each_job_in_a_process_of_its_own(tmp_path, compose_train):
    # the data first: two jobs at once would both render the same synthfaces folder
    instantiate(compose_train(*TINY).data).prepare_data()
    genface("train", "-m", "hydra/launcher=submitit_local", "model.loss=bce,hinge", *TINY, "trainer.max_epochs=1", "logger=none", tmp_path=tmp_path)
    (sweep,) = sweep_dirs(tmp_path)
    results = sorted(sweep.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2 and len(list(sweep.glob(".submitit/*/*_log.out"))) == 2
    for path in results:
        status, job = pickle.loads(path.read_bytes())
        assert status == "success" and job.status.name == "COMPLETED"
        run = sweep / str(job.hydra_cfg.hydra.job.num)
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert math.isclose(job.return_value, history_min(run, "val/fid"), rel_tol=1e-6)  # the objective came back
    assert {yaml.safe_load((sweep / n / ".hydra" / "overrides.yaml").read_text())[0] for n in ("0", "1")} == {
        "model.loss=bce",
        "model.loss=hinge",
    }


# ---------------------------------------------------------------- searches that really run


@pytest.mark.timeout(400)
def test_three_trial_search_reports_the_best_trial_and_resumes_from_its_storage(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    search = ("hparams_search=dcgan", *TINY, "trainer.max_epochs=2", "logger=none", f"hydra.sweeper.storage={storage}")
    genface("train", *search, "hydra.sweeper.n_trials=3", tmp_path=tmp_path)
    (first,) = sweep_dirs(tmp_path)
    study = optuna.load_study(study_name="dcgan_synthfaces-dcgan", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:  # each trial's value is the best FID of its run, over its 2 epochs
        assert math.isclose(trial.value, history_min(first / str(trial.number), "val/fid"), rel_tol=1e-6)
        assert set(trial.params) == {"model.optimizer_g.lr", "model.optimizer_g.betas.0"}
    results = yaml.safe_load((first / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(t.value for t in study.trials)
    assert results["best_params"] == study.best_trial.params

    genface("train", *search, "hydra.sweeper.n_trials=1", tmp_path=tmp_path)  # the same command resumes the study
    study = optuna.load_study(study_name="dcgan_synthfaces-dcgan", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    resumed = yaml.safe_load((sweep_dirs(tmp_path)[1] / "optimization_results.yaml").read_text())
    assert resumed["best_value"] == min(t.value for t in study.trials)


def wandb_records(path: Path):
    """The records of an offline W&B run file (LevelDB log format: 32 KiB blocks of checksum, length, type, data)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


@pytest.mark.slow  # 12 s: keeps `make test` under 10 minutes
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # enqueue_trial
def test_a_crashed_trial_is_failed_and_the_study_goes_on(tmp_path):
    # A learning rate that Adam refuses crashes its trial once the trial's W&B run is open. The trials are
    # queued in the study's storage (Optuna's enqueue_trial), so the crash comes first, deterministically.
    storage = f"sqlite:///{tmp_path}/optuna.db"
    queued = optuna.create_study(study_name="dcgan_synthfaces-optuna", storage=storage, direction="minimize")
    for lr in (-1.0, 0.0002):
        queued.enqueue_trial({"model.optimizer_g.lr": lr})
    genface(
        "train", "-m", "hparams_search=optuna", "model.optimizer_g.lr=choice(-1.0,0.0002)", "hydra.sweeper.n_trials=2",
        # check=false: the preflight's one step would refuse lr -1 before the trial's W&B run opens, and this
        # test is about a run that crashes once it is open
        *TINY, "trainer.max_epochs=1", "logger=wandb", f"hydra.sweeper.storage={storage}", "check=false",
        tmp_path=tmp_path,
    )  # fmt: skip
    (sweep,) = sweep_dirs(tmp_path)
    study = optuna.load_study(study_name="dcgan_synthfaces-optuna", storage=storage)
    assert [(t.params["model.optimizer_g.lr"], t.state.name) for t in study.trials] == [(-1.0, "FAIL"), (0.0002, "COMPLETE")]
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_params"] == {"model.optimizer_g.lr": 0.0002}
    log = (sweep / "0" / "dcgan_synthfaces.log").read_text()
    assert "run failed, the sweep goes on" in log and "Invalid learning rate: -1.0" in log

    # one W&B run per trial (the crashed one closed with exit code 1), one group for the sweep
    runs = {}
    for n in ("0", "1"):
        (path,) = (sweep / n / "wandb").glob("offline-run-*/run-*.wandb")
        records = list(wandb_records(path))
        run = next(r.run for r in records if r.HasField("run"))
        exit_code = next(r.exit.exit_code for r in records if r.HasField("exit"))
        history = {i.key or "/".join(i.nested_key) for r in records if r.HasField("history") for i in r.history.item}
        summary = {i.key or "/".join(i.nested_key) for r in records if r.HasField("summary") for i in r.summary.update}
        config = {i.key for r in records if r.HasField("config") for i in r.config.update}
        runs[int(n)] = (run, exit_code, history, summary, config)
    assert {run.run_group for run, *_ in runs.values()} == {"dcgan_synthfaces-optuna"}  # the stored study's name
    assert {run.display_name for run, *_ in runs.values()} == {"dcgan_synthfaces-0", "dcgan_synthfaces-1"}
    assert list(runs[0][0].tags) == ["demo", "dcgan", "synthfaces", "dcgan_synthfaces"]
    assert runs[0][1] == 1
    run, exit_code, history, summary, config = runs[1]
    assert exit_code == 0 and {"model", "data", "trainer", "logger"} <= config  # the full resolved config
    assert {"val/fid", "samples/filenames"} <= history and "best/val/fid" in summary  # FID curve, sample grids


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("family", sorted(FAMILY_EXPERIMENTS))
def test_every_family_search_runs_its_trials(family, tmp_path):
    """Each search on its experiment shrunk by debug=smoke: the searched keys reach the model, the objective is logged."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    genface(
        "train", f"hparams_search={family}", f"experiment={FAMILY_EXPERIMENTS[family]}", "debug=smoke", "logger=none",
        "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}", tmp_path=tmp_path,
    )  # fmt: skip
    study = optuna.load_study(study_name=f"debug-{family}", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    pick = max if study.direction.name == "MAXIMIZE" else min
    (sweep,) = sweep_dirs(tmp_path)
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"] == pick(t.value for t in study.trials)
