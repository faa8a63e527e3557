"""The consumer's parts without a broker or a store: what a rebalance moved is applied between steps,
and the offset book keeps a refused commit until one goes through."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import KafkaError, Message, TopicPartition
from pymongo.errors import AutoReconnect

from streamd import coordinates
from streamd.config import ConsumerConfig
from streamd.consumer import BatchConsumer, ConsumerCounters
from streamd.consumer.book import OffsetBook
from streamd.consumer.sink import Sink
from streamd.lifecycle import Shutdown
from streamd.message_schema import PayloadSchema
from streamd.pipeline import Pipeline
from streamd.quarantine import Quarantine
from streamd.store import WriteOutcome


class FakeConsumer:
    """What the parts call on a confluent_kafka Consumer; poll() runs one pending rebalance callback."""

    def __init__(self) -> None:
        self.on_poll = None

    def assignment(self) -> list[TopicPartition]:
        return []

    def pause(self, partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass

    def poll(self, timeout: float) -> None:
        if self.on_poll is not None:
            callback, self.on_poll = self.on_poll, None
            callback()

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        return offsets


class FlakyStore:
    """Away for the first write, then takes everything."""

    def __init__(self) -> None:
        self.written: list[dict] = []
        self.away = True

    def ensure_indexes(self) -> None:
        pass

    def insert_batch(self, documents: list[dict]) -> WriteOutcome:
        if self.away:
            self.away = False
            raise AutoReconnect("connection refused")
        self.written += documents
        return WriteOutcome(len(documents), 0)


def test_a_partition_revoked_while_its_batch_waits_for_the_store_is_neither_written_nor_committed(tmp_path: Path):
    consumer, store = FakeConsumer(), FlakyStore()
    sink = Sink(store, None, ConsumerCounters())  # type: ignore[arg-type]
    pipeline = Pipeline(PayloadSchema(), max_message_bytes=1000)
    batches = BatchConsumer(ConsumerConfig(), pipeline, consumer, sink, Shutdown(), Quarantine(tmp_path))  # type: ignore[arg-type]
    batches.hold.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
    messages = [Message(topic="t", partition=p, offset=o, value=b'{"text": "x"}') for p in (0, 1) for o in range(3)]
    batch = batches.process(messages)
    # The rebalance comes while the sink waits for the store to come back.
    consumer.on_poll = lambda: batches.hold.on_revoke(consumer, [TopicPartition("t", 1)])

    assert batches.deliver(batch)

    assert {coordinates.read(document["kafka"]).partition for document in store.written} == {0}
    assert batch.next_offsets == {("t", 0): 3}, "the revoked partition's offsets are its new owner's to commit"
    assert batches.counters.dropped == 3
    assert batches.hold.assigned == {("t", 0)}


def test_a_refused_commit_keeps_its_offsets_and_a_later_batchs_offset_waits_for_its_own_answer(tmp_path: Path):
    book = OffsetBook(FakeConsumer(), Quarantine(tmp_path))  # type: ignore[arg-type]
    book.finished({("t", 0): 5})
    book.on_commit(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [])
    assert book.uncommitted == {("t", 0): 5} and book.retry

    book.finished({("t", 0): 8})
    book.on_commit(None, [TopicPartition("t", 0, 5)])  # the answer to the earlier commit
    assert book.uncommitted == {("t", 0): 8}
    book.on_commit(None, [TopicPartition("t", 0, 8)])
    assert book.uncommitted == {}


def test_on_revoke_commits_the_finished_offsets_of_the_revoked_partitions_before_returning(tmp_path: Path):
    book = OffsetBook(FakeConsumer(), Quarantine(tmp_path))  # type: ignore[arg-type]
    book.finished({("t", 0): 5, ("t", 1): 7})
    book.commit_now({("t", 1)})
    assert book.uncommitted == {("t", 0): 5}, "committed synchronously: only the revoked partition's offset is gone"
