"""The limits the pipeline is measured against, and the tutorial's way for comparison.

Each rate counts the messages after the first fetch, over the time after it: joining a group and
connecting are start-up, not throughput, and the pipeline's own figure is timed the same way.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer
from confluent_kafka.admin import AdminClient
from pymongo.collection import Collection

from streamd.bench.scratch import BenchError
from streamd.config import Config
from streamd.group_offsets import partitions_of, watermarks
from streamd.kafka import make_client
from streamd.pipeline import to_document
from streamd.producer import Sender, new_message
from streamd.store import StoreKind

FETCH_TIMEOUT = 1.0
# A backlog that does not drain in this long has stalled; the run says so instead of hanging.
STALL_SECONDS = 30.0


# The store ceiling inserts at most this many documents: its rate is steady long before, and a
# 1,000,000-message backlog's documents would hold about 1 GB for no better figure.
CEILING_SAMPLE = 100_000


def generate_values(count: int, source: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of `count` messages exactly as the producer child makes them."""
    # Copied to their own size: orjson's bytes keep its 4 KB working buffer, 4 GB for a million messages.
    return [(key, bytes(memoryview(value))) for key, value in (new_message(source) for _ in range(count))]


def prefill(config: Config, topic: str, messages: list[tuple[bytes, bytes]]) -> dict[int, int]:
    """Produce `messages` to `topic` with the producer child's settings; the end offset of each partition."""
    sender = Sender(dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, topic=topic)))
    for key, value in messages:
        sender.send(key, value)
    if sender.flush(60) != 0:
        raise BenchError(f"Kafka did not acknowledge the {len(messages)} messages of {topic} within 60 s.")
    admin = make_client(AdminClient, config.kafka, "bench")
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    marks = watermarks(admin, partitions_of(topic, partitions), timeout=10)
    ends = {partition: high for (_, partition), (_, high) in marks.items()}
    if sum(ends.values()) != len(messages):
        raise BenchError(f"{topic} holds {sum(ends.values())} messages after producing {len(messages)}.")
    return ends


def documents_of(messages: list[tuple[bytes, bytes]], topic: str, first_offset: int = 0) -> list[dict]:
    """The documents the consumer would store for `messages` (their Kafka coordinates made up: partition 0,
    offsets from `first_offset`)."""
    now = datetime.now(UTC)
    stamp = (TIMESTAMP_CREATE_TIME, int(now.timestamp() * 1000))
    return [
        to_document(orjson.loads(value), topic, 0, offset, stamp, now)
        for offset, (_, value) in enumerate(messages, first_offset)
    ]


def prepare(collection: Collection) -> None:
    """The indexes the consumer creates: the store ceiling pays for the same index upkeep as the pipeline."""
    for index in StoreKind.of(collection.database.client).indexes():
        collection.create_indexes([index])


def store_ceiling(collection: Collection, documents: list[dict], batch_size: int, writers: int = 1) -> float:
    """insert_many of prepared documents, `batch_size` at a time, straight into the store by `writers` threads
    at once (as many as the consumer processes it is compared with: the store may overlap their writes,
    FerretDB does in part): messages/s."""
    prepare(collection)
    first = documents[:batch_size]
    collection.insert_many(first, ordered=False)
    batches = [documents[index : index + batch_size] for index in range(batch_size, len(documents), batch_size)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=writers) as pool:
        # list() raises here whatever a write raised.
        list(pool.map(lambda batch: collection.insert_many(batch, ordered=False), batches))
    return (len(documents) - len(first)) / (time.perf_counter() - start)


def kafka_consume_ceiling(config: Config, topic: str, group: str, expected: int) -> float:
    """librdkafka consuming the backlog in batches of consumer.batch_size, touching nothing: messages/s."""
    consumer = _subscribed(config, topic, group, {"enable.auto.commit": False})
    try:
        return _timed(expected, lambda: len(consumer.consume(config.consumer.batch_size, FETCH_TIMEOUT)), topic)
    finally:
        consumer.close()


def naive(config: Config, topic: str, group: str, collection: Collection, count: int) -> float:
    """The tutorial's loop: poll one message, json.loads it, insert_one it, auto-commit: messages/s."""
    prepare(collection)
    consumer = _subscribed(config, topic, group, {"enable.auto.commit": True})
    ingested_at = datetime.now(UTC)

    def one() -> int:
        message = consumer.poll(FETCH_TIMEOUT)
        if message is None or message.error() is not None:
            return 0
        payload = json.loads(message.value())
        document = to_document(
            payload, message.topic(), message.partition(), message.offset(), message.timestamp(), ingested_at
        )
        collection.insert_one(document)
        return 1

    try:
        return _timed(count, one, topic)
    finally:
        consumer.close()


def _timed(expected: int, step: Callable[[], int], topic: str) -> float:
    """Run `step` (returning how many messages it handled) until `expected`; the rate after the first."""
    waiting_since = time.perf_counter()
    done = 0
    while done == 0:
        done = step()
        if not done and time.perf_counter() - waiting_since > STALL_SECONDS:
            raise BenchError(f"no message of {topic} arrived within {STALL_SECONDS:.0f} s.")
    start, first = time.perf_counter(), done
    last_progress = start
    while done < expected:
        handled = step()
        now = time.perf_counter()
        if handled:
            done, last_progress = done + handled, now
        elif now - last_progress > STALL_SECONDS:
            raise BenchError(f"reading {topic} stalled at {done} of {expected} messages.")
    return (done - first) / (time.perf_counter() - start)


def _subscribed(config: Config, topic: str, group: str, extra: dict) -> Consumer:
    consumer = make_client(
        Consumer, config.kafka, "bench", {"group.id": group, "auto.offset.reset": "earliest", **extra}
    )
    consumer.subscribe([topic])
    return consumer
