"""The consumer's parts without a broker or a store: what a rebalance moved is applied between steps,
and the offset book keeps a refused commit until one goes through."""

from __future__ import annotations

import threading
import time
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
from tests.probes import wait_until


class FakeConsumer:
    """What the parts call on a confluent_kafka Consumer; poll() runs one pending rebalance callback."""

    def __init__(self) -> None:
        self.on_poll = None

    def assignment(self) -> list[TopicPartition]:
        return []

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        pass

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

    def writes_acknowledged(self) -> bool:
        return True

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
    prepared = batches.process(messages)
    batch = prepared.batch
    # The rebalance comes while the sink waits for the store to come back.
    consumer.on_poll = lambda: batches.hold.on_revoke(consumer, [TopicPartition("t", 1)])

    assert batches.deliver(prepared)

    assert {coordinates.read(document["kafka"]).partition for document in store.written} == {0}
    assert batch.next_offsets == {("t", 0): 3}, "the revoked partition's offsets are its new owner's to commit"
    assert batches.book.uncommitted == {("t", 0): 3}, "booked once stored"
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


class GatedStore:
    """Takes each write only when the test lets it; says when a write is waiting."""

    def __init__(self) -> None:
        self.written: list[dict] = []
        self.writing = threading.Event()
        self.release = threading.Semaphore(0)

    def ensure_indexes(self) -> None:
        pass

    def writes_acknowledged(self) -> bool:
        return True

    def insert_batch(self, documents: list[dict]) -> WriteOutcome:
        self.writing.set()
        assert self.release.acquire(timeout=30)
        self.written += documents
        return WriteOutcome(len(documents), 0)


class BacklogConsumer(FakeConsumer):
    """A partition with a backlog: consume() hands out full batches, then nothing."""

    def __init__(self, messages: list[Message]) -> None:
        super().__init__()
        self.backlog = messages
        self.commits: list[list[TopicPartition]] = []

    def consume(self, count: int, timeout: float) -> list[Message]:
        taken, self.backlog = self.backlog[:count], self.backlog[count:]
        if not taken:
            time.sleep(timeout)
        return taken

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        self.commits.append(offsets)
        return offsets


def test_under_a_backlog_the_next_batch_is_prepared_while_one_is_written_and_booked_only_once_written(
    tmp_path: Path,
):
    messages = [Message(topic="t", partition=0, offset=o, value=b'{"text": "x"}') for o in range(9)]
    consumer, store, shutdown = BacklogConsumer(messages), GatedStore(), Shutdown()
    sink = Sink(store, None, ConsumerCounters())  # type: ignore[arg-type]
    pipeline = Pipeline(PayloadSchema(), max_message_bytes=1000)
    settings = ConsumerConfig(batch_size=3)
    batches = BatchConsumer(settings, pipeline, consumer, sink, shutdown, Quarantine(tmp_path))  # type: ignore[arg-type]
    batches.hold.on_assign(consumer, [TopicPartition("t", 0)])
    loop = threading.Thread(target=batches.run)
    loop.start()
    try:
        assert store.writing.wait(10), "the first full batch is being written"
        wait_until(lambda: batches.counters.consumed == 6, "the second batch prepared during the first one's write")
        assert batches.book.uncommitted == {} and consumer.commits == [], "nothing booked before its write returns"

        store.release.release()
        wait_until(lambda: any(tp.offset == 3 for c in consumer.commits for tp in c), "the first batch committed")
        assert all(tp.offset <= 3 for c in consumer.commits for tp in c), "never past what is written"
        store.release.release()
        store.release.release()
        wait_until(lambda: any(tp.offset == 9 for c in consumer.commits for tp in c), "the backlog committed")
    finally:
        shutdown.request()
        for _ in range(3):
            store.release.release()
        loop.join(30)
        sink.writer.close()
    assert [d["_id"] for d in store.written] == [f"~t:0:{o}" for o in range(9)], "each written once, in order"


class UnacknowledgedStore:
    """A store whose uri says w=0."""

    def ensure_indexes(self) -> None:
        pass

    def writes_acknowledged(self) -> bool:
        return False


def test_a_consumer_warns_at_start_when_the_store_acknowledges_no_write(caplog):
    Sink(UnacknowledgedStore(), None, ConsumerCounters()).prepare()  # type: ignore[arg-type]

    assert any(record.levelname == "WARNING" and "w=0" in record.getMessage() for record in caplog.records)


def test_a_consumer_says_nothing_of_write_concern_when_writes_are_acknowledged(caplog):
    Sink(FlakyStore(), None, ConsumerCounters()).prepare()  # type: ignore[arg-type]

    assert not any("w=0" in record.getMessage() for record in caplog.records)
