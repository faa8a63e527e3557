"""Beyond one machine: streamd hosts and a 3-broker KRaft cluster on a simulated network, and the faults a
Jepsen run would try. Each scenario sends at least 100,000 known messages (every POISON_EVERY-th one poison)
while it breaks something, and ends with `streamd verify`: nothing missing, nothing duplicated, the
poison dead-lettered, and no committed offset ever going backwards. Its figures go to
.streamd/scaleout/figures.md (the README's table comes from there).

    1. a broker SIGKILLed while it leads a partition, restarted later
    2. a streamd host cut off from the brokers for longer than the session timeout, then healed
    3. a whole streamd host paused with SIGSTOP for 60 s, as a VM pause, then resumed
    4. 1 -> 3 -> 1 streamd hosts under load
    5. 200 ms ± 50 ms of latency and 2 % loss between the streamd hosts and the brokers for a minute

Needs root (namespaces, veths, routes); skipped elsewhere with the reason. `--scale N` multiplies the load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd import config as config_module
from streamd.config import Config
from streamd.verify import verify

from ..fault_stack import KnownProducer, poison_count
from ..probes import all_committed, logged, wait_until
from . import report
from .apps import StreamdHost, owners
from .cluster import Cluster
from .faults import cut_off, impaired, pause, resume
from .network import Host, Network, unavailable_reason
from .watch import Watch

MESSAGES = 100_000
RATE = 4_000  # messages a second: the load spans the faults, and the group can keep up when nothing is wrong
PARTITIONS = 6
PAUSE_SECONDS = 60
IMPAIRED_SECONDS = 60
SESSION_TIMEOUT_SECONDS = 10  # the consumers' session.timeout.ms (streamd/kafka.py)

pytestmark = pytest.mark.integration  # real servers of its own: `-m "not integration"` leaves it out


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the scale-out scenarios build a simulated network and cannot here: {reason}")
    # A SIGTERM (a CI job timing out, a Ctrl-C in another terminal) becomes an interruption, which pytest
    # answers by tearing every fixture down: servers stopped, namespaces deleted.
    previous = signal.signal(signal.SIGTERM, interrupt)
    built = Network().build()
    try:
        yield built
    finally:
        built.tear_down()
        signal.signal(signal.SIGTERM, previous)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def cluster(network: Network) -> Iterator[Cluster]:
    """The servers' state lives under the repository's git-ignored .streamd/, and goes when they stop."""
    state = report.REPORT_DIR / f"run-{os.getpid()}"
    try:
        servers = Cluster(network, state)
        try:
            servers.start()
            yield servers
        finally:
            servers.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def app_hosts(network: Network, cluster: Cluster) -> list[Host]:
    return [network.add(f"app-{n}", 20 + n) for n in (1, 2, 3)]


@pytest.fixture(scope="module")
def figures() -> Iterator[list[report.Figures]]:
    rows: list[report.Figures] = []
    yield rows
    if rows:
        print(f"\nscale-out figures ({report.write(rows)}):\n{report.markdown(rows)}")


@pytest.fixture
def flow(cluster: Cluster) -> Config:
    """This scenario's topic, group and database on the cluster; one consumer process per host."""
    run = uuid.uuid4().hex[:8]
    raw = config_module.to_mapping(cluster.config)
    sections = {
        "kafka": {"topic": f"scale-{run}", "dead_letter_topic": f"scale-{run}.dlq", "partitions": PARTITIONS},
        "mongodb": {"database": f"scale_{run}"},
        "consumer": {"group": f"scale-{run}", "processes": 1},
        "producer": {"enabled": False},
        "analytics": {"enabled": False},
        "api": {"workers": 1},
        "supervisor": {"graceful_timeout": 30},
    }
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return config_module.from_mapping(raw, label="scale-out scenario")


