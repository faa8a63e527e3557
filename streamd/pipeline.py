"""What the consumer does to each message, as small pure stages: parse -> validate -> stages -> to_document.

A message that fails a stage becomes a Rejection instead of an exception escaping the batch, so the
batch carries it to the dead-letter step (streamd.dead_letter) and its offset is committed with the
rest once the dead-letter topic has it: a message nobody can store must not block its partition.
Whatever else a message makes a stage raise is our bug, not the message's fault; it still becomes a
Rejection (reason `internal`), logged with its traceback, so that one message can never stop a consumer.
What makes a payload valid (stage 2) is streamd.message_schema; the user's stages (config `stages:`)
are streamd.stages: they may drop a message (counted in `filtered`, committed, neither stored nor
dead-lettered), route it to another collection (`targets`) or fail on it (a Rejection, reason `stage`).
The message id is taken before the stages, so that a replay and `streamd verify` find it without them.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message

from streamd import coordinates
from streamd.config import Config
from streamd.dead_letter import redriven_id
from streamd.ids import FALLBACK_PREFIX, is_valid_id, offset_id
from streamd.message_schema import Invalid, PayloadSchema, kafka_time, parse_timestamp, refused_field, shortened
from streamd.stages.chain import StageChain, kafka_context

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that will not be stored, with everything a dead-letter topic needs to keep it."""

    stage: str  # parse | validate | stage | store | internal | consume
    # A fixed word, fit for a metric label: tombstone, empty, too_large, not_utf8, not_json, not_object,
    # schema, field_name (a key the store refuses), bad_timestamp (no timestamp of its own and a Kafka one
    # no date can hold), stage (one of the user's stages failed on it), store_rejected
    # (the store refused this one document for good), internal (a stage raised: our bug) or crash
    # (consumers died handling it; see streamd.quarantine).
    reason: str
    detail: str  # one sentence for people
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None = None
    timestamp_ms: int | None = None  # the message's Kafka timestamp, when it has one
    stage_name: str | None = None  # the user's stage that failed on it (reason `stage`)

    @classmethod
    def of(cls, message: Message, stage: str, reason: str, detail: str, stage_name: str | None = None) -> Rejection:
        kind, stamp = message.timestamp()
        return cls(
            stage,
            reason,
            detail,
            message.topic(),
            message.partition(),
            message.offset(),
            message.key(),
            message.value(),
            message.headers(),
            None if kind == TIMESTAMP_NOT_AVAILABLE else stamp,
            stage_name,
        )

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset} rejected at {self.stage} ({self.reason}): {self.detail}"


@dataclass(slots=True)
class MessageBatch:
    """One consume() worth of messages after the stages: what to store, what was rejected, what to commit."""

    documents: list[dict] = field(default_factory=list)
    # The message each document came from (same index), for dead-lettering one the store refuses.
    sources: list[Message] = field(default_factory=list)
    # The collection each document goes to (same index): a route stage's, or None for mongodb.collection.
    targets: list[str | None] = field(default_factory=list)
    # Filter stage name -> messages it dropped: committed with the batch, neither stored nor dead-lettered.
    filtered: Counter[str] = field(default_factory=Counter)
    rejections: list[Rejection] = field(default_factory=list)
    # (topic, partition) -> offset to commit: the next one to read, one past the highest in the batch.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # Events librdkafka delivered in place of messages (partition EOF, topic errors); not messages.
    errors: list[KafkaError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.documents) + len(self.rejections) + self.filtered.total()

    def refuse(self, refused: dict[int, str]) -> list[Rejection]:
        """Move the documents at these indexes (-> the store's reason) to the rejections, as stage "store"."""
        moved = [
            Rejection.of(self.sources[index], "store", "store_rejected", shortened(detail))
            for index, detail in sorted(refused.items())
        ]
        self._keep([index for index in range(len(self.documents)) if index not in refused])
        self.rejections.extend(moved)
        return moved

    def drop(self, partitions: set[tuple[str, int]]) -> int:
        """Forget every message of these partitions (they moved to another consumer); how many were dropped.

        Filtered messages are counted, not kept: their count stays (the new owner filters them again).
        """
        before = len(self)
        self._keep(
            [
                index
                for index, source in enumerate(self.sources)
                if (source.topic(), source.partition()) not in partitions
            ]
        )
        self.rejections = [r for r in self.rejections if (r.topic, r.partition) not in partitions]
        for moved in partitions:
            self.next_offsets.pop(moved, None)
        return before - len(self)

    def by_target(self) -> dict[str | None, list[int]]:
        """The indexes of the documents per target collection, in batch order."""
        groups: dict[str | None, list[int]] = {}
        for index, target in enumerate(self.targets):
            groups.setdefault(target, []).append(index)
        return groups

    def _keep(self, kept: list[int]) -> None:
        self.documents = [self.documents[index] for index in kept]
        self.sources = [self.sources[index] for index in kept]
        self.targets = [self.targets[index] for index in kept]


