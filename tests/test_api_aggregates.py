"""GET /aggregates as a client sees it, and the analyzer's lag in /stats and /metrics.

Window documents are written by the analyzer's own store side (streamd.analyzer.aggregates) into this
test's database; requests that must be rejected go to an API whose store nobody listens on, so a value
that slipped through validation would answer 503 instead of 400.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import falcon.testing
import pytest
from confluent_kafka import Producer

from streamd.analyzer.aggregates import Aggregates
from streamd.analyzer.windows import WindowSpec, by_window, contributions
from streamd.config import Config
from streamd.kafka import ensure_topic
from streamd.store import MessageStore

from .probes import api_client

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def reading(offset: int, seconds: float, source: str, temperature: float | None) -> dict:
    return {
        "_id": f"m-{offset}",
        "content": "x",
        "timestamp": T0 + timedelta(seconds=seconds),
        "source": source,
        "kafka": {"topic": "t", "partition": 0, "offset": offset},
        **({"data": {"temperature": temperature}} if temperature is not None else {}),
    }


@pytest.fixture
def analytics_config(pipeline_config: Config) -> Iterator[Config]:
    analytics = dataclasses.replace(
        pipeline_config.analytics,
        windows=("1m", "1h"),
        fields=("temperature",),
        group=f"a-{pipeline_config.kafka.topic}",
    )
    settings = dataclasses.replace(pipeline_config, analytics=analytics)
    yield settings
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        store.client.drop_database(settings.mongodb.database)


@pytest.fixture
def client(analytics_config: Config) -> Iterator[falcon.testing.TestClient]:
    documents = [
        reading(0, 10, "A", 20.0),
        reading(1, 20, "A", 22.0),
        reading(2, 30, "B", None),
        reading(3, 70, "A", 30.0),
        reading(4, 130, "B", 10.0),
    ]
    with contextlib.closing(MessageStore(analytics_config.mongodb)) as store:
        aggregates = Aggregates(store.in_collection(analytics_config.analytics.collection))
        aggregates.absorb(by_window(contributions(documents, WindowSpec.from_config(analytics_config.analytics), {})))
    with api_client(analytics_config) as test_client:
        yield test_client


def starts(body: dict) -> list[tuple[str, str, int]]:
    return [(a["start"], a["group"]["source"], a["count"]) for a in body["aggregates"]]


def test_windows_come_newest_first_with_count_min_max_sum_and_mean(client):
    response = client.simulate_get("/aggregates", params={"window": "1m"})
    assert response.status_code == 200, response.json
    assert response.json["window"] == "1m"
    assert starts(response.json)[0] == ("2024-05-01T12:02:00.000Z", "B", 1)
    first_a = next(
        a
        for a in response.json["aggregates"]
        if a["start"] == "2024-05-01T12:00:00.000Z" and a["group"] == {"source": "A"}
    )
    assert first_a == {
        "start": "2024-05-01T12:00:00.000Z",
        "end": "2024-05-01T12:01:00.000Z",
        "group": {"source": "A"},
        "count": 2,
        "fields": {"temperature": {"count": 2, "sum": 42.0, "min": 20.0, "max": 22.0, "mean": 21.0}},
        "late": 0,
    }
    assert sorted(starts(response.json)) == sorted(
        [
            ("2024-05-01T12:00:00.000Z", "A", 2),
            ("2024-05-01T12:00:00.000Z", "B", 1),
            ("2024-05-01T12:01:00.000Z", "A", 1),
            ("2024-05-01T12:02:00.000Z", "B", 1),
        ]
    )


def test_the_first_configured_window_is_the_default_and_others_are_asked_by_name(client):
    assert client.simulate_get("/aggregates").json["window"] == "1m"
    hourly = client.simulate_get("/aggregates", params={"window": "1h"}).json
    assert sorted(starts(hourly)) == [("2024-05-01T12:00:00.000Z", "A", 3), ("2024-05-01T12:00:00.000Z", "B", 2)]


def test_group_fields_since_until_and_limit_narrow_the_list(client):
    def get(**params: str) -> list:
        response = client.simulate_get("/aggregates", params={"window": "1m", **params})
        assert response.status_code == 200, response.json
        return starts(response.json)

    assert get(source="A") == [("2024-05-01T12:01:00.000Z", "A", 1), ("2024-05-01T12:00:00.000Z", "A", 2)]
    # Windows overlapping [since, until): 12:00:30 falls inside the first minute.
    assert {s for s, _, _ in get(since="2024-05-01T12:00:30Z", until="2024-05-01T12:02:00Z")} == {
        "2024-05-01T12:00:00.000Z",
        "2024-05-01T12:01:00.000Z",
    }
    assert get(limit="1") == [("2024-05-01T12:02:00.000Z", "B", 1)]
    assert get(source="$ne") == []  # a value is a literal, never an operator


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"window": "2m"}, "window"),
        ({"source[$ne]": "x"}, "source[$ne]"),
        ({"since": "yesterday"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"source": ["a", "b"]}, "source"),
        ({"window": ""}, "window"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it_before_the_store_is_asked(offline_client, params, named):
    response = offline_client.simulate_get("/aggregates", params=params)
    assert response.status_code == 400, response.json
    assert response.json["parameters"] == [named]


def test_the_analyzers_lag_is_in_stats_and_metrics(client, analytics_config):
    ensure_topic(analytics_config, analytics_config.kafka.topic)
    producer = Producer({"bootstrap.servers": analytics_config.kafka.brokers})
    for _ in range(4):
        producer.produce(analytics_config.kafka.topic, b"{}", partition=0)
    assert producer.flush(10) == 0
    analytics = client.simulate_get("/stats").json["analytics"]
    assert (analytics["group"], analytics["lag"]) == (analytics_config.analytics.group, 4)
    metrics = client.simulate_get("/metrics").text
    lag_lines = [line for line in metrics.splitlines() if line.startswith("streamd_analyzer_lag_messages{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in lag_lines) == 4


def test_stats_say_null_for_analytics_when_the_analyzer_is_disabled(pipeline_config):
    analytics = dataclasses.replace(pipeline_config.analytics, enabled=False)
    settings = dataclasses.replace(pipeline_config, analytics=analytics)
    with api_client(settings) as disabled:
        assert disabled.simulate_get("/stats").json["analytics"] is None