class Scenario:
    """One run: hosts started, the load, the watch, and the checks and figures at the end."""

    def __init__(self, name: str, flow: Config, cluster: Cluster, tmp_path: Path, scale: float, figures: list) -> None:
        self.name, self.flow, self.cluster, self.tmp_path, self.figures = name, flow, cluster, tmp_path, figures
        self.count = int(MESSAGES * scale)
        self.hosts: dict[str, StreamdHost] = {}
        self.watch = Watch(flow)
        self.producer = KnownProducer(flow, uuid.uuid4().hex[:8], limit=self.count, rate=RATE)
        self.rate = RATE

    def start(self, *hosts: Host) -> list[StreamdHost]:
        started = [StreamdHost(host, self.flow, self.tmp_path / host.name) for host in hosts]
        self.hosts.update((host.name, instance) for host, instance in zip(hosts, started, strict=True))
        for instance in started:
            instance.wait_running()
        return started

    def share(self, *hosts: Host) -> list[StreamdHost]:
        """These hosts started, and holding the partitions between them."""
        started = self.start(*hosts)
        wait_until(lambda: self.owned_by(*started), timeout=60, what="the hosts sharing the partitions")
        return started

    def load(self, rate: float = RATE) -> None:
        self.producer.rate = self.rate = rate
        self.started = time.monotonic()
        self.watch.start()
        self.producer.start()

    def flowing(self, more: int = 5_000, timeout: float = 120) -> None:
        """Wait for the group to commit `more` messages (as the watch sees it: the load must be going)."""
        before = self.watch.committed_total()
        wait_until(
            lambda: self.watch.committed_total() >= before + more, timeout=timeout, what=f"{more} more committed"
        )

    def assert_under_load(self) -> None:
        """The fault comes while the load is still being sent, not after."""
        assert self.producer.thread.is_alive(), "the load was all sent before the fault came"

    def owned_by(self, *instances: StreamdHost) -> bool:
        """Every partition is held, and by exactly these hosts, each holding some."""
        held = owners(self.cluster.admin, self.flow)
        everything = set().union(*held.values()) if held else set()
        return set(held) == {i.address for i in instances} and everything == set(range(PARTITIONS))

    def finish(self, fault_over: float) -> report.Figures:
        """Everything sent is consumed; every host stops cleanly; then the message-by-message check."""
        logs = lambda: "\n".join(h.log_tail() for h in self.hosts.values())  # noqa: E731
        self.producer.wait(timeout=self.count / self.rate + 300)
        wait_until(lambda: all_committed(self.flow), timeout=300, what=f"every message committed\n{logs()}")
        self.watch.stop()
        restarts = {h.host.name: h.restarts() for h in self.hosts.values() if h.supervisor.process.poll() is None}
        for name, instance in self.hosts.items():
            if instance.supervisor.process.poll() is None:
                assert instance.stop() == 0, f"{name} stopped cleanly\n{instance.log_tail()}"
        report_ = verify(self.flow)
        poison = poison_count(self.producer.count)
        assert (report_.missing, report_.duplicated, report_.pending) == (0, 0, 0), report_.lines()
        assert report_.checked == self.producer.count
        assert (report_.stored, report_.dead_lettered) == (self.producer.count - poison, poison), report_.lines()
        assert self.watch.samples and not self.watch.samples[-1].waiting, "the watch saw everything committed"
        assert self.watch.regressions() == [], "a member committed over a newer owner's progress"
        for name, children in restarts.items():
            assert set(children.values()) == {0}, f"{name}'s children recovered without a restart: {children}"
        figures = report.Figures(
            scenario=self.name,
            sent=self.producer.count,
            stored=report_.stored,
            duplicated=report_.duplicated,
            dead_lettered=report_.dead_lettered,
            redelivered=sum(h.replays() for h in self.hosts.values()),
            producer_stall=self.producer.longest_stall,
            consumer_stall=self.watch.longest_stall(),
            catch_up=self.watch.catch_up(fault_over),
        )
        self.figures.append(figures)
        report.write_samples(self.name, self.watch.samples, self.started)
        return figures

    def rejoined(self, returning: StreamdHost, other: StreamdHost, fault_over: float) -> None:
        """A host that lost its partitions to a fault is back in the group, and knew it had lost them."""
        wait_until(
            lambda: self.owned_by(returning, other), timeout=120, what=f"{returning.host.name} back in the group"
        )
        self.finish(fault_over)
        lines = returning.supervisor.messages("consumer-1")
        assert logged(lines, "lost", "session timed out"), f"{returning.host.name} knew it had lost them"

    def close(self) -> None:
        self.producer.stop()
        if self.watch.thread.is_alive():
            self.watch.stop()
        for instance in self.hosts.values():
            instance.kill()


@pytest.fixture
def scenario(request, flow: Config, cluster: Cluster, tmp_path: Path, figures: list) -> Iterator[Scenario]:
    name, scale = request.node.name.removeprefix("test_"), request.config.getoption("--scale")
    run = Scenario(name, flow, cluster, tmp_path, scale, figures)
    try:
        yield run
    finally:
        run.close()


