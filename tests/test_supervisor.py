"""The supervisor as a real process: signals, restarts, crash loops, reloads, systemd notifications.

These use toy children (tests/toy_supervisor.py) so that each behaviour is observed in isolation;
tests/test_pipeline_flow.py shows the same promises with the real producer, consumers and API.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd import config as config_module
from streamd import control
from streamd.children import ChildState
from streamd.supervisor import Supervisor
from tests.hostile_files import merge_bomb

from .probes import free_port, logged, wait_until
from .supervisor_process import REPO, SupervisorProcess, process_gone
from .toy_supervisor import toy_plan

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
    assert logged(sup.messages("supervisor"), "producer", "FATAL"), "the supervisor says which child gave up"


def test_a_child_ignoring_sigterm_is_killed_after_the_graceful_timeout(toy):
    sup = toy(producer={"source": "stubborn"}, supervisor={"graceful_timeout": 1}).start()
    children = sup.wait_running("producer")
    started = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert 0.9 <= time.monotonic() - started < 8
    assert process_gone(children["producer"]["pid"])
    assert logged(sup.messages("supervisor"), "producer", "graceful timeout", "SIGKILL") == 1


def test_a_second_sigint_stops_at_once(toy):
    sup = toy(producer={"source": "stubborn"}, supervisor={"graceful_timeout": 60}).start()
    children = sup.wait_running("producer")
    sup.signal(signal.SIGINT)
    wait_until(lambda: (sup.status() or {}).get("stopping"), "the first SIGINT to begin a graceful stop")
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
    assert logged(sup.messages("supervisor"), "reload refused", "consumer.processes") == 1
    assert {n: c["pid"] for n, c in sup.children().items()} == {n: c["pid"] for n, c in before.items()}


BAD_FILES = {
    "undecodable bytes": b"consumer:\n  processes: 3\n  group: caf\xe9\n",
    "empty": b"",
    "only comments": b"# consumer:\n#   processes: 3\n",
    "keys of mixed types": b"consumer: {processes: 3}\n1: one\nkafka: {}\n~: x\n",
    "deep nesting": b"[" * 5000,
    "merge-key bomb": merge_bomb(40).encode(),
    "huge": b"# " + b"x" * (2 << 20) + b"\n",
    "wrong types": b"consumer: [1, 2]\nsupervisor: {graceful_timeout: .nan}\n",
}


def test_a_supervisor_survives_any_bad_file_on_reload_with_every_child_intact(toy):
    sup = toy().start()
    before = sup.wait_running("consumer-1", "consumer-2", "producer")
    for count, (name, content) in enumerate(BAD_FILES.items(), start=1):
        sup.config_path.write_bytes(content)
        sup.signal(signal.SIGHUP)
        answer = wait_until(
            lambda count=count: (status := sup.status()) and status["reloads"] >= count and status,
            timeout=30,
            what=f"the reload of a file with {name} to be handled; log:\n{sup.log_tail()}",
        )
        assert answer["reload_refused"], f"a file with {name} was not refused"
        assert sup.process is not None and sup.process.poll() is None, f"the supervisor died on {name}"
    after = sup.children()
    assert {n: (c["pid"], c["state"]) for n, c in after.items()} == {
        n: (c["pid"], "RUNNING") for n, c in before.items()
    }
    assert "Traceback" not in sup.log()


def test_rapid_reloads_converge_on_the_last_config(toy):
    sup = toy(consumer={"processes": 4, "group": "slow-stop"}).start()
    sup.wait_running("consumer-1", "consumer-2", "consumer-3", "consumer-4", "producer")
    for count, processes in enumerate([2, 3, 1, 3], start=1):
        sup.write({"consumer": {"processes": processes, "group": "slow-stop"}})
        sup.signal(signal.SIGHUP)
        wait_until(lambda count=count: (sup.status() or {}).get("reloads", 0) >= count, what=f"reload {count}")
    wanted = {"consumer-1", "consumer-2", "consumer-3", "producer"}

    def converged():
        children = sup.children()
        settled = set(children) == wanted and all(c["state"] == "RUNNING" for c in children.values())
        return settled and children

    wait_until(converged, timeout=30, what=f"exactly {sorted(wanted)} RUNNING; log:\n{sup.log_tail()}")


def test_a_child_stopped_by_someone_elses_sigterm_is_restarted_and_not_counted_as_a_crash(toy):
    sup = toy(supervisor={"crash_limit": 1}).start()
    for restarts in (1, 2):
        pid = sup.wait_running("consumer-1", "consumer-2")["consumer-1"]["pid"]
        os.kill(pid, signal.SIGTERM)
        wait_until(
            lambda n=restarts: (c := sup.children()["consumer-1"])["restarts"] == n and c["state"] == "RUNNING",
            timeout=20,
            what=f"consumer-1 restarted {restarts} time(s); log:\n{sup.log_tail()}",
        )
    assert "FATAL" not in sup.log()


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
    sup.wait_ready()
    shown = subprocess.run(streamd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert lines[1].split()[:3] == ["CHILD", "STATE", "PID"]
    assert {line.split()[0]: line.split()[1] for line in lines[2:]} == {
        "consumer-1": "RUNNING",
        "consumer-2": "RUNNING",
        "producer": "RUNNING",
    }


def test_status_exits_3_while_a_child_is_not_running_as_supervisorctl_does(toy):
    sup = toy(producer={"source": "crasher"}, supervisor={"crash_limit": 1}).start()
    sup.wait_running("consumer-1", "consumer-2")
    wait_until(lambda: sup.children()["producer"]["state"] == "FATAL", "the producer FATAL")
    shown = run_streamd("status", "-c", str(sup.config_path))
    assert shown.returncode == 3, shown.stderr
    assert "FATAL" in shown.stdout
    as_json = run_streamd("status", "--json", "-c", str(sup.config_path))
    assert as_json.returncode == 3
    answer = orjson.loads(as_json.stdout)
    assert answer["running"] is True
    assert {c["name"]: c["state"] for c in answer["children"]}["producer"] == "FATAL"


@pytest.mark.parametrize(
    ("unreachable", "waiting_for"),
    [
        ({"kafka": {"brokers": "127.0.0.1:{port}"}}, "Kafka at 127.0.0.1:{port}"),
        (
            {"mongodb": {"uri": "mongodb://127.0.0.1:{port}", "timeout_ms": 500}},
            "the store at mongodb://127.0.0.1:{port}",
        ),
    ],
    ids=["kafka", "store"],
)
def test_ready_waits_until_kafka_and_the_store_answer_and_status_says_for_what(toy, tmp_path, unreachable, waiting_for):
    port = free_port()
    section, settings = next(iter(unreachable.items()))
    settings = {key: value.format(port=port) if isinstance(value, str) else value for key, value in settings.items()}
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.setblocking(False)
    sup = toy(**{section: settings}).start(env={"NOTIFY_SOCKET": address})
    sup.wait_running("consumer-1", "consumer-2", "producer")
    expected = waiting_for.format(port=port)
    wait_until(
        lambda: logged(sup.messages("supervisor"), "waiting for", expected), f"the wait logged; {sup.log_tail()}"
    )
    answer = sup.status()
    assert answer["waiting_for"].startswith(expected)
    shown = run_streamd("status", "-c", str(sup.config_path))
    assert shown.returncode == 3 and expected in shown.stderr
    # Every child runs, and a few probes later still nothing was announced: the pipeline cannot work.
    probes = logged(sup.messages("supervisor"), "waiting for")
    wait_until(lambda: sup.status()["uptime"] > 3, "a few probes")
    assert logged(sup.messages("supervisor"), "children are running") == 0
    notes = []
    with contextlib.suppress(BlockingIOError):
        while True:
            notes.extend(listener.recv(4096).decode().splitlines())
    assert not any(note.startswith("READY=1") for note in notes), notes
    assert logged(sup.messages("supervisor"), "waiting for") == probes, "the wait is logged once, not per probe"
    listener.close()


def test_ready_is_announced_once_kafka_and_the_store_answer(toy):
    sup = toy().start()
    assert sup.wait_ready()["waiting_for"] is None
    wait_until(lambda: logged(sup.messages("supervisor"), "3 of 3 children"), f"the ready line; {sup.log_tail()}")


def run_streamd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    environ.update(PYTHONPATH=str(REPO), **(env or {}))
    command = [sys.executable, "-m", "streamd", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environ)


def test_status_and_stop_still_reach_the_supervisor_while_the_config_file_is_invalid(toy):
    sup = toy().start()
    sup.wait_running("consumer-1", "consumer-2", "producer")
    sup.wait_ready()
    state_dir = str(sup.config.state_path)
    sup.config_path.write_text(f"state_dir: {state_dir}\nconsumer:\n  processes: many\n")
    shown = run_streamd("status", "-c", str(sup.config_path))
    assert shown.returncode == 0, shown.stderr
    assert {line.split()[0] for line in shown.stdout.splitlines()[2:]} == {"consumer-1", "consumer-2", "producer"}
    assert "invalid" in shown.stderr and "consumer.processes" in shown.stderr

    # Not even state_dir can be read from this one: STREAMD_STATE_DIR finds the supervisor.
    sup.config_path.write_bytes(b"state_dir: \xff\n")
    shown = run_streamd("status", "-c", str(sup.config_path), env={"STREAMD_STATE_DIR": state_dir})
    assert shown.returncode == 0, shown.stderr
    assert "UTF-8" in shown.stderr

    stopped = run_streamd("stop", "-c", str(sup.config_path), env={"STREAMD_STATE_DIR": state_dir})
    assert stopped.returncode == 0, stopped.stderr
    assert sup.wait_exit() == 0


def test_reload_with_an_invalid_file_says_so_and_sends_nothing(toy):
    sup = toy().start()
    before = sup.wait_running("consumer-1", "consumer-2", "producer")
    sup.config_path.write_text(f"state_dir: {sup.config.state_path}\nconsumer:\n  processes: many\n")
    result = run_streamd("reload", "-c", str(sup.config_path))
    assert result.returncode == 2
    assert "consumer.processes" in result.stderr and f"pid {sup.process.pid}" in result.stderr
    assert "Traceback" not in result.stderr
    answer = sup.status()
    assert answer["reloads"] == 0, "no SIGHUP was sent"
    assert {c["name"]: c["pid"] for c in answer["children"]} == {n: c["pid"] for n, c in before.items()}


def test_status_warns_when_the_last_reload_was_refused(toy):
    sup = toy().start()
    sup.wait_running("consumer-1", "consumer-2", "producer")
    sup.wait_ready()
    sup.config_path.write_text("")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: (sup.status() or {}).get("reloads") == 1, what="the reload")
    sup.write({})  # fixed again, but not reloaded yet: the warning is about what the supervisor runs
    shown = run_streamd("status", "-c", str(sup.config_path))
    assert shown.returncode == 0
    assert "last reload was refused" in shown.stderr and "holds no settings" in shown.stderr


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


# --- reload convergence, on paper: the real Supervisor's reload and reaping, pids handed out instead of fork() ---

reload_step = st.tuples(
    st.just("reload"), st.integers(0, 4), st.sampled_from([1.0, 0.5]), st.booleans()
)  # consumer.processes, producer.interval, producer.enabled
exit_step = st.tuples(st.just("exit"), st.integers(0, 10), st.sampled_from([0, signal.SIGKILL, signal.SIGTERM]))
tick_step = st.just(("tick",))


class PaperSupervisor:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "config.yaml"
        self.next_pid = 10_000_000  # never signalled: os.kill is replaced for these tests
        self.spawned_with: dict[int, config_module.Config] = {}
        self.write(2, 1.0, True)
        self.sup = Supervisor(config_module.load(self.path, environ={}), plan=toy_plan)
        self.sup.adopt(self.sup.plan(self.sup.config, ()))
        self.now = 0.0

    def write(self, processes: int, interval: float, enabled: bool) -> None:
        self.path.write_text(
            yaml.safe_dump(
                {
                    "state_dir": str(self.path.parent / "state"),
                    "consumer": {"processes": processes},
                    "producer": {"interval": interval, "enabled": enabled},
                    "supervisor": {"start_seconds": 0, "backoff_initial": 0, "crash_limit": 1000},
                }
            )
        )

    def tick(self) -> None:
        """What manage_children does, minus fork()."""
        self.now += 1
        for child in self.sup.children:
            if child.state is ChildState.STARTING:
                child.proven(self.now)
            elif child.due_to_spawn(self.now):
                self.next_pid += 1
                child.spawned(self.next_pid, self.now)
                self.spawned_with[self.next_pid] = child.config

    def exit(self, index: int, status: int) -> None:
        alive = [c for c in self.sup.children if c.is_alive]
        if alive:
            self.sup.reaped(alive[index % len(alive)].pid, status, self.now)

    def settle(self) -> None:
        """Every stopping child finishes, then whatever is due starts and proves itself."""
        for _ in range(3):
            for child in [c for c in self.sup.children if c.state is ChildState.STOPPING]:
                self.sup.reaped(child.pid, 0, self.now)
            self.tick()
            self.tick()


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(reload_step | exit_step | tick_step, max_size=25))
def test_any_sequence_of_reloads_and_exits_converges_on_the_last_config(tmp_path_factory, steps):
    paper = PaperSupervisor(tmp_path_factory.mktemp("paper"))
    last = (2, 1.0, True)
    with mock.patch.object(os, "kill"):
        for step in steps:
            if step[0] == "reload":
                last = step[1:]
                paper.write(*last)
                paper.sup.reload()
            elif step[0] == "exit":
                paper.exit(step[1], step[2])
            else:
                paper.tick()
        paper.settle()
    processes, _, enabled = last
    expected = {f"consumer-{i}" for i in range(1, processes + 1)} | ({"producer"} if enabled else set())
    children = paper.sup.children
    assert sorted(c.name for c in children) == sorted(expected), "exactly the last config's children, once each"
    assert all(c.state is ChildState.RUNNING for c in children)
    final = paper.sup.config
    stale = [c.name for c in children if paper.spawned_with[c.pid].changed_sections(final) & c.spec.sections]
    assert not stale, "every child runs with the last config of its sections"


def test_scale_down_then_up_within_one_stop_keeps_the_child_asked_for_last(tmp_path):
    """The issue's case: 4 consumers, reload to 2 then to 3 while 3 and 4 are still stopping."""
    paper = PaperSupervisor(tmp_path)
    with mock.patch.object(os, "kill"):
        paper.write(4, 1.0, True)
        paper.sup.reload()
        paper.tick()
        paper.tick()
        for processes in (2, 3):
            paper.write(processes, 1.0, True)
            paper.sup.reload()
        paper.settle()
    assert sorted(c.name for c in paper.sup.children) == ["consumer-1", "consumer-2", "consumer-3", "producer"]
    assert all(c.state is ChildState.RUNNING for c in paper.sup.children)


