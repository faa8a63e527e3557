"""A supervisor under test, run as a real process: start it, ask its status and its API, signal it, read its log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml

from streamd import config as config_module
from streamd import control
from streamd.config import Config
from streamd.control import descendants

from .probes import REPO, wait_until

# The children of `streamd start` with the repository's config.yaml, in start order.
PIPELINE = ("producer", "consumer-1", "consumer-2", "analyzer", "api")


def start_streamd(tmp_path: Path, settings: Config, prefix: Sequence[str] = (), **sections: dict) -> SupervisorProcess:
    """`streamd start -c <tmp_path>/config.yaml` as a real process, with `sections` laid over `settings`;
    `prefix` goes before the command (the scale-out harness runs it inside a host's network namespace)."""
    raw = config_module.to_mapping(settings)
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    command = [*prefix, sys.executable, "-m", "streamd", "start", "-c", str(path)]
    return SupervisorProcess(path, command, tmp_path / "streamd.log").start()


def process_gone(pid: int) -> bool:
    return not control.process_alive(pid)


def api_url(sup: SupervisorProcess, path: str) -> str:
    return f"http://127.0.0.1:{sup.config.api.port}{path}"


def get_json(url: str) -> tuple[int, dict]:
    """The status and JSON body of a GET; (0, {}) while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


class SupervisorProcess:
    def __init__(self, config_path: Path, command: Sequence[str], log_path: Path, env: dict | None = None) -> None:
        self.config_path = config_path
        self.command = list(command)
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self._config = None

    @property
    def config(self):
        # Read once: a test may later write an invalid file on purpose.
        if self._config is None:
            self._config = config_module.load(self.config_path, environ={})
        return self._config

    def start(self, env: dict | None = None) -> SupervisorProcess:
        environ = {**os.environ, "PYTHONPATH": str(REPO), **self.env, **(env or {})}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, env=environ, stdout=log, stderr=log)
        return self

    def status(self) -> dict | None:
        try:
            return control.request_status(self.config)
        except (control.NotRunning, OSError):
            return None

    def children(self) -> dict[str, dict]:
        answer = self.status() or {"children": []}
        return {child["name"]: child for child in answer["children"]}

    def wait_running(self, *names: str, timeout: float = 10.0) -> dict[str, dict]:
        def all_running():
            children = self.children()
            if all(children.get(n, {}).get("state") == "RUNNING" for n in names):
                return children
            return None

        return wait_until(all_running, f"{', '.join(names)} RUNNING; log:\n{self.log_tail()}", timeout)

    def wait_ready(self, timeout: float = 30.0) -> dict:
        """The status once Kafka and the store answered (the supervisor waits for nothing any more)."""

        def ready():
            answer = self.status()
            return answer if answer is not None and answer.get("waiting_for") is None else None

        return wait_until(ready, f"the supervisor ready; log:\n{self.log_tail()}", timeout)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def messages(self, child: str) -> list[str]:
        """The log messages of one child, without the line's time and name prefix."""
        marker = f"[{child}] "
        return [line.split(marker, 1)[1] for line in self.log().splitlines() if marker in line]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            leftovers = descendants(self.process.pid)
            self.process.kill()
            self.process.wait()
            for pid in leftovers:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
