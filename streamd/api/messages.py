"""GET /messages and GET /messages/{id}: stored messages, newest first, in cursor-paged lists."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import falcon
from pymongo import DESCENDING

from streamd.api.backends import Backends
from streamd.api.errors import MessageNotFound
from streamd.api.params import Cursor, MessageQuery, parse_id, reject_unknown

# Exactly the key of store.INDEXES' ("timestamp", "_id") index, and its suffix after `source` in the
# other one: sorting any other way would make MongoDB sort in memory instead of walking an index.
NEWEST_FIRST = [("timestamp", DESCENDING), ("_id", DESCENDING)]
# Named fields only: whatever else a future consumer stores does not leak out of the API unreviewed.
PROJECTION = {"content": True, "timestamp": True, "source": True, "ingested_at": True, "kafka": True}


def list_filter(query: MessageQuery) -> dict[str, Any]:
    """The find() filter of a list query: equality on source first, then a range on the sort key."""
    selector: dict[str, Any] = {}
    if query.source is not None:
        selector["source"] = query.source
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


def iso(value: object) -> str | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:  # a client without tz_aware hands back naive UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render(document: Mapping[str, Any]) -> dict[str, Any]:
    kafka = document.get("kafka")
    return {
        "id": document["_id"],
        "content": document.get("content"),
        "timestamp": iso(document.get("timestamp")),
        "source": document.get("source"),
        "ingested_at": iso(document.get("ingested_at")),
        "kafka": (
            {"topic": kafka.get("topic"), "partition": kafka.get("partition"), "offset": kafka.get("offset")}
            if isinstance(kafka, Mapping)
            else None
        ),
    }


def time_limit_ms(backends: Backends) -> int:
    # A gthread worker's heartbeat does not wait for its request threads, so Gunicorn never replaces a
    # worker whose threads hang on a slow query: the server stops the query instead. (Not pymongo's
    # client-side timeout: it would also stretch server selection from mongodb.timeout_ms to this.)
    return backends.config.api.timeout * 1000


class MessagesResource:
    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = MessageQuery.from_params(req.params)
        cursor = (
            self.backends.store.collection.find(list_filter(query), PROJECTION)
            .sort(NEWEST_FIRST)
            .limit(query.limit + 1)  # one more than asked tells whether another page exists
            .max_time_ms(time_limit_ms(self.backends))
        )
        documents = list(cursor)
        page = documents[: query.limit]
        following = None
        if len(documents) > query.limit:
            last = page[-1]
            following = Cursor(last["timestamp"], last["_id"]).encode()
        resp.media = {"count": len(page), "data": [render(d) for d in page], "next": following}


class MessageResource:
    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    def on_get(self, req: falcon.Request, resp: falcon.Response, message_id: str) -> None:
        reject_unknown(req.params, ())
        document = self.backends.store.collection.find_one(
            {"_id": parse_id(message_id)}, PROJECTION, max_time_ms=time_limit_ms(self.backends)
        )
        if document is None:
            raise MessageNotFound(message_id)
        resp.media = render(document)
