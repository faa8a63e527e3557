"""`streamd verify`: reconcile the topic with the store and the dead-letter topic, message by message.

Every message of kafka.topic (all of it, or those whose Kafka timestamp falls within --since/--until)
is looked up by the id the consumer stores it under (streamd.pipeline.document_id), and lands in
exactly one of these counts:

    stored           a document with its id records these very Kafka coordinates
    repeated         its id is stored from another offset with the same content and source: the same
                     message was sent twice (fine)
    id conflicts     its id is stored from another offset with other content: two messages claimed one
                     id and this one was not stored (a problem)
    dead-lettered    not stored, and the dead-letter topic holds a dead letter of this very message: same
                     coordinates and same Kafka timestamp (a topic deleted and recreated reuses offsets,
                     and an old dead letter must not vouch for a new message)
    not consumed yet none of the above, at or after the group's committed offset
    missing          none of the above, before the group's committed offset: lost

and, on top of that, `duplicated` counts messages delivered twice. The store's `_id` index is unique,
so one id can never be stored twice; what can happen is a message that is stored *and* dead-lettered,
and that is what `duplicated` counts. A message dead-lettered twice (the dead-letter topic is written at
least once) is reported apart, as repeated dead letters, and is not a duplicate in the store.

The reader is a throwaway consumer that assigns partitions itself: it never joins or commits for any
group. The order of the snapshots matters: the group's committed offsets are read first, then the
dead-letter topic, then the store, so a message before a committed offset had to be in one of them
by the time it is looked for.

Memory stays bounded whatever the topic's size: no message body is kept (only an 8-byte digest of its
text and source). Dead letters are indexed as an 8-byte offset and an 8-byte timestamp each (per
original partition, in sorted arrays). The topic is read in windows of
at most WINDOW messages, kept as (partition, offset, id); each window is checked against the store and
forgotten before the next is read. Only the first EXAMPLES problems are remembered for the report.

How a window is checked depends on the store. MongoDB answers `$in` on `_id` from its index, so the
ids go in batches of LOOKUP_BATCH and nothing else is read. FerretDB 1.x on SQLite has no index on
`_id`: every lookup reads the whole collection, so there one scan of `_id` and `kafka` per window is
by far the cheapest (a topic larger than WINDOW costs one scan per window: memory is bounded, time is not).
"""

from __future__ import annotations

import hashlib
import sys
import time
import uuid
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, TopicPartition

from streamd import store
from streamd.config import Config
from streamd.dead_letter import DeadLetter
from streamd.ids import FALLBACK_PREFIX, legacy_offset_id
from streamd.kafka import KafkaUnavailable, make_client
from streamd.pipeline import document_id

WINDOW = 100_000  # messages held at once (~200 bytes each) between reading Kafka and asking the store
LOOKUP_BATCH = 5000  # ids per `$in` query
READ_BATCH = 5000  # messages per consume()
EXAMPLES = 10
PROGRESS_EVERY = 2.0  # seconds between progress lines on long topics
KAFKA_TIMEOUT = 10.0
STALL_TIMEOUT = 30.0  # no message and no end of partition for this long: Kafka stopped answering

Coordinates = tuple[str, int, int]


class VerifyError(Exception):
    """The check could not be made (a server does not answer, the topic does not exist); one sentence."""


@dataclass
class Reconciliation:
    topic: str
    checked: int = 0
    stored: int = 0
    repeated: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    pending: int = 0
    missing: int = 0
    duplicated: int = 0
    repeated_dead_letters: int = 0  # dead letters of the same coordinates beyond the first
    problems: list[str] = field(default_factory=list)  # the first EXAMPLES missing or duplicated, for people

    @property
    def ok(self) -> bool:
        """Every message checked is stored or dead-lettered, and none of them twice."""
        return self.missing == 0 and self.duplicated == 0 and self.pending == 0 and self.conflicts == 0

    def note(self, problem: str) -> None:
        if len(self.problems) < EXAMPLES:
            self.problems.append(problem)

    def lines(self) -> list[str]:
        rows = [
            ("checked", self.checked, f"messages of {self.topic}"),
            ("stored", self.stored, ""),
            ("repeated ids", self.repeated, "the same message at another offset, stored once (fine)"),
            ("id conflicts", self.conflicts, "another message stored under its id" if self.conflicts else ""),
            ("dead-lettered", self.dead_lettered, ""),
            ("not consumed yet", self.pending, "after the group's committed offset" if self.pending else ""),
            ("missing", self.missing, ""),
            ("duplicated", self.duplicated, "stored and dead-lettered" if self.duplicated else ""),
        ]
        out = [f"{name:<17}{count:>10}  {remark}".rstrip() for name, count, remark in rows]
        if self.repeated_dead_letters:
            out.append(f"({self.repeated_dead_letters} dead letters are repeats of the same message: at least once)")
        out += self.problems
        if self.pending:
            out.append(
                "Messages not consumed yet are not in the store: run again once the consumers have caught up, "
                "or leave the newest out with --until."
            )
        return out


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


