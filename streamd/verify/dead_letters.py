"""The dead letters of the checked topic, indexed by the coordinates of the messages they stand for."""

from __future__ import annotations

from array import array
from bisect import bisect_left

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from streamd import group_offsets
from streamd.config import Config
from streamd.dead_letter import DeadLetter
from streamd.group_offsets import partitions_of
from streamd.verify.report import Progress
from streamd.verify.topic import KAFKA_TIMEOUT, read_partition, topic_partitions

NO_TIMESTAMP = -(2**63)  # a dead letter or message without a Kafka timestamp


class DeadLetterIndex:
    """The original offsets and Kafka timestamps of the dead letters of one topic, 16 bytes each, per partition.

    A dead letter stands for a message with the same partition, offset and Kafka timestamp. The timestamp
    is what tells a message of a recreated topic from the old one at the same offset; when either side has
    none (a pre-0.10 message format), the coordinates decide alone.
    """

    def __init__(self) -> None:
        self._offsets: dict[int, array] = {}
        self._stamps: dict[int, array] = {}
        self.repeats = 0

    def add(self, partition: int, offset: int, timestamp_ms: int | None = None) -> None:
        self._offsets.setdefault(partition, array("q")).append(offset)
        self._stamps.setdefault(partition, array("q")).append(NO_TIMESTAMP if timestamp_ms is None else timestamp_ms)

    def seal(self) -> None:
        """Sort and drop repeats; call once everything is added."""
        for partition, offsets in self._offsets.items():
            unique = sorted(set(zip(offsets, self._stamps[partition], strict=True)))
            self.repeats += len(offsets) - len(unique)
            self._offsets[partition] = array("q", (offset for offset, _ in unique))
            self._stamps[partition] = array("q", (stamp for _, stamp in unique))

    def has(self, partition: int, offset: int, timestamp_ms: int | None = None) -> bool:
        """A dead letter of the message at this partition and offset with this Kafka timestamp."""
        offsets = self._offsets.get(partition)
        if not offsets:
            return False
        stamps = self._stamps[partition]
        index = bisect_left(offsets, offset)
        while index < len(offsets) and offsets[index] == offset:
            if timestamp_ms is None or stamps[index] in (timestamp_ms, NO_TIMESTAMP):
                return True
            index += 1
        return False


def read_dead_letters(reader: Consumer, admin: AdminClient, config: Config, show: Progress) -> DeadLetterIndex:
    index = DeadLetterIndex()
    name = config.kafka.dead_letter_topic
    partitions = topic_partitions(reader, config, name) or []
    marks = group_offsets.watermarks(admin, partitions_of(name, partitions), KAFKA_TIMEOUT)
    for partition in partitions:
        low, high = marks[(name, partition)]
        for chunk in read_partition(reader, name, partition, low, high, show, "dead letters"):
            for message in chunk:
                letter = DeadLetter.read(message)
                if letter is not None and letter.topic == config.kafka.topic:
                    index.add(letter.partition, letter.offset, letter.timestamp_ms)
    index.seal()
    return index
