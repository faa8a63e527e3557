"""The consumer on the real broker and store: stored exactly once, committed only after the write."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streamd.config import Config
from streamd.consumer import run
from streamd.lifecycle import Shutdown
from streamd.producer import produce_once
from streamd.store import MessageStore
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(pipeline_config: Config, caplog) -> Iterator[Config]:
    caplog.set_level(logging.INFO, logger="streamd")
    settings = replace(pipeline_config, consumer=replace(pipeline_config.consumer, batch_timeout_ms=50))
    yield settings
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        store.client.drop_database(settings.mongodb.database)


@contextlib.contextmanager
def consumer_running(settings: Config) -> Iterator[list[int]]:
    """consumer.run in a thread, stopped like a SIGTERM would at the end; yields where its exit code lands."""
    shutdown, outcome = Shutdown(), []
    child = threading.Thread(target=lambda: outcome.append(run(settings, shutdown)), name="consumer")
    child.start()
    try:
        yield outcome
    finally:
        shutdown.request()
        child.join(timeout=15)
        assert not child.is_alive(), "the consumer did not stop within 15 s of the stop request"


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def partitions(settings: Config) -> list[TopicPartition]:
    with contextlib.closing(Consumer({"bootstrap.servers": settings.kafka.brokers, "group.id": "unused"})) as reader:
        topic = reader.list_topics(settings.kafka.topic, timeout=10).topics[settings.kafka.topic]
        return [TopicPartition(settings.kafka.topic, p) for p in sorted(topic.partitions)]


def end_offsets(settings: Config) -> dict[int, int]:
    with contextlib.closing(Consumer({"bootstrap.servers": settings.kafka.brokers, "group.id": "unused"})) as reader:
        return {tp.partition: reader.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions(settings)}


def committed(settings: Config) -> dict[int, int]:
    """The group's committed offset per partition; partitions it never committed are left out."""
    group = {"bootstrap.servers": settings.kafka.brokers, "group.id": settings.consumer.group}
    with contextlib.closing(Consumer(group)) as reader:
        return {tp.partition: tp.offset for tp in reader.committed(partitions(settings), timeout=10) if tp.offset >= 0}


def stored(settings: Config) -> list[dict]:
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        return list(store.collection.find())


def stored_count(settings: Config) -> int:
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        return store.collection.count_documents({})


def all_committed(settings: Config) -> bool:
    return committed(settings) == end_offsets(settings)


def produce_raw(settings: Config, *values: bytes) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.brokers})
    for value in values:
        producer.produce(settings.kafka.topic, value)
    assert producer.flush(10) == 0


def test_produced_messages_are_stored_exactly_once_in_the_stored_shape(settings: Config, caplog):
    assert produce_once(settings, count=40, rate=None, source="test-suite").acked == 40
    produce_raw(settings, b'{"text": "no id, no timestamp"}', b"not json")

    with consumer_running(settings) as outcome:
        wait_until(lambda: all_committed(settings), "every offset committed")
    assert outcome == [0]

    documents = stored(settings)
    assert len(documents) == 41
    generated = [d for d in documents if d["source"] == "test-suite"]
    assert len(generated) == 40
    for document in generated:
        assert set(document) == {"_id", "content", "timestamp", "source", "ingested_at", "kafka"}
        sent_at = datetime.fromisoformat(document["content"].removeprefix("Message généré à "))
        assert document["timestamp"] == sent_at
        assert document["timestamp"].utcoffset() == timedelta(0)
        assert document["timestamp"] <= document["ingested_at"]
        assert set(document["kafka"]) == {"topic", "partition", "offset"}
        assert document["kafka"]["topic"] == settings.kafka.topic

    [anonymous] = [d for d in documents if d["content"] == "no id, no timestamp"]
    where = anonymous["kafka"]
    assert anonymous["_id"] == f"{settings.kafka.topic}:{where['partition']}:{where['offset']}"
    assert anonymous["source"] is None
    assert abs(anonymous["timestamp"] - anonymous["ingested_at"]) < timedelta(seconds=30), "the Kafka timestamp"

    # Exactly once: every offset of the topic is either one stored document or the one rejection.
    coordinates = sorted((d["kafka"]["partition"], d["kafka"]["offset"]) for d in documents)
    everything = sorted((p, o) for p, end in end_offsets(settings).items() for o in range(end))
    [rejected] = sorted(set(everything) - set(coordinates))
    assert len(coordinates) == len(set(coordinates)) == len(everything) - 1
    assert f"{settings.kafka.topic}[{rejected[0]}]@{rejected[1]} rejected at parse (not_json)" in caplog.text
    assert "stopped: consumed 42, stored 41, duplicates 0, rejected 1" in caplog.messages


def test_a_replay_into_the_same_collection_stores_nothing_twice(settings: Config, caplog):
    produce_once(settings, count=30, rate=None, source=None)
    with consumer_running(settings):
        wait_until(lambda: all_committed(settings), "the first group to commit everything")
    assert stored_count(settings) == 30

    replay = replace(settings, consumer=replace(settings.consumer, group=settings.consumer.group + "-replay"))
    with consumer_running(replay):
        wait_until(lambda: all_committed(replay), "the second group to commit everything")

    assert stored_count(settings) == 30
    assert "stopped: consumed 30, stored 0, duplicates 30, rejected 0" in caplog.messages


def test_nothing_is_committed_while_the_store_is_unreachable_and_the_batch_is_replayed_later(settings: Config, caplog):
    produce_once(settings, count=20, rate=None, source=None)
    unreachable = replace(
        settings, mongodb=replace(settings.mongodb, uri=f"mongodb://127.0.0.1:{free_port()}", timeout_ms=100)
    )

    with consumer_running(unreachable) as outcome:
        wait_until(lambda: "holding 20 messages uncommitted" in caplog.text, "the consumer to hold the batch")
        time.sleep(1)  # a few retries
        assert committed(settings) == {}
    assert outcome == [0]
    assert committed(settings) == {}, "stopping with an unwritten batch commits nothing"
    assert sum("store unavailable (" in m for m in caplog.messages) == 1, "logged once, not once per retry"

    with consumer_running(settings):
        wait_until(lambda: all_committed(settings), "the replayed batch to be stored and committed")
    assert stored_count(settings) == 20


def test_a_stop_mid_stream_finishes_and_commits_the_batch_in_hand(settings: Config, caplog):
    produce_once(settings, count=5000, rate=None, source=None)
    small_batches = replace(settings, consumer=replace(settings.consumer, batch_size=25))

    with consumer_running(small_batches) as outcome:
        wait_until(lambda: stored_count(settings) >= 200, "the first batches to be stored")
    assert outcome == [0]

    count = stored_count(settings)
    assert count < 5000, "stopped mid-stream"
    assert sum(committed(settings).values()) == count, "everything stored is committed, nothing else"
    assert any(m.startswith("revoked ") for m in caplog.messages), "closed: it left the group"
