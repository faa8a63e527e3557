"""Tumbling windows in event time, as pure functions: which window document a message counts in, and how.

A message counts, for each configured window length, in the window `[floor(t / len) * len, + len)` of its
event time t (its stored `timestamp`), and in the group its `group_by` fields name. Lateness is decided by
the stream time of the message's partition: the highest event time seen on that partition up to and
including the message (Kafka Streams' "partition time"). A message whose window ended at least
`allowed_lateness` before that stream time is late: it counts in the window's `late` and nowhere else.

Everything here depends only on a partition's messages in offset order and on the stream time where
they start, never on how they were cut into batches; that is what lets a replay after a crash (from the
committed offset, with the stream time committed beside it) decide exactly as the first run did.
Whether a contribution was already absorbed into its window document is the `fold` step's question:
only messages past the document's `absorbed[partition]` offset count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from streamd import coordinates
from streamd.config import AnalyticsConfig, window_seconds

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
TOP_LEVEL = ("content", "source", "timestamp")  # every other field name is looked up in `data`


def micros(moment: datetime) -> int:
    """An aware (or naive UTC) datetime as whole microseconds since the epoch: exact, unlike a float."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def instant(value: int) -> datetime:
    return EPOCH + value * MICROSECOND


def field_value(document: Mapping, name: str) -> object:
    """A field of a stored document: content, source and timestamp at the top, any other name in `data`."""
    if name in TOP_LEVEL:
        return document.get(name)
    data = document.get("data")
    return data.get(name) if isinstance(data, Mapping) else None


def group_id(group: Mapping[str, object]) -> str:
    """16 hex digits naming a group: the same values give the same id in every process and run."""
    canonical = orjson.dumps(group, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr)
    return hashlib.sha1(canonical).hexdigest()[:16]


def window_id(window: str, start: datetime, group: Mapping[str, object]) -> str:
    return f"{window}:{start.isoformat().replace('+00:00', 'Z')}:{group_id(group)}"


@dataclass(frozen=True)
class WindowSpec:
    """What the analyzer computes: from the analytics section, with the window lengths in microseconds."""

    windows: tuple[tuple[str, int], ...]  # (name, length in µs)
    group_by: tuple[str, ...]
    fields: tuple[str, ...]
    lateness: int  # µs

    @classmethod
    def from_config(cls, analytics: AnalyticsConfig) -> WindowSpec:
        return cls(
            tuple((name, window_seconds(name) * 1_000_000) for name in analytics.windows),
            analytics.group_by,
            analytics.fields,
            round(analytics.allowed_lateness * 1_000_000),
        )


@dataclass(frozen=True, slots=True)
class WindowKey:
    id: str
    window: str
    start: datetime
    end: datetime
    group: dict


@dataclass(frozen=True, slots=True)
class Contribution:
    """One message's part in one window document."""

    key: WindowKey
    partition: int
    offset: int
    late: bool
    values: dict[str, float]  # the configured numeric fields the message has


def contributions(documents: Iterable[Mapping], spec: WindowSpec, stream_times: dict[int, int]) -> list[Contribution]:
    """Each document's contributions, one per window length; `stream_times` (partition -> µs) moves forward.

    `documents` are stored documents in the order of their messages (offset order within a partition).
    """
    found: list[Contribution] = []
    for document in documents:
        _, partition, offset = coordinates.read(document["kafka"])
        event = micros(document["timestamp"])
        stream_time = max(stream_times.get(partition, event), event)
        stream_times[partition] = stream_time
        group = {name: field_value(document, name) for name in spec.group_by}
        values = {
            name: value
            for name in spec.fields
            if isinstance(value := field_value(document, name), int | float) and not isinstance(value, bool)
        }
        for window, length in spec.windows:
            start = event // length * length
            late = start + length + spec.lateness <= stream_time
            start_time = instant(start)
            key = WindowKey(window_id(window, start_time, group), window, start_time, instant(start + length), group)
            found.append(Contribution(key, partition, offset, late, values))
    return found


@dataclass
class FieldDelta:
    count: int = 0
    sum: float = 0
    min: float | None = None
    max: float | None = None

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)


@dataclass
class Delta:
    """What one window document gains from some contributions, and the offsets it then has absorbed."""

    key: WindowKey
    count: int = 0
    late: int = 0
    fields: dict[str, FieldDelta] = field(default_factory=dict)
    absorbed: dict[int, int] = field(default_factory=dict)  # partition -> highest offset absorbed

    def add(self, contribution: Contribution) -> None:
        if contribution.late:
            self.late += 1
        else:
            self.count += 1
            for name, value in contribution.values.items():
                self.fields.setdefault(name, FieldDelta()).add(value)
        partition = contribution.partition
        self.absorbed[partition] = max(self.absorbed.get(partition, -1), contribution.offset)


def fold(key: WindowKey, contributions: Iterable[Contribution], absorbed: Mapping[int, int]) -> Delta | None:
    """The delta of the contributions to `key` that the document, having absorbed `absorbed`, lacks."""
    delta = Delta(key)
    for contribution in contributions:
        if contribution.offset > absorbed.get(contribution.partition, -1):
            delta.add(contribution)
    return delta if delta.absorbed else None


def by_window(found: Iterable[Contribution]) -> dict[str, list[Contribution]]:
    grouped: dict[str, list[Contribution]] = {}
    for contribution in found:
        grouped.setdefault(contribution.key.id, []).append(contribution)
    return grouped


def apply(document: dict | None, delta: Delta) -> dict:
    """The window document after `delta`, computed in memory (the store applies the same with $inc/$min/$max)."""
    key = delta.key
    result = document or {
        "_id": key.id, "window": key.window, "start": key.start, "end": key.end, "group": key.group,
        "count": 0, "late": 0, "fields": {}, "absorbed": {},
    }  # fmt: skip
    result["count"] += delta.count
    result["late"] += delta.late
    for name, gained in delta.fields.items():
        kept = result["fields"].setdefault(name, {"count": 0, "sum": 0, "min": gained.min, "max": gained.max})
        kept["count"] += gained.count
        kept["sum"] += gained.sum
        kept["min"] = min(kept["min"], gained.min)
        kept["max"] = max(kept["max"], gained.max)
    result["absorbed"].update({str(p): o for p, o in delta.absorbed.items()})
    return result
