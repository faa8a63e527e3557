"""The consumer's stages: what is stored, what is rejected and why, and which offsets a batch commits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import bson
import orjson
import pytest
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    KafkaError,
    Message,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streamd import config as config_module
from streamd import coordinates
from streamd.config import ConfigError
from streamd.message_schema import BUILTIN_SCHEMA, EPOCH, FORMATS, Invalid, PayloadSchema, kafka_time, parse_timestamp
from streamd.pipeline import Pipeline, document_id, parse, to_document

TOPIC = "orders"
NOW = datetime(2024, 6, 1, 12, 0, 30, tzinfo=UTC)
# Every reason a stage can give (the dead-letter table in docs/delivery.md lists them with the later ones).
REASONS = {
    "tombstone",
    "empty",
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "schema",
    "bad_timestamp",
    "field_name",
    "internal",
}
KAFKA_TIME_MS = int(datetime(2024, 6, 1, 11, 59, tzinfo=UTC).timestamp() * 1000)


def kafka_message(
    value: bytes | None,
    partition: int = 0,
    offset: int = 0,
    timestamp_ms: int | None = KAFKA_TIME_MS,
    headers: list | None = None,
) -> Message:
    """A consumed message as librdkafka hands it over; timestamp_ms=None is a message without timestamp."""
    extra: dict = {} if timestamp_ms is None else {"timestamp": (TIMESTAMP_CREATE_TIME, timestamp_ms)}
    if headers is not None:
        extra["headers"] = headers
    return Message(topic=TOPIC, partition=partition, offset=offset, key=b"k", value=value, **extra)


def json_message(payload: object, **where) -> Message:
    return kafka_message(orjson.dumps(payload), **where)


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(PayloadSchema(), max_message_bytes=1000)


def only_document(pipeline: Pipeline, message: Message) -> dict:
    batch = pipeline.batch([message], ingested_at=NOW)
    assert batch.rejections == []
    [document] = batch.documents
    return document


def only_rejection(pipeline: Pipeline, message: Message):
    batch = pipeline.batch([message], ingested_at=NOW)
    assert batch.documents == []
    [rejection] = batch.rejections
    return rejection


# --- parse --------------------------------------------------------------------------------------------


def test_parse_returns_the_json_object():
    assert parse('{"text": "héllo", "n": 1}'.encode(), max_bytes=100) == {"text": "héllo", "n": 1}


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (b"", "empty", "value is empty"),
        (None, "tombstone", "tombstone"),
        (b'{"text": "\xff\xfe"}', "not_utf8", "not UTF-8 (byte 10)"),
        (b"hello", "not_json", "not JSON"),
        (b'{"text": "a"} trailing', "not_json", "not JSON"),
        (b'[{"text": "a"}]', "not_object", "a JSON array"),
        (b'"text"', "not_object", "a JSON string"),
        (b"42", "not_object", "a JSON number"),
        (b"null", "not_object", "a JSON null"),
    ],
)
def test_parse_rejects_what_is_not_a_utf8_json_object(pipeline, value, reason, detail):
    rejection = only_rejection(pipeline, kafka_message(value, partition=2, offset=17))
    assert (rejection.stage, rejection.reason) == ("parse", reason)
    assert detail in rejection.detail
    assert (rejection.topic, rejection.partition, rejection.offset) == (TOPIC, 2, 17)
    assert rejection.value == value, "the raw value is kept for the dead-letter topic"


def test_a_rejection_keeps_everything_the_dead_letter_topic_needs(pipeline):
    message = kafka_message(b"not json", partition=1, offset=8, headers=[("trace", b"abc"), ("empty", None)])
    rejection = only_rejection(pipeline, message)
    assert (rejection.topic, rejection.partition, rejection.offset) == (TOPIC, 1, 8)
    assert (rejection.key, rejection.value) == (b"k", b"not json")
    assert rejection.headers == [("trace", b"abc"), ("empty", None)]
    assert rejection.timestamp_ms == KAFKA_TIME_MS


def test_a_rejection_of_a_message_without_timestamp_has_none(pipeline):
    assert only_rejection(pipeline, kafka_message(b"[]", timestamp_ms=None)).timestamp_ms is None


def test_parse_rejects_values_over_max_message_bytes(pipeline):
    value = orjson.dumps({"text": "x" * 1000})
    rejection = only_rejection(pipeline, kafka_message(value))
    assert rejection.reason == "too_large"
    assert f"{len(value)} bytes" in rejection.detail and "consumer.max_message_bytes (1000)" in rejection.detail


# --- validate -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"id": "a-1"}, "'text' is a required property"),
        ({"text": 42}, "text: 42 is not of type 'string'"),
        ({"text": None}, "text: None is not of type 'string'"),
        ({"text": "hi", "source": 7}, "source: 7 is not of type 'string'"),
        ({"text": "hi", "source": None}, "source: None is not of type 'string'"),
        ({"text": "hi", "id": 12}, "id: 12 is not of type 'string'"),
        ({"text": "hi", "id": "has space"}, "id: 'has space'"),
        ({"text": "hi", "id": ""}, "id: ''"),
        ({"text": "hi", "id": "abc\n"}, "id: 'abc\\n'"),
        ({"text": "hi", "id": "$where"}, "id: '$where'"),
        ({"text": "hi", "id": "x" * 129}, "id: 'xxx"),
        ({"text": "hi", "timestamp": "yesterday"}, "timestamp: 'yesterday' is not a 'date-time'"),
        ({"text": "hi", "timestamp": "2024-06-01"}, "timestamp: '2024-06-01' is not a 'date-time'"),
        ({"text": "hi", "timestamp": 1717243200}, "timestamp: 1717243200 is not of type 'string'"),
    ],
)
def test_validate_rejects_payloads_that_break_the_schema_and_names_the_field(pipeline, payload, detail):
    rejection = only_rejection(pipeline, json_message(payload, partition=1, offset=5))
    assert (rejection.stage, rejection.reason) == ("validate", "schema")
    assert detail in rejection.detail
    assert str(rejection).startswith(f"{TOPIC}[1]@5 rejected at validate (schema): ")


def test_rejection_details_stay_short_even_for_huge_values(pipeline):
    rejection = only_rejection(pipeline, json_message({"text": "hi", "id": "x" * 900}))
    assert len(rejection.detail) <= 200


@pytest.mark.parametrize(
    "payload",
    [
        {"text": ""},
        {
            "text": "hi",
            "id": "0190a0e2-8b1c-7c3e-9a4e-123456789abc",
            "source": "web",
            "timestamp": "2024-06-01T12:00:00Z",
        },
        {"text": "hi", "id": "order-123", "timestamp": "2024-06-01T14:00:00.5+02:00"},
        {"text": "hi", "timestamp": "2024-06-01T12:00:00"},
        {"text": "hi", "extra": {"nested": [1, 2]}, "priority": 3},
    ],
)
def test_validate_accepts_valid_payloads_with_extra_fields(pipeline, payload):
    assert only_document(pipeline, json_message(payload))["content"] == payload["text"]


@pytest.mark.parametrize(
    "payload",
    [
        {"text": "hi"},
        {"text": "hi", "id": "a.b:c-d_e"},
        {"text": "hi", "id": "abc\n"},
        {"text": "hi", "id": "-leading-dash"},
        {"text": "hi", "id": None},
        {"text": "hi", "source": ""},
        {"text": "hi", "source": ["web"]},
        {"text": "hi", "timestamp": "2024-06-01T12:00:00+00:00"},
        {"text": "hi", "timestamp": "20240601T120000Z"},
        {"text": "hi", "timestamp": "2024-13-01T12:00:00Z"},
        {"text": "hi", "timestamp": None},
        {"text": ["hi"]},
        {"TEXT": "hi"},
    ],
)
def test_the_fast_path_agrees_with_the_json_schema(payload):
    """PayloadSchema skips jsonschema for payloads it can vouch for; it must never vouch for a bad one."""
    assert fast_path_accepts(payload) == Draft202012Validator(BUILTIN_SCHEMA, format_checker=FORMATS).is_valid(payload)


def fast_path_accepts(payload: object) -> bool:
    try:
        PayloadSchema().validate(payload)
    except Invalid:
        return False
    return True


def test_a_custom_schema_file_adds_rules_to_the_built_in_schema(tmp_path):
    schema_file = tmp_path / "message.schema.json"
    schema_file.write_text('{"type": "object", "required": ["source"]}')
    settings = config_module.from_mapping({"consumer": {"schema": str(schema_file)}})
    pipeline = Pipeline.from_config(settings)

    batch = pipeline.batch(
        [
            json_message({"text": "hi", "source": "web"}, offset=0),
            json_message({"text": "hi"}, offset=1),
            json_message({"source": "web"}, offset=2),
        ],
        ingested_at=NOW,
    )

    assert [coordinates.read(document["kafka"]).offset for document in batch.documents] == [0]
    details = [rejection.detail for rejection in batch.rejections]
    assert details == ["'source' is a required property", "'text' is a required property"]


@pytest.mark.parametrize(
    ("content", "complaint"),
    [(None, "cannot be read"), ("{not json", "is not JSON"), ('{"type": 12}', "is not a valid JSON Schema")],
)
def test_an_unusable_schema_file_is_a_config_error_naming_the_key(tmp_path, content, complaint):
    schema_file = tmp_path / "message.schema.json"
    if content is not None:
        schema_file.write_text(content)
    settings = config_module.from_mapping({"consumer": {"schema": str(schema_file)}})
    with pytest.raises(ConfigError, match=f"consumer.schema: {schema_file} {complaint}"):
        Pipeline.from_config(settings)


# --- to_document --------------------------------------------------------------------------------------


def test_to_document_has_the_stored_shape_with_every_other_field_under_data(pipeline):
    payload = {"id": "order-1", "text": "hi", "source": "web", "timestamp": "2024-06-01T14:00:00.250+02:00", "x": 1}
    document = only_document(pipeline, json_message(payload, partition=2, offset=41))
    assert document == {
        "_id": "order-1",
        "content": "hi",
        "timestamp": datetime(2024, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC),
        "source": "web",
        "ingested_at": NOW,
        "kafka": f"{TOPIC}:2:41",
        "data": {"x": 1},
    }


def test_a_message_without_id_gets_its_kafka_coordinates_as_id(pipeline):
    document = only_document(pipeline, json_message({"text": "hi"}, partition=1, offset=99))
    assert document["_id"] == f"~{TOPIC}:1:99"
    assert document["source"] is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"id": "order-1", "text": "hi"}, "order-1"),
        ({"text": "hi"}, f"~{TOPIC}:3:12"),
        ({"id": None}, f"~{TOPIC}:3:12"),
        ({"id": "has space"}, f"~{TOPIC}:3:12"),
        ({"id": {"$gt": ""}}, f"~{TOPIC}:3:12"),
        (["order-1"], f"~{TOPIC}:3:12"),
        (None, f"~{TOPIC}:3:12"),
        ({"id": f"~{TOPIC}:3:12", "text": "claims a reserved id"}, f"~{TOPIC}:3:12"),
        ({"id": f"{TOPIC}:3:12", "text": "an ordinary id"}, f"{TOPIC}:3:12"),
    ],
)
def test_document_id_is_the_message_id_when_valid_else_the_kafka_coordinates(payload, expected):
    """streamd verify looks every message up by this id, valid or not, so it never raises."""
    assert document_id(payload, TOPIC, 3, 12) == expected


def test_a_replayed_message_without_id_gets_the_same_id(pipeline):
    first = only_document(pipeline, json_message({"text": "hi"}, partition=1, offset=99))
    again = only_document(pipeline, json_message({"text": "hi"}, partition=1, offset=99))
    assert first["_id"] == again["_id"]


def test_a_message_without_timestamp_gets_the_kafka_timestamp(pipeline):
    document = only_document(pipeline, json_message({"text": "hi"}))
    assert document["timestamp"] == datetime(2024, 6, 1, 11, 59, tzinfo=UTC)


def test_a_message_without_any_timestamp_gets_the_ingestion_time(pipeline):
    document = only_document(pipeline, json_message({"text": "hi"}, timestamp_ms=None))
    assert document["timestamp"] == NOW


def test_timestamps_are_stored_in_utc_and_a_missing_offset_means_utc():
    assert parse_timestamp("2024-06-01T12:00:00") == datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert parse_timestamp("2024-06-01T12:00:00-05:00") == datetime(2024, 6, 1, 17, tzinfo=UTC)
    assert parse_timestamp("2024-06-01T12:00:00-05:00").utcoffset() == timedelta(0)


def test_to_document_can_be_called_on_its_own():
    document = to_document({"text": "hi"}, TOPIC, 0, 7, (TIMESTAMP_CREATE_TIME, KAFKA_TIME_MS), NOW)
    assert document["_id"] == f"~{TOPIC}:0:7" and document["ingested_at"] == NOW


# --- the batch ----------------------------------------------------------------------------------------


def test_a_batch_commits_one_past_the_highest_offset_of_each_partition_rejected_or_not(pipeline):
    messages = [
        json_message({"text": "a"}, partition=0, offset=10),
        json_message({"text": "b"}, partition=1, offset=3),
        json_message({"text": "c"}, partition=0, offset=11),
        kafka_message(b"not json", partition=0, offset=12),
        kafka_message(b"[]", partition=2, offset=0),
    ]
    batch = pipeline.batch(messages, ingested_at=NOW)
    assert batch.next_offsets == {(TOPIC, 0): 13, (TOPIC, 1): 4, (TOPIC, 2): 1}
    assert len(batch) == 5
    assert [document["content"] for document in batch.documents] == ["a", "b", "c"]
    assert [(r.partition, r.offset) for r in batch.rejections] == [(0, 12), (2, 0)]


def test_kafka_error_events_are_not_messages(pipeline):
    end_of_partition = Message(topic=TOPIC, partition=0, offset=5, error=KafkaError(KafkaError._PARTITION_EOF))
    batch = pipeline.batch([json_message({"text": "a"}, offset=4), end_of_partition], ingested_at=NOW)
    assert len(batch) == 1
    assert batch.next_offsets == {(TOPIC, 0): 5}
    assert [error.code() for error in batch.errors] == [KafkaError._PARTITION_EOF]
    assert batch.rejections == []


def test_the_store_can_refuse_single_documents_which_become_store_rejections(pipeline):
    messages = [json_message({"text": t}, partition=0, offset=n) for n, t in enumerate("abc")]
    batch = pipeline.batch(messages, ingested_at=NOW)

    [moved] = batch.refuse({1: "the store refused the document: too odd (code 121)"})

    assert [document["content"] for document in batch.documents] == ["a", "c"]
    assert [source.offset() for source in batch.sources] == [0, 2]
    assert (moved.stage, moved.reason, moved.offset) == ("store", "store_rejected", 1)
    assert moved.value == orjson.dumps({"text": "b"}) and "code 121" in moved.detail
    assert batch.rejections == [moved]
    assert batch.next_offsets == {(TOPIC, 0): 3}, "a refused document is still committed, once dead-lettered"


def test_dropping_revoked_partitions_forgets_their_documents_rejections_and_offsets(pipeline):
    messages = [
        json_message({"text": "a"}, partition=0, offset=4),
        json_message({"text": "b"}, partition=1, offset=9),
        kafka_message(b"nope", partition=1, offset=10),
        kafka_message(b"nope", partition=2, offset=0),
    ]
    batch = pipeline.batch(messages, ingested_at=NOW)

    assert batch.drop({(TOPIC, 1)}) == 2

    assert [document["content"] for document in batch.documents] == ["a"]
    assert [source.partition() for source in batch.sources] == [0]
    assert [(r.partition, r.offset) for r in batch.rejections] == [(2, 0)]
    assert batch.next_offsets == {(TOPIC, 0): 5, (TOPIC, 2): 1}


def test_an_empty_batch_commits_nothing(pipeline):
    batch = pipeline.batch([], ingested_at=NOW)
    assert not batch and batch.next_offsets == {}


# --- nothing a message holds may escape the batch -----------------------------------------------------


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_timestamp_that_leaves_the_calendar_once_in_utc_is_a_schema_rejection(pipeline, stamp):
    """Both crashed every consumer for good (OverflowError out of parse_timestamp)."""
    batch = pipeline.batch(
        [json_message({"text": "x", "timestamp": stamp}, offset=0), json_message({"text": "next"}, offset=1)],
        ingested_at=NOW,
    )
    [rejection] = batch.rejections
    assert (rejection.stage, rejection.reason, rejection.offset) == ("validate", "schema", 0)
    assert rejection.detail.startswith("timestamp: ")
    assert [document["content"] for document in batch.documents] == ["next"]
    with pytest.raises(ValueError, match="outside years 1 to 9999"):
        parse_timestamp(stamp)


@pytest.mark.parametrize(
    "milliseconds",
    [
        int((datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC) - EPOCH).total_seconds() * 1000) + 1,
        2**63 - 1,
        int((datetime(1, 1, 1, tzinfo=UTC) - EPOCH).total_seconds() * 1000) - 1,
        -(2**63),
    ],
)
def test_a_message_without_timestamp_whose_kafka_timestamp_fits_no_date_is_rejected(pipeline, milliseconds):
    """The year-10000 CreateTime crashed every consumer for good (ValueError out of to_document)."""
    batch = pipeline.batch(
        [json_message({"text": "x"}, offset=0, timestamp_ms=milliseconds), json_message({"text": "next"}, offset=1)],
        ingested_at=NOW,
    )
    [rejection] = batch.rejections
    assert (rejection.stage, rejection.reason, rejection.offset) == ("validate", "bad_timestamp", 0)
    assert f"CreateTime ({milliseconds} ms)" in rejection.detail and "outside years 1 to 9999" in rejection.detail
    assert [document["content"] for document in batch.documents] == ["next"]
    assert batch.next_offsets == {(TOPIC, 0): 2}


def test_the_kafka_timestamps_at_the_edges_of_the_calendar_are_stored_exactly():
    first = int((datetime(1, 1, 1, tzinfo=UTC) - EPOCH).total_seconds() * 1000)
    assert kafka_time(TIMESTAMP_CREATE_TIME, first) == datetime(1, 1, 1, tzinfo=UTC)
    last = datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    assert kafka_time(TIMESTAMP_CREATE_TIME, int((last - EPOCH).total_seconds() * 1000)) == last


class Broken(PayloadSchema):
    def validate(self, payload: dict) -> datetime | None:
        if payload["text"] == "boom":
            raise KeyError("surprise")
        return super().validate(payload)


def test_any_other_exception_of_a_stage_becomes_an_internal_rejection_and_the_batch_goes_on(caplog):
    pipeline = Pipeline(Broken(), max_message_bytes=1000)
    messages = [json_message({"text": text}, offset=n) for n, text in enumerate(["a", "boom", "b", "boom"])]

    batch = pipeline.batch(messages, ingested_at=NOW)

    assert [document["content"] for document in batch.documents] == ["a", "b"]
    assert [(r.stage, r.reason, r.offset) for r in batch.rejections] == [
        ("internal", "internal", 1),
        ("internal", "internal", 3),
    ]
    assert batch.rejections[0].detail == "KeyError: 'surprise'"
    assert batch.next_offsets == {(TOPIC, 0): 4}
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1, "one traceback per batch, not one per message"


# --- fuzz: parse -> validate -> to_document over anything ---------------------------------------------


class FakeMessage:
    """What Pipeline.batch reads of a confluent_kafka Message, with any timestamp type and value."""

    def __init__(self, value: bytes | None, offset: int, timestamp: tuple[int, int]) -> None:
        self._value, self._offset, self._timestamp = value, offset, timestamp

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._offset % 3

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
iso_timestamps = st.datetimes(timezones=st.none() | st.timezones()).map(
    lambda moment: moment.isoformat()
) | st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2024-06-01", "2024-06-01T25:00:00Z"])
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
# Mostly valid messages, so that the document path is exercised as much as the rejections.
good_payloads = st.fixed_dictionaries(
    {"text": st.text()}, optional={"id": ids, "source": st.text(), "timestamp": iso_timestamps}
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text() | json_values,
        "id": ids | json_values,
        "source": st.text() | json_values,
        "timestamp": iso_timestamps | json_values,
    },
).flatmap(
    lambda known: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(lambda extra: {**extra, **known})
)


def encoded(value: object) -> bytes:
    # The standard library writes integers of any size (orjson refuses over 64 bits).
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


values = (
    good_payloads.map(encoded)
    | payloads.map(encoded)
    | json_values.map(encoded)
    | st.binary(max_size=64)
    | st.none()
    | st.just(b"")
    | st.builds(lambda payload: encoded(payload) + b"\xff", payloads)
)
kafka_timestamps = st.tuples(
    st.sampled_from([TIMESTAMP_NOT_AVAILABLE, TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME]) | st.integers(-5, 5),
    # Within the calendar (years 1 to 9999) as often as anywhere in Kafka's int64.
    st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(values, kafka_timestamps), max_size=6))
def test_the_message_path_never_raises_and_accounts_for_every_message(cases):
    pipeline = Pipeline(PayloadSchema(), max_message_bytes=400)
    messages = [FakeMessage(value, offset, stamp) for offset, (value, stamp) in enumerate(cases)]

    batch = pipeline.batch(messages, ingested_at=NOW)

    outcomes = [source.offset() for source in batch.sources] + [r.offset for r in batch.rejections]
    assert sorted(outcomes) == list(range(len(messages))), "each message is one document or one rejection"
    assert len(batch.documents) == len(batch.sources)
    assert {r.reason for r in batch.rejections} <= REASONS - {"internal"}, "nothing here is a bug of ours"
    for document in batch.documents:
        bson.encode(document)
        moment = document["timestamp"]
        assert isinstance(moment, datetime) and moment.utcoffset() in (None, timedelta(0))
    for message in messages:
        key = (TOPIC, message.partition())
        assert batch.next_offsets[key] > message.offset()


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_the_fast_path_agrees_with_the_json_schema_on_any_payload(payload):
    assert fast_path_accepts(payload) == Draft202012Validator(BUILTIN_SCHEMA, format_checker=FORMATS).is_valid(payload)


# --- the whole message, field names and the id field -------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"$where": 1}, "data.$where"),
        ({"a.b": 1}, "data.a.b"),
        ({"a": {"$b": 1}}, "data.a.$b"),
        ({"a": [{"ok": 1}, {"x\u0000y": 2}]}, "data.a[1].x\u0000y"),
    ],
)
def test_a_field_name_the_store_refuses_anywhere_is_a_field_name_rejection_naming_its_path(pipeline, extra, path):
    rejection = only_rejection(pipeline, json_message({"text": "t", **extra}))
    assert (rejection.stage, rejection.reason) == ("validate", "field_name")
    assert rejection.detail.startswith(path)


def test_dots_and_dollars_inside_values_are_fine(pipeline):
    document = only_document(pipeline, json_message({"text": "$5.00", "price": "$5.00", "tags": ["a.b"]}))
    assert document["data"] == {"price": "$5.00", "tags": ["a.b"]}


def test_a_tutorial_message_has_no_data_field(pipeline):
    payload = {"id": "m-1", "text": "hi", "source": "web", "timestamp": "2024-06-01T12:00:00Z"}
    assert "data" not in only_document(pipeline, json_message(payload))


def test_another_id_field_holds_the_id_and_id_becomes_an_ordinary_field():
    pipeline = Pipeline(PayloadSchema(id_field="order_id"), max_message_bytes=1000, id_field="order_id")
    document = only_document(pipeline, json_message({"order_id": "o-1", "id": "not ~ an id", "text": "t"}))
    assert document["_id"] == "o-1"
    assert document["data"] == {"id": "not ~ an id"}
    rejection = only_rejection(pipeline, json_message({"order_id": "~bad", "text": "t"}))
    assert rejection.reason == "schema"


def test_without_an_id_field_every_message_is_stored_under_its_kafka_coordinates():
    pipeline = Pipeline(PayloadSchema(id_field=None), max_message_bytes=1000, id_field=None)
    document = only_document(pipeline, json_message({"id": "m-1", "text": "t"}, partition=2, offset=5))
    assert document["_id"] == f"~{TOPIC}:2:5"
    assert document["data"] == {"id": "m-1"}
