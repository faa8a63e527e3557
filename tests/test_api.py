"""The REST API as a client sees it: GET /messages, GET /messages/{id}, /health, /ready, and its errors.

Reads run against the real store (a database of their own per test); requests that must be rejected
run against a store nobody listens on, so a value that slipped through validation would show up as
a 503 instead of the expected 400.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo import ReadPreference

from streamd import config as config_module
from streamd.api.app import create_app
from streamd.api.backends import Backends
from streamd.api.errors import BadParameters
from streamd.api.health import ReadyResource
from streamd.api.params import Cursor, MessageQuery
from streamd.api.worker import probe_of
from streamd.config import Config
from streamd.stages.spec import FIELD_NAME
from streamd.store import INDEXES, NEWEST_FIRST, MessageStore, newest_filter

from .probes import REPO, api_client, free_port, wait_until
from .supervisor_process import api_url, descendants, get_json, process_gone, start_streamd

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
ITEM_KEYS = {"id", "content", "timestamp", "source", "ingested_at", "kafka", "data"}


def stored(message_id: str, timestamp: datetime, source: str | None = "sensor-a", **extra: Any) -> dict:
    """A document as the consumer stores it."""
    return {
        "_id": message_id,
        "content": f"content of {message_id}",
        "timestamp": timestamp,
        "source": source,
        "ingested_at": timestamp + timedelta(seconds=1),
        "kafka": "data-stream:0:7",
        **extra,
    }


def with_dead(config: Config, dependency: str) -> Config:
    """`config` with Kafka or the store moved to a loopback port nobody listens on."""
    mapping = config_module.to_mapping(config)
    if dependency == "kafka":
        mapping["kafka"]["brokers"] = f"127.0.0.1:{free_port()}"
    else:
        mapping["mongodb"] |= {"uri": f"mongodb://127.0.0.1:{free_port()}", "timeout_ms": 200}
    return config_module.from_mapping(mapping)


@pytest.fixture
def client(pipeline_config: Config, store: MessageStore) -> Iterator[falcon.testing.TestClient]:
    with api_client(pipeline_config) as test_client:
        yield test_client


def ids(body: dict) -> list[str]:
    return [item["id"] for item in body["data"]]


def all_pages(client: falcon.testing.TestClient, **params: str) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"before": cursor} if cursor else {})}
        response = client.simulate_get("/messages", params=query)
        assert response.status_code == 200, response.json
        pages.append(ids(response.json))
        cursor = response.json["next"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not end"


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- GET /messages ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_list_returns_newest_first_in_the_documented_shape(client, store):
    store.insert_batch(
        [stored("m-old", T0), stored("m-new", T0 + timedelta(minutes=2)), stored("m-mid", T0 + timedelta(minutes=1))]
    )

    response = client.simulate_get("/messages")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json["count"] == 3
    assert response.json["next"] is None
    assert ids(response.json) == ["m-new", "m-mid", "m-old"]
    assert response.json["data"][2] == {
        "id": "m-old",
        "content": "content of m-old",
        "timestamp": "2024-05-01T12:00:00.000Z",
        "source": "sensor-a",
        "ingested_at": "2024-05-01T12:00:01.000Z",
        "kafka": {"topic": "data-stream", "partition": 0, "offset": 7},
        "data": {},
    }


@pytest.mark.integration
def test_a_document_without_a_date_timestamp_is_not_listed_but_is_found_by_id(client, store):
    # Written by another program: no timestamp, or one that is not a date. Listed, its page had no cursor (a 500).
    store.insert_batch([stored("m-1", T0), stored("m-2", T0 + timedelta(minutes=1))])
    store.insert_many([{"_id": "foreign-1", "content": "x", "timestamp": None}, {"_id": "foreign-2", "content": "y"}])

    pages = all_pages(client, limit="1")

    assert pages == [["m-2"], ["m-1"]]
    assert ids(client.simulate_get("/messages", params={"limit": "3"}).json) == ["m-2", "m-1"]
    found = client.simulate_get("/messages/foreign-1")
    assert found.status_code == 200 and found.json["timestamp"] is None


@pytest.mark.integration
def test_a_message_stored_before_the_coordinates_became_one_string_is_served_the_same(client, store):
    store.insert_batch([stored("m-old", T0, kafka={"topic": "data-stream", "partition": 0, "offset": 7})])

    item = client.simulate_get("/messages/m-old").json

    assert item["kafka"] == {"topic": "data-stream", "partition": 0, "offset": 7}


@pytest.mark.integration
def test_list_exposes_only_the_documented_fields(client, store):
    store.insert_batch([stored("m-1", T0, internal_note="not for clients")])

    item = client.simulate_get("/messages").json["data"][0]

    assert set(item) == ITEM_KEYS


@pytest.mark.integration
def test_list_returns_100_messages_by_default_and_honours_limit(client, store):
    store.insert_batch([stored(f"m-{i:03d}", T0 + timedelta(seconds=i)) for i in range(101)])

    default = client.simulate_get("/messages")
    limited = client.simulate_get("/messages", params={"limit": "5"})

    assert default.json["count"] == 100
    assert default.json["next"] is not None
    assert ids(limited.json) == [f"m-{i:03d}" for i in range(100, 95, -1)]


@pytest.mark.integration
def test_no_next_cursor_when_the_last_page_is_exactly_full(client, store):
    store.insert_batch([stored(f"m-{i}", T0 + timedelta(seconds=i)) for i in range(4)])

    assert all_pages(client, limit="2") == [["m-3", "m-2"], ["m-1", "m-0"]]


@pytest.mark.integration
def test_cursor_pages_have_no_duplicate_and_no_gap_across_equal_timestamps(client, store):
    # 23 messages in groups sharing one millisecond, with ids not in insertion order: pages of 3
    # split most groups, which is where a timestamp-only cursor skips or repeats messages.
    documents = []
    for i in range(23):
        message_id = f"{uuid.uuid4().hex[:6]}-{i}"
        documents.append(stored(message_id, T0 + timedelta(milliseconds=i // 5)))
    store.insert_batch(documents)
    expected = [d["_id"] for d in sorted(documents, key=lambda d: (d["timestamp"], d["_id"]), reverse=True)]

    pages = all_pages(client, limit="3")

    assert [len(page) for page in pages] == [3] * 7 + [2]
    assert [message_id for page in pages for message_id in page] == expected


@pytest.mark.integration
def test_cursor_pages_do_not_shift_when_newer_messages_arrive(client, store):
    store.insert_batch([stored(f"m-{i}", T0 + timedelta(seconds=i)) for i in range(6)])
    first = client.simulate_get("/messages", params={"limit": "3"})

    store.insert_batch([stored("m-newest", T0 + timedelta(hours=1))])
    second = client.simulate_get("/messages", params={"limit": "3", "before": first.json["next"]})

    assert ids(first.json) == ["m-5", "m-4", "m-3"]
    assert ids(second.json) == ["m-2", "m-1", "m-0"]


@pytest.mark.integration
def test_source_filter_returns_only_that_source_across_pages(client, store):
    store.insert_batch(
        [stored(f"a-{i}", T0 + timedelta(seconds=i), source="sensor-a") for i in range(5)]
        + [stored(f"b-{i}", T0 + timedelta(seconds=i), source="sensor-b") for i in range(5)]
        + [stored("none-0", T0, source=None)]
    )

    pages = all_pages(client, source="sensor-b", limit="2")

    assert pages == [["b-4", "b-3"], ["b-2", "b-1"], ["b-0"]]


@pytest.mark.integration
def test_source_that_looks_like_an_operator_is_matched_literally(client, store):
    store.insert_batch([stored("m-plain", T0, source="x"), stored("m-dollar", T0, source="$ne")])

    response = client.simulate_get("/messages", params={"source": "$ne"})

    assert ids(response.json) == ["m-dollar"]


@pytest.mark.integration
def test_since_is_inclusive_and_until_is_exclusive(client, store):
    store.insert_batch([stored(f"m-{i}", T0 + timedelta(minutes=i)) for i in range(4)])
    t1, t3 = iso(T0 + timedelta(minutes=1)), iso(T0 + timedelta(minutes=3))

    assert ids(client.simulate_get("/messages", params={"since": t1}).json) == ["m-3", "m-2", "m-1"]
    assert ids(client.simulate_get("/messages", params={"until": t1}).json) == ["m-0"]
    assert ids(client.simulate_get("/messages", params={"since": t1, "until": t3}).json) == ["m-2", "m-1"]


@pytest.mark.integration
def test_since_and_until_honour_offsets_and_sub_millisecond_digits(client, store):
    store.insert_batch([stored("m-early", T0), stored("m-late", T0 + timedelta(milliseconds=1))])

    # 14:00:00+02:00 is T0; half a millisecond after T0 must exclude T0 even though BSON keeps ms.
    with_offset = client.simulate_get("/messages", params={"since": "2024-05-01T14:00:00+02:00"})
    past_t0 = client.simulate_get("/messages", params={"since": "2024-05-01T12:00:00.000500Z"})
    before_late = client.simulate_get("/messages", params={"until": "2024-05-01T12:00:00.000500Z"})

    assert ids(with_offset.json) == ["m-late", "m-early"]
    assert ids(past_t0.json) == ["m-late"]
    assert ids(before_late.json) == ["m-early"]


def test_list_queries_walk_a_store_index_in_its_own_order():
    # Equality fields followed by the sort must be an index's key, or MongoDB sorts in memory.
    index_keys = [list(index.document["key"].items()) for index in INDEXES]
    cursor = Cursor(T0, "m-1")
    for query in (
        MessageQuery(),
        MessageQuery(since=T0, until=T0, before=cursor),
        MessageQuery(source="sensor-a"),
        MessageQuery(source="sensor-a", since=T0, before=cursor),
    ):
        selector = newest_filter(query)
        equality = [(field, 1) for field, value in selector.items() if isinstance(value, str)]
        assert equality + NEWEST_FIRST in index_keys, query


# --- GET /messages/{id} ----------------------------------------------------------------------------


@pytest.mark.integration
def test_get_by_id_returns_that_message(client, store):
    store.insert_batch([stored("order-123", T0), stored("other", T0)])

    response = client.simulate_get("/messages/order-123")

    assert response.status_code == 200
    assert response.json == {
        "id": "order-123",
        "content": "content of order-123",
        "timestamp": "2024-05-01T12:00:00.000Z",
        "source": "sensor-a",
        "ingested_at": "2024-05-01T12:00:01.000Z",
        "kafka": {"topic": "data-stream", "partition": 0, "offset": 7},
        "data": {},
    }


@pytest.mark.integration
def test_a_message_without_id_is_fetched_by_its_reserved_fallback_id_and_pages_past_it(client, store):
    store.insert_batch([stored("~data-stream:0:7", T0), stored("data-stream:0:7", T0 + timedelta(seconds=1))])

    response = client.simulate_get("/messages/~data-stream:0:7")
    assert response.status_code == 200 and response.json["id"] == "~data-stream:0:7"
    assert all_pages(client, limit="1") == [["data-stream:0:7"], ["~data-stream:0:7"]]


@pytest.mark.integration
def test_get_by_unknown_id_is_a_json_404(client, store):
    response = client.simulate_get("/messages/no-such-message")

    assert response.status_code == 404
    assert response.json["status"] == 404
    assert "no-such-message" in response.json["description"]


@pytest.mark.parametrize(
    "path_id", ["%24ne", "-leading-dash", "a" * 129, "has%20space", "x%00y", "%7B%7D", "~no-coordinates", "~t:0:x"]
)
def test_get_by_malformed_id_is_a_400_naming_id(offline_client, path_id):
    response = offline_client.simulate_get(f"/messages/{path_id}")

    assert response.status_code == 400
    assert response.json["parameters"] == ["id"]


# --- user fields (`data`) and routed collections ------------------------------------------------------


@pytest.mark.integration
def test_every_message_carries_its_user_fields_and_an_empty_data_when_it_has_none(client, store):
    when = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    fields = {"temperature": 21.5, "sensor": "A", "tags": ["x", "y"], "reading": {"raw": 215}, "seen": when}
    store.insert_batch([stored("with-data", T0 + timedelta(seconds=1), data=fields), stored("plain", T0)])

    listed = {item["id"]: item for item in client.simulate_get("/messages").json["data"]}
    one = client.simulate_get("/messages/with-data").json

    expected = {**fields, "seen": "2024-05-01T09:30:00.000Z"}
    assert listed["with-data"]["data"] == expected
    assert one["data"] == expected
    assert listed["plain"]["data"] == {}


@pytest.mark.integration
def test_data_filters_match_a_user_field_as_text_number_or_boolean(client, store):
    store.insert_batch(
        [
            stored("a-number", T0 + timedelta(seconds=1), data={"sensor": "A", "temperature": 21.5, "ok": True}),
            stored("a-text", T0 + timedelta(seconds=2), data={"sensor": "A", "temperature": "21.5", "ok": "true"}),
            stored("a-int", T0 + timedelta(seconds=3), data={"sensor": "A", "temperature": 21, "ok": False}),
            stored("b-number", T0 + timedelta(seconds=4), data={"sensor": "B", "temperature": 21.5}),
            stored("no-data", T0 + timedelta(seconds=5)),
            stored("top-level", T0 + timedelta(seconds=6), sensor="A"),  # not a user field: never matched
        ]
    )

    def matching(**params: str) -> list[str]:
        response = client.simulate_get("/messages", params=params)
        assert response.status_code == 200, response.json
        return ids(response.json)

    assert matching(**{"data.sensor": "A"}) == ["a-int", "a-text", "a-number"]
    assert matching(**{"data.temperature": "21.5"}) == ["b-number", "a-text", "a-number"]
    assert matching(**{"data.temperature": "21.0"}) == ["a-int"]
    assert matching(**{"data.sensor": "A", "data.ok": "true"}) == ["a-text", "a-number"]
    assert matching(**{"data.sensor": "B", "data.temperature": "21.5"}) == ["b-number"]
    assert matching(**{"data.sensor": "C"}) == []
    assert all_pages(client, limit="1", **{"data.sensor": "A"}) == [["a-int"], ["a-text"], ["a-number"]]


@pytest.mark.integration
@pytest.mark.parametrize("value", ['{"$gt": ""}', "$ne", "[1, 2]", "null", "/.*/"])
def test_a_data_value_that_looks_like_an_operator_is_matched_literally(client, store, value):
    store.insert_batch(
        [stored("literal", T0, data={"sensor": value}), stored("other", T0, data={"sensor": "A"})]
        + [stored("empty", T0, data={"sensor": ""}), stored("missing", T0, data={"kind": "x"})]
    )

    response = client.simulate_get("/messages", params={"data.sensor": value})

    assert response.status_code == 200
    assert ids(response.json) == ["literal"]


@pytest.mark.parametrize(
    "query_string",
    [
        "data.$where=1",
        "data.%24where=1",
        "data.a.b=1",
        "data.=1",
        "data.1st=1",
        "data.x%5B%24gt%5D=",  # data.x[$gt]
        "data.x%00=1",
        "data.has%20space=1",
        "data." + "a" * 129 + "=1",
        "data." + "b" * 3000 + "=1",
    ],
)
def test_a_data_filter_on_a_name_no_stage_could_write_is_a_400_naming_it(offline_client, query_string):
    name = urllib.parse.unquote(query_string.split("=", 1)[0])

    response = offline_client.simulate_get("/messages", query_string=query_string)

    assert response.status_code == 400, response.json
    assert response.json["parameters"] == [name]
    assert len(response.json["description"]) < 400, "a long name is shortened, not echoed whole"


@pytest.mark.parametrize(
    ("query_string", "parameter"),
    [
        ("data.x=", "data.x"),
        ("data.x=1&data.x=2", "data.x"),
        ("data.x=" + "v" * 257, "data.x"),
        ("&".join(f"data.f{i}=1" for i in range(6)), "data.f5"),
        ("data=1", "data"),
    ],
)
def test_bad_data_filter_values_and_too_many_filters_are_a_400_naming_the_parameter(
    offline_client, query_string, parameter
):
    response = offline_client.simulate_get("/messages", query_string=query_string)

    assert response.status_code == 400, response.json
    assert response.json["parameters"] == [parameter]


@settings(max_examples=300, deadline=None)
@given(
    params=st.dictionaries(
        st.one_of(st.text(max_size=20).map("data.".__add__), st.sampled_from(["source", "data.sensor", "collection"])),
        st.one_of(st.text(min_size=1, max_size=30), st.sampled_from(['{"$gt": ""}', "1e400", "true", "-0", "7"])),
        max_size=7,
    )
)
def test_no_parameter_reaches_the_store_as_an_operator_or_a_dotted_path(params):
    try:
        query = MessageQuery.from_params(params, ("messages", "alerts"))
    except BadParameters as exc:
        assert len(exc.parameters) == 1 and exc.parameters[0] in params
        return
    selector = newest_filter(query)
    for key, value in selector.items():
        assert not key.startswith("$"), key
        if key.startswith("data."):
            assert FIELD_NAME.fullmatch(key.removeprefix("data.")), key
            if isinstance(value, dict):
                assert list(value) == ["$in"], value
                literals = value["$in"]
            else:
                literals = [value]
            assert all(type(item) in (str, int, float, bool) for item in literals), literals
            assert params[key] in literals, "the text itself is always one of the values"
    assert query.collection in (None, "messages", "alerts")
    assert len(query.data) <= 5


def with_routes(config: Config) -> Config:
    """`config` with a route stage sending hot readings to the `alerts` collection."""
    mapping = config_module.to_mapping(config)
    mapping["stages"] = [{"name": "hot", "kind": "route", "where": "temperature > 30", "collection": "alerts"}]
    return config_module.from_mapping(mapping)


@pytest.fixture
def routed(pipeline_config: Config, store: MessageStore) -> Iterator[tuple[falcon.testing.TestClient, MessageStore]]:
    """An API over a config routing to `alerts`, and that collection's store (the main one is `store`)."""
    config = with_routes(pipeline_config)
    alerts = store.in_collection("alerts")
    with api_client(config) as test_client:
        yield test_client, alerts


