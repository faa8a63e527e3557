"""GET /messages and GET /messages/{id}: stored messages, newest first, in cursor-paged lists."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import falcon

from streamd.api.backends import Backends
from streamd.api.errors import MessageNotFound
from streamd.api.params import Cursor, MessageQuery, parse_id, reject_unknown


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
        # One more than asked tells whether another page exists.
        documents = self.backends.store.newest(query, query.limit + 1, time_limit_ms(self.backends))
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
        document = self.backends.store.by_id(parse_id(message_id), time_limit_ms(self.backends))
        if document is None:
            raise MessageNotFound(message_id)
        resp.media = render(document)
