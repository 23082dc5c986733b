"""Nothing lost: unique run folders, atomic checkpoints (temp file beside the target, fsync, rename, usual mode,
cleanup on failure), failed on-exception saves reported, and SIGTERM ending `genface train` with status 143."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from torch import nn

from genface.callbacks.checkpoint import FiniteCheckpoint
from genface.checkpoint_io import AtomicCheckpointIO, NonFiniteCheckpointError, atomic_torch_save
from genface.config import CONF_DIR, _run_id
from helpers import TinyImages, tiny_trainer
from test_train import UNMEASURED as TINY  # a tiny DCGAN without FID or loggers

#: The trainer plugin as conf/trainer/default.yaml is to name it (`++`: whether or not it is there already).
ATOMIC_PLUGIN = "++trainer.plugins=[{_target_:genface.checkpoint_io.AtomicCheckpointIO}]"


def checkpoint(step: int, size: int = 16) -> dict:
    return {"state_dict": {"w": torch.full((size,), float(step))}, "global_step": step}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture
def umask_027():
    """A umask other than the usual 022, so that the test sees the umask respected, not a hard-coded 0644."""
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def cross_device_rename(monkeypatch) -> list[tuple[str, str]]:
    """os.replace/os.rename fail with EXDEV between directories, as between filesystems; returns the renames done."""
    done: list[tuple[str, str]] = []
    real_replace, real_rename = os.replace, os.rename

    def guarded(real):
        def move(src, dst, *args, **kwargs):
            if Path(src).resolve().parent != Path(dst).resolve().parent:
                raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
            done.append((str(src), str(dst)))
            return real(src, dst, *args, **kwargs)

        return move

    monkeypatch.setattr(os, "replace", guarded(real_replace))
    monkeypatch.setattr(os, "rename", guarded(real_rename))
    return done


# ---------------------------------------------------------------- AtomicCheckpointIO


def test_checkpoint_is_written_beside_its_target_and_renamed_over_it(tmp_path, monkeypatch, umask_027):
    """The temp file lives in the destination directory, not $TMPDIR (renames across directories fail here, as
    across filesystems); the result has the umask's mode and no temp file stays."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    renames = cross_device_rename(monkeypatch)
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(1), target)
    io.save_checkpoint(checkpoint(2), target)
    assert load(target)["global_step"] == 2
    assert [Path(src).parent for src, _ in renames] == [target.parent] * 2
    assert stat.S_IMODE(target.stat().st_mode) == umask_027
    assert os.listdir(target.parent) == ["last.ckpt"] and os.listdir(tmp_path / "elsewhere") == []


