"""Reading the checked topic: its partitions, the offsets within --since/--until, and its messages in windows."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamd.config import Config
from streamd.kafka import KafkaUnavailable
from streamd.pipeline import Pipeline, message_id
from streamd.verify.report import Progress, VerifyError

WINDOW = 100_000  # messages held at once (~200 bytes each) between reading Kafka and asking the store
READ_BATCH = 5000  # messages per consume()
KAFKA_TIMEOUT = 10.0
STALL_TIMEOUT = 30.0  # no message and no end of partition for this long: Kafka stopped answering


def topic_partitions(reader: Consumer, config: Config, topic: str) -> list[int] | None:
    try:
        metadata = reader.list_topics(topic, timeout=KAFKA_TIMEOUT).topics.get(topic)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {config.kafka.brokers} did not answer within {KAFKA_TIMEOUT:g}s ({exc.args[0].str()}); "
            f"start the broker or fix kafka.brokers in the config."
        ) from None
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return None
    return sorted(metadata.partitions)


def offset_range(
    reader: Consumer,
    topic: str,
    partition: int,
    marks: tuple[int, int],
    since: datetime | None,
    until: datetime | None,
) -> tuple[int, int]:
    """[start, end) offsets of the messages within since/until (by Kafka timestamp), within the watermarks."""
    low, high = marks

    def first_at(milliseconds: int) -> int:
        [found] = reader.offsets_for_times([TopicPartition(topic, partition, milliseconds)], timeout=KAFKA_TIMEOUT)
        return found.offset if found.offset >= 0 else high  # -1: no message that late

    start = first_at(_milliseconds(since)) if since else low
    end = first_at(_milliseconds(until) + 1) if until else high  # the first one after `until`
    return max(start, low), max(min(end, high), start)


def _milliseconds(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Entry:
    """What verify keeps of one message while its window is checked."""

    partition: int
    offset: int
    id: str
    timestamp_ms: int | None
    digest: bytes | None  # of its text and source (None when it has none): tells a repeat from a conflict
    filtered: bool = False  # a filter stage drops it: neither stored nor dead-lettered, and rightly so


Window = list[Entry]
Dropped = Callable[[Message], bool]


def filter_check(config: Config) -> Dropped | None:
    """Whether the configured stages drop a message (a filter stage), or None when no stage filters.

    The message goes through the consumers' own pipeline, alone in its batch, so the answer is theirs. It is
    asked of every message as it is read (the body is not kept for later), which costs a pass of the stages
    per message only when some stage filters. It judges with the stages configured now, not those of the
    consumers that read the message, should they have changed since.
    """
    if not any(stage["kind"] == "filter" for stage in config.stages):
        return None
    pipeline = Pipeline.from_config(config)
    return lambda message: sum(pipeline.batch([message]).filtered.values()) > 0


def digest(content: object, source: object) -> bytes:
    return hashlib.blake2b(orjson.dumps([content, source]), digest_size=8).digest()


def _message_digest(payload: object) -> bytes | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        return None
    return digest(payload["text"], payload.get("source"))


def windows(
    reader: Consumer,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    show: Progress,
    total: int,
    dropped: Dropped | None = None,
    id_field: str | None = "id",
) -> Iterator[Window]:
    """An Entry for every message in range, at most WINDOW at a time; values are parsed and let go.

    `dropped` (see filter_check) marks the messages the stages filter out; `id_field` is consumer.id_field."""
    window: Window = []
    read = 0
    for partition, (start, end) in ranges.items():
        for messages in read_partition(reader, topic, partition, start, end, show, None):
            for message in messages:
                try:
                    payload = orjson.loads(message.value() or b"")
                except orjson.JSONDecodeError:
                    payload = None
                offset = message.offset()
                kind, stamp = message.timestamp()
                window.append(
                    Entry(
                        partition,
                        offset,
                        message_id(message, payload, id_field),
                        None if kind == TIMESTAMP_NOT_AVAILABLE else stamp,
                        _message_digest(payload),
                        dropped is not None and dropped(message),
                    )
                )
                if len(window) >= WINDOW:
                    yield window
                    window = []
            read += len(messages)
            show(f"read {read}/{total} messages of {topic}")
    if window:
        yield window


def read_partition(
    reader: Consumer, topic: str, partition: int, start: int, end: int, show: Progress, what: str | None
) -> Iterator[list]:
    """The messages of one partition in [start, end), in lists of at most READ_BATCH."""
    if start >= end:
        return
    reader.assign([TopicPartition(topic, partition, start)])
    try:
        # Only time spent inside consume() counts towards a stall: between two batches this generator is
        # suspended while the caller asks the store, and a slow store is not Kafka stopping.
        position, waited = start, 0.0
        while position < end:
            batch, at_end = [], False
            asked = time.monotonic()
            # Asking for no more than what is left lets consume() return as soon as the range is read.
            messages = reader.consume(min(READ_BATCH, end - position), timeout=1.0)
            waited += time.monotonic() - asked
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end = True  # the log ends before `end`: retention or a compaction got there first
                        continue
                    if error.fatal():
                        raise KafkaException(error)
                    continue
                if message.offset() >= end:
                    at_end = True
                    break
                batch.append(message)
                position = message.offset() + 1
            if batch:
                waited = 0.0
                yield batch
            if at_end:
                return
            if waited > STALL_TIMEOUT:
                raise VerifyError(
                    f"Kafka stopped delivering {topic}[{partition}] at offset {position} "
                    f"(expected up to {end}) for {STALL_TIMEOUT:g}s; is the broker up?"
                )
            if what:
                show(f"reading {what}: {topic}[{partition}] at {position}/{end}")
    finally:
        reader.unassign()
