"""GET /stream: Server-Sent Events of new messages, bounded in time and in number per worker."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streamd.api.params import Cursor
from streamd.api.stream import LiveStreams
from streamd.config import Config
from streamd.stages.spec import check_stages

from .probes import api_client, free_port, stored_document

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def stored(message_id: str, seconds: int, source: str = "sensor-a") -> dict:
    return stored_document(message_id, T0 + timedelta(seconds=seconds), source, offset=seconds)


def with_feeds(config: Config) -> Config:
    api = dataclasses.replace(config.api, stream_seconds=2.5, streams_per_worker=1, threads=4)
    return dataclasses.replace(config, api=api)


@pytest.fixture
def settings(pipeline_config: Config) -> Config:
    return with_feeds(pipeline_config)


@pytest.fixture
def serverless(offline: Config) -> Config:
    """The same feeds for tests whose store is away on purpose: nothing starts the stack for them."""
    return with_feeds(offline)


def events(body: str) -> list[dict]:
    """The events of an SSE body: {"id", "data"} for messages, {"retry"} for the retry field."""
    parsed = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            parsed.append({"id": fields["id"], "data": orjson.loads(fields["data"])})
        elif fields:
            parsed.append(fields)
    return parsed


def test_a_feed_sends_the_newest_then_what_arrives_and_ends_on_time(settings, store):
    store.insert_batch([stored("m-1", 1), stored("m-2", 2), stored("m-other", 3, source="sensor-b")])
    late = threading.Timer(1.2, lambda: store.insert_batch([stored("m-3", 4), stored("m-late", 0)]))
    streams = LiveStreams(settings.api)
    with api_client(settings, streams) as client:
        late.start()
        started = time.monotonic()
        response = client.simulate_get("/stream", params={"source": "sensor-a"})
        elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert 2.0 <= elapsed < 10, "a feed lasts api.stream_seconds (2.5 s), then the browser reconnects"
    sent = events(response.text)
    assert sent[0] == {"retry": "1000"}
    messages = [event["data"]["id"] for event in sent[1:]]
    assert messages == ["m-1", "m-2", "m-late", "m-3"], "oldest first, then arrivals, late ones included"
    newest = Cursor(T0 + timedelta(seconds=4), "m-3").encode()
    assert sent[-1]["id"] == newest and sent[-2]["id"] == Cursor(T0 + timedelta(seconds=2), "m-2").encode()
    assert streams.open == 0, "the slot is given back when the response ends"


def test_a_reconnect_with_last_event_id_resumes_after_it(settings, store):
    store.insert_batch([stored("m-1", 1), stored("m-2", 2), stored("m-3", 3)])
    resume = Cursor(T0 + timedelta(seconds=2), "m-2").encode()
    settings = dataclasses.replace(settings, api=dataclasses.replace(settings.api, stream_seconds=1))
    with api_client(settings, LiveStreams(settings.api)) as client:
        response = client.simulate_get("/stream", headers={"Last-Event-ID": resume})

    assert [event["data"]["id"] for event in events(response.text) if "data" in event] == ["m-3"]


def test_a_document_without_a_date_timestamp_is_not_sent_and_does_not_break_the_feed(settings, store):
    store.insert_batch([stored("m-1", 1)])
    store.insert_many([{"_id": "foreign", "content": "written by another program", "timestamp": None}])
    settings = dataclasses.replace(settings, api=dataclasses.replace(settings.api, stream_seconds=1))
    with api_client(settings, LiveStreams(settings.api)) as client:
        response = client.simulate_get("/stream")

    assert response.status_code == 200
    assert [event["data"]["id"] for event in events(response.text) if "data" in event] == ["m-1"]


def test_a_worker_with_every_feed_taken_answers_503_and_keeps_a_thread_free(settings, store):
    streams = LiveStreams(settings.api)
    assert streams.acquire()
    with api_client(settings, streams) as client:
        response = client.simulate_get("/stream")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "10"
    assert "api.streams_per_worker" in response.json["description"]
    streams.release()

    one_thread = dataclasses.replace(settings.api, threads=1, streams_per_worker=8)
    assert LiveStreams(one_thread).limit == 0, "a worker's last thread never goes to a feed"


def test_a_refused_feed_is_answered_before_the_store_is_asked(serverless):
    # The store nobody listens on would make any look at it a "Store unavailable" 503 after its timeout.
    dead = dataclasses.replace(serverless.mongodb, uri=f"mongodb://127.0.0.1:{free_port()}", timeout_ms=20_000)
    settings = dataclasses.replace(serverless, mongodb=dead)
    streams = LiveStreams(settings.api)
    assert streams.acquire()
    with api_client(settings, streams) as client:
        started = time.monotonic()
        response = client.simulate_get("/stream")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json["title"] == "Live feeds busy"
    assert elapsed < 10, "a refusal costs no store timeout (20 s here)"
    assert streams.open == 1, "a refused feed takes no slot"


def test_a_feed_whose_first_look_fails_gives_its_slot_back(serverless):
    dead = dataclasses.replace(serverless.mongodb, uri=f"mongodb://127.0.0.1:{free_port()}", timeout_ms=200)
    settings = dataclasses.replace(serverless, mongodb=dead)
    streams = LiveStreams(settings.api)
    with api_client(settings, streams) as client:
        response = client.simulate_get("/stream")

    assert response.status_code == 503 and response.json["title"] == "Store unavailable"
    assert streams.open == 0


def test_a_stopping_worker_ends_its_feeds_within_a_poll(settings, store):
    settings = dataclasses.replace(settings, api=dataclasses.replace(settings.api, stream_seconds=60))
    streams = LiveStreams(settings.api)
    stopping = threading.Event()
    streams.serving = lambda: not stopping.is_set()
    threading.Timer(0.5, stopping.set).start()
    with api_client(settings, streams) as client:
        started = time.monotonic()
        response = client.simulate_get("/stream")
    assert response.status_code == 200
    assert time.monotonic() - started < 3


def test_a_bad_request_is_refused_before_anything_streams(settings, store):
    with api_client(settings, LiveStreams(settings.api)) as client:
        bad_id = client.simulate_get("/stream", headers={"Last-Event-ID": "not-a-cursor"})
        unknown = client.simulate_get("/stream", params={"since": "2024-01-01"})
    assert bad_id.status_code == 400 and bad_id.json["parameters"] == ["Last-Event-ID"]
    assert unknown.status_code == 400 and unknown.json["parameters"] == ["since"]


def test_a_feed_of_a_routed_collection_sends_only_its_messages(settings, store):
    routed = dataclasses.replace(
        settings,
        stages=check_stages([{"name": "hot", "kind": "route", "where": "temperature > 30", "collection": "alerts"}]),
        api=dataclasses.replace(settings.api, stream_seconds=1),
    )
    store.insert_batch([stored("in-main", 1)])
    store.in_collection("alerts").insert_batch([stored("in-alerts", 2)])
    with api_client(routed, LiveStreams(routed.api)) as client:
        response = client.simulate_get("/stream", params={"collection": "alerts"})

    assert response.status_code == 200
    assert [event["data"]["id"] for event in events(response.text) if "data" in event] == ["in-alerts"]
