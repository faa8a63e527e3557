"""Where each local server keeps its state, and which running process (if any) is one streamd started.

A pid file alone is not proof: after a reboot the pid may belong to anything. A process counts as ours
only when its command line names this server's directory, which every server's argv does.
"""

from __future__ import annotations

import os
from pathlib import Path

from streamd.config import Config
from streamd.control import process_alive


def stack_dir(config: Config) -> Path:
    return config.state_path / "stack"


def server_home(config: Config, name: str) -> Path:
    return stack_dir(config) / name


def server_data(config: Config, name: str) -> Path:
    return server_home(config, name) / "data"


def pid_path(config: Config, name: str) -> Path:
    return server_home(config, name) / "server.pid"


def log_path(config: Config, name: str) -> Path:
    return server_home(config, name) / "server.log"


def started_names(config: Config) -> list[str]:
    """Every server this state dir has a pid file for, whatever the config says now (a Kafka cluster of
    another size, a kind no longer needed): what `stack down` must look at so nothing is orphaned."""
    return sorted(path.parent.name for path in stack_dir(config).glob("*/server.pid"))


def write_pid(config: Config, name: str, pid: int) -> None:
    path = pid_path(config, name)
    partial = path.with_suffix(".pid.tmp")
    partial.write_text(f"{pid}\n", encoding="utf-8")
    partial.replace(path)  # a reader never sees a half-written pid


def remove_pid(config: Config, name: str) -> None:
    pid_path(config, name).unlink(missing_ok=True)


def owned_pid(config: Config, name: str) -> int | None:
    """The pid of the live server this state dir started, or None."""
    try:
        pid = int(pid_path(config, name).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    if not is_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    return pid if str(server_home(config, name)) in cmdline else None


def is_alive(pid: int) -> bool:
    """Running, and not a zombie: a server we started in this very process lingers as one until reaped."""
    if process_alive(pid):
        return True
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its own parent reaps it
    return False
