"""One local server (Kafka or the store) and how a supervised child runs it.

`run_service` is the whole body of the supervisor's child for a server: the server itself is a JVM or
a Go binary, so the child is a thin keeper that relays its output into logging and turns the
supervisor's stop request into the server's own clean shutdown.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streamd.lifecycle import Shutdown, die_with_parent

POLL_SECONDS = 0.2
# Levels as the servers print them: Kafka's log4j pattern starts with "%p", FerretDB's console format
# carries the level word in its second field, and mongod's JSON lines say "s":"W".
_LEVEL_RE = re.compile(r'\b(DEBUG|INFO|WARN|WARNING|ERROR|FATAL)\b|"s":"([WEF])')
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}


class StackError(Exception):
    """A local server cannot be provisioned or started; the message is one sentence saying what to do."""


@dataclass(frozen=True)
class Service:
    """One local server: how to start it, and how to tell that it serves."""

    name: str  # "kafka" or "store"
    argv: list[str]
    env: dict[str, str]  # added to the inherited environment
    cwd: Path
    endpoint: str = ""
    data_dir: Path | None = None
    # Below the supervisor's graceful_timeout, so the server is killed by us (and reported) rather than
    # orphaned when the supervisor kills this child.
    stop_timeout: float = 20.0
    check: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    def ready(self) -> bool:
        """True when the server answers its protocol on its endpoint (not merely accepts connections)."""
        return self.check() if self.check is not None else False

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}


def wait_ready(
    services: Iterable[Service], timeout: float, processes: Mapping[str, subprocess.Popen] | None = None
) -> None:
    """Return once every service is ready; raise StackError naming the ones that are not after `timeout`,
    or at once when one of `processes` (keyed by service name) has exited."""
    pending = list(services)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [service for service in pending if not service.ready()]
        for service in pending:
            process = (processes or {}).get(service.name)
            if process is not None and process.poll() is not None:
                raise StackError(
                    f"the local {service.name} exited with code {process.returncode} while starting "
                    f"on {service.endpoint}."
                )
        if not pending:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"{service.name} on {service.endpoint}" for service in pending)
            raise StackError(f"{names} did not become ready within {timeout:.0f} seconds.")
        time.sleep(POLL_SECONDS)


def run_service(service: Service, shutdown: Shutdown) -> int:
    """Run the server until it exits or `shutdown` is requested; return an exit code for the supervisor.

    A stop we asked for and the server honoured counts as 0; a server that exits by itself returns its
    own code (128+N when a signal N killed it), so the supervisor applies its restart policy.
    """
    log = logging.getLogger(f"streamd.stack.{service.name}")
    parent = os.getpid()
    process = subprocess.Popen(
        service.argv,
        cwd=service.cwd,
        env=service.environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Its own process group: a Ctrl-C on the terminal reaches the supervisor, which stops children in
        # order, instead of hitting the server directly in the middle of that.
        process_group=0,
        # Runs in the forked server before exec: if this child is SIGKILLed, the kernel kills the server too.
        preexec_fn=lambda: die_with_parent(signal.SIGKILL, parent),
    )
    log.info("started %s (pid %d) for %s", service.argv[0], process.pid, service.endpoint or service.name)
    relay = threading.Thread(target=_relay, args=(process, log), name=f"{service.name}-output", daemon=True)
    relay.start()
    while process.poll() is None and not shutdown.wait(POLL_SECONDS):
        pass
    if process.poll() is None:
        code = _stop(process, service.stop_timeout, log)
    else:
        code = _exit_code(process.returncode)
        log.warning("exited by itself with code %d", code)
    relay.join(timeout=2.0)
    return code


def _relay(process: subprocess.Popen, log: logging.Logger) -> None:
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if line:
            log.log(_level_of(line), "%s", line)


def _level_of(line: str) -> int:
    match = _LEVEL_RE.search(line[:80])
    return _LEVELS[match.group(1) or match.group(2)] if match else logging.INFO


def _stop(process: subprocess.Popen, timeout: float, log: logging.Logger) -> int:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.error("did not stop within %.1f s of SIGTERM; killing it", timeout)
        process.kill()
        return _exit_code(process.wait())
    log.info("stopped in %.1f s", time.monotonic() - started)
    # The JVM exits 143 after running its shutdown hooks on SIGTERM; either way the server did what we asked.
    return 0 if returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM) else _exit_code(returncode)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode
