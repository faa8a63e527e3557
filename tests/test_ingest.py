"""POST /messages as a client sees it: what is accepted reaches the topic as sent (plus an id), what is invalid
never does, the request's limits answer 413/400/415 naming their key, and an unacknowledged message is a 503
that names it.

Requests that must be refused run against Kafka and a store nobody listens on (the offline client), so a
message that slipped through the checks would show up as a 503 instead of the expected answer.
"""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import falcon.testing
import orjson
import pytest

from streamd import config as config_module
from streamd.api.backends import Backends
from streamd.api.errors import BodyTooLarge
from streamd.api.ingest import NDJSON, IngestProducer, MessageCheck, read_body, split_messages
from streamd.api_keys import issue, keys_path
from streamd.config import Config

from .probes import api_client, free_port, read_all, wait_until
from .supervisor_process import api_url, get_json, start_streamd


def post(client: falcon.testing.TestClient, body: bytes | str, content_type: str = "application/json"):
    return client.simulate_post("/messages", body=body, headers={"Content-Type": content_type})


def config_with(base: Config | None = None, **sections: dict) -> Config:
    mapping = config_module.to_mapping(base) if base is not None else {}
    for section, values in sections.items():
        mapping[section] = {**mapping.get(section, {}), **values}
    return config_module.from_mapping(mapping)


def dead_kafka(**sections: dict) -> Config:
    """Kafka and the store on loopback ports nobody listens on."""
    return config_with(
        kafka={"brokers": f"127.0.0.1:{free_port()}"},
        mongodb={"uri": f"mongodb://127.0.0.1:{free_port()}", "timeout_ms": 200},
        **sections,
    )


# --- the request: media types, limits, bodies ---------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_body_neither_json_nor_ndjson_is_415_naming_both(offline_client, content_type):
    response = post(offline_client, '{"text": "hi"}', content_type)
    assert response.status_code == 415
    assert "application/json" in response.json["description"] and NDJSON in response.json["description"]


def test_a_charset_parameter_does_not_change_the_media_type(offline_client):
    response = post(offline_client, '{"nope": 1}', "application/json; charset=utf-8")
    assert response.status_code == 400 and response.json["rejected"][0]["index"] == 0


def test_a_body_over_max_body_bytes_is_413_naming_the_key():
    with api_client(dead_kafka(ingest={"max_body_bytes": 100})) as client:
        response = post(client, orjson.dumps([{"text": "x" * 30}] * 4))
    assert response.status_code == 413
    assert response.json["limit"] == "ingest.max_body_bytes"
    assert "ingest.max_body_bytes (100)" in response.json["description"]


def test_a_body_without_a_length_is_read_no_further_than_one_byte_past_the_limit():
    stream = io.BytesIO(b"x" * 10_000)
    request = SimpleNamespace(content_length=None, bounded_stream=stream)
    with pytest.raises(BodyTooLarge):
        read_body(request, 100)
    assert stream.tell() == 101
    assert read_body(SimpleNamespace(content_length=None, bounded_stream=io.BytesIO(b"abc")), 100) == b"abc"


def test_a_batch_over_max_batch_is_400_naming_the_key():
    with api_client(dead_kafka(ingest={"max_batch": 3})) as client:
        array = post(client, orjson.dumps([{"text": str(n)} for n in range(4)]))
        lines = post(client, b"\n".join(orjson.dumps({"text": str(n)}) for n in range(4)), NDJSON)
    for response in (array, lines):
        assert response.status_code == 400
        assert response.json["limit"] == "ingest.max_batch" and "ingest.max_batch (3)" in response.json["description"]


@pytest.mark.parametrize(("body", "title"), [(b"", "Empty body"), (b"  \n", "Empty body"), (b"[]", "Empty batch")])
def test_a_body_without_messages_is_400(offline_client, body, title):
    response = post(offline_client, body)
    assert (response.status_code, response.json["title"]) == (400, title)


