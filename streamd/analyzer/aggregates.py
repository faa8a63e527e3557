"""The aggregates collection: window documents, updated only with what they have not absorbed yet.

A window document (one per window length, start and group)::

    {"_id": "1m:2024-05-01T12:00:00Z:<group hash>", "window": "1m", "start": <datetime>, "end": <datetime>,
     "group": {"source": "A"}, "count": 12, "late": 0,
     "fields": {"temperature": {"count": 12, "sum": 250.5, "min": 19.0, "max": 23.5}},
     "absorbed": {"0": 4711, "2": 815}, "updated_at": <datetime>}

`absorbed` says, per partition, the highest offset whose message this document has taken in. Every
update is conditional on the `absorbed` values the analyzer read (one `$in` read of the documents a
batch touches), adds only messages past them and moves them forward, all in one update_one: a replay
after a crash finds its messages absorbed already and adds nothing. A document changed meanwhile (a
zombie analyzer of the same partition) fails the condition; it is read again and the delta recomputed.
There are no transactions (FerretDB has none) and none are needed: each document is its own unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from streamd.analyzer.windows import Contribution, Delta, fold
from streamd.store import MessageStore


def indexes(group_by: tuple[str, ...]) -> list[IndexModel]:
    """GET /aggregates: one window length, optionally a group value, newest first. On FerretDB 1.x no query
    uses an index (the collection is small: a document per window and group); MongoDB uses these."""
    by_group = [IndexModel([("window", ASCENDING), (f"group.{n}", ASCENDING), ("start", DESCENDING)]) for n in group_by]
    return [IndexModel([("window", ASCENDING), ("start", DESCENDING)]), *by_group]


# What the API returns of a window document (absorbed is bookkeeping).
WINDOW_FIELDS = {"window": True, "start": True, "end": True, "group": True, "count": True, "fields": True, "late": True}


class Aggregates:
    """The window documents of analytics.collection, on the messages' client."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.collection = store.collection

    def ensure_indexes(self, group_by: tuple[str, ...]) -> None:
        for index in indexes(group_by):  # one per createIndexes, as streamd.store explains
            self.collection.create_indexes([index])

    def absorbed(self, ids: list[str]) -> dict[str, dict[int, int]]:
        """The `absorbed` of the existing documents among `ids`, in one read."""
        found = self.collection.find({"_id": {"$in": ids}}, {"absorbed": 1})
        return {doc["_id"]: {int(p): o for p, o in doc.get("absorbed", {}).items()} for doc in found}

    def absorb(self, pending: dict[str, list[Contribution]]) -> int:
        """Write every window's missing part; each window done leaves `pending`. Returns the documents written.

        Raises the store's errors (pending then holds what is left, to try again).
        """
        written = 0
        seen = self.absorbed(list(pending))
        while pending:
            window_id, found = next(iter(pending.items()))
            absorbed = seen.get(window_id)
            delta = fold(found[0].key, found, absorbed or {})
            if delta is not None:
                if not self.update(delta, absorbed):
                    seen.update(self.absorbed([window_id]))  # changed meanwhile: read it again and recompute
                    seen.setdefault(window_id, {})
                    continue
                written += 1
            del pending[window_id]
        return written

    def update(self, delta: Delta, absorbed: Mapping[int, int] | None) -> bool:
        """Apply `delta` if the document still has absorbed exactly `absorbed` of its partitions; False if not."""
        key = delta.key
        condition: dict[str, Any] = {"_id": key.id}
        for partition in delta.absorbed:
            known = None if absorbed is None else absorbed.get(partition)
            condition[f"absorbed.{partition}"] = {"$exists": False} if known is None else known
        increments: dict[str, Any] = {"count": delta.count, "late": delta.late}
        lowest: dict[str, Any] = {}
        highest: dict[str, Any] = {}
        for name, gained in delta.fields.items():
            increments[f"fields.{name}.count"] = gained.count
            increments[f"fields.{name}.sum"] = gained.sum
            lowest[f"fields.{name}.min"] = gained.min
            highest[f"fields.{name}.max"] = gained.max
        update: dict[str, Any] = {
            "$inc": increments,
            "$set": {f"absorbed.{p}": o for p, o in delta.absorbed.items()} | {"updated_at": datetime.now(UTC)},
            "$setOnInsert": {"window": key.window, "start": key.start, "end": key.end, "group": key.group},
        }
        if lowest:
            update["$min"], update["$max"] = lowest, highest
        try:
            # Upsert: a window nobody wrote yet is created by the same conditional write. If it exists with
            # another absorbed offset, the condition fails and the upsert's insert meets the duplicate _id.
            result = self.collection.update_one(condition, update, upsert=True)
        except DuplicateKeyError:
            return False
        return result.matched_count == 1 or result.upserted_id is not None

    def newest(self, narrowing: dict[str, Any], limit: int, max_time_ms: int) -> list[dict]:
        """Window documents matching `narrowing` (window, group values, start bounds), newest first."""
        cursor = self.collection.find(narrowing, WINDOW_FIELDS).sort([("start", DESCENDING), ("_id", ASCENDING)])
        return list(cursor.limit(limit).max_time_ms(max_time_ms))
