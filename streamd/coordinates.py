"""Where a stored message came from: the `kafka` field of a stored document, written and read here only.

Stored as one string, "<topic>:<partition>:<offset>" (e.g. "data-stream:2:1041"), the form of the
fallback ids (streamd.ids): Kafka topic names are [A-Za-z0-9._-], so the last two colons split it
unambiguously. Not a {"topic", "partition", "offset"} subdocument, because FerretDB pays for every field
and more for a nested document: insert_many of the consumer's documents ran at 27,500-29,000 documents/s
with the subdocument and 39,000-45,000 with the string (20,000 documents, 500 per call, ABBA order). The
API still answers with the three fields. Documents stored before hold the subdocument; `read` takes both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class Coordinates(NamedTuple):
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def stored(topic: str, partition: int, offset: int) -> str:
    """The `kafka` value of a document stored from this message."""
    return f"{topic}:{partition}:{offset}"


def read(value: object) -> Coordinates | None:
    """The coordinates a stored `kafka` value records, in either form; None for anything else (a document
    another program wrote)."""
    if isinstance(value, str):
        topic, _, rest = value.rpartition(":")
        topic, _, partition = topic.rpartition(":")
        if topic and partition.isdigit() and rest.isdigit():
            return Coordinates(topic, int(partition), int(rest))
        return None
    if isinstance(value, Mapping):
        topic, partition, offset = value.get("topic"), value.get("partition"), value.get("offset")
        if isinstance(topic, str) and type(partition) is int and type(offset) is int:
            return Coordinates(topic, partition, offset)
    return None