def test_json_that_does_not_parse_is_400_saying_where(offline_client):
    response = post(offline_client, b'[{"text": "a"}, {"text": ]')
    assert response.status_code == 400
    assert "not JSON" in response.json["description"] and "line 1 column 26" in response.json["description"]


def test_ndjson_lines_are_messages_and_blank_lines_are_skipped():
    body = b'{"text": "a"}\r\n\n   \n{"text": "b"}\n{bad\n'
    assert split_messages(body, NDJSON, 10) == [b'{"text": "a"}\r', b'{"text": "b"}', b"{bad"]
    assert split_messages(b'{"text": "a"}', "application/json", 10) == [{"text": "a"}]


def test_post_is_405_when_ingest_is_disabled():
    with api_client(dead_kafka(ingest={"enabled": False})) as client:
        response = post(client, '{"text": "hi"}')
    assert response.status_code == 405 and "ingest.enabled" in response.json["description"]
    assert response.headers["allow"] == "GET"


# --- the check: the consumers' own pipeline, message by message -----------------------------------------


def test_when_every_message_is_invalid_nothing_is_sent_and_each_is_400_by_index(offline_client):
    messages = [{"txt": "no text"}, 5, {"text": "ok", "id": "bad id!"}, {"text": "ok", "a.b": 1}]
    response = post(offline_client, orjson.dumps(messages))
    assert response.status_code == 400
    assert response.json["accepted"] == []
    reasons = {entry["index"]: entry["reason"] for entry in response.json["rejected"]}
    assert reasons == {0: "schema", 1: "not_object", 2: "schema", 3: "field_name"}
    assert all(entry["error"] for entry in response.json["rejected"])


def test_a_message_over_consumer_max_message_bytes_is_refused_naming_the_key():
    with api_client(dead_kafka(consumer={"max_message_bytes": 200})) as client:
        response = post(client, orjson.dumps({"text": "x" * 300}))
    assert response.status_code == 400
    (rejected,) = response.json["rejected"]
    assert rejected["reason"] == "too_large" and "consumer.max_message_bytes (200)" in rejected["error"]


def test_a_bad_ndjson_line_spoils_that_line_alone(offline_client):
    response = post(offline_client, b'{bad\n"just text"\n', NDJSON)
    assert [(entry["index"], entry["reason"]) for entry in response.json["rejected"]] == [
        (0, "not_json"),
        (1, "not_object"),
    ]


STAGES = [
    {"name": "no-noise", "kind": "filter", "where": "source != 'noise'"},
    {"name": "count", "kind": "set", "fields": {"hops": "(hops or 0) + 1"}},
    {"name": "strict", "kind": "set", "where": "text == 'boom'", "fields": {"text": "1"}},
]


def test_the_check_keeps_the_message_as_sent_with_a_generated_uuid7_id():
    check = MessageCheck(config_module.from_mapping({"stages": STAGES}))
    kept, own_id, filtered, failed = check.check(
        [{"text": "hi", "hops": 1}, {"id": "order-7", "text": "x"}, {"text": "y", "source": "noise"}, {"text": "boom"}]
    )
    payload = orjson.loads(kept.value)
    assert uuid.UUID(payload["id"]).version == 7 and kept.id == payload["id"] and kept.key == kept.id.encode()
    # The consumer applies the stages again: the value produced is the client's, never the staged one.
    assert payload == {"id": kept.id, "text": "hi", "hops": 1}
    assert (own_id.id, orjson.loads(own_id.value)) == ("order-7", {"id": "order-7", "text": "x"})
    assert filtered.error is None and filtered.filtered_by == "no-noise"
    assert (failed.value, failed.reason) == (None, "stage") and "strict" in failed.error


def test_without_an_id_field_no_id_is_added():
    check = MessageCheck(config_module.from_mapping({"consumer": {"id_field": None}}))
    (checked,) = check.check([{"text": "hi"}])
    assert orjson.loads(checked.value) == {"text": "hi"} and checked.key is None and checked.id is None


def test_a_schema_file_gone_since_the_config_was_read_is_500_naming_the_key(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text("{}")
    settings = dead_kafka(consumer={"schema": str(schema)})
    schema.unlink()
    with api_client(settings) as client:
        response = post(client, '{"text": "hi"}')
    assert response.status_code == 500
    assert response.json["title"] == "Ingest misconfigured" and "consumer.schema" in response.json["description"]


# --- Kafka not acknowledging ---------------------------------------------------------------------------------


def test_unacknowledged_messages_are_503_with_retry_after_naming_each_within_the_deadline():
    with api_client(dead_kafka(ingest={"ack_timeout": 0.5})) as client:
        started = time.monotonic()
        response = post(client, orjson.dumps([{"text": "a"}, {"nope": 1}, {"id": "c-3", "text": "c"}]))
        took = time.monotonic() - started
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    body = response.json
    assert body["accepted"] == [] and [entry["index"] for entry in body["rejected"]] == [1]
    assert [entry["index"] for entry in body["not_accepted"]] == [0, 2]
    assert body["not_accepted"][1]["id"] == "c-3" and uuid.UUID(body["not_accepted"][0]["id"]).version == 7
    assert all(entry["error"] for entry in body["not_accepted"])
    assert took < 10, "an unreachable Kafka is answered after ingest.ack_timeout, not librdkafka's own timeouts"


def test_a_full_queue_refuses_the_rest_of_the_request_at_once():
    settings = dead_kafka(ingest={"ack_timeout": 0.5})
    settings = config_with(settings, kafka={"client": {"queue.buffering.max.messages": 2}})
    with api_client(settings) as client:
        response = post(client, orjson.dumps([{"text": str(n)} for n in range(4)]))
    assert response.status_code == 503
    errors = {entry["index"]: entry["error"] for entry in response.json["not_accepted"]}
    assert list(errors) == [0, 1, 2, 3]
    assert "queue to Kafka is full" in errors[2] and "queue to Kafka is full" in errors[3]
    assert "ingest.ack_timeout" in errors[0] or "timed out" in errors[0]


def test_a_worker_replaces_a_producer_that_hit_a_fatal_error():
    backends = Backends(dead_kafka())
    try:
        first = backends.producer
        assert backends.producer is first, "one producer per worker process"
        first.fatal = "Broker: Producer fenced"
        assert backends.producer is not first
    finally:
        backends.close()


# --- against the running Kafka --------------------------------------------------------------------------------


@pytest.fixture
def client(pipeline_config: Config):
    with api_client(pipeline_config) as test_client:
        yield test_client


def topic_values(settings: Config) -> dict[bytes | None, dict]:
    return {
        message.key(): orjson.loads(message.value())
        for message in read_all(settings.kafka.brokers, settings.kafka.topic)
    }


def test_one_message_an_array_and_ndjson_reach_the_topic_and_nothing_invalid_does(client, pipeline_config):
    single = post(client, orjson.dumps({"text": "one", "source": "curl"}))
    array = post(client, orjson.dumps([{"id": "a-1", "text": "two"}, {"bad": True}, {"text": "three"}]))
    lines = post(client, b'{"id": "n-1", "text": "four"}\n{broken\n', NDJSON)

    assert [r.status_code for r in (single, array, lines)] == [202, 202, 202]
    assert [entry["index"] for entry in array.json["accepted"]] == [0, 2]
    assert array.json["rejected"] == [{"index": 1, "reason": "schema", "error": "'text' is a required property"}]
    assert lines.json["rejected"][0]["index"] == 1
    generated = single.json["accepted"][0]["id"]
    assert uuid.UUID(generated).version == 7

    values = topic_values(pipeline_config)
    third = array.json["accepted"][1]["id"]
    assert values == {
        generated.encode(): {"id": generated, "text": "one", "source": "curl"},
        b"a-1": {"id": "a-1", "text": "two"},
        third.encode(): {"id": third, "text": "three"},
        b"n-1": {"id": "n-1", "text": "four"},
    }, "each message is keyed by its id, as sent plus the generated id, and nothing invalid is in the topic"


def test_concurrent_requests_each_wait_for_their_own_messages(client, pipeline_config):
    def send(batch: int) -> falcon.testing.Result:
        return post(client, orjson.dumps([{"id": f"b{batch}-{n}", "text": "x"} for n in range(50)]))

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, range(4)))
    for batch, response in enumerate(responses):
        assert response.status_code == 202
        assert [entry["id"] for entry in response.json["accepted"]] == [f"b{batch}-{n}" for n in range(50)]
    assert len(topic_values(pipeline_config)) == 200