def test_a_broker_killed_while_it_leads_then_restarted(scenario: Scenario, cluster: Cluster, app_hosts: list[Host]):
    first, second = scenario.start(*app_hosts[:2])
    scenario.load()
    scenario.flowing()
    leader = cluster.leader_of(scenario.flow.kafka.topic, 0)
    scenario.assert_under_load()
    cluster.brokers[leader].kill()
    # The two others elect new leaders: producer and consumers go on without the dead broker.
    scenario.flowing(timeout=180)
    cluster.restart(leader)
    back = time.monotonic()
    wait_until(lambda: cluster.live_brokers() == 3, timeout=120, what="the restarted broker back in the cluster")
    figures = scenario.finish(back)
    assert figures.sent >= MESSAGES


def test_a_host_cut_off_from_the_brokers_longer_than_the_session_hands_over_and_rejoins(
    scenario: Scenario, cluster: Cluster, app_hosts: list[Host]
):
    cut, other = scenario.share(*app_hosts[:2])
    scenario.load()
    scenario.flowing()
    started = time.monotonic()
    scenario.assert_under_load()
    with cut_off(cut.host, cluster.kafka_hosts):
        # Its session expires: the group gives every partition to the other host, which goes on.
        wait_until(lambda: scenario.owned_by(other), timeout=90, what="the other host holding every partition")
        assert time.monotonic() - started > SESSION_TIMEOUT_SECONDS
        scenario.flowing()
    scenario.rejoined(cut, other, fault_over=time.monotonic())


def test_a_host_paused_for_a_minute_does_not_commit_over_its_successor(
    scenario: Scenario, cluster: Cluster, app_hosts: list[Host]
):
    paused, other = scenario.share(*app_hosts[:2])
    scenario.load()
    scenario.flowing()
    frozen = paused.processes()
    scenario.assert_under_load()
    pause(frozen)
    until = time.monotonic() + PAUSE_SECONDS
    try:
        wait_until(lambda: scenario.owned_by(other), timeout=PAUSE_SECONDS, what="the other host taking over")
        scenario.flowing(timeout=PAUSE_SECONDS)
        time.sleep(max(0.0, until - time.monotonic()))  # the fault is a pause of this length, not a wait
    finally:
        resume(frozen)
    # The zombie wakes up holding a batch and offsets of partitions it lost a minute ago; the group fences
    # its commits (checked by the watch: no committed offset ever goes back), and it rejoins.
    scenario.rejoined(paused, other, fault_over=time.monotonic())


def test_one_to_three_to_one_hosts_under_load(scenario: Scenario, cluster: Cluster, app_hosts: list[Host]):
    [first] = scenario.start(app_hosts[0])
    scenario.load(rate=RATE / 2)  # two hosts start and join, and leave again, while it is sent
    scenario.flowing()
    scenario.assert_under_load()
    more = scenario.start(*app_hosts[1:])
    wait_until(lambda: scenario.owned_by(first, *more), timeout=90, what="three hosts sharing the partitions")
    scenario.flowing()
    for instance in more:
        assert instance.stop() == 0, instance.log_tail()
    back = time.monotonic()
    wait_until(lambda: scenario.owned_by(first), timeout=90, what="one host holding every partition again")
    scenario.finish(back)


def test_latency_and_loss_towards_the_brokers_for_a_minute(scenario: Scenario, cluster: Cluster, app_hosts: list[Host]):
    hosts = scenario.start(*app_hosts[:2])
    scenario.load()
    scenario.flowing()
    until = time.monotonic() + IMPAIRED_SECONDS
    scenario.assert_under_load()
    with contextlib.ExitStack() as faults:
        passages = [
            faults.enter_context(impaired(instance.host, cluster.kafka_hosts, delay_ms=200, jitter_ms=50, loss=0.02))
            for instance in hosts
        ]
        scenario.flowing(more=1_000, timeout=IMPAIRED_SECONDS)  # slower, but it flows
        time.sleep(max(0.0, until - time.monotonic()))  # the fault lasts a minute
    for passage in passages:
        assert passage.forwarded > 1_000 and 0.01 < passage.loss < 0.03, f"the fault was real: {passage}"
    scenario.finish(time.monotonic())