@pytest.mark.integration
def test_collection_reads_a_routed_collection_and_defaults_to_the_main_one(routed, store):
    client, alerts = routed
    store.insert_batch([stored("cool", T0, data={"temperature": 20})])
    alerts.insert_batch([stored("hot-1", T0, data={"temperature": 35}), stored("hot-2", T0 + timedelta(seconds=1))])

    assert ids(client.simulate_get("/messages").json) == ["cool"]
    assert ids(client.simulate_get("/messages", params={"collection": "alerts"}).json) == ["hot-2", "hot-1"]
    main = client.simulate_get("/messages", params={"collection": store.name})
    assert ids(main.json) == ["cool"]
    filtered = client.simulate_get("/messages", params={"collection": "alerts", "data.temperature": "35"})
    assert ids(filtered.json) == ["hot-1"]


@pytest.mark.integration
@pytest.mark.parametrize("name", ["elsewhere", "system.users", "$cmd", "alerts.x"])
def test_a_collection_no_route_names_is_a_400_listing_the_allowed_ones(routed, store, name):
    client, _ = routed

    for path in ("/messages", "/messages/m-1", "/stream"):
        response = client.simulate_get(path, params={"collection": name})

        assert response.status_code == 400, path
        assert response.json["parameters"] == ["collection"]
        assert "alerts" in response.json["description"] and store.name in response.json["description"]


