"""`streamd stack up | down | status`: local servers that outlive the command that started them.

The supervisor runs servers as its own children (see service.run_service); these functions are for a
developer or a test session that wants Kafka and a store up independently of any pipeline, so each
server gets its own session, log file and pid file under the state dir.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from streamd.config import Config
from streamd.stack.pidfile import is_alive, log_path, owned_pid, remove_pid, stack_dir, started_names, write_pid
from streamd.stack.plan import KINDS, needed, provision, services_to_run
from streamd.stack.provisioning import say
from streamd.stack.service import Service, StackError, wait_ready

READY_TIMEOUT = 90.0  # a first Kafka start on a slow laptop (JIT warm-up, metadata log creation) takes ~20 s
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    endpoint: str
    answering: bool  # answers its protocol, not merely a TCP connect
    pid: int | None  # a server this state dir started with `stack up`, if running
    data_dir: Path | None  # None when the server is not ours
    log: Path | None


def ensure_running(config: Config, timeout: float = READY_TIMEOUT) -> bool:
    """Provision and start, detached, the local servers the config needs; wait until they serve.

    Returns True when it started anything. On failure it stops what it started and raises StackError
    with the tail of the server's log.
    """
    if not needed(config):
        return False
    with _state_lock(config):
        # Both decide again what is needed: another `stack up` may have started servers while we waited.
        provision(config)
        services = services_to_run(config)
        if not services:
            return False
        launched = time.monotonic()
        processes = {service.name: _launch(config, service) for service in services}
        try:
            for service in services:
                try:
                    wait_ready([service], timeout, processes)
                except StackError as exc:
                    raise StackError(f"{exc}\n{_log_tail(config, service.name)}") from None
                say(f"{service.name}: ready on {service.endpoint} after {time.monotonic() - launched:.1f} s")
        except BaseException:
            _stop(config, [service.name for service in services], config.supervisor.graceful_timeout)
            raise
    return True


def down(config: Config) -> None:
    """Stop the servers `ensure_running` started from this state dir, whatever the config says now (every
    node of a cluster of any size): SIGTERM, then SIGKILL after the supervisor's graceful_timeout. Servers
    streamd did not start are never touched."""
    names = started_names(config)
    if all(owned_pid(config, name) is None for name in names):
        say(f"no local server started from {stack_dir(config)} is running")
    _stop(config, names, config.supervisor.graceful_timeout)


def status(config: Config) -> list[ServiceStatus]:
    """Each server (each node of a Kafka cluster): where the config points, whether it answers its protocol,
    and whether it is ours."""
    statuses = []
    for kind in KINDS:
        for instance in kind.instances(config):
            pid = owned_pid(config, instance.name)
            ours = pid is not None
            statuses.append(
                ServiceStatus(
                    instance.name,
                    instance.address,
                    instance.answers(),
                    pid,
                    instance.data_dir if ours else None,
                    log_path(config, instance.name) if ours else None,
                )
            )
    return statuses


def print_status(config: Config, out: TextIO = sys.stdout) -> int:
    """The `streamd stack status` table; exit code 0 when every endpoint answers, 1 otherwise."""
    rows = [("SERVICE", "ENDPOINT", "STATE", "PID", "DATA")]
    statuses = status(config)
    for entry in statuses:
        rows.append(
            (
                entry.name,
                entry.endpoint,
                "answering" if entry.answering else "not answering",
                str(entry.pid) if entry.pid else "-",
                str(entry.data_dir) if entry.data_dir else "not started by streamd",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")
    if all(entry.answering for entry in statuses):
        return 0
    if config.stack.local is not False:
        out.write("Run `streamd stack up` to start what does not answer.\n")
    return 1


def _launch(config: Config, service: Service) -> subprocess.Popen:
    log = log_path(config, service.name)
    with open(log, "ab") as handle:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"--- {stamp} streamd stack up: {' '.join(service.argv)}\n".encode())
        handle.flush()
        # A session of its own: the server must survive the terminal and the command that started it.
        process = subprocess.Popen(
            service.argv,
            cwd=service.cwd,
            env=service.environment(),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    write_pid(config, service.name, process.pid)
    say(f"{service.name}: starting on {service.endpoint} (pid {process.pid}, log {log})")
    return process


def _stop(config: Config, names: list[str], timeout: float) -> None:
    """SIGTERM every named server at once, so they stop in parallel; SIGKILL what outlives `timeout`;
    remove their pid files."""
    started = time.monotonic()
    running = {name: pid for name in names if (pid := owned_pid(config, name)) is not None}
    for name, pid in running.items():
        say(f"{name}: stopping pid {pid}")
        _signal_group(pid, signal.SIGTERM)
    deadline = started + timeout
    stopping = dict(running)
    while stopping and time.monotonic() < deadline:
        for name, pid in list(stopping.items()):
            if not is_alive(pid):
                say(f"{name}: stopped after {time.monotonic() - started:.1f} s")
                del stopping[name]
        time.sleep(0.1)
    for name, pid in stopping.items():
        say(f"{name}: pid {pid} still running after {timeout:.0f} s; killing it")
        _signal_group(pid, signal.SIGKILL)
        while is_alive(pid):
            time.sleep(0.05)
    for name in names:
        remove_pid(config, name)  # also the stale ones: their process is gone or the pid was reused


def _signal_group(pid: int, signum: int) -> None:
    """The server leads its own session, so signalling its group also reaches anything it spawned."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _log_tail(config: Config, name: str) -> str:
    log = log_path(config, name)
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return f"(no log at {log})"
    return f"Last lines of {log}:\n" + "\n".join(f"  {line}" for line in lines)


@contextmanager
def _state_lock(config: Config) -> Iterator[None]:
    """One `stack up` at a time per state dir, so two never race to bind the same ports."""
    directory = stack_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
