"""Process plumbing, in one place: which sub-command a process runs, DDP ranks inside Hydra multiruns, argv.

Entry points compose configs and call; what they must do to processes and to `sys.argv` lives here, each with
the reason it is needed:

- :func:`command_of`: Lightning starts DDP ranks 1.. as `<sys.argv> hydra.run.dir=...`, and `sys.argv` was
  rewritten for Hydra without the sub-command; rank 0 leaves it in the environment (`GENFACE_COMMAND`).
- :func:`hand_over`: Hydra reads overrides from `sys.argv`, so the sub-command must leave it.
- :func:`ddp_ranks_join_this_job`: inside a multirun, ranks would otherwise start a sweep of their own.
- :func:`release_ddp_ranks`: the next job of a multirun runs in the same process and must not find the ranks,
  the process group and the environment of the previous one.
- :func:`positional_task`: `genface analyze edit ...` and `genface standin celeba ...` take a first word that Hydra
  would refuse (it reads key=value only).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

#: The environment variable that carries the sub-command from rank 0 to the DDP ranks it starts.
COMMAND_ENV = "GENFACE_COMMAND"
#: What a DDP start leaves in the environment of the process that started the ranks.
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def command_of(args: list[str], commands: Iterable[str]) -> tuple[str, list[str]] | None:
    """(sub-command, its arguments) of `genface <command> args...`, or of a DDP rank that Lightning started from such
    a process (its argv lacks the command, which the environment holds); None when no command is given."""
    known = set(commands)
    if args and args[0] in known:
        return args[0], args[1:]
    if os.environ.get(COMMAND_ENV) in known and os.environ.get("LOCAL_RANK"):
        return os.environ[COMMAND_ENV], args
    return None


def hand_over(program: str, command: str, args: list[str]) -> None:
    """Make `sys.argv` what the command's Hydra app reads (`program overrides...`) and leave the command for the DDP
    ranks this process may start."""
    os.environ[COMMAND_ENV] = command
    sys.argv = [program, *args]


def positional_task(argv: list[str], key: str, values: Iterable[str] | None = None) -> list[str]:
    """`prog WORD rest...` -> `prog key=WORD rest...` when WORD is a bare word (one of `values`, if given)."""
    if len(argv) < 2 or "=" in argv[1] or argv[1].startswith("-"):
        return list(argv)
    if values is not None and argv[1] not in set(values):
        return list(argv)
    return [argv[0], f"{key}={argv[1]}", *argv[2:]]


def ddp_ranks_join_this_job(trainer: Any) -> None:
    """Make the DDP ranks that Lightning starts from a multirun job run this job, in this job's directory.

    Lightning starts ranks 1.. as `<sys.argv> hydra.run.dir=<hydra.run.dir>`. Inside a multirun that argv is the
    whole sweep (`-m`, `lr=1e-4,2e-4`, an Optuna search) and run.dir is not the job's directory, so every rank would
    start a sweep of its own, in new directories, and pair with rank 0 by chance. Give them this job's overrides
    (the ones the sweeper chose) in RUN mode (a search config may set hydra.mode), and its output directory as
    run.dir.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or trainer.world_size < 2:
        return
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None or environment.creates_processes_externally:  # SLURM, torchrun: nothing to start
        return
    hydra_cfg = HydraConfig.get()
    sweep_only = (
        "hydra.mode=",
        "hydra.sweep",
        "hydra.sweeper",
        "hydra.launcher",
        "hydra/sweeper=",
        "hydra/launcher=",
    )
    kept = [o for o in hydra_cfg.overrides.hydra if not o.lstrip("+~").startswith(sweep_only)]
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, *kept, "hydra.mode=RUN"]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def release_ddp_ranks(trainer: Any, failed: bool = False) -> None:
    """Where this process started the other DDP ranks, wait for them (stop them if this rank `failed`: they would
    wait for it in a collective) and undo what the start left behind (the process group, DDP_ENV): otherwise the
    next job of a multirun, in this same process, would take them for ranks launched from outside and wait for
    ranks that are gone."""
    import torch.distributed as dist

    launcher = getattr(trainer.strategy, "launcher", None)
    children = list(getattr(launcher, "procs", None) or [])
    if not children:
        return
    # Lightning's child-process observer watches this same list and kills this process when a child ends with an
    # error: empty it first, so that a failed job ends the job, not the whole sweep.
    launcher.procs.clear()
    for child in children:
        if failed:
            child.send_signal(getattr(signal, "SIGKILL", signal.SIGTERM))
        child.wait()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in DDP_ENV:
        os.environ.pop(name, None)
