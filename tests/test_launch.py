"""genface.launch: the sub-command reaches DDP ranks, a bare first word becomes a key, ranks are released."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from genface.launch import COMMAND_ENV, DDP_ENV, command_of, hand_over, positional_task, release_ddp_ranks

COMMANDS = ("train", "check")


def test_the_command_comes_from_argv_and_reaches_ddp_ranks_through_the_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert command_of(["train", "a=1"], COMMANDS) == ("train", ["a=1"])
    hand_over("genface", "train", ["a=1"])
    assert sys.argv == ["genface", "a=1"] and os.environ[COMMAND_ENV] == "train"
    assert command_of(["a=1", "hydra.run.dir=X"], COMMANDS) is None  # not a rank: no command given
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning started from rank 0's rewritten argv
    assert command_of(["a=1", "hydra.run.dir=X"], COMMANDS) == ("train", ["a=1", "hydra.run.dir=X"])
    monkeypatch.setenv(COMMAND_ENV, "unknown")
    assert command_of(["a=1"], COMMANDS) is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["genface", "edit", "x=1"], ["genface", "task=edit", "x=1"]),
        (["genface", "x=1"], ["genface", "x=1"]),
        (["genface", "--help"], ["genface", "--help"]),
        (["genface", "nonsense"], ["genface", "nonsense"]),  # not a task: Hydra names the bad override
        (["genface"], ["genface"]),
    ],
)
def test_a_bare_first_word_becomes_the_task(argv, expected):
    assert positional_task(argv, "task", ("edit", "all")) == expected


def test_released_ranks_are_waited_for_or_stopped_and_their_environment_cleared(monkeypatch):
    for name in DDP_ENV:
        monkeypatch.setenv(name, "1")
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    procs = [rank]
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(procs=procs)))
    release_ddp_ranks(trainer, failed=True)  # a failed rank 0: the others would wait for it in a collective
    assert rank.poll() is not None and procs == []
    assert not any(name in os.environ for name in DDP_ENV)

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    trainer.strategy.launcher.procs = [done]
    monkeypatch.setenv("MASTER_PORT", "1")
    release_ddp_ranks(trainer)
    assert done.returncode == 0 and "MASTER_PORT" not in os.environ
