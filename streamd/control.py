"""How `streamd stop|status|reload` reach a running supervisor: a pid file and a control socket.

Both live in the state directory, so two pipelines with different state directories never meet.
Stop and reload are plain signals (SIGTERM, SIGHUP), exactly what systemd sends; status, and the verbs
aimed at one child (`stop|start|restart CHILD`), go over a Unix socket because only the supervisor
knows each child.  A request is one line, `status` or `<verb> [CHILD…]`; the answer one JSON object.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import orjson

from streamd.config import Config

PID_FILE = "supervisor.pid"
SOCKET_FILE = "supervisor.sock"
REQUEST_TIMEOUT = 5.0
REQUEST_BYTES = 4096  # a verb and child names: one recv is enough


class NotRunning(Exception):
    """No supervisor answers for this state directory."""


def pid_path(config: Config) -> Path:
    return config.state_path / PID_FILE


def socket_path(config: Config) -> Path:
    return config.state_path / SOCKET_FILE


def running_pid(config: Config) -> int | None:
    """The supervisor's pid when its pid file names a live process, else None (stale files are ignored)."""
    try:
        pid = int(pid_path(config).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid) else None


def process_alive(pid: int) -> bool:
    """True while `pid` runs; an exited process its parent has not reaped yet (a zombie) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The state letter follows the parenthesised command name, which may itself contain spaces.
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        return True


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`: children, Gunicorn workers, a local server's JVM…"""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
            except OSError:
                continue  # exited while we looked
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class ControlServer:
    """The supervisor's end: a listening socket its main loop polls alongside the signal pipe."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sock: socket.socket | None = None

    def open(self) -> None:
        state = self.config.state_path
        state.mkdir(parents=True, exist_ok=True)
        path = socket_path(self.config)
        path.unlink(missing_ok=True)  # only reached after running_pid() said no supervisor owns it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(8)
        sock.setblocking(False)
        self.sock = sock
        pid_path(self.config).write_text(f"{os.getpid()}\n")

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def serve_one(self, answer: Callable[[str], dict]) -> None:
        """Answer one waiting client's request line with `answer(line)`; never block the main loop for long."""
        assert self.sock is not None
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            try:
                line = conn.recv(REQUEST_BYTES).decode("utf-8", "replace")
                conn.sendall(orjson.dumps(answer(line.strip())) + b"\n")
            except OSError:
                pass  # a client that hung up early is its own problem

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for path in (socket_path(self.config), pid_path(self.config)):
            path.unlink(missing_ok=True)


def request_status(config: Config) -> dict:
    return request(config, "status")


def request(config: Config, line: str) -> dict:
    """Send one request line to the running supervisor and return its answer."""
    path = socket_path(config)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            sock.connect(str(path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise NotRunning(f"no streamd supervisor is running for state directory {config.state_path}") from None
            raise
    return orjson.loads(b"".join(chunks))


class Status(NamedTuple):
    """The supervisor's status for readers that carry on without it (the API, the bench)."""

    answer: dict | None  # None when no supervisor runs or it did not answer
    problem: str | None  # why it did not answer; None when it answered or none runs


def status_if_running(config: Config) -> Status:
    try:
        return Status(request_status(config), None)
    except NotRunning:
        return Status(None, None)
    except (OSError, ValueError) as exc:
        # ValueError: an answer cut short (the supervisor stopping mid-reply) is no answer either.
        return Status(None, str(exc))
