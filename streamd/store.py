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
from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConfigurationError, ConnectionFailure, ExecutionTimeout, WTimeoutError

from streamd.config import ConfigError, MongoConfig

DUPLICATE_KEY = 11000

# Errors after which the same write can succeed later. ConnectionFailure covers AutoReconnect,
# NotPrimaryError (a replica set election), NetworkTimeout and ServerSelectionTimeoutError.
UNAVAILABLE = (ConnectionFailure, ExecutionTimeout, WTimeoutError)

# Per-document write errors after which the same write can succeed later: the server was stepping
# down, shutting down or out of time. Any other per-document error is the document's own fault.
RETRYABLE_WRITE_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}  # MongoDB's error codes
)


class StoreBusy(Exception):
    """The store answered but could not take some of the documents right now; the batch is written again."""


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
    # Documents the store refuses for good (index in the batch -> why, one sentence): never worth a retry.
    refused: dict[int, str] = field(default_factory=dict)


def write_outcome(documents: list[dict], details: dict) -> WriteOutcome:
    """What an unordered insert_many that raised BulkWriteError (with these `details`) did to `documents`.

    Raises StoreBusy when any of it can succeed later (a retryable code, an unsatisfied write concern).
    """
    errors = details.get("writeErrors", [])
    if details.get("writeConcernErrors") or any(error["code"] in RETRYABLE_WRITE_CODES for error in errors):
        raise StoreBusy(errors[0]["errmsg"] if errors else "write concern not satisfied")
    duplicated = tuple(documents[error["index"]] for error in errors if error["code"] == DUPLICATE_KEY)
    refused = {
        error["index"]: f"the store refused the document: {error.get('errmsg', '')} (code {error['code']})"
        for error in errors
        if error["code"] != DUPLICATE_KEY
    }
    return WriteOutcome(details.get("nInserted", 0), len(duplicated), duplicated, refused)


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
        """Insert what is new: documents already stored (a replay) are duplicates, documents the store
        refuses for good are in `refused`; neither is an error.

        Raises StoreBusy or one of UNAVAILABLE when the same write can succeed later, and OperationFailure
        when the store refuses the command itself (e.g. not authorized).
        """
        if not documents:
            return WriteOutcome(0, 0)
        try:
            return self._attempt(documents)
        except InvalidDocument:
            # pymongo refused the whole batch before sending it (e.g. a document over 16 MB): find out which.
            return self._insert_one_by_one(documents)

    def insert_many(self, documents: list[dict]) -> int:
        """The write itself: how many documents went in; pymongo's errors as they come."""
        # Unordered, so one duplicate does not stop the documents after it from being inserted.
        return len(self.collection.insert_many(documents, ordered=False).inserted_ids)

    def _attempt(self, documents: list[dict]) -> WriteOutcome:
        try:
            return WriteOutcome(self.insert_many(documents), 0)
        except BulkWriteError as exc:
            return write_outcome(documents, exc.details)

    def _insert_one_by_one(self, documents: list[dict]) -> WriteOutcome:
        inserted = 0
        duplicated: list[dict] = []
        refused: dict[int, str] = {}
        for index, document in enumerate(documents):
            try:
                outcome = self._attempt([document])
            except InvalidDocument as exc:
                refused[index] = f"the document cannot be stored: {exc}"
                continue
            inserted += outcome.inserted
            duplicated += outcome.duplicated
            refused.update((index, reason) for reason in outcome.refused.values())
        return WriteOutcome(inserted, len(duplicated), tuple(duplicated), refused)

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
