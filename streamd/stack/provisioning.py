"""Shared mechanics of provisioning: progress lines on stderr, required tools, logged builds, the cache lock.

Every artifact directory in the cache gets a completion marker written only after its build succeeded,
so an interrupted download is redone on the next start instead of being mistaken for a finished one.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from streamd.stack.service import StackError

MARKER = ".complete"
HEARTBEAT_SECONDS = 10.0
INSTEAD = (
    "or point streamd at an existing Kafka and MongoDB by setting kafka.brokers, mongodb.uri "
    "and stack.local: false in config.yaml"
)


def say(message: str) -> None:
    print(f"streamd stack: {message}", file=sys.stderr, flush=True)


@contextmanager
def phase(description: str) -> Iterator[None]:
    """One progress line when a phase starts and one with its elapsed time when it ends."""
    started = time.monotonic()
    say(f"{description} ...")
    try:
        yield
    except BaseException:
        say(f"{description}: failed after {time.monotonic() - started:.1f} s")
        raise
    say(f"{description}: done in {time.monotonic() - started:.1f} s")


def require_tool(name: str, purpose: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not on PATH and is needed to {purpose}; install {install}, {INSTEAD}.")
    return path


def is_complete(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def mark_complete(directory: Path) -> None:
    (directory / MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"), encoding="utf-8")


@contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Serialize provisioning between streamd processes sharing a cache (a test session and `stack up`)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another streamd that is provisioning into {cache} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


POM = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by streamd: only its dependency list matters, to copy the runtime jars into libs/. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamd</groupId>
  <artifactId>{artifact}</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""
DEPENDENCY = """\
    <dependency>
      <groupId>{0}</groupId>
      <artifactId>{1}</artifactId>
      <version>{2}</version>
    </dependency>"""


def pom(artifact: str, version: str, dependencies: list[tuple[str, str, str]]) -> str:
    """A pom whose only content is a list of (groupId, artifactId, version) to resolve with resolve_jars."""
    listed = "\n".join(DEPENDENCY.format(*dependency) for dependency in dependencies)
    return POM.format(artifact=artifact, version=version, dependencies=listed)


def resolve_jars(mvn: str, cache: Path, directory: Path, pom: str, what: str, advice: str) -> Path:
    """Copy the runtime dependencies of `pom` from Maven Central into directory/libs once; return libs.

    StackError names `what` and ends with `advice` when mvn fails; a finished copy is never redone.
    """
    libs = directory / "libs"
    with cache_lock(cache):
        if is_complete(directory):
            return libs
        shutil.rmtree(libs, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "pom.xml").write_text(pom, encoding="utf-8")
        log = directory / "mvn.log"
        with phase(f"{what}: resolving jars from Maven Central with mvn"):
            argv = [mvn, "-B", "dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
            tail = run_logged(argv, cwd=directory, log_path=log)
            if tail:
                reason = failure_line(tail, ("[ERROR]",))
                raise StackError(f"mvn could not fetch {what} ({reason}; full output in {log}); {advice}.")
        mark_complete(directory)
    return libs


def run_logged(argv: list[str], cwd: Path, log_path: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """Run a build step with its full output in `log_path`; a heartbeat line on stderr while it runs.

    Returns the last lines of output when the step fails and [] when it succeeds. mvn and go print a
    line per downloaded artifact, which is noise on a terminal but exactly what a failed build needs.
    """
    tail: deque[str] = deque(maxlen=40)
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(argv[0], started, tail, stop), daemon=True)
        beat.start()
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            log.write(line + "\n")
            if line.strip():
                tail.append(line)
        returncode = process.wait()
        stop.set()
        beat.join()
    return [] if returncode == 0 else list(tail)


def _heartbeat(tool: str, started: float, tail: deque[str], stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        last = tail[-1].strip() if tail else ""
        say(f"  {Path(tool).name} still running ({time.monotonic() - started:.0f} s): {last[:100]}")


def failure_line(tail: list[str], patterns: tuple[str, ...]) -> str:
    """The most telling line of a failed build: the first that matches an error pattern, else the last."""
    for line in tail:
        if any(pattern in line for pattern in patterns):
            return line.strip()
    return tail[-1].strip() if tail else "no output"
