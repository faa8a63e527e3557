"""The MongoDB side: the connection, the idempotent batch write, and every query, beside the indexes serving them.

A stored message looks like this (the API reads exactly these fields)::

    {"_id": "<message id>", "content": "<text>", "timestamp": <datetime UTC>, "source": "<str>" or None,
     "ingested_at": <datetime UTC>, "kafka": "<topic>:<partition>:<offset>",
     "data": {<every other field of the payload, after the stages>}}

`data` is left out when the message has no other field; readers take a missing `data` as {}. `kafka` is
written and read by streamd.coordinates (older documents hold a subdocument there). Route
stages spread messages over several collections of this shape: one MessageStore per collection
(`in_collection`), all sharing one client.

The message id is the `_id`, so writing the same message twice is a duplicate-key error rather than a
second document: that is what makes a Kafka replay harmless.

The module is longer than most (over 300 lines) on purpose: every query of the API and of `streamd verify`
is here, beside the index that serves it, so a change to one is made with the other in view.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pymongo
from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    CollectionInvalid,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    WTimeoutError,
)

from streamd import coordinates
from streamd.config import MongoConfig
from streamd.credentials import mongo_client

DUPLICATE_KEY = 11000
NAMESPACE_EXISTS = 48
NAMESPACE_NOT_FOUND = 26

# Errors after which the same write can succeed later. ConnectionFailure covers AutoReconnect,
# NotPrimaryError (a replica set election), NetworkTimeout and ServerSelectionTimeoutError.
UNAVAILABLE = (ConnectionFailure, ExecutionTimeout, WTimeoutError)

# Per-document write errors after which the same write can succeed later: the server was stepping
# down, shutting down or out of time. Any other per-document error is the document's own fault.
RETRYABLE_WRITE_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}  # MongoDB's error codes
)


# What pymongo raises, before sending anything, for a document BSON cannot encode.
UNENCODABLE = (InvalidDocument, OverflowError)


class StoreBusy(Exception):
    """The store answered but could not take some of the documents right now; the batch is written again."""


# Each index names the queries it serves (the read side of MessageStore, below). Every collection also has
# the unique `_id` index: by_id, conflicts, kafka_of and contents_of. On FerretDB 1.x no query uses any of
# these (see StoreKind): they are created on MongoDB only, where every one is used.
INDEXES = [
    # newest() without a source (GET /messages, GET /stream): newest first, with _id as the tie-breaker that
    # makes the API's cursor pagination stable.
    IndexModel([("timestamp", DESCENDING), ("_id", DESCENDING)]),
    # newest() with a source: equality on source, then the same order.
    IndexModel([("source", ASCENDING), ("timestamp", DESCENDING), ("_id", DESCENDING)]),
    # count_since(): /stats counts what arrived in the last 1, 5 and 15 minutes.
    IndexModel([("ingested_at", DESCENDING)]),
]
# Exactly the key of the ("timestamp", "_id") index, and its suffix after `source` in the other one:
# sorting any other way would make MongoDB sort in memory instead of walking an index.
NEWEST_FIRST = [("timestamp", DESCENDING), ("_id", DESCENDING)]
# Named fields only: whatever else a future consumer stores does not leak out of the API unreviewed.
MESSAGE_FIELDS = {"content": True, "timestamp": True, "source": True, "ingested_at": True, "kafka": True, "data": True}


# What a user field is compared with: the API reads `?data.n=21` as "21" or 21, never as an operator.
DataValue = str | int | float | bool


class Position(Protocol):
    """Where a page ended: the sort key of its last message (the API's Cursor)."""

    @property
    def timestamp(self) -> datetime: ...
    @property
    def id(self) -> str: ...


class Narrowing(Protocol):
    """What a list of the newest messages is narrowed to (the API's MessageQuery)."""

    @property
    def source(self) -> str | None: ...
    @property
    def since(self) -> datetime | None: ...  # inclusive
    @property
    def until(self) -> datetime | None: ...  # exclusive
    @property
    def before(self) -> Position | None: ...
    @property
    def data(self) -> tuple[tuple[str, tuple[DataValue, ...]], ...]: ...  # (user field, values it may equal)


def newest_filter(query: Narrowing) -> dict[str, Any]:
    """The find() filter of newest(): equality on source first, then a range on the sort key.

    Equality on user fields (`data.<field>`) is not in any index: on MongoDB they filter the walk of the
    (timestamp, _id) index, which is cheap while matches are common and a scan when they are rare.
    """
    selector: dict[str, Any] = {}
    if query.source is not None:
        selector["source"] = query.source
    for name, values in query.data:
        # The API validated the name (no `$`, no `.`) and the values are literals: `$in` only lists them.
        selector[f"data.{name}"] = values[0] if len(values) == 1 else {"$in": list(values)}
    timestamp: dict[str, datetime] = {}
    if query.since is not None:
        timestamp["$gte"] = query.since
    if query.until is not None:
        timestamp["$lt"] = query.until
    if query.before is not None:
        # (timestamp, _id) < cursor in sort order. The plain `$lte` bound is redundant with the `$or`
        # but is what lets the planner bound the index scan instead of filtering the whole index.
        timestamp["$lte"] = query.before.timestamp
        selector["$or"] = [
            {"timestamp": {"$lt": query.before.timestamp}},
            {"_id": {"$lt": query.before.id}},
        ]
    if timestamp:
        selector["timestamp"] = timestamp
    return selector


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
    stored: coordinates.Coordinates | None  # of the stored document; None when something else wrote it
    refused: coordinates.Coordinates | None  # of the message refused as a duplicate

    def __str__(self) -> str:
        stored = self.stored or "outside streamd"
        return f"id {self.id} of {self.refused} is already stored from {stored} with other content"


def same_message(stored: dict, document: dict) -> bool:
    """A replay (the very Kafka coordinates) or the same message sent twice (same content and source).

    The timestamp is left out: a message sent again without a timestamp of its own gets a new Kafka one.
    """
    return coordinates.read(stored.get("kafka")) == coordinates.read(document["kafka"]) or (
        stored.get("content") == document["content"] and stored.get("source") == document["source"]
    )


@dataclass(frozen=True, slots=True)
class StoreKind:
    """What answers at mongodb.uri, asked once per client: FerretDB's buildInfo names its own version beside the
    MongoDB one it mimics."""

    ferretdb_version: str | None  # None for MongoDB

    @classmethod
    def of(cls, client: pymongo.MongoClient) -> StoreKind:
        return cls(client.admin.command("buildInfo").get("ferretdbVersion"))

    @property
    def is_ferretdb(self) -> bool:
        return self.ferretdb_version is not None

    def indexes(self) -> list[IndexModel]:
        """The secondary indexes this store's queries use. FerretDB 1.x pushes no sort and no filter but a lone
        `_id` down to SQLite, so an index there is maintained on every insert and never read: measured, the three
        of INDEXES cut insert_many from about 30,000 to 17,000 documents/s (README, Performance)."""
        return [] if self.is_ferretdb else INDEXES


def failure_reason(exc: Exception) -> str:
    """Why the store did not answer, in at most 200 characters: the first clause names the server and the
    socket error; pymongo's topology dump after it belongs in a debugger, not in a probe's answer."""
    return str(exc).partition(" (configured timeouts")[0].partition(", Timeout:")[0][:200]


def connect(settings: MongoConfig, read_preference: str | None = None) -> pymongo.MongoClient:
    """A client for mongodb.uri; it connects lazily, so an unreachable store shows up at the first operation.

    `read_preference` (a mode, as api.read_preference names it) replaces the uri's for this client's reads.
    """
    # A keyword argument, which pymongo lets override the uri's readPreference for this client alone.
    reads = {} if read_preference is None else {"readPreference": read_preference}
    return mongo_client(
        settings, serverSelectionTimeoutMS=settings.timeout_ms, tz_aware=True, appname="streamd", **reads
    )


class MessageStore:
    """One collection of messages (mongodb.collection unless named). Closes its client only when it opened it."""

    def __init__(
        self,
        settings: MongoConfig,
        client: pymongo.MongoClient | None = None,
        collection: str | None = None,
        kind: StoreKind | None = None,
        read_preference: str | None = None,
    ) -> None:
        self._owns_client = client is None
        self.settings = settings
        self.client = connect(settings, read_preference) if client is None else client
        self.name = collection or settings.collection
        self.collection: Collection = self.client[settings.database][self.name]
        self._kind = kind

    def in_collection(self, name: str) -> MessageStore:
        """The same store and client, another collection (one a route stage names); closing it closes nothing."""
        return MessageStore(self.settings, self.client, name, self._kind)

    def kind(self) -> StoreKind:
        """The store kind, asked at the first call (the client connects lazily) and shared by in_collection."""
        if self._kind is None:
            self._kind = StoreKind.of(self.client)
        return self._kind

    def writes_acknowledged(self) -> bool:
        """False when the write concern (mongodb.uri's w=0) has the server acknowledge no write: insert_many then
        returns before the documents are stored, and duplicates and refusals go unseen."""
        return self.collection.write_concern.acknowledged

    def ensure_indexes(self) -> None:
        """The indexes the store kind uses; the collection exists afterwards either way (the stack indexes its
        table on FerretDB, see streamd.stack.ferretdb_ids)."""
        indexes = self.kind().indexes()
        if not indexes:
            try:
                self.collection.database.create_collection(self.name)
            except CollectionInvalid:
                pass  # it exists already
            except OperationFailure as exc:
                if exc.code != NAMESPACE_EXISTS:
                    raise
                # Another consumer created it between pymongo's existence check and ours.
        # One index per createIndexes: FerretDB 1.24 drops the connection when a single createIndexes
        # names several indexes that all exist already, which is every start after the first.
        for index in indexes:
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
        except UNENCODABLE:
            # pymongo refused the whole batch before sending it (e.g. a document over 16 MB, or a payload
            # integer over 64 bits, which JSON allows and BSON cannot hold): find out which.
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
            except UNENCODABLE as exc:
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
            Conflict(
                stored["_id"], coordinates.read(stored.get("kafka")), coordinates.read(wanted[stored["_id"]]["kafka"])
            )
            for stored in found
            if not same_message(stored, wanted[stored["_id"]])
        ]

    # --- The read side: the queries of the API and of `streamd verify`. The API's pass `max_time_ms`, after
    # which the server stops the query: its request threads must not hang on a slow store.

    def newest(self, query: Narrowing, limit: int, max_time_ms: int) -> list[dict]:
        """Up to `limit` messages matching `query`, newest first (MESSAGE_FIELDS only)."""
        cursor = self.collection.find(newest_filter(query), MESSAGE_FIELDS).sort(NEWEST_FIRST)
        return list(cursor.limit(limit).max_time_ms(max_time_ms))

    def by_id(self, message_id: str, max_time_ms: int) -> dict | None:
        return self.collection.find_one({"_id": message_id}, MESSAGE_FIELDS, max_time_ms=max_time_ms)

    def count(self, max_time_ms: int) -> int:
        return self.collection.count_documents({}, maxTimeMS=max_time_ms)

    def count_since(self, moment: datetime, max_time_ms: int) -> int:
        """Messages ingested at or after `moment`."""
        return self.collection.count_documents({"ingested_at": {"$gte": moment}}, maxTimeMS=max_time_ms)

    def sources(self, max_time_ms: int) -> list[tuple[Any, int]]:
        """(source, number of messages) per source, None included, in no particular order."""
        by_source = [{"$group": {"_id": "$source", "count": {"$sum": 1}}}]
        groups = self.collection.aggregate(by_source, maxTimeMS=max_time_ms)
        return [(group["_id"], group["count"]) for group in groups]

    def kafka_of(self, ids: list[str], batch: int) -> Iterator[dict]:
        """The `_id` and `kafka` of the stored ones among `ids`, asked `batch` ids per `$in` (the _id index)."""
        return self._among(ids, batch, {"kafka": 1})

    def all_kafka(self) -> Iterator[dict]:
        """The `_id` and `kafka` of every document, in one pass.

        For FerretDB 1.x, where every `$in` on `_id` reads the whole collection anyway.
        """
        return iter(self.collection.find({}, {"kafka": 1}))

    def kafka_each(self, ids: Iterable[str]) -> Iterator[dict]:
        """The same as kafka_of, one find per id: the only `_id` query FerretDB 1.x hands to SQLite, where the
        local store has an index for it (streamd.stack.ferretdb_ids)."""
        for message_id in ids:
            found = self.collection.find_one({"_id": message_id}, {"kafka": 1})
            if found is not None:
                yield found

    def stats_count(self) -> int:
        """The number of documents from collStats: no scan on FerretDB, where count_documents({}) reads them all.
        0 for a collection not created yet (MongoDB answers collStats on one with an error, FerretDB with 0)."""
        try:
            return self.collection.database.command("collStats", self.name).get("count", 0)
        except OperationFailure as exc:
            if exc.code == NAMESPACE_NOT_FOUND:
                return 0
            raise

    def contents_of(self, ids: list[str], batch: int) -> Iterator[dict]:
        """The `_id`, `content` and `source` of the stored ones among `ids`, `batch` ids per `$in`."""
        return self._among(ids, batch, {"content": 1, "source": 1})

    def _among(self, ids: list[str], batch: int, fields: dict[str, int]) -> Iterator[dict]:
        for first in range(0, len(ids), batch):
            yield from self.collection.find({"_id": {"$in": ids[first : first + batch]}}, fields)

    def is_ferretdb(self) -> bool:
        return self.kind().is_ferretdb

    def ping(self) -> None:
        self.client.admin.command("ping")

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
