"""GET /aggregates: the analyzer's window documents, newest first, with the mean computed at read.

Parameters: `window` (one of analytics.windows; the first by default), one per analytics.group_by field
(equality on the group's value, matched as a string), `since` and `until` (windows overlapping
[since, until)), and `limit`. Validated like /messages: every value is a literal, names are a fixed list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import falcon

from streamd.analyzer.aggregates import Aggregates
from streamd.api.auth import READ
from streamd.api.backends import Backends
from streamd.api.errors import InvalidParameter, shown
from streamd.api.messages import iso, time_limit_ms
from streamd.api.params import DEFAULT_LIMIT, Params, parse_instant, parse_limit, reject_unknown, single
from streamd.config import AnalyticsConfig

FIXED = ("window", "since", "until", "limit")


@dataclass(frozen=True)
class AggregateQuery:
    window: str
    groups: dict[str, str]
    since: datetime | None = None  # windows ending after it
    until: datetime | None = None  # windows starting before it
    limit: int = DEFAULT_LIMIT

    @classmethod
    def from_params(cls, params: Params, analytics: AnalyticsConfig) -> AggregateQuery:
        # A group_by field named like a fixed parameter (e.g. `limit`) is not a filter: the fixed one wins.
        group_names = [name for name in analytics.group_by if name not in FIXED]
        reject_unknown(params, [*FIXED, *group_names])
        window = single(params, "window") or analytics.windows[0]
        if window not in analytics.windows:
            raise InvalidParameter(
                "window",
                f"expected one of the configured windows ({', '.join(analytics.windows)}), got {shown(window)}.",
            )
        limit, since, until = single(params, "limit"), single(params, "since"), single(params, "until")
        return cls(
            window=window,
            groups={name: value for name in group_names if (value := single(params, name)) is not None},
            since=None if since is None else parse_instant("since", since),
            until=None if until is None else parse_instant("until", until),
            limit=DEFAULT_LIMIT if limit is None else parse_limit(limit),
        )

    def narrowing(self) -> dict[str, Any]:
        found: dict[str, Any] = {"window": self.window}
        found |= {f"group.{name}": value for name, value in self.groups.items()}
        if self.since is not None:
            found["end"] = {"$gt": self.since}
        if self.until is not None:
            found["start"] = {"$lt": self.until}
        return found


def render(document: dict) -> dict[str, Any]:
    fields = {
        name: {**part, "mean": part["sum"] / part["count"] if part.get("count") else None}
        for name, part in (document.get("fields") or {}).items()
    }
    return {
        "start": iso(document.get("start")),
        "end": iso(document.get("end")),
        "group": document.get("group") or {},
        "count": document.get("count", 0),
        "fields": fields,
        "late": document.get("late", 0),
    }


class AggregatesResource:
    scopes = {"GET": READ}

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        analytics = self.backends.config.analytics
        query = AggregateQuery.from_params(req.params, analytics)
        aggregates = Aggregates(self.backends.store.in_collection(analytics.collection))
        found = aggregates.newest(query.narrowing(), query.limit, time_limit_ms(self.backends))
        resp.media = {"window": query.window, "aggregates": [render(document) for document in found]}
