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
  collection (FerretDB deletes the matches by listing every one in one SQLite statement), so it deletes
  ranges of `ingested_at` of about CHUNK documents each, oldest first (see delete_expired).

The aggregates collection is not expired: it holds one document per window and group, which grows with
time only as fast as windows close (a few thousand a day), not with the message rate.
"""

from __future__ import annotations

import logging
from array import array
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

# Documents per delete: FerretDB deletes the matches by listing every one in one SQLite statement, whose
# limit is 32,766 variables; each delete also scans the collection once, so fewer, larger ones are cheaper.
CHUNK = 10_000
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
    """Delete every document ingested before `cutoff`, about CHUNK per delete (FerretDB); how many went.

    The deletes are ranges of `ingested_at`, oldest first: FerretDB matches `_id: {$in: [...]}` by comparing
    every row with every listed id (2,000 ids took 3.4 s at 30,000 documents), while a range costs one scan
    whatever it matches (15,000 in 1.7 s). The bounds come from one read of the expired `ingested_at` values,
    kept as 8-byte floats. A consumer batch shares one `ingested_at`, so a range may exceed CHUNK by a batch.
    """
    stamps = array("d", (d["ingested_at"].timestamp() for d in collection.find(_before(cutoff), {"ingested_at": 1})))
    if not stamps:
        return 0
    ordered = sorted(stamps)
    bounds = sorted({datetime.fromtimestamp(ordered[i], UTC) for i in range(CHUNK, len(ordered), CHUNK)})
    deleted = 0
    for bound in [*bounds, cutoff]:
        deleted += collection.delete_many(_before(min(bound, cutoff))).deleted_count
    return deleted


def _before(moment: datetime) -> dict:
    return {"ingested_at": {"$lt": moment}}


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
