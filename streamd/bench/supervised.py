"""The real pipeline under test: `streamd start` on a scratch config, watched from outside.

Progress is read from the consumer group's committed offsets. The consumer commits only after the
write, so a committed offset is a stored message, and reading offsets costs the broker next to
nothing, where counting documents in the store would compete with the very writes being timed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from bisect import bisect_right
from collections.abc import Iterable
from pathlib import Path

import yaml
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from streamd import config as config_module
from streamd import control
from streamd.bench.scratch import BenchError
from streamd.bench.usage import resident_mb
from streamd.config import Config, KafkaConfig
from streamd.control import descendants
from streamd.group_offsets import KafkaUnreadable, committed, partitions_of
from streamd.kafka import make_client

# Runs `streamd start` so that it gets SIGTERM (a graceful stop) should the bench, whose pid is the
# first argument, die without cleaning up.
LAUNCHER = (
    "import signal, sys\n"
    "from streamd.lifecycle import die_with_parent\n"
    "die_with_parent(signal.SIGTERM, int(sys.argv[1]))\n"
    "from streamd.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SETTLE_POLL = 0.1  # how often a drain asks whether its group has settled
LOG_TAIL_LINES = 20


class SupervisedRun:
    """One scratch supervisor in a subprocess, with its log in the run's directory."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.directory = config.state_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SupervisedRun:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "config.yaml"
        path.write_text(yaml.safe_dump(config_module.to_mapping(self.config), sort_keys=False))
        # The user's STREAMD_* overrides would apply to the scratch config too, and could point it
        # back at their own topic or database.
        env = {name: value for name, value in os.environ.items() if not name.startswith("STREAMD_")}
        with open(self.directory / "streamd.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, str(os.getpid()), "start", "-c", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # the bench's Ctrl-C must not reach it: the bench stops it itself
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def check(self) -> None:
        """Raise BenchError with the log tail if the supervisor has exited."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"the scratch supervisor exited with status {code}; its log ends:\n{self.log_tail()}")

    def children(self) -> dict[str, dict]:
        answer = control.status_if_running(self.config).answer
        return {child["name"]: child for child in answer["children"]} if answer else {}

    def wait_running(self, timeout: float = START_TIMEOUT) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            children = self.children()
            if children and all(child["state"] == "RUNNING" for child in children.values()):
                return children
            time.sleep(0.1)
        raise BenchError(
            f"the scratch supervisor's children were not all RUNNING after {timeout:.0f} s:\n{self.log_tail()}"
        )

    def consumer_pids(self) -> dict[str, int]:
        """The pid of each consumer child the config plans, by name (the supervisor and the API are not consumers)."""
        consumers = consumer_names(self.config)
        return {name: child["pid"] for name, child in self.children().items() if name in consumers and child["pid"]}

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of every child and of their own children (the API's workers), by name."""
        sizes: dict[str, float] = {}
        for name, child in self.children().items():
            pid = child.get("pid")
            if not pid:
                continue
            for process in [pid, *sorted(descendants(pid))]:
                rss = resident_mb(process)
                if rss is not None:
                    sizes[name if process == pid else process_title(process) or f"{name} {process}"] = rss
        return sizes

    def stop(self) -> None:
        stop_process(self.process, STOP_TIMEOUT)

    def log_tail(self) -> str:
        return log_tail(self.directory / "streamd.log")


def stop_process(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after `timeout` seconds; nothing for one already gone."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_tail(path: Path) -> str:
    """The last LOG_TAIL_LINES lines of a log, for an error that quotes it."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


class CommitWatch:
    """The group's committed offsets over time: when each offset became a stored message."""

    def __init__(self, config: Config, partitions: Iterable[int]) -> None:
        self.topic = config.kafka.topic
        self.group = config.consumer.group
        self.partitions = sorted(partitions)
        # Offset fetches only: it never joins the group it reads.
        self.admin = make_client(AdminClient, config.kafka, "bench")
        # Per partition: the times a new committed offset was first seen, and those offsets.
        self.seen_at: dict[int, list[float]] = {p: [] for p in self.partitions}
        self.offsets: dict[int, list[int]] = {p: [] for p in self.partitions}
        self.current = dict.fromkeys(self.partitions, 0)

    def __enter__(self) -> CommitWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass  # an AdminClient holds nothing to close

    def poll(self) -> int:
        """Read the committed offsets once; the number of messages committed so far (offsets start at 0)."""
        try:
            positions = committed(self.admin, self.group, partitions_of(self.topic, self.partitions), timeout=5)
        except KafkaUnreadable:
            return sum(self.current.values())
        now = time.time()
        for (_, partition), offset in positions.items():
            if offset > self.current[partition]:
                self.current[partition] = offset
                self.seen_at[partition].append(now)
                self.offsets[partition].append(offset)
        return sum(self.current.values())

    def stored_at(self, partition: int, offset: int) -> float | None:
        """When a commit covering (partition, offset) was first seen, in time.time() seconds."""
        offsets = self.offsets[partition]
        index = bisect_right(offsets, offset)  # the first commit past this offset
        return self.seen_at[partition][index] if index < len(offsets) else None


def group_settled(admin: AdminClient, group: str, members: int) -> bool:
    """Whether the group is stable with `members` members, each holding partitions."""
    try:
        description = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except Exception:  # the group may not exist yet; any error here means "not settled", and we ask again
        return False
    assigned = [m for m in description.members if m.assignment and m.assignment.topic_partitions]
    return description.state == ConsumerGroupState.STABLE and len(assigned) == members


class GroupMembers:
    """Whether every member of a group holds partitions yet, asked of the group at most every SETTLE_POLL s.

    Drains (streamd's and Kafka Connect's) are timed from then: a member joining later moves partitions (a
    rebalance, about a second per round on the local stack, whose broker assigns a new group's first member
    at once), and a long-running pipeline pays that once, like its start-up, while the rate is what it
    sustains."""

    def __init__(self, settings: KafkaConfig, group: str, members: int) -> None:
        self.admin = make_client(AdminClient, settings, "bench")
        self.group = group
        self.members = members
        self.all_assigned = False
        self.asked = 0.0

    def settled(self) -> bool:
        if not self.all_assigned and time.perf_counter() - self.asked >= SETTLE_POLL:
            self.asked = time.perf_counter()
            self.all_assigned = group_settled(self.admin, self.group, self.members)
        return self.all_assigned


def consumer_names(config: Config) -> set[str]:
    """The names of the consumer children `config` asks for, as the supervisor's plan makes them."""
    from streamd import consumer
    from streamd.plan import plan_children

    return {spec.name for spec in plan_children(config) if spec.target is consumer.run}


def keep_largest(into: dict[str, float], sizes: dict[str, float]) -> None:
    """Each child's largest resident size seen at the end of any supervised run."""
    for name, size in sizes.items():
        into[name] = max(size, into.get(name, 0.0))


def process_title(pid: int) -> str | None:
    """The name setproctitle gave the process, without the "streamd: " every title starts with."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    return title.removeprefix("streamd: ") or None