def test_tmpdir_on_another_filesystem(tmp_path, monkeypatch):
    """$TMPDIR on a real other filesystem (/dev/shm, a tmpfs): a Trainer with the plugin writes, overwrites and
    leaves nothing in $TMPDIR."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no /dev/shm on a filesystem other than the test's tmp_path")
    other = Path(tempfile.mkdtemp(dir=shm, prefix="genface-test-"))
    try:
        monkeypatch.setenv("TMPDIR", str(other))
        monkeypatch.setattr(tempfile, "tempdir", str(other))
        trainer, last = fit_linear(tmp_path, max_epochs=2)
        assert load(last)["global_step"] == 8 and stat.S_IMODE(last.stat().st_mode) == 0o666 & ~current_umask()
        assert os.listdir(last.parent) == ["last.ckpt"] and os.listdir(other) == []
    finally:
        for leftover in other.iterdir():
            leftover.unlink()
        other.rmdir()


def test_a_write_killed_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    """torch.save writes half the file, then a signal arrives (as an exception): the previous checkpoint is
    intact and loadable, and the partial temp file is gone."""
    target = tmp_path / "last.ckpt"
    atomic_torch_save(checkpoint(1, size=10_000), target)
    before = target.read_bytes()

    def half_then_killed(obj, f, *args, **kwargs):
        f.write(b"\0" * 20_000)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_killed)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint(checkpoint(2, size=10_000), target)
    monkeypatch.undo()
    assert target.read_bytes() == before and load(target)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


_WRITE_TWICE = """
import sys, torch
from genface.checkpoint_io import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "global_step": 1}, sys.argv[1])
print("first saved", flush=True)
io.save_checkpoint({"state_dict": {"w": torch.ones(25_000_000)}, "global_step": 2}, sys.argv[1])  # 100 MB
"""


@pytest.mark.timeout(120)
def test_sigkill_during_a_write_leaves_the_previous_file(tmp_path):
    """SIGKILL the moment the second, large save starts touching the disk (a temp file appears, or last.ckpt
    changes): last.ckpt is still the first checkpoint, whole. $TMPDIR is on another filesystem where one exists."""
    shm = Path("/dev/shm")
    env = dict(os.environ)
    if shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev:
        env["TMPDIR"] = tempfile.mkdtemp(dir=shm, prefix="genface-test-")
    target = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITE_TWICE, str(target)], stdout=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "first saved"
        first = target.read_bytes()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if len(os.listdir(target.parent)) > 1 or target.stat().st_size != len(first):
                proc.kill()
                break
            time.sleep(0.001)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if env.get("TMPDIR", "").startswith(str(shm)):
            for leftover in Path(env["TMPDIR"]).iterdir():
                leftover.unlink()
            os.rmdir(env["TMPDIR"])
    assert proc.returncode == -signal.SIGKILL, "the second save ended before the kill: nothing was tested"
    assert target.read_bytes() == first and load(target)["global_step"] == 1


def test_temp_files_of_killed_processes_are_removed_by_the_next_save(tmp_path):
    """SIGKILL cannot be caught: its temp file stays until the next save of that checkpoint removes it (only
    files of dead processes of this host; a live writer's file is left alone)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    orphan = tmp_path / f".last.ckpt.{host}.{int(dead.stdout)}.abc123.tmp"
    live = tmp_path / f".last.ckpt.{host}.{os.getpid()}.def456.tmp"
    other = tmp_path / f".best.ckpt.{host}.{int(dead.stdout)}.abc123.tmp"
    for path in (orphan, live, other):
        path.write_bytes(b"partial")
    atomic_torch_save(checkpoint(1), tmp_path / "last.ckpt")
    assert sorted(os.listdir(tmp_path)) == sorted(["last.ckpt", live.name, other.name])


def test_a_full_disk_keeps_the_previous_file_and_writes_no_corrupt_one(tmp_path, monkeypatch):
    """ENOSPC mid-write (torch.save reports it as a RuntimeError over the OSError): an OSError(ENOSPC) naming the
    file; the previous last.ckpt is unchanged and no best_epoch003.ckpt exists, not even a corrupt one."""
    last, best = tmp_path / "last.ckpt", tmp_path / "best_epoch003.ckpt"
    atomic_torch_save(checkpoint(1), last)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"\0" * 1000)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from err

    monkeypatch.setattr(torch, "save", disk_full)
    for target in (last, best):
        with pytest.raises(OSError, match=f"no space left to write checkpoint {re.escape(str(target))}.*kept") as e:
            AtomicCheckpointIO().save_checkpoint(checkpoint(2), target)
        assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load(last)["global_step"] == 1 and os.listdir(tmp_path) == ["last.ckpt"]