@pytest.mark.integration
def test_get_by_id_looks_in_the_main_then_the_routed_collections_unless_told_which(routed, store):
    client, alerts = routed
    store.insert_batch([stored("in-main", T0), stored("in-both", T0, source="main")])
    alerts.insert_batch([stored("in-alerts", T0, data={"temperature": 35}), stored("in-both", T0, source="routed")])

    assert client.simulate_get("/messages/in-alerts").json["data"] == {"temperature": 35}
    assert client.simulate_get("/messages/in-main").status_code == 200
    assert client.simulate_get("/messages/in-both").json["source"] == "main", "the main collection comes first"
    assert client.simulate_get("/messages/in-both", params={"collection": "alerts"}).json["source"] == "routed"
    assert client.simulate_get("/messages/in-main", params={"collection": "alerts"}).status_code == 404
    assert client.simulate_get("/messages/nowhere").status_code == 404


@pytest.mark.integration
def test_api_read_preference_sends_only_the_apis_reads_elsewhere(pipeline_config, store):
    mapping = config_module.to_mapping(with_routes(pipeline_config))
    mapping["api"]["read_preference"] = "secondaryPreferred"
    config = config_module.from_mapping(mapping)
    store.insert_batch([stored("m-1", T0)])
    backends = Backends(config)
    try:
        client = falcon.testing.TestClient(create_app(config, backends))
        # FerretDB, a single server, takes any read preference: the reads are answered the same.
        assert ids(client.simulate_get("/messages").json) == ["m-1"]
        assert client.simulate_get("/messages/m-1").status_code == 200

        preferences = {name: read.collection.read_preference for name, read in backends.stores.items()}
        assert preferences == {
            store.name: ReadPreference.SECONDARY_PREFERRED,
            "alerts": ReadPreference.SECONDARY_PREFERRED,
        }
    finally:
        backends.close()
    assert store.collection.read_preference == ReadPreference.PRIMARY, "the consumers' store keeps the uri's"


