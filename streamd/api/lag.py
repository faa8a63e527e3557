"""Consumer lag as Kafka sees it: per partition, the log end offset minus the group's committed offset.

Read from the brokers when asked (a scrape, a /stats request), not reported by the consumers: the
group's committed offsets are the truth the consumers commit to (an offset is committed only once its
message is stored or dead-lettered), so this lag is exactly "messages in Kafka not yet in the store",
and it keeps growing, as it should, while every consumer is down. It is what
`kafka-consumer-groups.sh --describe` shows, and it needs no state shared between processes.

A committed offset beyond the log end is not "no lag": the topic was deleted and recreated (or lost its
tail), and the consumers will restart the partition from its earliest offset (streamd.offsets). Such a
partition is flagged `beyond_end`, its lag counts every message its log holds, and `problems` says it
in a sentence, for /ready, /stats and /metrics alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streamd.config import Config
from streamd.group_offsets import KafkaUnreadable, committed, partitions_of, watermarks

# A probe, a scrape and a dashboard refresh must all answer within a few seconds, Kafka down or not.
KAFKA_TIMEOUT = 2.0
# Several viewers and a scraper share one reading per worker this long.
FRESH_SECONDS = 1.0


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here, so it starts at the earliest offset
    end: int
    lag: int
    beyond_end: bool = False  # committed past the log end: the consumers restart it from its earliest offset

    def as_dict(self) -> dict:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
            "beyond_end": self.beyond_end,
        }

    @property
    def problem(self) -> str | None:
        if not self.beyond_end:
            return None
        return (
            f"{self.topic}[{self.partition}]: the group's committed offset {self.committed} is beyond the log end "
            f"{self.end}; the topic was recreated, and consumers restart it from its earliest offset"
        )


@dataclass(frozen=True)
class KafkaReading:
    """One look at the brokers: the group's lag per partition and how many dead letters the topic holds."""

    partitions: list[PartitionLag]
    dead_letters: int

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def problems(self) -> list[str]:
        return [p.problem for p in self.partitions if p.problem]


class GroupLag:
    """Reads (and briefly keeps) a consumer group's lag and the dead-letter topic's size.

    The consumers' group unless `group` names another (the analyzer's, analytics.group).
    """

    def __init__(self, config: Config, admin: Callable[[], AdminClient], group: str | None = None) -> None:
        self.topic = config.kafka.topic
        self.dead_letter_topic = config.kafka.dead_letter_topic
        self.group = group or config.consumer.group
        self.admin = admin
        self._lock = threading.Lock()
        self._reading: tuple[float, KafkaReading | KafkaUnreadable] | None = None

    def read(self) -> KafkaReading:
        """A reading at most FRESH_SECONDS old; raises KafkaUnreadable (also remembered that long)."""
        with self._lock:
            now = time.monotonic()
            if self._reading is None or now - self._reading[0] > FRESH_SECONDS:
                try:
                    outcome: KafkaReading | KafkaUnreadable = self._read_now()
                except KafkaUnreadable as exc:
                    outcome = exc
                self._reading = (time.monotonic(), outcome)
            outcome = self._reading[1]
        if isinstance(outcome, KafkaUnreadable):
            raise outcome
        return outcome

    def _read_now(self) -> KafkaReading:
        admin = self.admin()
        try:
            metadata = admin.list_topics(timeout=KAFKA_TIMEOUT)
        except KafkaException as exc:
            raise KafkaUnreadable(f"Kafka did not answer ({exc.args[0].str()})") from None
        finally:
            admin.poll(0)  # hands librdkafka's queued log lines to the logger
        partitions = _partitions(metadata, self.topic)
        dead = _partitions(metadata, self.dead_letter_topic)
        marks = watermarks(admin, partitions + dead, KAFKA_TIMEOUT)
        positions = committed(admin, self.group, partitions, KAFKA_TIMEOUT)
        lags = []
        for tp in partitions:
            start, end = marks[(tp.topic, tp.partition)]
            position = positions.get((tp.topic, tp.partition))
            beyond = position is not None and position > end
            # Retention may have deleted what the group never read; those messages are gone, not lagging.
            # Beyond the end, the consumers start again from the earliest offset: all of the log is to come.
            consumed_to = start if position is None or beyond else max(position, start)
            lags.append(PartitionLag(tp.topic, tp.partition, position, end, end - consumed_to, beyond))
        dead_letters = sum(high - low for low, high in (marks[(tp.topic, tp.partition)] for tp in dead))
        return KafkaReading(lags, dead_letters)


def _partitions(metadata, topic: str) -> list[TopicPartition]:
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        return []  # not created yet: nothing to lag behind
    return partitions_of(topic, described.partitions)
