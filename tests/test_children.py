"""The child state machine and restart policy, without processes: each transition as a user would see it."""

from __future__ import annotations

import os
import signal

import pytest

from streamd import config as config_module
from streamd.children import AfterStop, Child, ChildSpec, ChildState, RestartPolicy, describe_wait_status


def make_child(**supervisor) -> Child:
    settings = config_module.from_mapping({"supervisor": supervisor})
    spec = ChildSpec("consumer-1", "streamd: consumer 1", lambda c, s: 0, frozenset({"consumer"}))
    return Child(spec, RestartPolicy.from_config(settings.supervisor), settings)


EXIT_1 = 1 << 8  # a wait status for "exit code 1"


def test_backoff_doubles_from_initial_up_to_the_maximum():
    policy = RestartPolicy(initial=1.0, maximum=5.0, crash_limit=100, crash_window=60)
    delays = []
    for second in range(5):
        policy.record_exit(float(second))
        delays.append(policy.delay())
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_exits_older_than_the_crash_window_are_forgotten():
    policy = RestartPolicy(initial=1.0, maximum=30.0, crash_limit=3, crash_window=10)
    policy.record_exit(0.0)
    policy.record_exit(1.0)
    policy.record_exit(20.0)
    assert not policy.is_crash_loop()
    assert policy.delay() == 1.0


def test_a_new_child_starts_then_runs_after_start_seconds():
    child = make_child(start_seconds=1.0)
    assert child.state is ChildState.STOPPED and child.due_to_spawn(0.0)
    child.spawned(4242, now=10.0)
    assert child.state is ChildState.STARTING
    assert not child.due_to_prove(10.5)
    assert child.due_to_prove(11.0)
    child.proven(11.0)
    assert child.state is ChildState.RUNNING and child.restarts == 0


def test_an_unexpected_exit_backs_off_then_counts_a_restart():
    child = make_child(backoff_initial=2.0)
    child.spawned(4242, now=0.0)
    child.exited(EXIT_1, now=5.0)
    assert child.state is ChildState.BACKOFF
    assert child.pid is None and child.last_exit == "exit code 1"
    assert not child.due_to_spawn(6.9) and child.due_to_spawn(7.0)
    child.spawned(4243, now=7.0)
    assert child.restarts == 1


def test_crash_limit_exits_within_the_window_make_the_child_fatal():
    child = make_child(crash_limit=3, crash_window=60, backoff_initial=0)
    for attempt in range(3):
        child.spawned(100 + attempt, now=float(attempt))
        child.exited(EXIT_1, now=float(attempt))
    assert child.state is ChildState.FATAL
    assert not child.due_to_spawn(1000.0)


def test_a_reload_rearms_a_fatal_child_with_a_clean_history():
    child = make_child(crash_limit=1)
    child.spawned(100, now=0.0)
    child.exited(EXIT_1, now=0.0)
    assert child.state is ChildState.FATAL
    child.rearm()
    assert child.state is ChildState.STOPPED and not child.policy.recent_exits


def test_an_exit_after_a_stop_request_is_expected_and_not_restarted():
    child = make_child()
    child.spawned(os.getpid(), now=0.0)
    child.pid = 2**22 + 12345  # a pid that does not exist, so the SIGTERM goes nowhere
    child.stop_requested(now=1.0, grace=5.0)
    assert child.state is ChildState.STOPPING
    child.exited(0, now=2.0)
    assert child.state is ChildState.EXITED
    assert not child.due_to_spawn(100.0)
    assert not child.policy.recent_exits


def test_a_stopping_child_is_killed_at_its_deadline(monkeypatch):
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: sent.append(signum))
    child = make_child()
    child.spawned(4242, now=0.0)
    child.stop_requested(now=1.0, grace=5.0)
    child.deadline(5.9)
    child.deadline(6.0)
    assert sent == [signal.SIGTERM, signal.SIGKILL]


@pytest.mark.parametrize(
    "status",
    [0, signal.SIGTERM, signal.SIGINT, 143 << 8],
    ids=["exit code 0", "killed by SIGTERM", "killed by SIGINT", "exit code 143"],
)
def test_a_clean_exit_nobody_asked_for_restarts_without_counting_as_a_crash(status):
    child = make_child(crash_limit=1, backoff_initial=2.0, start_seconds=1.0)
    for attempt in range(3):
        child.spawned(100 + attempt, now=attempt * 10.0)
        child.proven(attempt * 10.0 + 1)
        child.exited(status, now=attempt * 10.0 + 5)
        assert child.state is ChildState.BACKOFF, "with crash_limit 1, one counted crash would be FATAL"
        assert not child.due_to_spawn(attempt * 10.0 + 6.9) and child.due_to_spawn(attempt * 10.0 + 7.0)
    assert not child.policy.recent_exits


def test_a_clean_exit_before_the_child_is_proven_is_a_failure_to_start():
    child = make_child(crash_limit=2, backoff_initial=0)
    for attempt in range(2):
        child.spawned(100 + attempt, now=float(attempt))
        child.exited(0, now=float(attempt))
    assert child.state is ChildState.FATAL, "a child that exits 0 at once must not restart forever"


def stopping_child(monkeypatch, **supervisor) -> Child:
    monkeypatch.setattr(os, "kill", lambda pid, signum: None)
    child = make_child(**supervisor)
    child.spawned(4242, now=0.0)
    child.proven(1.0)
    return child


