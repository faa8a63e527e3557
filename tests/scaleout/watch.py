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
ASK_SECONDS = 2  # per question: a sample that waits on a dead broker must not hide the ones after


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    committed: dict[int, int]
    ends: dict[int, int]
    carried: tuple[str, ...] = ()  # what could not be asked this time and is the sample before's

    @property
    def waiting(self) -> bool:
        return any(self.committed.get(partition, 0) < end for partition, end in self.ends.items())


class Watch:
    """Samples every SAMPLE_SECONDS from a thread until stop(); a fault never makes it fail, only shows in
    what it sees."""

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
        """One sample. What the cluster cannot answer now (a dead leader's end offsets, the group's offsets
        while its coordinator moves) is carried over from the sample before: nothing could be committed
        then, which is what a stall is. None only until a first full answer came."""
        last = self.samples[-1] if self.samples else None
        carried = []
        wanted = [TopicPartition(self.topic, partition) for partition in range(self.partitions)]
        try:
            committed = {tp.partition: tp.offset for tp in self.reader.committed(wanted, timeout=ASK_SECONDS)}
        except KafkaException:
            if last is None:
                return None
            committed = last.committed
            carried.append("committed")
        ends = {}
        for tp in wanted:
            try:
                ends[tp.partition] = self.reader.get_watermark_offsets(tp, timeout=ASK_SECONDS)[1]
            except KafkaException:
                if last is None:
                    return None
                ends[tp.partition] = last.ends[tp.partition]
                carried.append(f"end {tp.partition}")
        sample = Sample(time.monotonic(), committed, ends, tuple(carried))
        self.samples.append(sample)
        return sample

    def committed_total(self) -> int:
        """What the group had committed by the latest sample (0 before the first): how far the flow got."""
        latest = self.samples[-1] if self.samples else None
        return sum(offset for offset in latest.committed.values() if offset >= 0) if latest else 0

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
