"""GET /stats: the pipeline in one JSON document, for the dashboard and for people.

Every part comes from the place that knows it: message totals, rates and sources from the store,
lag and dead letters from Kafka, child states from the supervisor, counts since start from the
metrics of every process. A part that cannot be read is null and named in `errors`, so a store
outage still shows which children are down.

Counting scans the collection (and FerretDB scans it for every query), so one worker computes the
document once at a time and reuses it for FRESH_SECONDS after it is done, however many dashboards ask.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import falcon
from pymongo.errors import PyMongoError

from streamd import control
from streamd.api.auth import READ
from streamd.api.backends import Backends
from streamd.api.lag import GroupLag, KafkaUnreadable
from streamd.api.messages import iso, time_limit_ms
from streamd.api.params import reject_unknown
from streamd.api.single_flight import SingleFlight
from streamd.metrics import exposition

FRESH_SECONDS = 1.0
RATE_WINDOWS = {"1m": 60, "5m": 300, "15m": 900}
# Counters of every process since the supervisor started: (family, label to break down by).
SINCE_START = {
    "produced": ("streamd_producer_messages_sent", None),
    "acknowledged": ("streamd_producer_messages_acknowledged", None),
    "produce_failed": ("streamd_producer_messages_failed", None),
    "consumed": ("streamd_consumer_messages_consumed", None),
    "stored": ("streamd_consumer_messages_stored", None),
    "duplicates": ("streamd_consumer_messages_duplicate", None),
}

ANALYZER_SINCE_START = {"absorbed": "streamd_analyzer_messages_absorbed", "late": "streamd_analyzer_messages_late"}


class StatsResource:
    scopes = {"GET": READ}

    def __init__(self, backends: Backends, lag: GroupLag, analyzer_lag: GroupLag | None = None) -> None:
        self.backends = backends
        self.lag = lag
        self.analyzer_lag = analyzer_lag
        self.counters = exposition.registry()
        self.latest = SingleFlight(self.compute, FRESH_SECONDS)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reject_unknown(req.params, ())
        resp.media = self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        return self.latest.get()

    def compute(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        errors: dict[str, str] = {}
        stats: dict[str, Any] = {"at": iso(now)}
        try:
            stats |= self.from_store(now)
        except PyMongoError as exc:
            errors["store"] = f"could not be read ({type(exc).__name__})"
            stats |= {"totals": None, "rates": None, "sources": None}
        try:
            reading = self.lag.read()
            stats["lag"] = {
                "total": reading.total,
                "partitions": [p.as_dict() for p in reading.partitions],
                "problems": reading.problems,
            }
            dead_letters: int | None = reading.dead_letters
        except KafkaUnreadable as exc:
            errors["kafka"] = str(exc)
            stats["lag"], dead_letters = None, None
        dead_lettered = exposition.totals(self.counters, "streamd_consumer_messages_dead_lettered", "reason")
        stats["dead_letters"] = {
            "topic": self.backends.config.kafka.dead_letter_topic,
            "messages": dead_letters,
            "since_start": {reason: int(count) for reason, count in sorted(dead_lettered.items())},
        }
        stats["since_start"] = {
            name: int(sum(exposition.totals(self.counters, family, label).values()))
            for name, (family, label) in SINCE_START.items()
        }
        stats["stages"] = self.stages()
        stats["analytics"] = self.analytics()
        stats |= self.from_supervisor(errors)
        stats["errors"] = errors
        return stats

    def stages(self) -> list[dict[str, Any]]:
        """Each configured stage, in config order, with what it filtered and failed on since start."""
        filtered = exposition.totals(self.counters, "streamd_stage_messages_filtered", "stage")
        failed = exposition.totals(self.counters, "streamd_stage_messages_failed", "stage")
        return [
            {
                "name": stage["name"],
                "kind": stage["kind"],
                "filtered": int(filtered.get(stage["name"], 0)),
                "failed": int(failed.get(stage["name"], 0)),
            }
            for stage in self.backends.config.stages
        ]

    def from_store(self, now: datetime) -> dict[str, Any]:
        """Totals, rates and sources over every collection the API reads (routed ones included)."""
        limit = time_limit_ms(self.backends)
        stores = self.backends.stores.values()
        per_collection = {store.name: store.count(limit) for store in stores}
        rates = {
            name: round(
                sum(store.count_since(now - timedelta(seconds=seconds), limit) for store in stores) / seconds, 3
            )
            for name, seconds in RATE_WINDOWS.items()
        }
        by_source: Counter = Counter()
        for store in stores:
            for source, count in store.sources(limit):
                by_source[source] += count
        sources = sorted(
            ({"source": source, "count": count} for source, count in by_source.items()),
            key=lambda entry: (-entry["count"], str(entry["source"])),
        )
        totals = {"messages": sum(per_collection.values()), "collections": per_collection}
        return {"totals": totals, "rates": rates, "sources": sources}

    def analytics(self) -> dict[str, Any] | None:
        """The analyzer's group, its lag (null while Kafka cannot be read) and its counts since start."""
        if self.analyzer_lag is None:
            return None  # analytics.enabled is false
        try:
            reading = self.analyzer_lag.read()
            lag: int | None = reading.total
            partitions = [p.as_dict() for p in reading.partitions]
        except KafkaUnreadable:
            lag, partitions = None, []  # named in errors["kafka"] by the consumers' reading
        return {
            "group": self.analyzer_lag.group,
            "lag": lag,
            "partitions": partitions,
            "since_start": {
                name: int(sum(exposition.totals(self.counters, family, None).values()))
                for name, family in ANALYZER_SINCE_START.items()
            },
        }

    def from_supervisor(self, errors: dict[str, str]) -> dict[str, Any]:
        status, problem = control.status_if_running(self.backends.config)
        if problem is not None:
            errors["supervisor"] = f"did not answer ({problem})"
        if status is None:
            return {"supervisor": None, "children": []}  # or an API run on its own, as in tests
        return {
            "supervisor": {"pid": status["pid"], "uptime": status["uptime"], "stopping": status["stopping"]},
            "children": status["children"],
        }
