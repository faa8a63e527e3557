"""The MongoDB side: the connection, the indexes the API's queries need, and the idempotent batch write.

A stored message looks like this (the API reads exactly these fields)::

    {"_id": "<message id>", "content": "<text>", "timestamp": <datetime UTC>, "source": "<str>" or None,
     "ingested_at": <datetime UTC>, "kafka": {"topic": "<str>", "partition": <int>, "offset": <int>}}

The message id is the `_id`, so writing the same message twice is a duplicate-key error rather than a
second document: that is what makes a Kafka replay harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

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
            return WriteOutcome(details["nInserted"], len(errors))
        return WriteOutcome(len(result.inserted_ids), 0)

    def ping(self) -> None:
        self.client.admin.command("ping")

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
