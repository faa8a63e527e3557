"""What a valid message payload is: the built-in JSON Schema, its fast path, and timestamps.

Stage 2 of streamd.pipeline. The built-in rules are also written out in Python (`_check_builtin`),
because jsonschema costs ~35 µs a message; jsonschema gives the verdict, and names the field, only
when the fast path refuses. A user's schema (consumer.schema) applies on top. The id rule applies to
consumer.id_field (`id` by default). Field names the store refuses are found by `refused_field`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME
from jsonschema import Draft202012Validator, FormatChecker, SchemaError
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import validator_for

from streamd.config import Config, ConfigError
from streamd.ids import ID_PATTERN, is_valid_id

DETAIL_LIMIT = 200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
            "description": "Unique id; a message without one gets ~<topic>:<partition>:<offset>.",
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


def builtin_schema(id_field: str | None = "id") -> dict[str, Any]:
    """BUILTIN_SCHEMA with its id rule on consumer.id_field (None: no id rule, every message gets a fallback id)."""
    if id_field == "id":
        return BUILTIN_SCHEMA
    properties = {name: rule for name, rule in BUILTIN_SCHEMA["properties"].items() if name != "id"}
    if id_field is not None:
        properties[id_field] = BUILTIN_SCHEMA["properties"]["id"]
    return {**BUILTIN_SCHEMA, "properties": properties}


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 date and time as an aware UTC datetime; raises ValueError for anything else."""
    if len(text) <= len("2024-01-31"):
        raise ValueError("a date without a time of day")  # fromisoformat would quietly read it as midnight
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+01:00 is a valid date whose UTC equivalent falls before year 1.
        raise ValueError("outside years 1 to 9999 once converted to UTC") from None


def kafka_time(kind: int, milliseconds: int) -> datetime:
    """A Kafka timestamp as an aware UTC datetime; raises ValueError when no datetime can hold it."""
    try:
        # Exact, unlike fromtimestamp(ms / 1000), whose float loses milliseconds far from 1970.
        return EPOCH + timedelta(milliseconds=milliseconds)
    except OverflowError:
        name = {TIMESTAMP_CREATE_TIME: "CreateTime", TIMESTAMP_LOG_APPEND_TIME: "LogAppendTime"}.get(kind, "timestamp")
        raise ValueError(f"its Kafka {name} ({milliseconds} ms) is outside years 1 to 9999") from None


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


class PayloadSchema:
    """Stage 2: the built-in schema, plus the user's (consumer.schema) when there is one; both must hold."""

    def __init__(self, extra: dict | bool | None = None, id_field: str | None = "id") -> None:
        self.id_field = id_field
        self._builtin = Draft202012Validator(builtin_schema(id_field), format_checker=FORMATS)
        self._extra = [] if extra is None else [validator_for(extra)(extra, format_checker=FORMATS)]

    @classmethod
    def from_config(cls, config: Config) -> PayloadSchema:
        id_field = config.consumer.id_field
        if not config.consumer.schema:
            return cls(id_field=id_field)
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
        return cls(extra, id_field)

    def validate(self, payload: dict) -> datetime | None:
        """Raise Invalid unless the payload holds; return its own timestamp, parsed (None without one)."""
        # jsonschema costs ~35 µs a message, fifty times the JSON parse, so the built-in rules are
        # checked directly first; jsonschema gives the verdict (and names the field) only when they fail.
        meets, timestamp = _check_builtin(payload, self.id_field)
        checks = self._extra if meets else [self._builtin, *self._extra]
        for validator in checks:
            error = best_match(validator.iter_errors(payload))
            if error is not None:
                raise Invalid("validate", "schema", _describe(error))
        return timestamp


def _check_builtin(payload: dict, id_field: str | None = "id") -> tuple[bool, datetime | None]:
    """BUILTIN_SCHEMA written out: it must never accept what the schema rejects (tests hold it to that).

    The timestamp it parses on the way is returned, so that to_document need not parse it again.
    """
    if type(payload.get("text")) is not str:
        return False, None
    if id_field is not None and id_field in payload and not is_valid_id(payload[id_field]):
        return False, None
    if "source" in payload and type(payload["source"]) is not str:
        return False, None
    if "timestamp" not in payload:
        return True, None
    stamp = payload["timestamp"]
    if type(stamp) is not str:
        return False, None
    try:
        return True, parse_timestamp(stamp)
    except ValueError:
        return False, None


def refused_field(value: dict, at: str) -> str | None:
    """The path (from `at`) of the first key MongoDB refuses in `value` or anything nested in it, else None.

    MongoDB refuses field names starting with `$` or holding `.` or NUL (FerretDB refuses all three
    at any depth); a batch holding one would fail as a whole, so the message is refused instead.
    A stack, not recursion: JSON may nest a thousand levels deep.
    """
    # The common case first, cheaply: no key holds a `.`, `$` or NUL anywhere, and no value is a container.
    keys = "/".join(value)
    if not ("." in keys or "$" in keys or "\0" in keys):
        for item in value.values():
            if type(item) is dict or type(item) is list:
                break
        else:
            return None
    pending: list[tuple[dict | list, str]] = [(value, at)]
    while pending:
        container, path = pending.pop()
        if type(container) is dict:
            for key, item in container.items():
                if type(key) is not str or key[:1] == "$" or "." in key or "\0" in key:
                    return f"{path}.{key}"
                if type(item) is dict or type(item) is list:
                    pending.append((item, f"{path}.{key}"))
        else:
            for index, item in enumerate(container):
                if type(item) is dict or type(item) is list:
                    pending.append((item, f"{path}[{index}]"))
    return None


def _describe(error: ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path)
    return shortened(f"{where}: {error.message}" if where else error.message)


def shortened(text: str) -> str:
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"
