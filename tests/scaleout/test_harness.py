"""The harness itself: what the watch concludes from samples, and that the simulated network and its faults
do what the scenarios rely on (hosts reach each other, the delay line delays and drops, a cut is silent
and heals, nothing is left behind)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from .faults import cut_off, impaired
from .network import PREFIX, Host, Network, sweep_stale, unavailable_reason
from .watch import Sample, Watch

# --- the watch's figures, from samples ---------------------------------------------------------------


def watch_of(*samples: Sample) -> Watch:
    watch = Watch.__new__(Watch)  # no Kafka: only the arithmetic over samples
    watch.samples = list(samples)
    return watch


def test_a_stall_is_a_partition_standing_still_while_messages_wait_in_it():
    watch = watch_of(
        Sample(0.0, {0: 10, 1: 5}, {0: 20, 1: 5}),
        Sample(1.0, {0: 10, 1: 5}, {0: 25, 1: 9}),  # partition 0 stands still; 1 has just received messages
        Sample(4.0, {0: 10, 1: 9}, {0: 30, 1: 9}),
        Sample(5.0, {0: 30, 1: 9}, {0: 30, 1: 9}),
    )
    assert watch.longest_stall() == 4.0


def test_idle_partitions_are_not_stalled():
    watch = watch_of(Sample(0.0, {0: 7}, {0: 7}), Sample(60.0, {0: 7}, {0: 7}))
    assert watch.longest_stall() == 0.0


def test_catch_up_is_the_time_until_the_backlog_of_that_moment_is_committed():
    watch = watch_of(
        Sample(10.0, {0: 0}, {0: 100}),
        Sample(12.0, {0: 60}, {0: 150}),
        Sample(15.0, {0: 100}, {0: 200}),  # what was there at 10 s is committed, more came since
    )
    assert watch.catch_up(since=10.0) == 5.0
    assert watch.catch_up(since=16.0) is None


def test_a_committed_offset_going_back_is_a_regression():
    watch = watch_of(Sample(0.0, {0: 50, 1: 3}, {}), Sample(1.0, {0: 40, 1: 3}, {}), Sample(2.0, {0: 55, 1: 4}, {}))
    assert watch.regressions() == ["partition 0: 50 -> 40"]


# --- the network -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Host, Host]]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the simulated network cannot be built here: {reason}")
    network = Network().build()
    try:
        yield network.add("app-1", 21), network.add("kafka-1", 11)
    finally:
        network.tear_down()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert network.tag not in listing, "every namespace of the run is gone"


ECHO = """
import socket, sys, threading
server = socket.create_server((sys.argv[1], 7000))
def echo(connection):
    while data := connection.recv(100):
        connection.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""

PROBE = """
import socket, sys, time
try:
    connection = socket.create_connection((sys.argv[1], 7000), timeout=3)
except OSError:
    print("unreachable")
    sys.exit()
for _ in range(int(sys.argv[2])):
    started = time.monotonic()
    try:
        connection.sendall(b"x")
        connection.recv(1)
        print(round((time.monotonic() - started) * 1000))
    except OSError:
        print("lost")
        break
"""


@pytest.fixture(scope="module")
def echo(pair: tuple[Host, Host]) -> Iterator[Host]:
    """An echo server on the second host, ready once the root namespace can reach it."""
    server_host = pair[1]
    server = subprocess.Popen([*server_host.exec_prefix(), sys.executable, "-c", ECHO, server_host.address])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((server_host.address, 7000), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the echo server did not start"
                time.sleep(0.05)
        yield server_host
    finally:
        server.kill()


def round_trips(client: Host, server: Host, count: int) -> list[str]:
    """Milliseconds of each round trip from `client` to `server` over one connection, or "lost"."""
    argv = [*client.exec_prefix(), sys.executable, "-c", PROBE, server.address, str(count)]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout.split()


def test_hosts_reach_each_other_directly(pair, echo):
    assert all(int(ms) < 100 for ms in round_trips(pair[0], echo, 5))


def test_the_delay_line_delays_what_a_host_sends_and_only_while_it_runs(pair, echo):
    with impaired(pair[0], [echo], delay_ms=200, jitter_ms=50) as passage:
        delayed = [int(ms) for ms in round_trips(pair[0], echo, 5)]
    assert all(150 <= ms < 1000 for ms in delayed), delayed
    assert passage.forwarded >= 5 and passage.dropped == 0
    assert all(int(ms) < 100 for ms in round_trips(pair[0], echo, 5)), "back to direct once it ends"


def test_the_delay_line_drops_the_share_it_is_told_to(pair, echo):
    with impaired(pair[0], [echo], loss=0.2) as passage:
        round_trips(pair[0], echo, 50)  # TCP resends what is lost; a long enough run of losses ends it early
    assert passage.forwarded + passage.dropped >= 20
    assert 0.05 < passage.loss < 0.4, passage


def test_a_cut_is_silent_and_heals(pair, echo):
    with cut_off(pair[0], [echo]):
        started = time.monotonic()
        assert round_trips(pair[0], echo, 1) == ["unreachable"]
        assert time.monotonic() - started > 2.5, "nothing refused the connection: it timed out"
    assert all(int(ms) < 100 for ms in round_trips(pair[0], echo, 3))


def test_namespaces_of_a_run_that_died_are_swept():
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the simulated network cannot be built here: {reason}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = f"{PREFIX}-{dead.pid}-app-1"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    try:
        assert leftover in sweep_stale()
        assert leftover not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", leftover], capture_output=True, check=False)
