"""What a scenario measures while it runs: the group's committed offsets against the topic's end offsets,
sampled from outside the group, and the figures the issue asks for.

    longest stall  the longest time a partition's committed offset stood still while messages waited in it
    catch-up       from the end of the fault until the group had committed every message that was
                   in the topic at that moment
    regressions    a partition whose committed offset went backwards: some member committed over a
                   newer owner's progress (a zombie); must never happen
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamd.config import Config

SAMPLE_SECONDS = 0.5


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    committed: dict[int, int]
    ends: dict[int, int]

    @property
    def waiting(self) -> bool:
        return any(self.committed.get(partition, 0) < end for partition, end in self.ends.items())


class Watch:
    """Samples every SAMPLE_SECONDS from a thread until stop(); a sample the cluster cannot answer (a broker
    just died) is skipped, so a fault shows up as time between samples, never as a test error."""

    def __init__(self, settings: Config) -> None:
        self.topic = settings.kafka.topic
        self.partitions = settings.kafka.partitions
        # Never subscribes: it only asks the coordinator for the group's offsets and never joins the group.
        self.reader = Consumer(
            {"bootstrap.servers": settings.kafka.brokers, "group.id": settings.consumer.group, "log_level": 0}
        )
        self.samples: list[Sample] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="scaleout-watch", daemon=True)

    def start(self) -> Watch:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling, after one last sample: the end state every scenario is judged on."""
        self.stopping.set()
        self.thread.join(timeout=30)
        deadline = time.monotonic() + 30
        while self._take() is None and time.monotonic() < deadline:
            time.sleep(SAMPLE_SECONDS)
        self.reader.close()

    def _sample(self) -> None:
        while not self.stopping.is_set():
            self._take()
            self.stopping.wait(SAMPLE_SECONDS)

    def _take(self) -> Sample | None:
        wanted = [TopicPartition(self.topic, partition) for partition in range(self.partitions)]
        try:
            committed = {tp.partition: tp.offset for tp in self.reader.committed(wanted, timeout=5)}
            ends = {tp.partition: self.reader.get_watermark_offsets(tp, timeout=5)[1] for tp in wanted}
        except KafkaException:
            return None  # a broker just died or the coordinator moved: the next sample will do
        sample = Sample(time.monotonic(), committed, ends)
        self.samples.append(sample)
        return sample

    def longest_stall(self) -> float:
        """The longest time one partition's committed offset stood still while messages waited in it."""
        longest = 0.0
        moved_at: dict[int, float] = {}
        before: dict[int, int] = {}
        for sample in self.samples:
            for partition, end in sample.ends.items():
                offset = sample.committed.get(partition, -1)
                if partition not in moved_at or offset > before[partition] or offset >= end:
                    moved_at[partition] = sample.at  # progress, or nothing waiting: not a stall
                else:
                    longest = max(longest, sample.at - moved_at[partition])
                before[partition] = offset
        return longest

    def catch_up(self, since: float) -> float | None:
        """Seconds from `since` until the group had committed what the topic held at `since`; None if never."""
        first = next((sample for sample in self.samples if sample.at >= since), None)
        if first is None:
            return None
        for sample in self.samples:
            if sample.at >= since and all(sample.committed.get(p, 0) >= end for p, end in first.ends.items()):
                return sample.at - since
        return None

    def regressions(self) -> list[str]:
        """Every time a partition's committed offset went down between two samples."""
        found, last = [], {}
        for sample in self.samples:
            for partition, offset in sample.committed.items():
                if offset >= 0 and offset < last.get(partition, -1):
                    found.append(f"partition {partition}: {last[partition]} -> {offset}")
                last[partition] = max(offset, last.get(partition, -1))
        return found
