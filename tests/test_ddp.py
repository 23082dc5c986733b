"""Real 2-rank CPU DDP through the CLI (`genface train ... trainer=ddp_cpu`, strategy "ddp", gloo) for every model
family: after a few steps both ranks hold identical weights, rank zero alone writes the run's files, and a
multirun of DDP jobs keeps every rank of a job in that job's directory (no stray sweeps, no hang).

The ranks' weights are dumped by `RankStateDump`, a callback of this test harness (not of genface) that the
CLI builds from a `+callbacks.rank_state=...` override: the ranks import it from this file (tests/ is put on
PYTHONPATH) and write their state dicts outside the run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from helpers import FAMILY_EXPERIMENTS

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


class RankStateDump(pl.Callback):
    """Each rank saves `<out>/<tag>_rank<r>.pt` at the end of fit: state dict, world size, seed, run dir.

    `tag` comes from the command line (`...tag=seed${seed}`), so a rank that ran another job than rank 0
    writes under another name. `fail_on_rank_zero` makes rank 0 crash once training has started (the other
    rank then waits for it in the first collective).
    """

    def __init__(self, out: str, tag: str = "run", fail_on_rank_zero: bool = False) -> None:
        self.out, self.tag, self.fail_on_rank_zero = Path(out), tag, fail_on_rank_zero

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.fail_on_rank_zero and trainer.global_rank == 0:
            raise RuntimeError("rank 0 fails on purpose (test_ddp)")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "state": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "trainable": sorted(name for name, p in pl_module.named_parameters() if p.requires_grad),
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "seed": os.environ.get("PL_GLOBAL_SEED"),
            "root_dir": str(Path(trainer.default_root_dir).resolve()),
        }
        torch.save(record, self.out / f"{self.tag}_rank{trainer.global_rank}.pt")


def run_genface(tmp_path: Path, *overrides: str, timeout: int) -> subprocess.CompletedProcess:
    """`python -m genface train <overrides> trainer=ddp_cpu` in tmp_path, with the weight dump on."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "NODE_RANK")
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(SRC), env.get("PYTHONPATH")) if p)
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1")
    args = [
        *overrides,
        "trainer=ddp_cpu",
        "~callbacks.progress",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        "+callbacks.rank_state._target_=test_ddp.RankStateDump",
        f"+callbacks.rank_state.out={tmp_path / 'ranks'}",
    ]
    return subprocess.run(
        [sys.executable, "-m", "genface", "train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_ranks(folder: Path, tag: str) -> list[dict]:
    found = sorted(p.name for p in folder.glob("*.pt"))
    ranks = [folder / f"{tag}_rank{r}.pt" for r in range(2)]
    assert all(p.is_file() for p in ranks), f"expected {[p.name for p in ranks]}, found {found}"
    return [torch.load(p, weights_only=False) for p in ranks]


def assert_same_weights(ranks: list[dict]) -> None:
    """Every trainable parameter and every buffer that is not a batch-norm statistic are bit-identical.

    Batch-norm running statistics are per rank by design under DDP without sync_batchnorm (ddp_cpu): each
    rank normalises its own shard, and DDP only broadcasts rank 0's buffers at the start of the next forward.
    """
    zero, one = ranks
    assert zero["world_size"] == one["world_size"] == 2
    assert zero["global_step"] == one["global_step"] > 0
    assert zero["state"].keys() == one["state"].keys()
    assert zero["trainable"], "no trainable parameter"
    per_rank_stats = ("running_mean", "running_var", "num_batches_tracked")
    differing = [
        name
        for name, tensor in zero["state"].items()
        if not name.endswith(per_rank_stats) and not torch.equal(tensor, one["state"][name])
    ]
    assert not differing, f"ranks disagree on {len(differing)} tensors, e.g. {differing[:5]}"


def assert_one_csv_log(csv_dir: Path) -> None:
    """The CSV logger's files, once: no `version_1/` of a second logger (a rank that logged on its own)."""
    entries = list(csv_dir.iterdir())
    assert {"hparams.yaml", "metrics.csv"} <= {p.name for p in entries}
    assert not [p for p in entries if p.is_dir()], entries


def assert_rank_zero_files(tmp_path: Path, run_dir: Path, extra_top: set[str] = frozenset()) -> None:
    """One run directory with one set of artefacts; nothing written anywhere else in the working directory."""
    assert {p.name for p in tmp_path.iterdir()} == {"logs", "data", "ranks", *extra_top}
    assert_one_csv_log(run_dir / "csv")
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list(run_dir.glob("*.log"))) == 1  # Hydra's job log: rank 1 appends to rank 0's file
    strays = [p for p in run_dir.rglob("*") if p.name.startswith(("version_", "lightning_logs", ".pl_ddp"))]
    assert not strays, strays


def check_family(tmp_path: Path, experiment: str, *overrides: str, extra_top: set[str] = frozenset()) -> None:
    res = run_genface(tmp_path, f"experiment={experiment}", "debug=smoke", *overrides, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    run_dirs = list((tmp_path / "logs").glob("*/*/*"))
    assert len(run_dirs) == 1 and run_dirs[0].parent.name == "runs", run_dirs
    ranks = load_ranks(tmp_path / "ranks", "run")
    assert {r["root_dir"] for r in ranks} == {str(run_dirs[0].resolve())}
    assert_same_weights(ranks)
    assert_rank_zero_files(tmp_path, run_dirs[0], extra_top)


# DCGAN under DDP is in the fast suite too: test_multirun_of_ddp_jobs_keeps_each_rank_in_its_job runs two jobs of it.
FAMILIES = {k: v for k, v in FAMILY_EXPERIMENTS.items() if k != "latent_diffusion"}  # latent diffusion: its own test


@pytest.mark.slow
@pytest.mark.timeout(450)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ddp_family_ranks_agree_and_rank_zero_writes(tmp_path, family):
    check_family(tmp_path, FAMILIES[family])


def tiny_first_stage(compose_train, path: Path) -> Path:
    """A VAE-GAN checkpoint whose flat 64-d latent fits latent_diffusion_synthfaces' denoiser (dim 64), 32 px."""
    from hydra.utils import instantiate

    from helpers import TinyImages, tiny_trainer

    cfg = compose_train("model=vaegan_tiny", "data.resolution=32", "model.autoencoder.base_channels=8")
    model = instantiate(cfg.model)
    trainer = tiny_trainer(path.parent, max_steps=1)
    trainer.fit(model, datamodule=TinyImages(n=8, resolution=32, batch_size=4))
    trainer.save_checkpoint(path)
    return path


@pytest.mark.slow
@pytest.mark.timeout(450)
def test_ddp_latent_diffusion_loads_its_first_stage_on_every_rank(tmp_path, compose_train):
    ckpt = tiny_first_stage(compose_train, tmp_path / "first_stage" / "vaegan.ckpt")
    check_family(tmp_path, "latent_diffusion_synthfaces", f"model.first_stage_ckpt={ckpt}", extra_top={"first_stage"})
    zero, _ = load_ranks(tmp_path / "ranks", "run")
    frozen = torch.load(ckpt, weights_only=False)["state_dict"]
    # the frozen first stage is the checkpoint's on both ranks (checked equal above), untouched by training
    for name, tensor in frozen.items():
        if name.startswith("autoencoder."):
            assert torch.equal(zero["state"]["first_stage." + name.removeprefix("autoencoder.")], tensor), name


@pytest.mark.slow  # 27 s; tests/test_launch.py covers the argv it relies on, fast
@pytest.mark.timeout(500)
def test_multirun_of_ddp_jobs_keeps_each_rank_in_its_job(tmp_path):
    """`genface train -m seed=1,2 trainer=ddp_cpu` (DCGAN): each job's two ranks run that job (same seed, same
    run dir) and end with the same weights, one sweep directory holds both jobs, rank 0 alone writes each
    job's files, and no rank starts a sweep or a run of its own."""
    res = run_genface(
        tmp_path,
        "-m",
        "experiment=dcgan_synthfaces",
        "debug=smoke",
        "seed=1,2",
        "+callbacks.rank_state.tag=seed${seed}",
        timeout=450,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    task = tmp_path / "logs" / "debug"
    assert [p.name for p in task.iterdir()] == ["multiruns"]  # no `runs/`: no rank ran outside the sweep
    sweeps = list((task / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    assert sorted(p.name for p in sweeps[0].iterdir()) == ["0", "1", "multirun.yaml"]
    for num, seed in enumerate((1, 2)):
        job = sweeps[0] / str(num)
        ranks = load_ranks(tmp_path / "ranks", f"seed{seed}")
        assert [r["seed"] for r in ranks] == [str(seed)] * 2
        assert {r["root_dir"] for r in ranks} == {str(job.resolve())}
        assert_same_weights(ranks)
        assert_rank_zero_files(tmp_path, job)
    assert len(list((tmp_path / "ranks").glob("*.pt"))) == 4


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_optuna_search_of_ddp_trials_keeps_each_rank_in_its_trial(tmp_path):
    """An Optuna search (hparams_search sets hydra.mode=MULTIRUN) of DDP trials: each trial's second rank runs
    that trial's sampled learning rate (a rank with another one would end with other weights), not a search."""
    res = run_genface(
        tmp_path,
        "hparams_search=dcgan",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=0",
        "experiment=dcgan_synthfaces",
        "debug=smoke",
        "+callbacks.rank_state.tag=lr${model.optimizer_g.lr}",
        timeout=450,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert [p.name for p in (tmp_path / "logs" / "debug").iterdir()] == ["multiruns"]
    (sweep,) = (tmp_path / "logs" / "debug" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "optimization_results.yaml"]
    tags = sorted({p.name.rsplit("_rank", 1)[0] for p in (tmp_path / "ranks").glob("*.pt")})
    assert len(tags) == 2, tags  # two trials, two learning rates, each on both ranks
    for tag in tags:
        ranks = load_ranks(tmp_path / "ranks", tag)
        assert ranks[0]["root_dir"] == ranks[1]["root_dir"]
        assert_same_weights(ranks)


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_multirun_goes_on_after_a_ddp_job_fails(tmp_path):
    """Rank 0 of the first job crashes while its second rank waits in a collective: that rank is stopped, and
    the next job starts its own ranks instead of waiting for the dead ones."""
    res = run_genface(
        tmp_path,
        "-m",
        "experiment=dcgan_synthfaces",
        "debug=smoke",
        "+callbacks.rank_state.fail_on_rank_zero=true,false",
        "+callbacks.rank_state.tag=fail${callbacks.rank_state.fail_on_rank_zero}",
        timeout=450,
    )
    assert res.returncode != 0 and "rank 0 fails on purpose" in res.stdout + res.stderr  # the sweep reports it
    assert sorted(p.name for p in (tmp_path / "ranks").glob("*.pt")) == ["failFalse_rank0.pt", "failFalse_rank1.pt"]
    ranks = load_ranks(tmp_path / "ranks", "failFalse")
    assert ranks[0]["root_dir"] == ranks[1]["root_dir"] and ranks[0]["root_dir"].endswith("/1")
    assert_same_weights(ranks)