def test_a_real_full_filesystem(tmp_path):
    """The same on a real 1 MiB tmpfs (needs root to mount; skipped otherwise)."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("mounting a small tmpfs needs root")
    try:
        target = small / "last.ckpt"
        atomic_torch_save(checkpoint(1, size=1000), target)
        with pytest.raises(OSError, match="no space left") as e:
            atomic_torch_save(checkpoint(2, size=400_000), target)  # 1.6 MB
        assert e.value.errno == errno.ENOSPC
        assert load(target)["global_step"] == 1 and os.listdir(small) == ["last.ckpt"]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_refused_rename_is_an_error_not_a_silent_success(tmp_path, monkeypatch):
    """Lightning's writer returns quietly when the final move raises PermissionError (ModelCheckpoint then logs
    "saved checkpoint to ..." over an empty folder); here the error propagates, naming the file, and nothing is
    left behind."""
    target = tmp_path / "last.ckpt"
    atomic_torch_save(checkpoint(1), target)

    def refuse(src, dst, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as e:
        AtomicCheckpointIO().save_checkpoint(checkpoint(2), target)
    monkeypatch.undo()
    assert any(str(target) in note and "previous file is kept" in note for note in e.value.__notes__)
    assert load(target)["global_step"] == 1 and os.listdir(tmp_path) == ["last.ckpt"]


def test_non_finite_weights_are_refused(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_torch_save(checkpoint(1), target)
    broken = {"state_dict": {"ok": torch.zeros(2), "net.weight": torch.tensor([0.0, float("nan")])}}
    with pytest.raises(NonFiniteCheckpointError, match=r"refusing to write checkpoint .*last.ckpt: .*net\.weight"):
        AtomicCheckpointIO().save_checkpoint(broken, target)
    assert load(target)["global_step"] == 1


# ---------------------------------------------------------------- checkpoints in a Trainer


class Linear(pl.LightningModule):
    """A linear model on TinyImages(8 px) that raises `crash` at global step `crash_at`."""

    def __init__(self, crash_at: int = -1, crash: BaseException | None = None) -> None:
        super().__init__()
        self.net = nn.Linear(3 * 8 * 8, 1)
        self.crash_at, self.crash = crash_at, crash

    def training_step(self, batch, batch_idx):
        if self.global_step == self.crash_at:
            raise self.crash
        return self.net(batch[0].flatten(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fit_linear(tmp_path: Path, max_epochs: int, model: Linear | None = None) -> tuple[pl.Trainer, Path]:
    """Fit `model` (4 steps an epoch) with last.ckpt as conf/callbacks/last_checkpoint.yaml sets it, through the
    plugin; returns the trainer and last.ckpt."""
    last = FiniteCheckpoint(dirpath=str(tmp_path / "checkpoints"), filename="last", monitor=None, save_top_k=1,
                            every_n_epochs=1, save_on_train_epoch_end=True, save_on_exception=True, mode="max")  # fmt: skip
    trainer = tiny_trainer(tmp_path, max_epochs=max_epochs, limit_val_batches=0, enable_checkpointing=True,
                           callbacks=[last], plugins=[AtomicCheckpointIO()])  # fmt: skip
    trainer.fit(model or Linear(), TinyImages(n=32, resolution=8, batch_size=8))
    return trainer, tmp_path / "checkpoints" / "last.ckpt"


def test_a_failed_save_on_the_way_out_is_reported_not_claimed(tmp_path, monkeypatch, caplog):
    """A crash at step 6, then the on-exception save hits a full disk: the log says the save failed and what is
    kept (never "saved"), the run's own error is the one raised, last.ckpt keeps the end of epoch 0."""
    real_save, saves = torch.save, []

    def full_after_first(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_first)
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError, match="FID broke"):
        fit_linear(tmp_path, max_epochs=3, model=Linear(crash_at=6, crash=RuntimeError("FID broke")))
    monkeypatch.undo()
    failed = [r.getMessage() for r in caplog.records if "could not save" in r.getMessage()]
    assert len(failed) == 1 and "no space left" in failed[0] and "last.ckpt (epoch 0, global step 4)" in failed[0]
    assert not any("saved" in r.getMessage() and "FID broke" in r.getMessage() for r in caplog.records)
    assert load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert os.listdir(tmp_path / "checkpoints") == ["last.ckpt"]


