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
    filtered         none of the above, and a filter stage drops it (the stages configured now decide)
    missing          none of the above: lost

"The store" is every collection messages are written to: mongodb.collection and each one a route stage
names; a message is stored when its id is in any of them.

On top of that, `duplicated` counts messages delivered twice. The `_id` index of a collection is unique,
so one id can never be stored twice in it; what can happen is a message stored *and* dead-lettered, or an
id stored in two collections (routed one way, then another), and that is what `duplicated` counts.
A message dead-lettered twice (the dead-letter topic is written at least once) is reported apart, as
repeated dead letters, and is not a duplicate in the store.

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
ids go in batches of LOOKUP_BATCH and nothing else is read. FerretDB 1.x on SQLite reads the whole
collection for every `$in`; only a lone `{_id: ...}` reaches SQLite, and uses an index only where streamd
created one (the local store, see streamd.stack.ferretdb_ids). There a window few beside the collection
(fewer than 1 in LOOKUPS_PER_SCANNED, as with a narrow --since/--until) is looked up one id at a time, and
anything else costs one scan of `_id` and `kafka` per window and collection (a topic larger than WINDOW
costs one scan per window: memory is bounded, time is not).

This module holds the check itself: the order of the snapshots, the store lookups and the classification.
Reading the topic is in `topic`, the dead-letter index in `dead_letters`, what is printed in `report`.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from streamd import coordinates, group_offsets, store
from streamd.config import Config
from streamd.group_offsets import partitions_of
from streamd.ids import FALLBACK_PREFIX, legacy_offset_id
from streamd.kafka import make_client
from streamd.stack import ferretdb_ids
from streamd.stages.spec import routed_collections
from streamd.verify.dead_letters import DeadLetterIndex, read_dead_letters
from streamd.verify.report import Progress, Reconciliation, VerifyError, print_report
from streamd.verify.topic import (
    KAFKA_TIMEOUT,
    READ_BATCH,
    Window,
    digest,
    filter_check,
    offset_range,
    topic_partitions,
    windows,
)

__all__ = ["DeadLetterIndex", "Reconciliation", "VerifyError", "print_report", "verify"]

LOOKUP_BATCH = 5000  # ids per `$in` query
# Measured on the local FerretDB 1.24 at 50,000 documents: an indexed lookup of one id costs about 0.46 ms, a
# scan about 31 µs per stored document (1.56 s), so one find per id pays off below 1 id in 15 stored ones.
LOOKUPS_PER_SCANNED = 15

Coordinates = coordinates.Coordinates


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
    # Asks where the group stands without joining it, and the partitions' watermarks.
    admin = make_client(AdminClient, config.kafka, "verify")
    message_store = store.MessageStore(config.mongodb)
    stores = [message_store] + [
        message_store.in_collection(name) for name in routed_collections(config.stages) if name != message_store.name
    ]
    try:
        partitions = topic_partitions(reader, config, topic)
        if partitions is None:
            raise VerifyError(f"topic {topic!r} does not exist at {config.kafka.brokers}; check kafka.topic.")
        asked = partitions_of(topic, partitions)
        positions = group_offsets.committed(admin, config.consumer.group, asked, KAFKA_TIMEOUT)
        committed = {partition: offset for (_, partition), offset in positions.items()}
        marks = group_offsets.watermarks(admin, asked, KAFKA_TIMEOUT)
        ranges = {p: offset_range(reader, topic, p, marks[(topic, p)], since, until) for p in partitions}
        dead_letters = read_dead_letters(reader, admin, config, show)
        report.repeated_dead_letters = dead_letters.repeats
        lookup = _lookup_for(config, message_store)
        total = sum(end - start for start, end in ranges.values())
        for window in windows(reader, topic, ranges, show, total, filter_check(config), config.consumer.id_field):
            show(f"checking {len(window)} messages against the store", force=len(window) >= READ_BATCH)
            wanted = {entry.id for entry in window} | _legacy_ids(window, topic)
            found = _find(stores, lookup, wanted)
            elsewhere = {
                e.id for e in window if e.id in found and not _holds(found, e.id, topic, e.partition, e.offset)
            }
            contents = _contents(stores, elsewhere) if elsewhere else {}
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


InCollection = dict[str, Coordinates | None]  # stored id -> the Kafka coordinates its document records
# stored id -> (collection, the Kafka coordinates its document there records), for each collection holding it
Found = dict[str, list[tuple[str, Coordinates | None]]]


