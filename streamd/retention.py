"""The retention child: keeps every messages collection within mongodb.retention, by `ingested_at`.

It runs only when mongodb.retention is set, as one small supervised child: one process, so two never
delete the same documents, and apart from the consumers, the analyzer and the API, which may be scaled,
disabled or restarted for their own reasons. Every PERIOD it looks at mongodb.collection and each
collection a route stage names, and asks the store kind (once) how to expire them:

- MongoDB: a TTL index on `ingested_at` (expireAfterSeconds = the retention). The server's TTL monitor
  does the deleting (about once a minute). The consumers already created the plain `ingested_at` index
  that /stats counts with; a TTL index on the same key is that one with an option, so collMod turns it
  into a TTL index (and changes its expiry when the retention changes).
- FerretDB 1.x: no TTL monitor is known to run there, so the child deletes what expired itself, in
  bounded chunks: one `delete_many` of everything expired fails with "too many SQL variables" on a large
  collection (FerretDB deletes the matches by listing every one in one SQLite statement). It reads up to
  ROUND expired ids, deletes them CHUNK at a time by `_id`, and goes on until nothing expired is left.

The aggregates collection is not expired: it holds one document per window and group, which grows with
time only as fast as windows close (a few thousand a day), not with the message rate.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from pymongo import DESCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from streamd import store
from streamd.config import Config, retention_seconds
from streamd.lifecycle import Shutdown
from streamd.outage import Outage
from streamd.stages.spec import routed_collections

log = logging.getLogger("streamd.retention")

# What the retention child reads of the config: the collections (mongodb, the route stages) and its logs.
SECTIONS = frozenset({"mongodb", "stages", "logging"})

CHUNK = 500  # ids per delete: well under SQLite's limit on variables in one statement (999 in old builds)
ROUND = 5000  # expired ids read per find: FerretDB filters by scanning, so fewer, larger reads are cheaper
INDEX_OPTIONS_CONFLICT = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict


def period(seconds: int) -> float:
    """How often to look: a tenth of the retention, between 1 s and a minute."""
    return min(60.0, max(1.0, seconds / 10))


def ttl_index(seconds: int) -> IndexModel:
    """The TTL form of store.INDEXES' `ingested_at` index (the same key, so it serves count_since too)."""
    return IndexModel([("ingested_at", DESCENDING)], expireAfterSeconds=seconds)


def ensure_ttl(collection: Collection, seconds: int) -> None:
    """Make the `ingested_at` index of this collection a TTL index of `seconds` (MongoDB)."""
    index = ttl_index(seconds)
    try:
        collection.create_indexes([index])
    except OperationFailure as exc:
        if exc.code not in INDEX_OPTIONS_CONFLICT:
            raise
        # The same key without the TTL (or with another expiry): change the option in place.
        key = dict(index.document["key"])
        collection.database.command(
            "collMod", collection.name, index={"keyPattern": key, "expireAfterSeconds": seconds}
        )


def delete_expired(collection: Collection, cutoff: datetime) -> int:
    """Delete every document ingested before `cutoff`, CHUNK ids per delete (FerretDB); how many went."""
    deleted = 0
    while True:
        ids = [
            document["_id"] for document in collection.find({"ingested_at": {"$lt": cutoff}}, {"_id": 1}).limit(ROUND)
        ]
        for first in range(0, len(ids), CHUNK):
            deleted += collection.delete_many({"_id": {"$in": ids[first : first + CHUNK]}}).deleted_count
        if len(ids) < ROUND:
            return deleted


def run(config: Config, shutdown: Shutdown) -> int:
    """The retention child's main; returns its exit status."""
    seconds = retention_seconds(config.mongodb)
    if seconds is None:
        log.info("mongodb.retention is empty: messages are kept forever")
        return 0
    messages = store.MessageStore(config.mongodb)
    names = [messages.name, *(name for name in routed_collections(config.stages) if name != messages.name)]
    collections = [messages.client[config.mongodb.database][name] for name in names]
    down = Outage()
    ferretdb: bool | None = None
    try:
        while not shutdown.requested:
            try:
                if ferretdb is None:
                    ferretdb = messages.is_ferretdb()
                    how = "deleting in chunks (FerretDB)" if ferretdb else "with a TTL index (MongoDB)"
                    log.info("keeping %s for %s, %s", ", ".join(names), config.mongodb.retention, how)
                for collection in collections:
                    if ferretdb:
                        cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
                        deleted = delete_expired(collection, cutoff)
                        if deleted:
                            log.debug("deleted %d messages of %s stored before %s", deleted, collection.name, cutoff)
                    else:
                        ensure_ttl(collection, seconds)
                if down.recovered() is not None:
                    log.info("the store answers again; expiring messages as before")
            except store.UNAVAILABLE as exc:
                if down.failed(type(exc)):
                    log.warning("the store does not answer (%s); retrying (repeats are not logged)", type(exc).__name__)
            shutdown.wait(period(seconds))
    finally:
        messages.close()
    return 0
