"""Message ids: what a valid one looks like, where one comes from when a message has none, and the Kafka key
it makes."""

from __future__ import annotations

import re
from typing import Any

import uuid6

# Wide enough for UUIDs, ULIDs and "order-123"; narrow enough that an id can never be a MongoDB
# operator or a path trick, so the API can reject anything else as malformed before querying.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)

# A message without an id is stored under its Kafka coordinates behind a character no user id can
# start with, so no message can claim another's fallback id: "~data-stream:0:42". Reserving a prefix
# rather than forbidding user ids of the shape <topic>:<n>:<n> keeps every id that was valid before
# valid. "~" is unreserved in URLs, so GET /messages/~data-stream:0:42 needs no escaping.
FALLBACK_PREFIX = "~"
# Kafka topic names are [A-Za-z0-9._-], at most 249 characters.
FALLBACK_PATTERN = r"~[A-Za-z0-9._-]{1,249}:[0-9]{1,10}:[0-9]{1,19}"
_FALLBACK_RE = re.compile(FALLBACK_PATTERN)
# Every id GET /messages/{id} takes, as one regular expression (the API's OpenAPI document publishes it).
STORED_ID_PATTERN = f"^(?:{ID_PATTERN[1:-1]}|{FALLBACK_PATTERN})$"


def is_valid_id(candidate: object) -> bool:
    """An id a message may carry (fallback ids are not: they are reserved)."""
    return isinstance(candidate, str) and _ID_RE.fullmatch(candidate) is not None


def is_stored_id(candidate: object) -> bool:
    """An id a stored message can have: a message's own id, or a fallback id."""
    return is_valid_id(candidate) or is_fallback_id(candidate)


def is_fallback_id(candidate: object) -> bool:
    """An id streamd made from a message's Kafka coordinates (the reserved `~` form)."""
    return isinstance(candidate, str) and _FALLBACK_RE.fullmatch(candidate) is not None


def new_id() -> str:
    """A UUIDv7: time ordered, so ids sort roughly by creation and index inserts stay append-only."""
    return str(uuid6.uuid7())


def message_key(message: dict[str, Any], id_field: str | None) -> bytes | None:
    """The message's id as its Kafka key: a string or a whole number, else no key (any partition)."""
    value = message.get(id_field) if id_field is not None else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).encode()


def offset_id(topic: str, partition: int, offset: int) -> str:
    """The id of a message that carries none: its Kafka coordinates never change, so replays map to it."""
    return f"{FALLBACK_PREFIX}{topic}:{partition}:{offset}"


def legacy_offset_id(topic: str, partition: int, offset: int) -> str:
    """The fallback id streamd gave before it reserved one (any user id could take it); verify still finds it."""
    return f"{topic}:{partition}:{offset}"
