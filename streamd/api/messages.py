"""GET /messages and GET /messages/{id}: stored messages, newest first, in cursor-paged lists; POST /messages
sends messages to Kafka (streamd.api.ingest).

Both read the main collection unless `?collection=` names one a route stage writes; /messages/{id}
without it looks in the main collection, then in each routed one. Every message carries `data`, the
user's own fields ({} when it has none).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import falcon

from streamd import coordinates
from streamd.api.auth import INGEST, READ
from streamd.api.backends import Backends
from streamd.api.errors import MessageNotFound
from streamd.api.ingest import Ingest
from streamd.api.params import Cursor, MessageQuery, parse_collection, parse_id, reject_unknown


def iso(value: object) -> str | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:  # a client without tz_aware hands back naive UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render(document: Mapping[str, Any]) -> dict[str, Any]:
    kafka = coordinates.read(document.get("kafka"))
    return {
        "id": document["_id"],
        "content": document.get("content"),
        "timestamp": iso(document.get("timestamp")),
        "source": document.get("source"),
        "ingested_at": iso(document.get("ingested_at")),
        "kafka": kafka._asdict() if kafka is not None else None,
        "data": plain(document.get("data") or {}),
    }


def plain(value: Any) -> Any:
    """A stored user value as JSON: times as the API writes them, BSON types JSON lacks (written by another
    program than streamd, say an ObjectId) as their text."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, datetime):
        return iso(value)
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    return str(value)


def dated(documents: list[dict]) -> list[dict]:
    """The documents a newest-first list can hold: those with a date `timestamp`, which a cursor can point at.

    A document another program wrote with no date there sorts after every dated one (BSON orders null,
    numbers and strings below dates), so leaving it out only shortens the last page; GET /messages/{id}
    still finds it. Listed, it had no place in the (timestamp, _id) order a cursor resumes from.
    """
    return [document for document in documents if isinstance(document.get("timestamp"), datetime)]


def time_limit_ms(backends: Backends) -> int:
    # A gthread worker's heartbeat does not wait for its request threads, so Gunicorn never replaces a
    # worker whose threads hang on a slow query: the server stops the query instead. (Not pymongo's
    # client-side timeout: it would also stretch server selection from mongodb.timeout_ms to this.)
    return backends.config.api.timeout * 1000


class MessagesResource:
    scopes = {"GET": READ, "POST": INGEST}

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.ingest = Ingest(backends.config, lambda: backends.producer)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.ingest.on_post(req, resp)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = MessageQuery.from_params(req.params, self.backends.collections)
        # One more than asked tells whether another page exists.
        message_store = self.backends.store_of(query.collection)
        documents = dated(message_store.newest(query, query.limit + 1, time_limit_ms(self.backends)))
        page = documents[: query.limit]
        following = None
        if len(documents) > query.limit:
            last = page[-1]
            following = Cursor(last["timestamp"], last["_id"]).encode()
        resp.media = {"count": len(page), "data": [render(d) for d in page], "next": following}


class MessageResource:
    scopes = {"GET": READ}

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    def on_get(self, req: falcon.Request, resp: falcon.Response, message_id: str) -> None:
        reject_unknown(req.params, ("collection",))
        wanted = parse_id(message_id)
        collection = parse_collection(req.params, self.backends.collections)
        stores = self.backends.stores
        # On FerretDB every lookup scans its collection: looking in each one costs one scan per collection.
        for name in (collection,) if collection else stores:
            document = stores[name].by_id(wanted, time_limit_ms(self.backends))
            if document is not None:
                resp.media = render(document)
                return
        raise MessageNotFound(message_id)
