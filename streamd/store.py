"""The MongoDB side: the connection, the indexes the API's queries need, and the idempotent batch write.

A stored message looks like this (the API reads exactly these fields)::

    {"_id": "<message id>", "content": "<text>", "timestamp": <datetime UTC>, "source": "<str>" or None,
     "ingested_at": <datetime UTC>, "kafka": {"topic": "<str>", "partition": <int>, "offset": <int>}}

The message id is the `_id`, so writing the same message twice is a duplicate-key error rather than a
second document: that is what makes a Kafka replay harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConfigurationError, ConnectionFailure, ExecutionTimeout, WTimeoutError

from streamd.config import ConfigError, MongoConfig

DUPLICATE_KEY = 11000

# Errors after which the same write can succeed later. ConnectionFailure covers AutoReconnect,
# NotPrimaryError (a replica set election), NetworkTimeout and ServerSelectionTimeoutError.
UNAVAILABLE = (ConnectionFailure, ExecutionTimeout, WTimeoutError)

INDEXES = [
    # Newest first, with _id as the tie-breaker that makes the API's cursor pagination stable.
    IndexModel([("timestamp", DESCENDING), ("_id", DESCENDING)]),
    IndexModel([("source", ASCENDING), ("timestamp", DESCENDING), ("_id", DESCENDING)]),
    # /stats counts what arrived in the last 1, 5 and 15 minutes.
    IndexModel([("ingested_at", DESCENDING)]),
]


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    inserted: int
    duplicates: int
    # The documents refused as duplicate keys, for telling a replay from an id conflict (see conflicts()).
    duplicated: tuple[dict, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Conflict:
    """One id, two different messages: the stored one and a newcomer from other Kafka coordinates."""

    id: str
    stored: dict  # {"topic", "partition", "offset"} of the stored document, or {} when something else wrote it
    refused: dict  # the same, of the message refused as a duplicate

    def __str__(self) -> str:
        return f"id {self.id} of {_where(self.refused)} is already stored from {_where(self.stored)} with other content"


def _where(kafka: dict) -> str:
    if not kafka:
        return "outside streamd"
    return f"{kafka.get('topic')}[{kafka.get('partition')}]@{kafka.get('offset')}"


def _kafka(stored: dict) -> dict:
    kafka = stored.get("kafka")
    return kafka if isinstance(kafka, dict) else {}


def same_message(stored: dict, document: dict) -> bool:
    """A replay (the very Kafka coordinates) or the same message sent twice (same content and source).

    The timestamp is left out: a message sent again without a timestamp of its own gets a new Kafka one.
    """
    return stored.get("kafka") == document["kafka"] or (
        stored.get("content") == document["content"] and stored.get("source") == document["source"]
    )


def connect(settings: MongoConfig) -> pymongo.MongoClient:
    """A client for mongodb.uri; it connects lazily, so an unreachable store shows up at the first operation."""
    try:
        return pymongo.MongoClient(
            settings.uri, serverSelectionTimeoutMS=settings.timeout_ms, tz_aware=True, appname="streamd"
        )
    except ConfigurationError as exc:
        raise ConfigError(f"mongodb.uri: {exc}; expected a connection string like mongodb://host:27017.") from None


class MessageStore:
    """The messages collection. Closes its client only when it opened it."""

    def __init__(self, settings: MongoConfig, client: pymongo.MongoClient | None = None) -> None:
        self._owns_client = client is None
        self.client = connect(settings) if client is None else client
        self.collection: Collection = self.client[settings.database][settings.collection]

    def ensure_indexes(self) -> None:
        # One index per createIndexes: FerretDB 1.24 drops the connection when a single createIndexes
        # names several indexes that all exist already, which is every start after the first.
        for index in INDEXES:
            self.collection.create_indexes([index])

    def insert_batch(self, documents: list[dict]) -> WriteOutcome:
        """Insert what is new; documents already stored (a replay) count as duplicates, not errors.

        Raises one of UNAVAILABLE when the store cannot take the write now, and any other
        pymongo error (including a BulkWriteError with a non-duplicate failure) as it came.
        """
        if not documents:
            return WriteOutcome(0, 0)
        try:
            # Unordered, so one duplicate does not stop the documents after it from being inserted.
            result = self.collection.insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            details = exc.details
            errors = details["writeErrors"]
            if details.get("writeConcernErrors") or any(error["code"] != DUPLICATE_KEY for error in errors):
                raise
            return WriteOutcome(details["nInserted"], len(errors), tuple(documents[e["index"]] for e in errors))
        return WriteOutcome(len(result.inserted_ids), 0)

    def conflicts(self, duplicated: Iterable[dict]) -> list[Conflict]:
        """Among documents refused as duplicates, those whose id holds a different message.

        Only batches with duplicates pay for this one query. On FerretDB `$in` on `_id` scans the
        collection (it has no usable _id index), which is why the hot path never asks.
        """
        wanted = {document["_id"]: document for document in duplicated}
        if not wanted:
            return []
        found = self.collection.find({"_id": {"$in": list(wanted)}}, {"content": 1, "source": 1, "kafka": 1})
        return [
            Conflict(stored["_id"], _kafka(stored), wanted[stored["_id"]]["kafka"])
            for stored in found
            if not same_message(stored, wanted[stored["_id"]])
        ]

    def ping(self) -> None:
        self.client.admin.command("ping")

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