def _lookup_for(
    config: Config, message_store: store.MessageStore
) -> Callable[[store.MessageStore, set[str]], InCollection]:
    return functools.partial(_on_ferretdb, config) if message_store.is_ferretdb() else _look_up


def _look_up(message_store: store.MessageStore, ids: set[str]) -> InCollection:
    """The stored ones among `ids`, asked LOOKUP_BATCH at a time (MongoDB reads them from the _id index)."""
    return {document["_id"]: _coordinates(document) for document in message_store.kafka_of(list(ids), LOOKUP_BATCH)}


def _on_ferretdb(config: Config, message_store: store.MessageStore, ids: set[str]) -> InCollection:
    """One find per id where that is an index search and the cheaper (few ids, see LOOKUPS_PER_SCANNED), else a scan."""
    few = len(ids) * LOOKUPS_PER_SCANNED < message_store.stats_count()
    if few and ferretdb_ids.searches_ids(config, message_store.name):
        return _look_up_each(message_store, ids)
    return _scan(message_store, ids)


def _look_up_each(message_store: store.MessageStore, ids: set[str]) -> InCollection:
    """The stored ones among `ids`, one find per id."""
    return {document["_id"]: _coordinates(document) for document in message_store.kafka_each(ids)}


def _scan(message_store: store.MessageStore, ids: set[str]) -> InCollection:
    """The stored ones among `ids`, by one pass over the collection (for a store without an _id index)."""
    return {document["_id"]: _coordinates(document) for document in message_store.all_kafka() if document["_id"] in ids}


def _find(
    stores: list[store.MessageStore], lookup: Callable[[store.MessageStore, set[str]], InCollection], ids: set[str]
) -> Found:
    """The stored ones among `ids`, in every collection, the main one first."""
    found: Found = {}
    for message_store in stores:
        for message_id, where in lookup(message_store, ids).items():
            found.setdefault(message_id, []).append((message_store.name, where))
    return found


def _holds(found: Found, message_id: str, topic: str, partition: int, offset: int) -> bool:
    """Whether a document with this id records these very coordinates, in any collection."""
    return any(where == (topic, partition, offset) for _, where in found.get(message_id, ()))


def _legacy_ids(window: Window, topic: str) -> set[str]:
    """Where a message without an id was stored before fallback ids were reserved (see streamd.ids)."""
    return {legacy_offset_id(topic, e.partition, e.offset) for e in window if e.id.startswith(FALLBACK_PREFIX)}


def _contents(stores: list[store.MessageStore], ids: set[str]) -> dict[str, set[bytes]]:
    """The digests of the stored text and source of these ids, in every collection: asked only for ids stored
    from another offset."""
    contents: dict[str, set[bytes]] = {}
    for message_store in stores:
        for document in message_store.contents_of(list(ids), LOOKUP_BATCH):
            contents.setdefault(document["_id"], set()).add(digest(document.get("content"), document.get("source")))
    return contents


def _coordinates(document: dict) -> Coordinates | None:
    return coordinates.read(document.get("kafka"))  # None: written by something else than streamd


def _classify(
    window: Window,
    topic: str,
    found: Found,
    contents: dict[str, set[bytes]],
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
        stored_id = message_id
        if message_id.startswith(FALLBACK_PREFIX) and not _holds(found, message_id, *here):
            stored_id = legacy_offset_id(*here)
        if _holds(found, stored_id, *here):
            report.stored += 1
            at = f"{topic}[{partition}]@{offset} id {message_id}"
            if lettered:
                report.duplicated += 1
                report.note(f"duplicated: {at} is stored and dead-lettered")
            if len(found[stored_id]) > 1:
                report.duplicated += 1
                report.note(f"duplicated: {at} is stored in {' and '.join(name for name, _ in found[stored_id])}")
        elif lettered:
            report.dead_lettered += 1
        elif message_id in found and entry.digest is not None and entry.digest in contents.get(message_id, ()):
            report.repeated += 1
        elif message_id in found:
            report.conflicts += 1
            where = found[message_id][0][1]
            stored_at = f"{where[0]}[{where[1]}]@{where[2]}" if where else "outside streamd"
            report.note(
                f"id conflict: {topic}[{partition}]@{offset} id {message_id} is not stored: "
                f"{stored_at} holds that id with other content"
            )
        elif offset >= committed.get(partition, ranges[partition][0]):
            report.pending += 1
        elif entry.filtered:
            report.filtered += 1
        else:
            report.missing += 1
            report.note(f"missing: {topic}[{partition}]@{offset} id {message_id}")