def test_closing_the_worker_flushes_its_producer(pipeline_config):
    producer = IngestProducer(pipeline_config)
    (checked,) = MessageCheck(pipeline_config).check([{"id": "flushed-1", "text": "x"}])
    producer.producer.produce(producer.topic, checked.value, checked.key)  # queued, no request waiting for it
    assert producer.close(10) == 0
    assert list(topic_values(pipeline_config)) == [b"flushed-1"]


def test_a_message_a_filter_drops_is_accepted_and_named(pipeline_config):
    settings = config_module.from_mapping({**config_module.to_mapping(pipeline_config), "stages": STAGES[:1]})
    with api_client(settings) as test_client:
        response = post(test_client, orjson.dumps({"text": "hush", "source": "noise"}))
    assert response.status_code == 202
    assert response.json["accepted"][0]["filtered_by"] == "no-noise"


def test_without_an_id_field_the_answer_gives_the_id_the_consumer_will_store_it_under(pipeline_config):
    settings = config_with(pipeline_config, consumer={"id_field": None})
    with api_client(settings) as test_client:
        response = post(test_client, orjson.dumps({"text": "no id"}))
    assert response.status_code == 202
    (message,) = read_all(settings.kafka.brokers, settings.kafka.topic)
    expected = f"~{settings.kafka.topic}:{message.partition()}:{message.offset()}"
    assert response.json["accepted"] == [{"index": 0, "id": expected}]
    assert orjson.loads(message.value()) == {"text": "no id"} and message.key() is None


def test_a_message_posted_with_an_ingest_key_is_served_by_get_messages_through_streamd(pipeline_config, tmp_path):
    """The issue's first try as a new user: keys required, `curl -X POST` with a key, then GET /messages."""
    config = config_with(pipeline_config, auth={"required": True})
    writer = issue(keys_path(config), "ci", ["ingest"])[1]
    reader = issue(keys_path(config), "viewer", ["read"])[1]
    sup = start_streamd(tmp_path, config, producer={"enabled": False}, analytics={"enabled": False})
    try:
        sup.wait_running("consumer-1", "api", timeout=60)
        url = api_url(sup, "/messages")
        wait_until(lambda: get_json(api_url(sup, "/health"))[0] == 200, f"the API; {sup.log_tail()}", 30)
        body = b'{"text": "over HTTP", "source": "curl"}'
        assert sent_by_http(url, body)[0] == 401, "no key, no message"
        assert sent_by_http(url, body, reader)[0] == 403, "a read key may not post"
        response = sent_by_http(url, body, writer)
        assert response[0] == 202, response
        message_id = response[1]["accepted"][0]["id"]

        def served():
            status, found = sent_by_http(f"{url}/{message_id}", None, reader)
            return status == 200 and found

        found = wait_until(served, f"{message_id} in GET /messages; {sup.log_tail()}", 60)
        assert (found["content"], found["source"]) == ("over HTTP", "curl")
        assert message_id in [item["id"] for item in sent_by_http(url, None, reader)[1]["data"]]
    finally:
        sup.kill()


def sent_by_http(url: str, body: bytes | None, key: str | None = None) -> tuple[int, dict]:
    """POST `body` (GET when None) to `url`, with `key` as a Bearer token when given."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())