def parse(value: bytes | None, max_bytes: int) -> dict:
    """Stage 1: the value must be at most max_bytes of UTF-8 JSON holding an object."""
    if value is None:
        raise Invalid("parse", "tombstone", "the message is a tombstone (its value is null)")
    if not value:
        raise Invalid("parse", "empty", "the message value is empty (0 bytes)")
    if len(value) > max_bytes:
        raise Invalid(
            "parse", "too_large", f"the value is {len(value)} bytes, over consumer.max_message_bytes ({max_bytes})"
        )
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise Invalid("parse", "not_utf8", f"the value is not UTF-8 (byte {bad.start})") from None
        raise Invalid("parse", "not_json", f"the value is not JSON ({exc})") from None
    if type(payload) is not dict:
        raise Invalid("parse", "not_object", f"the value is a JSON {_json_kind(payload)}, not an object")
    return payload


def document_id(payload: object, topic: str, partition: int, offset: int, id_field: str | None = "id") -> str:
    """The `_id` a message is stored under: its own id (consumer.id_field), else its Kafka coordinates
    (see streamd.ids). `streamd verify` uses it on every message, valid or not, to know where to look.
    """
    candidate = payload.get(id_field) if id_field is not None and isinstance(payload, dict) else None
    return candidate if is_valid_id(candidate) else offset_id(topic, partition, offset)


def message_id(message: Message, payload: object, id_field: str | None = "id") -> str:
    """document_id of a consumed message, except that a redriven message without an id keeps the fallback
    id of the message it first was (see streamd.dead_letter.redriven_id): redriving it twice stores it once."""
    found = document_id(payload, message.topic(), message.partition(), message.offset(), id_field)
    if found.startswith(FALLBACK_PREFIX):
        return redriven_id(message.headers()) or found
    return found


def to_document(
    payload: dict,
    topic: str,
    partition: int,
    offset: int,
    kafka_timestamp: tuple[int, int],
    ingested_at: datetime,
    timestamp: datetime | None = None,
    id_field: str | None = "id",
    message_id: str | None = None,
) -> dict:
    """Stage 3: the stored shape (see streamd.store). Only called on a payload that passed validate();
    `timestamp` is the payload's own as validate() returned it, read here only when not given (a stage may
    have set a datetime). `message_id` is the one taken before the stages, else taken here.
    Raises Invalid (bad_timestamp) when the message has no timestamp and its Kafka one fits no date."""
    if timestamp is None:
        stamp = payload.get("timestamp")
        if isinstance(stamp, datetime):
            timestamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
        elif stamp is not None:
            timestamp = parse_timestamp(stamp)
        elif kafka_timestamp[0] != TIMESTAMP_NOT_AVAILABLE:
            try:
                timestamp = kafka_time(*kafka_timestamp)
            except ValueError as exc:
                raise Invalid("validate", "bad_timestamp", f"the message has no timestamp and {exc}") from None
        else:
            timestamp = ingested_at
    document = {
        "_id": message_id or document_id(payload, topic, partition, offset, id_field),
        "content": payload["text"],
        "timestamp": timestamp,
        "source": payload.get("source"),
        "ingested_at": ingested_at,
        "kafka": coordinates.stored(topic, partition, offset),
    }
    reserved = _reserved(id_field)
    # A set comparison in C: the tutorial's messages carry nothing else, and pay nothing for `data`.
    if not payload.keys() <= reserved:
        document["data"] = {name: value for name, value in payload.items() if name not in reserved}
    return document


