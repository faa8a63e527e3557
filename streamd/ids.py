"""Message ids: what a valid one looks like, and where one comes from when a message has none."""

from __future__ import annotations

import re

import uuid6

# Wide enough for UUIDs, ULIDs and "order-123"; narrow enough that an id can never be a MongoDB
# operator or a path trick, so the API can reject anything else as malformed before querying.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)


def is_valid_id(candidate: object) -> bool:
    return isinstance(candidate, str) and _ID_RE.fullmatch(candidate) is not None


def new_id() -> str:
    """A UUIDv7: time ordered, so ids sort roughly by creation and index inserts stay append-only."""
    return str(uuid6.uuid7())


def offset_id(topic: str, partition: int, offset: int) -> str:
    """The id of a message that carries none: its Kafka coordinates never change, so replays map to it."""
    return f"{topic}:{partition}:{offset}"