@pytest.mark.integration
def test_an_api_without_routes_offers_only_the_main_collection(client, store):
    response = client.simulate_get("/messages", params={"collection": "alerts"})

    assert response.status_code == 400
    assert response.json["parameters"] == ["collection"]
    assert client.simulate_get("/messages", params={"collection": store.name}).status_code == 200


# --- rejected input --------------------------------------------------------------------------------


def cursor_of(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("query_string", "parameter"),
    [
        ("source[$ne]=x", "source[$ne]"),
        ("source%5B%24ne%5D=x", "source[$ne]"),
        ("$where=1", "$where"),
        ("sort=timestamp", "sort"),
        ("limit=1e9", "limit"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=+5", "limit"),
        ("limit=%EF%BC%95", "limit"),  # a full-width 5, which int() would accept
        ("limit=", "limit"),
        ("limit=1&limit=2", "limit"),
        ("source=a&source=b", "source"),
        ("source=" + "a" * 257, "source"),
        ("since=yesterday", "since"),
        ("since=", "since"),
        ("until=2024-13-01T00:00:00Z", "until"),
        ("until=9999-12-31T23:59:59.9999-01:00", "until"),
        ("before=not-a-cursor!", "before"),
        ("before=" + "A" * 300, "before"),
        ("before=" + cursor_of({"$gt": ""}), "before"),
        ("before=" + cursor_of([1714564800000, "$ne"]), "before"),
        ("before=" + cursor_of(["1714564800000", "m-1"]), "before"),
        ("before=" + cursor_of([10**20, "m-1"]), "before"),
    ],
)
def test_bad_query_parameters_are_a_400_naming_the_parameter(offline_client, query_string, parameter):
    response = offline_client.simulate_get("/messages", query_string=query_string)

    assert response.status_code == 400, response.json
    assert response.headers["content-type"].startswith("application/json")
    assert response.json["parameters"] == [parameter]
    assert parameter in response.json["description"]


def test_every_unknown_parameter_is_named(offline_client):
    response = offline_client.simulate_get("/messages/m-1", query_string="a=1&b=2")

    assert response.status_code == 400
    assert response.json["parameters"] == ["a", "b"]


def test_store_unreachable_is_a_json_503_within_the_store_timeout(offline_client):
    for path in ("/messages", "/messages/m-1"):
        started = time.monotonic()
        response = offline_client.simulate_get(path)

        assert time.monotonic() - started < 3, "mongodb.timeout_ms is 200 ms"
        assert response.status_code == 503, path
        assert response.json["title"] == "Store unavailable"
        assert "Retry-After" in response.headers


def test_unknown_route_and_wrong_method_are_json_even_when_xml_is_preferred(offline_client):
    xml = {"Accept": "application/xml"}
    missing = offline_client.simulate_get("/nowhere", headers=xml)
    wrong_method = offline_client.simulate_delete("/messages", headers=xml)

    assert missing.status_code == 404
    assert missing.json["status"] == 404
    assert "/nowhere" in missing.json["description"]
    assert wrong_method.status_code == 405
    assert wrong_method.json["status"] == 405
    assert wrong_method.headers["Allow"] == "GET, POST, OPTIONS"


# --- /health and /ready ----------------------------------------------------------------------------


def test_health_answers_without_its_dependencies(offline_client):
    response = offline_client.simulate_get("/health")

    assert response.status_code == 200
    assert response.json == {"status": "ok"}


@pytest.mark.integration
def test_ready_when_kafka_and_store_answer(client):
    response = client.simulate_get("/ready")

    assert response.status_code == 200
    assert response.json == {"status": "ok", "checks": {"kafka": "ok", "store": "ok", "offsets": "ok"}}


@pytest.mark.integration
def test_not_ready_names_kafka_when_only_kafka_is_down(pipeline_config, store):
    config = with_dead(pipeline_config, "kafka")

    started = time.monotonic()
    with api_client(config) as client:
        response = client.simulate_get("/ready")

    assert time.monotonic() - started < 4
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.json["checks"]["store"] == "ok"
    assert response.json["checks"]["kafka"].startswith("unreachable")


@pytest.mark.integration
def test_not_ready_names_the_store_when_only_the_store_is_down(pipeline_config):
    config = with_dead(pipeline_config, "store")

    with api_client(config) as client:
        response = client.simulate_get("/ready")

    assert response.status_code == 503
    assert response.json["checks"]["kafka"] == "ok"
    assert response.json["checks"]["store"].startswith("unreachable")


@pytest.mark.integration
def test_a_flood_of_ready_probes_costs_one_round_of_checks(pipeline_config, store, monkeypatch):
    checked = []

    def slow_kafka_check(self) -> str:
        checked.append(time.monotonic())
        time.sleep(1.5)  # longer than a result stays fresh
        return "ok"

    monkeypatch.setattr(ReadyResource, "check_kafka", slow_kafka_check)
    answers = []
    with api_client(pipeline_config) as client:
        probes = [threading.Thread(target=lambda: answers.append(client.simulate_get("/ready"))) for _ in range(8)]
        for probe in probes:
            probe.start()
        for probe in probes:
            probe.join(timeout=60)

    assert [response.status_code for response in answers] == [200] * 8
    assert len(checked) == 1, "concurrent probes wait for the check in progress and share its answer"


@pytest.mark.integration
def test_ready_is_503_naming_the_consumers_once_none_of_them_runs(pipeline_config, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text("{}")
    sup = start_streamd(
        tmp_path,
        pipeline_config,
        producer={"enabled": False},
        consumer={"processes": 2, "schema": str(schema)},
        supervisor={"crash_limit": 2, "backoff_initial": 0.1},
    )
    try:
        children = sup.wait_running("consumer-1", "consumer-2", "api", timeout=60)
        status, body = wait_until(lambda: (r := get_json(api_url(sup, "/ready")))[0] and r, "/ready", 30)
        assert (status, body["checks"]) == (200, {"kafka": "ok", "store": "ok", "offsets": "ok", "consumers": "ok"})

        # A consumer restarted without its schema file exits at once: both crash-loop to FATAL.
        schema.unlink()
        for name in ("consumer-1", "consumer-2"):
            os.kill(children[name]["pid"], signal.SIGKILL)
        fatal = {"consumer-1": "FATAL", "consumer-2": "FATAL"}
        wait_until(lambda: {n: sup.children()[n]["state"] for n in fatal} == fatal, f"FATAL; {sup.log_tail()}", 60)

        status, body = wait_until(lambda: (r := get_json(api_url(sup, "/ready")))[0] == 503 and r, "a 503", 10)
        assert body["status"] == "unavailable"
        assert body["checks"]["kafka"] == "ok" and body["checks"]["store"] == "ok"
        assert "consumer-1 FATAL" in body["checks"]["consumers"] and "consumer-2 FATAL" in body["checks"]["consumers"]
    finally:
        sup.kill()


def test_ready_checks_are_bounded_when_both_are_down(offline_client):
    started = time.monotonic()
    response = offline_client.simulate_get("/ready")

    # Each check gives up after 2 s; unbounded, librdkafka alone would wait out its 60 s socket timeout.
    assert time.monotonic() - started < 10
    assert response.status_code == 503
    assert set(response.json["checks"]) == {"kafka", "store"}
    assert all(result.startswith("unreachable") for result in response.json["checks"].values())


# --- the Gunicorn server ---------------------------------------------------------------------------

SERVER_SCRIPT = """
import json, sys
from streamd.api.server import run
from streamd.config import from_mapping
from streamd.lifecycle import Shutdown
sys.exit(run(from_mapping(json.loads(sys.argv[1])), Shutdown()))
"""


def start_server(config: Config, home: Path, workers: int = 2) -> subprocess.Popen:
    mapping = config_module.to_mapping(config)
    mapping["api"]["workers"] = workers
    # The extra argument is one Gunicorn's own command line would refuse: the server must not read argv.
    command = [sys.executable, "-c", SERVER_SCRIPT, json.dumps(mapping), "--no-such-gunicorn-flag"]
    # A home of its own shows whether Gunicorn left a control socket (~/.gunicorn/gunicorn.ctl) behind.
    environ = {key: value for key, value in os.environ.items() if key != "XDG_RUNTIME_DIR"} | {"HOME": str(home)}
    with open(home / "api.log", "wb") as log:
        return subprocess.Popen(command, cwd=REPO, env=environ, stdout=log, stderr=subprocess.STDOUT)


def get(port: int, path: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def answers(port: int) -> bool:
    try:
        return get(port, "/health")[0] == 200
    except OSError:
        return False


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except FileNotFoundError:
        return ""


@pytest.fixture
def server(pipeline_config, store, tmp_path) -> Iterator[tuple[subprocess.Popen, Path]]:
    process = start_server(pipeline_config, tmp_path)
    yield process, tmp_path / "api.log"
    kill_server(process)


def kill_server(process: subprocess.Popen) -> None:
    leftovers = descendants(process.pid)  # before the kill: orphans are no longer our descendants
    if process.poll() is None:
        process.kill()
        process.wait()
    for pid in leftovers:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def started(process: subprocess.Popen, port: int, log_path: Path) -> set[int]:
    """The worker pids, once the API answers over HTTP."""
    wait_until(lambda: answers(port) or process.poll() is not None, "the API to answer", 30)
    assert process.poll() is None, log_path.read_text()
    return wait_until(lambda: workers_of(process), "2 workers", 10)


@pytest.mark.integration
def test_server_serves_over_http_and_stops_cleanly_on_sigterm(pipeline_config, store, server):
    process, log_path = server
    port = pipeline_config.api.port
    store.insert_batch([stored("m-1", T0)])
    workers = started(process, port, log_path)

    status, body = get(port, "/messages")
    titles = sorted(title(pid) for pid in workers)
    master_title = title(process.pid)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)

    assert (status, ids(body)) == (200, ["m-1"])
    assert master_title == "streamd: api"
    assert titles == ["streamd: api worker 1", "streamd: api worker 2"]
    assert code == 0, log_path.read_text()
    assert all(process_gone(pid) for pid in workers)
    assert "[api worker 1]" in log_path.read_text()
    assert not (log_path.parent / ".gunicorn").exists()


@pytest.mark.integration
def test_a_replacement_worker_takes_over_its_predecessors_number(pipeline_config, server):
    process, log_path = server
    workers = started(process, pipeline_config.api.port, log_path)
    first = next(pid for pid in workers if title(pid) == "streamd: api worker 1")

    os.kill(first, signal.SIGKILL)
    replacement = wait_until(lambda: (workers_of(process) or workers) - workers, "a replacement worker", 10)

    assert [title(pid) for pid in replacement] == ["streamd: api worker 1"]


@pytest.mark.integration
def test_sigusr2_does_not_start_a_second_server(pipeline_config, server):
    # Gunicorn's binary upgrade would re-execute this process's command line: in production, `streamd`.
    process, log_path = server
    workers = started(process, pipeline_config.api.port, log_path)

    process.send_signal(signal.SIGUSR2)
    wait_until(lambda: "ignoring SIGUSR2" in log_path.read_text(), "the master to handle SIGUSR2")

    assert descendants(process.pid) == workers


@pytest.mark.integration
def test_workers_stop_when_the_master_is_killed(pipeline_config, server):
    process, log_path = server
    workers = started(process, pipeline_config.api.port, log_path)

    process.kill()
    process.wait()

    wait_until(lambda: all(process_gone(pid) for pid in workers), "the orphaned workers to exit", 15)


def workers_of(process: subprocess.Popen) -> set[int] | None:
    """Both workers, once each has named itself (which it does right after the fork)."""
    found = descendants(process.pid)
    named = len(found) == 2 and all(title(pid).startswith("streamd: api worker") for pid in found)
    return found if named else None


ORPHAN_SCRIPT = """
import os, sys, time
from types import SimpleNamespace
from streamd.api.server import ApiServer
from streamd.config import from_mapping
server, master = ApiServer(from_mapping({})), os.getpid()
if os.fork() == 0:
    server.post_fork(SimpleNamespace(pid=master), SimpleNamespace(slot=1))
    print(os.getpid(), flush=True)
time.sleep(60)
"""


def test_a_worker_is_signalled_the_moment_its_master_dies():
    # Gunicorn's workers also notice a new parent on their own, up to a second later and only while
    # their loop runs; this isolates the post_fork hook: the stand-in worker below only sleeps.
    master = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], cwd=REPO, stdout=subprocess.PIPE)
    worker = int(master.stdout.readline())
    try:
        master.kill()
        master.wait()

        wait_until(lambda: process_gone(worker), "the stand-in worker to get SIGTERM", 5)
    finally:
        if not process_gone(worker):
            os.kill(worker, signal.SIGKILL)