@functools.cache
def _reserved(id_field: str | None) -> frozenset[str]:
    """The payload fields stored at the top level of a document, not in `data`."""
    return frozenset({"text", "source", "timestamp"} | ({id_field} - {None}))


class Pipeline:
    """Runs every message of a consume() through the stages and collects the outcome in a MessageBatch."""

    def __init__(
        self,
        schema: PayloadSchema,
        max_message_bytes: int,
        chain: StageChain | None = None,
        id_field: str | None = "id",
    ) -> None:
        self.schema = schema
        self.max_message_bytes = max_message_bytes
        self.chain = chain or StageChain(())
        self.id_field = id_field

    @classmethod
    def from_config(cls, config: Config) -> Pipeline:
        id_field = config.consumer.id_field
        chain = StageChain.compile(config.stages, id_field)  # compiled once at load too, so it cannot fail here
        return cls(PayloadSchema.from_config(config), config.consumer.max_message_bytes, chain, id_field)

    def batch(self, messages: Iterable[Message], ingested_at: datetime | None = None) -> MessageBatch:
        ingested_at = ingested_at or datetime.now(UTC)
        batch = MessageBatch()
        documents, sources, targets, rejections = batch.documents, batch.sources, batch.targets, batch.rejections
        next_offsets = batch.next_offsets
        chain, id_field = self.chain, self.id_field
        staged = bool(chain)  # once: with no stages, a message pays nothing for them
        failures: list[Exception] = []
        for message in messages:
            error = message.error()
            if error is not None:
                batch.errors.append(error)
                continue
            topic, partition, offset, value = message.topic(), message.partition(), message.offset(), message.value()
            # Kafka hands out a partition's messages in offset order, so the last one seen is the highest.
            next_offsets[topic, partition] = offset + 1
            try:
                payload = parse(value, self.max_message_bytes)
                timestamp = self.schema.validate(payload)
                refused = refused_field(payload, "data")
                if refused is not None:
                    raise Invalid(
                        "validate",
                        "field_name",
                        shortened(f"{refused}: the store refuses field names starting with $ or holding . or NUL"),
                    )
                stored_as = message_id(message, payload, id_field)
                target = None
                if staged:
                    outcome = chain.apply(payload, lambda m=message: kafka_context(m))
                    if outcome.dropped_by is not None:
                        batch.filtered[outcome.dropped_by] += 1
                        continue
                    if outcome.failed_at is not None:
                        detail = f"stage {outcome.failed_at}: {outcome.error}"
                        rejections.append(Rejection.of(message, "stage", "stage", detail, outcome.failed_at))
                        continue
                    target = outcome.collection
                    if chain.touches_timestamp:
                        timestamp = None
                document = to_document(
                    payload, topic, partition, offset, message.timestamp(), ingested_at, timestamp, id_field, stored_as
                )
            except Invalid as exc:
                rejections.append(Rejection.of(message, exc.stage, exc.reason, exc.detail))
            except Exception as exc:  # noqa: BLE001 - one message must never stop the consumer, whatever it is
                failures.append(exc)
                detail = shortened(f"{type(exc).__name__}: {exc}")
                rejections.append(Rejection.of(message, "internal", "internal", detail))
            else:
                documents.append(document)
                sources.append(message)
                targets.append(target)
        if failures:
            # A bug of ours, not of the message: worth a traceback, but one per batch, not one per message.
            log.error(
                "%d messages of this batch made a stage raise; they are dead-lettered with reason internal",
                len(failures),
                exc_info=failures[0],
            )
        return batch


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