def test_the_trainer_config_takes_the_plugin(tmp_path):
    """The YAML for conf/trainer/default.yaml (`plugins: [{_target_: genface.checkpoint_io.AtomicCheckpointIO}]`),
    given here as an override, builds a Trainer that writes through the plugin."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.log_dir={tmp_path}", "trainer.accelerator=cpu",
                                                      "paths.output_dir=" + str(tmp_path), ATOMIC_PLUGIN])  # fmt: skip
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ---------------------------------------------------------------- run folders


def test_run_folders_carry_a_per_process_id_that_ddp_ranks_inherit(tmp_path):
    """`${run_id:}` is 6 hex digits, the same for every use in this process, in run and sweep folder names; the
    command Lightning starts DDP rank 1 with names rank 0's resolved folder."""
    from lightning_fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd

    assert re.fullmatch(r"[0-9a-f]{6}", _run_id()) and _run_id() == _run_id()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.log_dir={tmp_path}"], return_hydra_config=True)
    run_dir, sweep_dir = str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)
    assert run_dir.endswith("_" + _run_id()) and sweep_dir.endswith("_" + _run_id())
    assert re.search(r"/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}$", run_dir)
    cfg.hydra.runtime.cwd = os.getcwd()
    HydraConfig.instance().set_config(cfg)
    try:
        command, _ = _hydra_subprocess_cmd(local_rank=1)
    finally:
        HydraConfig.instance().cfg = None
    assert f'hydra.run.dir="{run_dir}"' in command


# Two `genface train` runs started together, as a job array or a shell loop starts them. Heavy imports happen once,
# then the process forks: both runs resolve their folder name within milliseconds, in the same second.
_TWO_RUNS = """
import os, sys, traceback
import genface.train  # noqa: F401
from genface.cli import main
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            main(["genface", "train", *sys.argv[1:]])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
print("exit statuses", codes)
sys.exit(1 if any(codes) else 0)
"""


@pytest.mark.slow  # two smoke runs at once: 20-25 s on 2 busy cores
@pytest.mark.timeout(300)
def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    env = {**os.environ, "GENFACE_DATA_DIR": str(tmp_path / "data"), "GENFACE_LOG_DIR": str(tmp_path / "logs")}
    res = subprocess.run([sys.executable, "-c", _TWO_RUNS, "experiment=dcgan_synthfaces", "debug=smoke"],
                         capture_output=True, text=True, timeout=280, env=env)  # fmt: skip
    runs = sorted((tmp_path / "logs" / "debug" / "runs").iterdir())
    assert len(runs) == 2, f"{[r.name for r in runs]}\n{res.stdout[-2000:]}{res.stderr[-3000:]}"
    assert res.returncode == 0, res.stderr[-3000:]
    for run in runs:
        assert load(run / "checkpoints" / "last.ckpt")["epoch"] == 0  # debug=smoke: 1 epoch, done
        assert (run / "csv" / "metrics.csv").is_file() and (run / ".hydra" / "config.yaml").is_file()


# ---------------------------------------------------------------- SIGTERM


@pytest.mark.timeout(300)
def test_sigterm_saves_the_checkpoint_and_exits_143(tmp_path):
    """SIGTERM (SLURM pre-emption) once training runs: the step ends, last.ckpt is saved through the plugin, and
    the process exits with 143, so a scheduler requeues the run instead of marking it done."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "GENFACE_DATA_DIR": str(tmp_path / "data"), "GENFACE_LOG_DIR": str(tmp_path / "logs")}
    args = [*TINY, ATOMIC_PLUGIN, "trainer.max_epochs=100000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "genface", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not last.is_file():
            time.sleep(0.1)
        assert proc.poll() is None and last.is_file(), "training did not start"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, output[-3000:]
    assert "exiting with status 143" in output, output[-3000:]
    state = load(last)
    assert state["global_step"] > 0 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not [p.name for p in last.parent.iterdir() if not p.name.endswith(".ckpt")]  # no temp file left
