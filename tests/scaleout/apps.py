"""streamd instances on the simulated hosts, and what the group looks like from outside: who owns what."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamd.config import Config

from ..probes import summaries
from ..supervisor_process import SupervisorProcess, start_streamd
from .faults import process_tree
from .network import Host

GRACEFUL_SECONDS = 60


class StreamdHost:
    """`streamd start` on one host: its own state directory and log, the group shared with the others."""

    def __init__(self, host: Host, settings: Config, directory: Path) -> None:
        self.host = host
        directory.mkdir(parents=True, exist_ok=True)
        own = replace(settings, state_dir=str(directory / "state"))
        self.supervisor: SupervisorProcess = start_streamd(directory, own, prefix=host.exec_prefix())

    @property
    def address(self) -> str:
        return self.host.address

    def wait_running(self, timeout: float = 120) -> None:
        self.supervisor.wait_running("consumer-1", timeout=timeout)

    def processes(self) -> list[int]:
        """The supervisor and everything below it: the whole machine, for a pause."""
        assert self.supervisor.process is not None
        return process_tree(self.supervisor.process.pid)

    def restarts(self) -> dict[str, int]:
        return {name: child["restarts"] for name, child in self.supervisor.children().items()}

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit code."""
        self.supervisor.signal(signal.SIGTERM)
        return self.supervisor.wait_exit(timeout=GRACEFUL_SECONDS)

    def kill(self) -> None:
        self.supervisor.kill()

    def replays(self) -> int:
        """Messages its consumers delivered to the store a second time (the store refused them as already
        stored), from the summaries consumers log when they stop."""
        return sum(
            summary.get("duplicates", 0)
            for child in ("consumer-1", "consumer-2")
            for summary in summaries(self.supervisor.messages(child))
        )

    def log_tail(self) -> str:
        return f"--- {self.host.name}\n{self.supervisor.log_tail(40)}"


def owners(admin: AdminClient, settings: Config) -> dict[str, set[int]]:
    """The members' addresses and the partitions of kafka.topic each holds; {} while nobody can say."""
    group = settings.consumer.group
    try:
        description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    except KafkaException:
        return {}
    held: dict[str, set[int]] = {}
    for member in description.members:
        partitions = {tp.partition for tp in member.assignment.topic_partitions if tp.topic == settings.kafka.topic}
        if partitions:
            held.setdefault(member.host.lstrip("/"), set()).update(partitions)
    return held