class Progress:
    """A line on stderr every PROGRESS_EVERY seconds, so a long check is visibly alive."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.last = time.monotonic()

    def __call__(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.out is not None and (force or now - self.last >= PROGRESS_EVERY):
            self.last = now
            print(f"verify: {text}", file=self.out, flush=True)


def verify(
    config: Config, since: datetime | None = None, until: datetime | None = None, progress: TextIO | None = None
) -> Reconciliation:
    """Check every message of kafka.topic (within since/until, by Kafka timestamp) against the store and the
    dead-letter topic. Raises KafkaUnavailable or VerifyError when the check cannot be made."""
    topic = config.kafka.topic
    report = Reconciliation(topic)
    show = Progress(progress)
    reader = make_client(
        Consumer,
        config.kafka,
        "verify",
        {
            # A group of its own that is never joined (partitions are assigned) and never committed to.
            "group.id": f"streamd-verify-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        },
    )
    message_store = store.MessageStore(config.mongodb)
    try:
        partitions = _partitions(reader, config, topic)
        if partitions is None:
            raise VerifyError(f"topic {topic!r} does not exist at {config.kafka.brokers}; check kafka.topic.")
        committed = _committed(config, topic, partitions)
        ranges = {p: _offset_range(reader, topic, p, since, until) for p in partitions}
        dead_letters = _dead_letter_index(reader, config, show)
        report.repeated_dead_letters = dead_letters.repeats
        lookup = _lookup_for(message_store)
        total = sum(end - start for start, end in ranges.values())
        for window in _windows(reader, topic, ranges, show, total):
            show(f"checking {len(window)} messages against the store", force=len(window) >= READ_BATCH)
            found = lookup(message_store, {entry.id for entry in window} | _legacy_ids(window, topic))
            elsewhere = {e.id for e in window if e.id in found and found[e.id] != (topic, e.partition, e.offset)}
            contents = _contents(message_store, elsewhere) if elsewhere else {}
            _classify(window, topic, found, contents, committed, ranges, dead_letters, report)
        show(f"checked {report.checked} messages", force=report.checked >= READ_BATCH)
        return report
    except store.UNAVAILABLE as exc:
        # Not the URI itself: it may carry a password.
        raise VerifyError(
            f"the store named by mongodb.uri did not answer within {config.mongodb.timeout_ms} ms "
            f"({type(exc).__name__}); start it or fix mongodb.uri."
        ) from None
    finally:
        reader.close()
        message_store.close()


def _partitions(reader: Consumer, config: Config, topic: str) -> list[int] | None:
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


def _committed(config: Config, topic: str, partitions: list[int]) -> dict[int, int]:
    """The consumer group's committed offset per partition; partitions it never committed are left out."""
    # An OffsetFetch only: a consumer that never subscribes does not join the group.
    asker = make_client(Consumer, config.kafka, "verify", {"group.id": config.consumer.group})
    try:
        answer = asker.committed([TopicPartition(topic, p) for p in partitions], timeout=KAFKA_TIMEOUT)
    finally:
        asker.close()
    return {tp.partition: tp.offset for tp in answer if tp.offset >= 0}


def _offset_range(
    reader: Consumer, topic: str, partition: int, since: datetime | None, until: datetime | None
) -> tuple[int, int]:
    """[start, end) offsets of the messages within since/until (by Kafka timestamp)."""
    low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=KAFKA_TIMEOUT)

    def first_at(milliseconds: int) -> int:
        [found] = reader.offsets_for_times([TopicPartition(topic, partition, milliseconds)], timeout=KAFKA_TIMEOUT)
        return found.offset if found.offset >= 0 else high  # -1: no message that late

    start = first_at(_milliseconds(since)) if since else low
    end = first_at(_milliseconds(until) + 1) if until else high  # the first one after `until`
    return max(start, low), max(min(end, high), start)


def _milliseconds(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _dead_letter_index(reader: Consumer, config: Config, show: Progress) -> DeadLetterIndex:
    index = DeadLetterIndex()
    name = config.kafka.dead_letter_topic
    partitions = _partitions(reader, config, name)
    for partition in partitions or ():
        low, high = reader.get_watermark_offsets(TopicPartition(name, partition), timeout=KAFKA_TIMEOUT)
        for chunk in _messages(reader, name, partition, low, high, show, "dead letters"):
            for message in chunk:
                letter = DeadLetter.read(message)
                if letter is not None and letter.topic == config.kafka.topic:
                    index.add(letter.partition, letter.offset, letter.timestamp_ms)
    index.seal()
    return index


@dataclass(frozen=True, slots=True)
class Entry:
    """What verify keeps of one message while its window is checked."""

    partition: int
    offset: int
    id: str
    timestamp_ms: int | None
    digest: bytes | None  # of its text and source (None when it has none): tells a repeat from a conflict


Window = list[Entry]


def _digest(content: object, source: object) -> bytes:
    return hashlib.blake2b(orjson.dumps([content, source]), digest_size=8).digest()


def _message_digest(payload: object) -> bytes | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        return None
    return _digest(payload["text"], payload.get("source"))


def _windows(
    reader: Consumer, topic: str, ranges: dict[int, tuple[int, int]], show: Progress, total: int
) -> Iterator[Window]:
    """An Entry for every message in range, at most WINDOW at a time; values are parsed and let go."""
    window: Window = []
    read = 0
    for partition, (start, end) in ranges.items():
        for messages in _messages(reader, topic, partition, start, end, show, None):
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
                        document_id(payload, topic, partition, offset),
                        None if kind == TIMESTAMP_NOT_AVAILABLE else stamp,
                        _message_digest(payload),
                    )
                )
                if len(window) >= WINDOW:
                    yield window
                    window = []
            read += len(messages)
            show(f"read {read}/{total} messages of {topic}")
    if window:
        yield window


