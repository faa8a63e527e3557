"""The partition hold against a real broker: what librdkafka remembers of a partition across rebalances."""

from __future__ import annotations

import contextlib
from pathlib import Path

from confluent_kafka import Consumer, Producer

from streamd import offsets
from streamd.config import Config
from streamd.consumer.book import OffsetBook
from streamd.consumer.hold import PartitionHold
from streamd.kafka import ensure_topic, group_member
from streamd.lifecycle import Shutdown
from streamd.quarantine import Quarantine

from .probes import wait_until


class Member:
    """A group member as the consumer loop makes one: a hold and a book on a group_member Consumer."""

    def __init__(self, settings: Config, state: Path) -> None:
        self.consumer: Consumer = group_member(settings.kafka, "consumer", settings.consumer.group, self._on_commit)
        quarantine = Quarantine.open(state)
        self.book = OffsetBook(self.consumer, quarantine)
        self.hold = PartitionHold(self.consumer, self.book, quarantine, Shutdown())
        self.consumer.subscribe(
            [settings.kafka.topic],
            on_assign=self.hold.on_assign,
            on_revoke=self.hold.on_revoke,
            on_lost=self.hold.on_lost,
        )
        self.received: list[bytes] = []

    def _on_commit(self, error, partitions) -> None:
        self.book.on_commit(error, partitions)

    def serve(self) -> set[tuple[str, int]]:
        """One round of the loop's receiving side; the partitions it holds after it."""
        for message in self.hold.owned(self.hold.receive(100, 0.2)):
            if offsets.is_reset(message):
                self.hold.restart(message)  # a partition the group never committed starts at its earliest
            elif message.error() is None:
                self.received.append(message.value())
        return self.hold.assigned


def test_a_partition_that_left_while_its_member_held_a_batch_is_read_again_when_it_comes_back(
    pipeline_config: Config, tmp_path: Path
):
    settings = pipeline_config
    topic = settings.kafka.topic
    ensure_topic(settings, topic, partitions=2)
    first = Member(settings, tmp_path / "first")
    with contextlib.closing(first.consumer):
        wait_until(lambda: len(first.serve()) == 2, timeout=60, what="the first member holding both partitions")
        first.hold.wait(0)  # it holds a batch: every partition paused
        second = Member(settings, tmp_path / "second")
        with contextlib.closing(second.consumer):
            wait_until(
                lambda: (first.hold.wait(0.2), second.serve())[1] and len(first.hold.assigned) == 1,
                timeout=60,
                what="one partition moved to the second member while the first held its batch",
            )
            first.hold.resume()  # the batch is done: what it still holds flows again
        # The second member leaves; its partition comes back to the first, which is not holding any more.
        wait_until(lambda: len(first.serve()) == 2, timeout=60, what="the partition back with the first member")
        producer = Producer({"bootstrap.servers": settings.kafka.brokers})
        for partition in (0, 1):
            producer.produce(topic, b"after %d" % partition, partition=partition)
        assert producer.flush(10) == 0
        wait_until(lambda: (first.serve(), len(first.received) == 2)[1], timeout=30, what="both partitions read")
        assert sorted(first.received) == [b"after 0", b"after 1"]
