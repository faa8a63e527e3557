"""What a test observes of the pipeline under test, one function per question, shared by every test module.

What the log says in stable words, how many documents are stored, what the group has committed, every
message of a topic, the API and a consumer in-process, and `wait_until` to wait for any of it. Fixtures
live in conftest.py; the supervisor as a process lives in supervisor_process.py.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import falcon.testing
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from streamd import coordinates
from streamd.api import create_app
from streamd.api.backends import Backends
from streamd.config import Config
from streamd.consumer import run as run_consumer
from streamd.lifecycle import Shutdown
from streamd.store import MessageStore

REPO = Path(__file__).resolve().parent.parent
# The test session shares the developer's cache, so provisioning happens once per machine, not per run.
STACK_STATE_DIR = REPO / ".streamd"


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll `condition` until it returns something true, and return that; fail naming `what` after `timeout` s.

    Generous deadlines cost nothing when things work and keep the suite steady on a loaded machine.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def logged(messages: Iterable[str], *fragments: str) -> int:
    """How many log messages hold every one of `fragments`. Tests name the stable words of a line (the key,
    the reason, the number), never its whole sentence, so rewording a log line fails no test."""
    return sum(all(fragment in message for fragment in fragments) for message in messages)


def summaries(messages: Iterable[str], word: str = "stopped") -> list[dict[str, int]]:
    """The counts of each `<word>: name 1, name 2…` summary line, by name, e.g. {"consumed": 42, "stored": 41}."""
    lines = [message for message in messages if message.startswith(f"{word}:")]
    return [{name: int(number) for name, number in re.findall(r"([\w-]+) (\d+)", line)} for line in lines]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Stages of every kind, for tests of the chain through the consumer and `streamd stages try`.
STAGES = [
    {"name": "no-noise", "kind": "filter", "where": "source != 'noise'"},
    {
        "name": "fahrenheit",
        "kind": "set",
        "where": "temperature is not None",
        "fields": {"f": "temperature * 9 / 5 + 32"},
    },
    {"name": "tidy", "kind": "rename", "fields": {"sensor": "sensor_id"}},
    {"name": "no-debug", "kind": "drop", "fields": ["debug"]},
    {"name": "hot", "kind": "route", "where": "f is not None and f > 86", "collection": "alerts"},
]


# --- the store -------------------------------------------------------------------------------------------


def stored(settings: Config) -> list[dict]:
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        return list(store.collection.find())


def stored_count(settings: Config) -> int:
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        return store.collection.count_documents({})


def stored_document(message_id: str, moment: datetime, source: str | None, offset: int = 0) -> dict:
    """A message as the consumer stores it."""
    return {
        "_id": message_id,
        "content": f"content of {message_id}",
        "timestamp": moment,
        "source": source,
        "ingested_at": moment,
        "kafka": coordinates.stored("data-stream", 0, offset),
    }


# --- Kafka -----------------------------------------------------------------------------------------------


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


def all_committed(settings: Config) -> bool:
    """Every message consumed and committed; an empty partition needs no commit. False while the group
    coordinator cannot answer yet (a broker just started), so waiting on it simply goes on."""
    try:
        done = committed(settings)
        return all(done.get(partition, 0) == end for partition, end in end_offsets(settings).items())
    except KafkaException:
        return False


def produce_raw(settings: Config, *values: bytes) -> None:
    """These values into kafka.topic, acknowledged."""
    producer = Producer({"bootstrap.servers": settings.kafka.brokers})
    for value in values:
        producer.produce(settings.kafka.topic, value)
    assert producer.flush(10) == 0


def read_all(brokers: str, topic: str) -> list[Message]:
    """Every message of `topic` up to its end, read from the start without a consumer group."""
    reader = Consumer({"bootstrap.servers": brokers, "group.id": "unused", "enable.auto.commit": False})
    try:
        metadata = reader.list_topics(topic, timeout=10).topics[topic]
        reader.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
        ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in metadata.partitions}
        messages: list[Message] = []
        deadline = time.monotonic() + 30
        while sum(ends.values()) > len(messages) and time.monotonic() < deadline:
            messages += [m for m in reader.consume(1000, timeout=0.5) if m.error() is None]
        assert len(messages) == sum(ends.values()), f"{topic} could not be read to its end"
        return messages
    finally:
        reader.close()


# --- streamd's own parts, in-process ---------------------------------------------------------------------


@contextlib.contextmanager
def consumer_running(settings: Config, target: Callable[[Config, Shutdown], int] = run_consumer) -> Iterator[list[int]]:
    """consumer.run (or another group member's run, e.g. the analyzer's) in a thread, stopped like a SIGTERM
    would at the end; yields where its exit code lands."""
    shutdown, outcome = Shutdown(), []
    child = threading.Thread(target=lambda: outcome.append(target(settings, shutdown)), name="consumer")
    child.start()
    try:
        yield outcome
    finally:
        shutdown.request()
        child.join(timeout=15)
        assert not child.is_alive(), "the consumer did not stop within 15 s of the stop request"


@contextlib.contextmanager
def api_client(config: Config, streams=None) -> Iterator[falcon.testing.TestClient]:
    """The API app in-process, its Kafka and store clients closed afterwards."""
    backends = Backends(config)
    try:
        yield falcon.testing.TestClient(create_app(config, backends, streams))
    finally:
        backends.close()