@pytest.mark.parametrize("error", [RuntimeError("a bug in the loader"), MemoryError(), RecursionError()])
def test_a_reload_survives_any_exception_from_loading_and_keeps_the_old_config(tmp_path, caplog, error):
    paper = PaperSupervisor(tmp_path)
    before = paper.sup.config
    with mock.patch.object(config_module, "load", side_effect=error):
        paper.sup.handle_hup()
    assert paper.sup.config is before
    assert paper.sup.reload_refused and type(error).__name__ in paper.sup.reload_refused
    assert sorted(c.name for c in paper.sup.children) == ["consumer-1", "consumer-2", "producer"]
    assert "Traceback" in caplog.text, "an error we did not foresee is logged with its traceback"


def test_a_reload_that_fails_while_applying_does_not_take_the_supervisor_down(tmp_path):
    paper = PaperSupervisor(tmp_path)
    paper.write(3, 0.5, True)
    with mock.patch.object(paper.sup, "plan", side_effect=ImportError("a child's module is broken")):
        paper.sup.handle_hup()  # logged; the children keep running
    assert sorted(c.name for c in paper.sup.children) == ["consumer-1", "consumer-2", "producer"]
    assert paper.sup.config.consumer.processes == 2 and paper.sup.config.producer.interval == 1.0
    assert "ImportError" in paper.sup.status()["reload_refused"], "`streamd status` tells the reload failed"


def test_a_reload_that_changes_the_consumer_group_restarts_the_api(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    sup = Supervisor(config_module.load(path, environ={}))
    sup.adopt(sup.plan(sup.config, ()))
    for pid, child in enumerate(sup.children, start=10_000_000):
        child.spawned(pid, 0.0)
        child.proven(100.0)
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "consumer": {"group": "renamed"}}))
    with mock.patch.object(os, "kill"):
        sup.reload()
    states = {child.name: child.state for child in sup.children}
    assert states.pop("producer") is ChildState.RUNNING, "the producer does not read the group"
    assert set(states.values()) == {ChildState.STOPPING}, "consumers and the API restart with the new group"
