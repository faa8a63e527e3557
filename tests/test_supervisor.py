"""The supervisor as a real process: signals, restarts, crash loops, reloads, systemd notifications.

These use toy children (tests/toy_supervisor.py) so that each behaviour is observed in isolation;
tests/test_pipeline_flow.py shows the same promises with the real producer, consumers and API.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamd import control

from .supervisor_process import REPO, SupervisorProcess, process_gone, wait_until

TOY = Path(__file__).with_name("toy_supervisor.py")


class ToySupervisor(SupervisorProcess):
    def __init__(self, tmp_path: Path, sections: dict) -> None:
        self.dir = tmp_path
        self.events_path = tmp_path / "events"
        config_path = tmp_path / "config.yaml"
        super().__init__(
            config_path,
            [sys.executable, str(TOY), str(config_path)],
            tmp_path / "supervisor.log",
            env={"TOY_EVENTS": str(self.events_path)},
        )
        self.write(sections)

    def write(self, sections: dict) -> None:
        defaults = {
            "state_dir": str(self.dir / "state"),
            "consumer": {"processes": 2},
            "supervisor": {"start_seconds": 0.2, "backoff_initial": 0.1, "graceful_timeout": 5},
        }
        merged = {**defaults, **sections}
        for key in ("consumer", "supervisor"):
            merged[key] = {**defaults[key], **sections.get(key, {})}
        self.config_path.write_text(yaml.safe_dump(merged))

    def events(self) -> list[str]:
        return self.events_path.read_text().splitlines() if self.events_path.exists() else []


@pytest.fixture
def toy(tmp_path: Path):
    made: list[ToySupervisor] = []

    def make(**sections: Any) -> ToySupervisor:
        made.append(ToySupervisor(tmp_path, sections))
        return made[-1]

    yield make
    for supervisor in made:
        supervisor.kill()


def test_every_child_starts_with_its_process_title_and_reports_running(toy):
    sup = toy().start()
    children = sup.wait_running("consumer-1", "consumer-2", "producer")
    title = Path(f"/proc/{children['consumer-2']['pid']}/cmdline").read_bytes().replace(b"\0", b" ").strip()
    assert title == b"streamd: consumer 2"
    assert {c["restarts"] for c in children.values()} == {0}


def test_sigterm_stops_every_child_cleanly_and_exits_zero(toy):
    sup = toy().start()
    children = sup.wait_running("consumer-1", "consumer-2", "producer")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert sorted(e.split()[0] for e in sup.events() if e.endswith("stopped cleanly")) == [
        "consumer-1",
        "consumer-2",
        "producer",
    ]
    assert all(process_gone(c["pid"]) for c in children.values())
    assert not control.socket_path(sup.config).exists(), "the control socket is removed on exit"


def test_a_killed_child_is_restarted_and_the_others_are_untouched(toy):
    sup = toy().start()
    before = sup.wait_running("consumer-1", "consumer-2", "producer")
    os.kill(before["consumer-1"]["pid"], signal.SIGKILL)
    after = wait_until(
        lambda: (c := sup.children())["consumer-1"]["restarts"] == 1 and c["consumer-1"]["state"] == "RUNNING" and c,
        what="consumer-1 restarted",
    )
    assert after["consumer-1"]["pid"] != before["consumer-1"]["pid"]
    assert after["consumer-1"]["last_exit"] == "killed by SIGKILL"
    assert after["consumer-2"]["pid"] == before["consumer-2"]["pid"]
    assert after["producer"]["pid"] == before["producer"]["pid"]


def test_a_crash_looping_child_becomes_fatal_while_the_others_keep_running(toy):
    sup = toy(producer={"source": "crasher"}, supervisor={"crash_limit": 3, "backoff_initial": 0.05}).start()
    wait_until(lambda: sup.children().get("producer", {}).get("state") == "FATAL", what="producer FATAL")
    children = sup.children()
    assert children["producer"]["restarts"] == 2
    assert children["consumer-1"]["state"] == children["consumer-2"]["state"] == "RUNNING"
    assert "producer is FATAL" in sup.log()


def test_a_child_ignoring_sigterm_is_killed_after_the_graceful_timeout(toy):
    sup = toy(producer={"source": "stubborn"}, supervisor={"graceful_timeout": 1}).start()
    children = sup.wait_running("producer")
    started = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert 0.9 <= time.monotonic() - started < 8
    assert process_gone(children["producer"]["pid"])
    assert "producer did not stop within the graceful timeout; sending SIGKILL" in sup.log()


def test_a_second_sigint_stops_at_once(toy):
    sup = toy(producer={"source": "stubborn"}, supervisor={"graceful_timeout": 60}).start()
    children = sup.wait_running("producer")
    sup.signal(signal.SIGINT)
    time.sleep(0.3)
    sup.signal(signal.SIGINT)
    assert sup.wait_exit(timeout=5) == 1
    assert process_gone(children["producer"]["pid"])


def test_sigkill_of_the_supervisor_leaves_no_child(toy):
    sup = toy().start()
    children = sup.wait_running("consumer-1", "consumer-2", "producer")
    sup.signal(signal.SIGKILL)
    sup.wait_exit()
    wait_until(lambda: all(process_gone(c["pid"]) for c in children.values()), timeout=5, what="children gone")


def test_reload_scales_consumers_and_restarts_only_children_whose_section_changed(toy):
    sup = toy().start()
    before = sup.wait_running("consumer-1", "consumer-2", "producer")

    sup.write({"consumer": {"processes": 3}})
    sup.signal(signal.SIGHUP)
    grown = sup.wait_running("consumer-1", "consumer-2", "consumer-3", "producer")
    assert {n: grown[n]["pid"] for n in before} == {n: before[n]["pid"] for n in before}, "nobody else restarts"

    sup.write({"consumer": {"processes": 3}, "producer": {"interval": 0.5}})
    sup.signal(signal.SIGHUP)
    wait_until(lambda: sup.children()["producer"]["pid"] not in (None, before["producer"]["pid"]), what="restart")
    changed = sup.wait_running("producer")
    assert changed["consumer-1"]["pid"] == before["consumer-1"]["pid"]

    sup.write({"consumer": {"processes": 1}, "producer": {"interval": 0.5}})
    sup.signal(signal.SIGHUP)
    wait_until(lambda: set(sup.children()) == {"consumer-1", "producer"}, what="scale down to one consumer")
    stopped = {e.split()[0] for e in sup.events() if e.endswith("stopped cleanly")}
    assert {"consumer-2", "consumer-3"} <= stopped, "removed consumers finish and stop cleanly"


def test_an_invalid_config_on_reload_keeps_the_running_config(toy):
    sup = toy().start()
    before = sup.wait_running("consumer-1", "consumer-2", "producer")
    sup.config_path.write_text("consumer:\n  processes: many\n")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in sup.log(), what="the refusal in the log")
    assert "consumer.processes: expected a whole number" in sup.log()
    assert {n: c["pid"] for n, c in sup.children().items()} == {n: c["pid"] for n, c in before.items()}


def test_systemd_hears_ready_reloading_stopping_and_watchdog(toy, tmp_path):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(10)
    received: list[str] = []

    def heard(line: str) -> bool:
        while not any(m.startswith(line) for m in received):
            received.extend(listener.recv(4096).decode().splitlines())
        return True

    sup = toy().start(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    assert heard("READY=1")
    assert heard("WATCHDOG=1")
    sup.signal(signal.SIGHUP)
    assert heard("RELOADING=1")
    sup.signal(signal.SIGTERM)
    assert heard("STOPPING=1")
    assert sup.wait_exit() == 0
    listener.close()


def test_status_command_prints_every_child_and_exits_3_when_nothing_runs(toy):
    sup = toy()
    streamd = [sys.executable, "-m", "streamd", "status", "-c", str(sup.config_path)]
    idle = subprocess.run(streamd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert idle.returncode == 3
    assert "no streamd supervisor is running" in idle.stderr

    sup.start()
    sup.wait_running("consumer-1", "consumer-2", "producer")
    shown = subprocess.run(streamd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert lines[1].split()[:3] == ["CHILD", "STATE", "PID"]
    assert {line.split()[0]: line.split()[1] for line in lines[2:]} == {
        "consumer-1": "RUNNING",
        "consumer-2": "RUNNING",
        "producer": "RUNNING",
    }


def test_a_second_start_on_the_same_state_directory_is_refused(toy):
    sup = toy().start()
    sup.wait_running("consumer-1")
    second = subprocess.run(
        [sys.executable, "-m", "streamd", "start", "-c", str(sup.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert second.returncode == 1
    assert "a supervisor already runs" in second.stderr


def test_stop_command_stops_the_supervisor_and_waits_for_it(toy):
    sup = toy().start()
    sup.wait_running("consumer-1", "consumer-2", "producer")
    stopped = subprocess.run(
        [sys.executable, "-m", "streamd", "stop", "-c", str(sup.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert stopped.returncode == 0, stopped.stderr
    assert sup.process is not None and sup.process.poll() == 0