def _messages(
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


Found = dict[str, Coordinates | None]  # stored id -> the Kafka coordinates its document records


def _lookup_for(message_store: store.MessageStore) -> Callable[[store.MessageStore, set[str]], Found]:
    build = message_store.client.admin.command("buildInfo")
    return _scan if "ferretdbVersion" in build else _look_up


def _look_up(message_store: store.MessageStore, ids: set[str]) -> Found:
    """The stored ones among `ids`, asked LOOKUP_BATCH at a time (MongoDB reads them from the _id index)."""
    found: Found = {}
    wanted = list(ids)
    for first in range(0, len(wanted), LOOKUP_BATCH):
        query = {"_id": {"$in": wanted[first : first + LOOKUP_BATCH]}}
        for document in message_store.collection.find(query, {"kafka": 1}):
            found[document["_id"]] = _coordinates(document)
    return found


def _scan(message_store: store.MessageStore, ids: set[str]) -> Found:
    """The stored ones among `ids`, by one pass over the collection (for a store without an _id index)."""
    return {
        document["_id"]: _coordinates(document)
        for document in message_store.collection.find({}, {"kafka": 1})
        if document["_id"] in ids
    }


def _legacy_ids(window: Window, topic: str) -> set[str]:
    """Where a message without an id was stored before fallback ids were reserved (see streamd.ids)."""
    return {legacy_offset_id(topic, e.partition, e.offset) for e in window if e.id.startswith(FALLBACK_PREFIX)}


def _contents(message_store: store.MessageStore, ids: set[str]) -> dict[str, bytes]:
    """The digest of the stored text and source of these ids: asked only for ids stored from another offset."""
    wanted = list(ids)
    contents: dict[str, bytes] = {}
    for first in range(0, len(wanted), LOOKUP_BATCH):
        query = {"_id": {"$in": wanted[first : first + LOOKUP_BATCH]}}
        for document in message_store.collection.find(query, {"content": 1, "source": 1}):
            contents[document["_id"]] = _digest(document.get("content"), document.get("source"))
    return contents


def _coordinates(document: dict) -> Coordinates | None:
    where = document.get("kafka")
    if not isinstance(where, dict):
        return None  # written by something else than streamd
    return where.get("topic"), where.get("partition"), where.get("offset")


def _classify(
    window: Window,
    topic: str,
    found: Found,
    contents: dict[str, bytes],
    committed: dict[int, int],
    ranges: dict[int, tuple[int, int]],
    dead_letters: DeadLetterIndex,
    report: Reconciliation,
) -> None:
    for entry in window:
        partition, offset, message_id = entry.partition, entry.offset, entry.id
        report.checked += 1
        lettered = dead_letters.has(partition, offset, entry.timestamp_ms)
        here = (topic, partition, offset)
        if found.get(message_id) == here or (
            message_id.startswith(FALLBACK_PREFIX) and found.get(legacy_offset_id(*here)) == here
        ):
            report.stored += 1
            if lettered:
                report.duplicated += 1
                report.note(f"duplicated: {topic}[{partition}]@{offset} id {message_id} is stored and dead-lettered")
        elif lettered:
            report.dead_lettered += 1
        elif message_id in found and entry.digest is not None and contents.get(message_id) == entry.digest:
            report.repeated += 1
        elif message_id in found:
            report.conflicts += 1
            where = found[message_id]
            stored_at = f"{where[0]}[{where[1]}]@{where[2]}" if where else "outside streamd"
            report.note(
                f"id conflict: {topic}[{partition}]@{offset} id {message_id} is not stored: "
                f"{stored_at} holds that id with other content"
            )
        elif offset >= committed.get(partition, ranges[partition][0]):
            report.pending += 1
        else:
            report.missing += 1
            report.note(f"missing: {topic}[{partition}]@{offset} id {message_id}")


def print_report(report: Reconciliation, out: TextIO | None = None) -> None:
    for line in report.lines():
        print(line, file=out or sys.stdout)