def test_a_child_removed_then_asked_for_again_while_stopping_comes_back(monkeypatch):
    child = stopping_child(monkeypatch)
    assert not child.unwanted(now=2.0, grace=5.0)
    assert child.state is ChildState.STOPPING
    child.wanted(child.config, restart=False, now=2.5)
    child.exited(0, now=3.0)
    assert not child.retired
    assert child.state is ChildState.STOPPED and child.due_to_spawn(3.0)


def test_a_child_restarting_for_new_config_then_removed_is_retired(monkeypatch):
    child = stopping_child(monkeypatch)
    child.wanted(child.config, restart=True, now=2.0)
    assert child.state is ChildState.STOPPING and child.after_stop is AfterStop.RESPAWN
    child.unwanted(now=2.5, grace=5.0)
    child.exited(0, now=3.0)
    assert child.retired and not child.due_to_spawn(100.0)


def test_a_restart_for_new_config_starts_the_child_again_once_it_exits(monkeypatch):
    child = stopping_child(monkeypatch)
    child.wanted(child.config, restart=True, now=2.0)
    child.exited(0, now=3.0)
    assert child.state is ChildState.STOPPED and child.due_to_spawn(3.0)
    assert not child.policy.recent_exits


def test_a_shutdown_overrides_a_pending_restart(monkeypatch):
    child = stopping_child(monkeypatch)
    child.wanted(child.config, restart=True, now=2.0)
    child.stop_requested(now=2.5, grace=5.0, then=AfterStop.REST)
    child.exited(0, now=3.0)
    assert child.state is ChildState.EXITED and not child.due_to_spawn(100.0)


@pytest.mark.parametrize(("failures", "state"), [(0, "STOPPED"), (1, "BACKOFF"), (2, "FATAL")])
def test_a_child_without_a_process_is_removed_at_once(failures, state):
    child = make_child(crash_limit=2)
    for attempt in range(failures):
        child.spawned(100 + attempt, now=float(attempt))
        child.exited(EXIT_1, now=float(attempt))
    assert child.state.value == state
    assert child.unwanted(now=3.0, grace=5.0)


@pytest.mark.parametrize(
    ("status", "meaning"),
    [(0, "exit code 0"), (3 << 8, "exit code 3"), (signal.SIGKILL, "killed by SIGKILL")],
)
def test_wait_statuses_are_described_for_humans(status, meaning):
    assert describe_wait_status(status) == meaning


# --- the operator's verbs: stop, start and restart one child ------------------------------------------


def test_a_child_stopped_by_the_operator_stays_stopped_through_reloads(monkeypatch):
    child = stopping_child(monkeypatch)
    child.hold(now=2.0, grace=5.0)
    assert child.state is ChildState.STOPPING
    child.exited(0, now=3.0)
    assert child.state is ChildState.STOPPED and child.snapshot(3.0)["stopped_by"] == "operator"
    assert not child.due_to_spawn(100.0)
    child.wanted(child.config, restart=True, now=4.0)
    assert not child.due_to_spawn(100.0), "a reload does not undo the operator's stop"


def test_an_operator_stop_outlasts_a_reload_that_arrives_while_the_child_stops(monkeypatch):
    child = stopping_child(monkeypatch)
    child.hold(now=2.0, grace=5.0)
    child.wanted(child.config, restart=True, now=2.5)
    child.exited(0, now=3.0)
    assert child.state is ChildState.STOPPED and not child.due_to_spawn(100.0)


@pytest.mark.parametrize("failures", [1, 2])
def test_a_backing_off_or_fatal_child_stopped_by_the_operator_is_held_at_once(failures):
    child = make_child(crash_limit=2)
    for attempt in range(failures):
        child.spawned(100 + attempt, now=float(attempt))
        child.exited(EXIT_1, now=float(attempt))
    child.hold(now=5.0, grace=5.0)
    assert child.state is ChildState.STOPPED and not child.due_to_spawn(1000.0)


def test_start_brings_a_held_child_back_and_forgives_its_crashes():
    child = make_child(crash_limit=2)
    for attempt in range(2):
        child.spawned(100 + attempt, now=float(attempt))
        child.exited(EXIT_1, now=float(attempt))
    assert child.state is ChildState.FATAL
    child.hold(now=5.0, grace=5.0)
    child.release()
    assert child.state is ChildState.STOPPED and child.due_to_spawn(5.0)
    assert not child.policy.recent_exits
    assert child.snapshot(5.0)["stopped_by"] is None


def test_start_while_the_operator_stop_is_under_way_brings_the_child_back(monkeypatch):
    child = stopping_child(monkeypatch)
    child.hold(now=2.0, grace=5.0)
    child.release()
    child.exited(0, now=3.0)
    assert child.state is ChildState.STOPPED and child.due_to_spawn(3.0)


def test_restart_stops_a_running_child_gracefully_and_spawns_it_again(monkeypatch):
    child = stopping_child(monkeypatch)
    child.restart_requested(now=2.0, grace=5.0)
    assert child.state is ChildState.STOPPING and child.kill_at == 7.0
    child.exited(0, now=3.0)
    assert child.state is ChildState.STOPPED and child.due_to_spawn(3.0)
    assert not child.policy.recent_exits, "a restart asked for is not a crash"


def test_restart_of_a_held_child_starts_it():
    child = make_child()
    child.hold(now=0.0, grace=5.0)
    child.restart_requested(now=1.0, grace=5.0)
    assert child.due_to_spawn(1.0)
