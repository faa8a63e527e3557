"""Dying with the parent: a process started for someone must not outlive them, nor start after they are gone."""

from __future__ import annotations

import os
import subprocess
import sys

from .supervisor_process import REPO

CHILD = (
    "import signal, sys\n"
    "from streamd.lifecycle import die_with_parent\n"
    "die_with_parent(signal.SIGTERM, int(sys.argv[1]))\n"
    "print('running')\n"
)


def run_child(parent: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(parent)], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_a_child_of_a_living_parent_runs_on():
    result = run_child(os.getpid())
    assert (result.returncode, result.stdout) == (0, "running\n")


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    result = run_child(os.getpid() + 1_000_000)  # not our pid: as if the parent died and we were re-parented
    assert result.returncode == 1 and result.stdout == ""