# --- probes under load, and errors from Gunicorn's own parser --------------------------------------


@pytest.fixture
def busy_server(pipeline_config, store, tmp_path) -> Iterator[tuple[Config, subprocess.Popen]]:
    """One worker of 4 threads whose live feeds last a minute, answering over HTTP."""
    api = dataclasses.replace(pipeline_config.api, threads=4, streams_per_worker=3, stream_seconds=60)
    config = dataclasses.replace(pipeline_config, api=api)
    store.insert_batch([stored("m-1", T0)])
    process = start_server(config, tmp_path, workers=1)
    try:
        wait_until(lambda: answers(api.port) or process.poll() is not None, "the API to answer", 30)
        assert process.poll() is None, (tmp_path / "api.log").read_text()
        yield config, process
    finally:
        kill_server(process)


def connect(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    return sock


def unanswered(sock: socket.socket) -> bool:
    """True while the server has neither answered on `sock` nor closed it."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


def raw_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response on `sock` (the server closes it, or says how long it is)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("head", "probe"),
    [
        (b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n", "health"),
        (b"HEAD /ready?verbose HTTP/1.0\r\n\r\n", "ready"),
        (b"GET /ready HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /messages", "ready"),
        (b"GET /health HTTP/1.1\r\nHost: t\r\n", None),  # headers not all here: it could stall a probe thread
        (b"GET /health HTTP/1.1\r\nContent-Length: 5\r\n\r\n", None),  # a body to wait for
        (b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        (b"GET /healthz HTTP/1.1\r\n\r\n", None),
        (b"POST /health HTTP/1.1\r\n\r\n", None),
        (b"GET /messages HTTP/1.1\r\nX: GET /health HTTP/1.1\r\n\r\n", None),
        (b"", None),
    ],
)
def test_only_a_whole_bodiless_probe_request_goes_to_a_probe_thread(head, probe):
    assert probe_of(head) == probe


@pytest.mark.integration
def test_probes_answer_while_every_request_thread_is_held(busy_server):
    config, process = busy_server
    port = config.api.port
    before = get_text(port, "/metrics")[1]
    # Three live feeds (all this worker allows) and slow clients whose headers never end hold all four
    # request threads; more /messages requests queue behind them.
    feeds = [connect(port, b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") for _ in range(3)]
    for feed in feeds:
        assert feed.recv(65536).startswith(b"HTTP/1.1 200"), "each feed is streaming"
    slow = [connect(port, b"GET /messages HTTP/1.1\r\nHost: t\r\n") for _ in range(4)]
    queued = [connect(port, b"GET /messages HTTP/1.1\r\nHost: t\r\n\r\n") for _ in range(3)]

    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answered = []
    for method, path in (("GET", "/health"), ("GET", "/ready"), ("HEAD", "/health"), ("GET", "/health")):
        probe.request(method, path)  # one kept-alive connection for all four
        response = probe.getresponse()
        answered.append((method, path, response.status, response.read()))
    probe.close()

    assert all(unanswered(sock) for sock in slow + queued), "the pool was still full when the probes answered"
    assert [status for *_, status, _ in answered] == [200, 200, 200, 200]
    assert json.loads(answered[1][3]) == {"status": "ok", "checks": {"kafka": "ok", "store": "ok", "offsets": "ok"}}
    assert answered[2][3] == b"", "HEAD has no body"

    for sock in slow + feeds:
        sock.close()
    for sock in queued:
        status, _, body = raw_response(sock)
        assert status == 200 and ids(json.loads(body)) == ["m-1"], "the queued requests are served once threads free"
        sock.close()
    status, metrics = get_text(port, "/metrics")
    assert status == 200
    counted = {
        (method, route): requests_counted(metrics, method, route) - requests_counted(before, method, route)
        for method, route in (("GET", "/health"), ("HEAD", "/health"), ("GET", "/ready"))
    }
    assert counted == {("GET", "/health"): 2, ("HEAD", "/health"): 1, ("GET", "/ready"): 1}, "probes are counted"


def requests_counted(metrics: str, method: str, route: str) -> float:
    wanted = {f'method="{method}"', f'route="{route}"', 'status="200"'}
    for line in metrics.splitlines():
        name, _, rest = line.partition("{")
        if name == "streamd_http_requests_total" and wanted <= set(rest.partition("}")[0].split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.integration
def test_a_burst_of_idle_connections_holds_no_request_thread(busy_server):
    config, _ = busy_server
    port = config.api.port
    idle = [socket.create_connection(("127.0.0.1", config.api.port), timeout=10) for _ in range(200)]
    answers = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        started = time.monotonic()
        # Probes and other requests take turns on one kept-alive connection.
        for path in ("/health", "/messages", "/health", "/messages"):
            connection.request("GET", path)
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
        elapsed = time.monotonic() - started
    finally:
        connection.close()
        for sock in idle:
            sock.close()

    assert [status for status, _ in answers] == [200] * 4
    assert answers[0][1] == answers[2][1] == {"status": "ok"}
    assert ids(answers[1][1]) == ids(answers[3][1]) == ["m-1"]
    # gthread parks each new connection on a request thread until its request comes (up to 5 s): 4 threads
    # behind 200 idle connections would take minutes, so a generous bound still tells the two apart.
    assert elapsed < 15, f"/health and /messages took {elapsed:.1f} s behind 200 idle connections"


@pytest.mark.integration
def test_clients_that_never_hang_up_do_not_hold_the_probes(busy_server):
    config, _ = busy_server
    port = config.api.port
    # HTTP/1.0 without keep-alive: each answer ends the connection, but these clients never close theirs.
    held = [connect(port, b"GET /messages HTTP/1.0\r\n\r\n") for _ in range(10)]
    try:
        assert all(raw_response(sock)[0] == 200 for sock in held)
        started = time.monotonic()
        health = get(port, "/health")
        elapsed = time.monotonic() - started
    finally:
        for sock in held:
            sock.close()

    assert health == (200, {"status": "ok"})
    # gthread lingers up to 2 s per closing connection on the loop that hands out every request: 20 s for these 10.
    assert elapsed < 10, f"/health took {elapsed:.1f} s behind 10 clients that keep their sockets open"


@pytest.mark.integration
def test_a_worker_with_idle_and_kept_alive_probe_connections_stops_gracefully(busy_server):
    config, process = busy_server
    port = config.api.port
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    probe.request("GET", "/health")
    assert probe.getresponse().read() == b'{"status":"ok"}'

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    elapsed = time.monotonic() - started
    idle.close()
    probe.close()

    assert code == 0
    # Idle and kept-alive connections get gthread's 2 s stop linger, far inside the 9 s graceful timeout.
    assert elapsed < 8, f"the API took {elapsed:.1f} s to stop"


def get_text(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /messages HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET /\x01 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(200)) + b"\r\n", 431),
        (b"GET /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: brotli\r\n\r\n", 501),
    ],
    ids=["bad-framing", "bad-request-line", "long-request-line", "too-many-headers", "unknown-coding"],
)
def test_requests_gunicorn_cannot_parse_get_a_json_error(busy_server, request_bytes, status):
    config, _ = busy_server
    with connect(config.api.port, request_bytes) as sock:
        answer_status, headers, body = raw_response(sock)

    assert answer_status == status
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["status"] == status
    assert error["title"] and error["description"].endswith(".")


def status_line(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(1024)
        if not chunk:
            break
        head += chunk
    return head.split(b"\r\n", 1)[0]


@pytest.mark.integration
def test_a_viewer_who_switched_feeds_is_not_refused_because_of_the_feeds_it_left(busy_server):
    """A feed notices its viewer left only when it next writes; a worker at its limit must look first."""
    config, _ = busy_server
    feed = b"GET /stream HTTP/1.1\r\nHost: streamd\r\n\r\n"
    held = [connect(config.api.port, feed) for _ in range(config.api.streams_per_worker)]
    assert [status_line(sock) for sock in held] == [b"HTTP/1.1 200 OK"] * len(held)

    with contextlib.closing(connect(config.api.port, feed)) as one_too_many:
        assert status_line(one_too_many) == b"HTTP/1.1 503 Service Unavailable", "every viewer is still there"

    held.pop().close()  # the page switched its source filter: it closed this feed and asks for another
    with contextlib.closing(connect(config.api.port, feed)) as switched:
        assert status_line(switched) == b"HTTP/1.1 200 OK"
    for sock in held:
        sock.close()
