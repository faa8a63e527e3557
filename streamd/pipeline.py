"""What the consumer does to each message, as small pure stages: parse -> validate -> to_document.

A message that fails a stage becomes a Rejection instead of an exception escaping the batch, so the
batch carries it to whatever handles rejects (the dead-letter step) and its offset is committed with
the rest: a message nobody can store must not block its partition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message
from jsonschema import Draft202012Validator, FormatChecker, SchemaError
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import validator_for

from streamd.config import Config, ConfigError
from streamd.ids import ID_PATTERN, is_valid_id, offset_id

DETAIL_LIMIT = 200

BUILTIN_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "streamd message",
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string", "description": "The message itself; stored as `content`."},
        "id": {
            "type": "string",
            "pattern": ID_PATTERN,
            # Python's `$` also matches before a trailing newline, so the pattern alone would let
            # "abc\n" through; the format applies streamd.ids' exact rule.
            "format": "message-id",
            "description": "Unique id; a message without one gets <topic>:<partition>:<offset>.",
        },
        "source": {"type": "string", "description": "Who sent the message."},
        "timestamp": {
            "type": "string",
            "format": "date-time",
            "description": "ISO 8601 date and time; without an offset it is read as UTC. "
            "A message without one gets its Kafka timestamp.",
        },
    },
}


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 date and time as an aware UTC datetime; raises ValueError for anything else."""
    if len(text) <= len("2024-01-31"):
        raise ValueError("a date without a time of day")  # fromisoformat would quietly read it as midnight
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    return not isinstance(value, str) or parse_timestamp(value) is not None


@FORMATS.checks("message-id")
def _is_message_id(value: object) -> bool:
    return not isinstance(value, str) or is_valid_id(value)


class Invalid(Exception):
    """Raised by a stage; the pipeline turns it into a Rejection carrying the message's coordinates."""

    def __init__(self, stage: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.stage = stage
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that will not be stored, with everything a dead-letter topic needs to keep it."""

    stage: str  # parse | validate
    reason: str  # a fixed word, fit for a metric label: empty, too_large, not_utf8, not_json, not_object, schema
    detail: str  # one sentence for people
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset} rejected at {self.stage} ({self.reason}): {self.detail}"


@dataclass(slots=True)
class MessageBatch:
    """One consume() worth of messages after the stages: what to store, what was rejected, what to commit."""

    documents: list[dict] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    # (topic, partition) -> offset to commit: the next one to read, one past the highest in the batch.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # Events librdkafka delivered in place of messages (partition EOF, topic errors); not messages.
    errors: list[KafkaError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.documents) + len(self.rejections)


def parse(value: bytes | None, max_bytes: int) -> dict:
    """Stage 1: the value must be at most max_bytes of UTF-8 JSON holding an object."""
    if not value:
        raise Invalid("parse", "empty", "the message has no value")
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


class PayloadSchema:
    """Stage 2: the built-in schema, plus the user's (consumer.schema) when there is one; both must hold."""

    def __init__(self, extra: dict | bool | None = None) -> None:
        self._builtin = Draft202012Validator(BUILTIN_SCHEMA, format_checker=FORMATS)
        self._extra = [] if extra is None else [validator_for(extra)(extra, format_checker=FORMATS)]

    @classmethod
    def from_config(cls, config: Config) -> PayloadSchema:
        if not config.consumer.schema:
            return cls()
        path = config.resolve_path(config.consumer.schema)
        try:
            extra = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"consumer.schema: {path} cannot be read ({exc.strerror}).") from None
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"consumer.schema: {path} is not JSON ({exc}).") from None
        if not isinstance(extra, dict | bool):
            raise ConfigError(f"consumer.schema: {path} must hold a JSON Schema object.")
        try:
            validator_for(extra).check_schema(extra)
        except SchemaError as exc:
            raise ConfigError(f"consumer.schema: {path} is not a valid JSON Schema ({exc.message}).") from None
        return cls(extra)

    def validate(self, payload: dict) -> None:
        # jsonschema costs ~35 µs a message, fifty times the JSON parse, so the built-in rules are
        # checked directly first; jsonschema gives the verdict (and names the field) only when they fail.
        checks = self._extra if _meets_builtin(payload) else [self._builtin, *self._extra]
        for validator in checks:
            error = best_match(validator.iter_errors(payload))
            if error is not None:
                raise Invalid("validate", "schema", _describe(error))


def _meets_builtin(payload: dict) -> bool:
    """BUILTIN_SCHEMA written out: it must never accept what the schema rejects (tests hold it to that)."""
    if type(payload.get("text")) is not str:
        return False
    if "id" in payload and not is_valid_id(payload["id"]):
        return False
    if "source" in payload and type(payload["source"]) is not str:
        return False
    if "timestamp" in payload:
        stamp = payload["timestamp"]
        if type(stamp) is not str:
            return False
        try:
            parse_timestamp(stamp)
        except ValueError:
            return False
    return True


def to_document(
    payload: dict, topic: str, partition: int, offset: int, kafka_timestamp: tuple[int, int], ingested_at: datetime
) -> dict:
    """Stage 3: the stored shape (see streamd.store). Only called on a payload that passed validate()."""
    stamp = payload.get("timestamp")
    if stamp is not None:
        timestamp = parse_timestamp(stamp)
    elif kafka_timestamp[0] != TIMESTAMP_NOT_AVAILABLE:
        timestamp = datetime.fromtimestamp(kafka_timestamp[1] / 1000, UTC)
    else:
        timestamp = ingested_at
    return {
        "_id": payload.get("id") or offset_id(topic, partition, offset),
        "content": payload["text"],
        "timestamp": timestamp,
        "source": payload.get("source"),
        "ingested_at": ingested_at,
        "kafka": {"topic": topic, "partition": partition, "offset": offset},
    }


class Pipeline:
    """Runs every message of a consume() through the stages and collects the outcome in a MessageBatch."""

    def __init__(self, schema: PayloadSchema, max_message_bytes: int) -> None:
        self.schema = schema
        self.max_message_bytes = max_message_bytes

    @classmethod
    def from_config(cls, config: Config) -> Pipeline:
        return cls(PayloadSchema.from_config(config), config.consumer.max_message_bytes)

    def batch(self, messages: Iterable[Message], ingested_at: datetime | None = None) -> MessageBatch:
        ingested_at = ingested_at or datetime.now(UTC)
        batch = MessageBatch()
        documents, rejections, next_offsets = batch.documents, batch.rejections, batch.next_offsets
        for message in messages:
            error = message.error()
            if error is not None:
                batch.errors.append(error)
                continue
            topic, partition, offset, value = message.topic(), message.partition(), message.offset(), message.value()
            try:
                payload = parse(value, self.max_message_bytes)
                self.schema.validate(payload)
            except Invalid as exc:
                rejections.append(
                    Rejection(exc.stage, exc.reason, exc.detail, topic, partition, offset, message.key(), value)
                )
            else:
                documents.append(to_document(payload, topic, partition, offset, message.timestamp(), ingested_at))
            # Kafka hands out a partition's messages in offset order, so the last one seen is the highest.
            next_offsets[topic, partition] = offset + 1
        return batch


def _describe(error: ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path)
    text = f"{where}: {error.message}" if where else error.message
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"


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
