"""The stage chain: what each kind does to a message, where on each, failures as outcomes, and the sandbox."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd import config as config_module
from streamd.config import ConfigError
from streamd.pipeline import Pipeline
from streamd.stages import StageChain, StageSpecError

TOPIC = "readings"
KAFKA_TIME_MS = int(datetime(2024, 6, 1, 12, 0, tzinfo=UTC).timestamp() * 1000)


def chain(*stages: dict) -> StageChain:
    return StageChain.compile(list(stages))


def reading(**fields) -> dict:
    return {"text": "t", "source": "A", **fields}


def message(payload: object, offset: int = 0, key: bytes | None = b"k") -> Message:
    return Message(
        topic=TOPIC,
        partition=1,
        offset=offset,
        key=key,
        value=orjson.dumps(payload),
        timestamp=(TIMESTAMP_CREATE_TIME, KAFKA_TIME_MS),
    )


def pipeline_with(*stages: dict, id_field: str | None = "id") -> Pipeline:
    raw: dict = {"stages": list(stages), "consumer": {"id_field": id_field}}
    return Pipeline.from_config(config_module.from_mapping(raw))


# --- the kinds ------------------------------------------------------------------------------------


def test_a_filter_keeps_what_holds_and_drops_the_rest_naming_itself():
    hot = chain({"name": "hot", "kind": "filter", "where": "temperature > 30"})
    assert hot.apply(reading(temperature=35)).kept
    dropped = hot.apply(reading(temperature=20))
    assert (dropped.kept, dropped.dropped_by) == (False, "hot")


def test_a_filter_whose_condition_reads_a_missing_field_as_null_drops_the_message():
    outcome = chain({"name": "known", "kind": "filter", "where": "temperature"}).apply(reading())
    assert outcome.dropped_by == "known"


def test_a_where_that_is_neither_true_false_nor_null_fails_the_stage():
    outcome = chain({"name": "known", "kind": "filter", "where": "temperature"}).apply(reading(temperature=21.5))
    assert outcome.failed_at == "known"
    assert "21.5" in outcome.error


def test_set_computes_every_field_from_the_message_as_it_was_before_the_stage():
    stage = {"name": "f", "kind": "set", "fields": {"t": "t + 1", "u": "t * 10", "who": "lower(source)"}}
    outcome = chain(stage).apply(reading(t=2))
    assert outcome.payload == reading(t=3, u=20, who="a")


def test_rename_moves_fields_and_leaves_a_missing_one_alone():
    outcome = chain({"name": "r", "kind": "rename", "fields": {"sensor": "sensor_id", "gone": "never"}}).apply(
        reading(sensor="S1")
    )
    assert outcome.payload == reading(sensor_id="S1")


def test_drop_removes_fields():
    outcome = chain({"name": "d", "kind": "drop", "fields": ["debug", "absent"]}).apply(reading(debug=1, keep=2))
    assert outcome.payload == reading(keep=2)


def test_the_first_route_that_holds_picks_the_collection_and_later_routes_are_not_run():
    routes = chain(
        {"name": "hot", "kind": "route", "where": "temperature > 30", "collection": "alerts"},
        # Would fail on a missing temperature if it ran after the first route picked.
        {"name": "warm", "kind": "route", "where": "temperature + 0 > 20", "collection": "warm"},
    )
    assert routes.apply(reading(temperature=35)).collection == "alerts"
    assert routes.apply(reading(temperature=25)).collection == "warm"
    assert routes.apply(reading(temperature=5)).collection is None


@pytest.mark.parametrize(
    ("stage", "changed"),
    [
        ({"name": "s", "kind": "set", "fields": {"x": "1"}}, reading(y=0, x=1)),
        ({"name": "s", "kind": "rename", "fields": {"y": "z"}}, reading(z=0)),
        ({"name": "s", "kind": "drop", "fields": ["y"]}, reading()),
    ],
)
def test_a_where_on_set_rename_and_drop_applies_them_only_when_it_holds(stage, changed):
    guarded = chain({**stage, "where": "source == 'A'"})
    assert guarded.apply(reading(y=0)).payload == changed
    assert guarded.apply(reading(y=0, source="B")).payload == reading(y=0, source="B")


def test_expressions_read_the_whole_message_kafka_coordinates_and_mapping_keys_as_attributes():
    stage = {
        "name": "s",
        "kind": "set",
        "fields": {
            "odd": 'message["sensor-id"]',
            "where_from": "kafka.topic + ':' + str(kafka.offset)",
            "city": "place.city",
            "nothing": "place.country",
        },
    }
    context = {"topic": TOPIC, "offset": 7}
    outcome = chain(stage).apply(reading(**{"sensor-id": "S9", "place": {"city": "Lyon"}}), lambda: context)
    assert outcome.payload["odd"] == "S9"
    assert outcome.payload["where_from"] == "readings:7"
    assert (outcome.payload["city"], outcome.payload["nothing"]) == ("Lyon", None)


def test_the_functions_and_string_methods():
    fields = {
        "a": "upper(strip(' x '))",
        "b": "'a-b'.split('-')",
        "c": "'abc'.startswith('a') and 'abc'.endswith('c')",
        "d": "format_time(parse_time('01/02/2024 10:00', '%d/%m/%Y %H:%M'), '%Y-%m-%d')",
        "e": "round(abs(-2.345), 1) + max(1, 2) + min(3, 4) + len('ab') + int('2') + float('0.5')",
        "f": "'a.b'.replace('.', '_')",
    }
    payload = chain({"name": "s", "kind": "set", "fields": fields}).apply(reading()).payload
    assert payload["a"] == "X"
    assert payload["b"] == ["a", "b"]
    assert payload["c"] is True
    assert payload["d"] == "2024-02-01"
    assert payload["e"] == pytest.approx(2.3 + 2 + 3 + 2 + 2 + 0.5)
    assert payload["f"] == "a_b"


# --- failures at run time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "payload"),
    [
        ("temperature * 9 / 5", reading(temperature="warm")),  # a type error
        ("9 ** 100000", reading()),  # a power too large
        ("'a' * 10000000", reading()),  # a string too long
        ("text.replace('', 'long' * 20000)", reading(text="x" * 100)),  # replace that explodes
        ("int('nope')", reading()),
        ("parse_time('yesterday')", reading()),
        ("2 ** 70", reading()),  # an integer the store cannot hold
        ("{'$where': 1}", reading()),  # a field name the store refuses
        ("text.nothing", reading()),  # no such attribute on a string
        ("'\\ud800'", reading()),  # a lone surrogate: not UTF-8, so not storable
    ],
)
def test_a_stage_that_cannot_be_computed_for_one_message_is_a_failure_not_an_exception(expression, payload):
    outcome = chain({"name": "calc", "kind": "set", "fields": {"x": expression}}).apply(payload)
    assert outcome.failed_at == "calc"
    assert outcome.error


@pytest.mark.parametrize(
    "fields",
    [{"text": "1"}, {"source": "3"}, {"timestamp": "'yesterday'"}, {"timestamp": "5"}],
)
def test_a_stage_that_would_make_a_builtin_field_invalid_fails(fields):
    assert chain({"name": "b", "kind": "set", "fields": fields}).apply(reading()).failed_at == "b"


def test_renaming_text_away_fails_the_stage():
    assert chain({"name": "b", "kind": "rename", "fields": {"text": "body"}}).apply(reading()).failed_at == "b"


def test_a_stage_may_set_the_timestamp_to_a_parsed_time():
    stage = {"name": "t", "kind": "set", "fields": {"timestamp": "parse_time(when, '%d/%m/%Y %H:%M')"}}
    outcome = chain(stage).apply(reading(when="01/02/2024 10:00"))
    assert outcome.payload["timestamp"] == datetime(2024, 2, 1, 10, 0, tzinfo=UTC)


def test_the_trace_says_what_each_stage_did():
    steps: list = []
    chain(
        {"name": "keep", "kind": "filter", "where": "True"},
        {"name": "calc", "kind": "set", "fields": {"x": "1"}},
        {"name": "route", "kind": "route", "where": "x == 1", "collection": "ones"},
    ).apply(reading(), trace=steps)
    assert [(step["stage"], step["action"]) for step in steps] == [
        ("keep", "kept"),
        ("calc", "set"),
        ("route", "routed"),
    ]
    assert steps[1]["fields"] == {"x": 1}


# --- compile time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "complaint"),
    [
        ("x.__class__", "attributes starting with _"),
        ("__import__('os')", "unknown function __import__"),
        ("open('/etc/passwd')", "unknown function open"),
        ("eval('1')", "unknown function eval"),
        ("lambda: 1", "lambda"),
        ("(x := 1)", "assignment"),
        ("x.format(1)", "unknown method format"),
        ("f'{x:>999999999}'", "format specifications"),
        ("round(x, ndigits=1)", "positional arguments only"),
        ("x ==", "column"),
        ("x[0](1)", "only named functions"),
    ],
)
def test_a_bad_expression_is_a_config_error_naming_the_key(where, complaint):
    raw = {
        "stages": [{"name": "a", "kind": "filter", "where": "True"}, {"name": "b", "kind": "filter", "where": where}]
    }
    with pytest.raises(ConfigError, match=r"stages\[1\]\.where: ") as refused:
        config_module.from_mapping(raw)
    assert complaint in str(refused.value)


def test_a_bad_computed_value_names_its_field():
    raw = {"stages": [{"name": "s", "kind": "set", "fields": {"f": "nope(1)"}}]}
    with pytest.raises(ConfigError, match=r"stages\[0\]\.fields\.f: unknown function nope"):
        config_module.from_mapping(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_no_expression_text_makes_the_loader_fail_with_anything_but_a_config_error(text):
    try:
        config_module.from_mapping({"stages": [{"name": "any", "kind": "filter", "where": text}]})
    except ConfigError:
        pass


EXPRESSIONS = st.sampled_from(
    [
        "temperature > 30",
        "temperature * 9 / 5 + 32",
        "lower(source)",
        "len(text) > 3",
        "parse_time(when)",
        "str(temperature) + text",
        "place.city",
        "message['x']",
        "int(text)",
        "not flag",
        "tags[0]",
        "text.split(',')",
    ]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(EXPRESSIONS, min_size=1, max_size=4),
    st.dictionaries(
        st.sampled_from(["temperature", "source", "text", "when", "place", "x", "flag", "tags", "other"]), JSON
    ),
)
def test_no_message_makes_a_compiled_chain_raise(expressions, payload):
    stages = [{"name": f"f{index}", "kind": "set", "fields": {"v": text}} for index, text in enumerate(expressions)]
    stages.append({"name": "filter", "kind": "filter", "where": expressions[0]})
    stages.append({"name": "route", "kind": "route", "where": expressions[-1], "collection": "other"})
    outcome = StageChain.compile(stages).apply(dict(payload))
    assert outcome.kept or outcome.dropped_by == "filter" or outcome.failed_at is not None


def test_compiling_refuses_what_the_spec_refuses():
    with pytest.raises(StageSpecError, match=r"stages\[0\]\.kind"):
        StageChain.compile([{"name": "a", "kind": "explode"}])


# --- in the pipeline ----------------------------------------------------------------------------------


def test_the_pipeline_filters_routes_and_dead_letters_stage_failures_in_one_batch():
    pipeline = pipeline_with(
        {"name": "readings", "kind": "filter", "where": "source != 'noise'"},
        {"name": "fahrenheit", "kind": "set", "fields": {"f": "temperature * 9 / 5 + 32"}},
        {"name": "hot", "kind": "route", "where": "f > 86", "collection": "alerts"},
    )
    batch = pipeline.batch(
        [
            message(reading(id="hot-1", temperature=35), offset=0),
            message(reading(id="noise-1", temperature=1, source="noise"), offset=1),
            message(reading(id="bad-1", temperature="warm"), offset=2),
            message(reading(id="cool-1", temperature=20), offset=3),
        ]
    )
    assert [document["_id"] for document in batch.documents] == ["hot-1", "cool-1"]
    assert batch.targets == ["alerts", None]
    assert batch.documents[0]["data"] == {"temperature": 35, "f": 95.0}
    assert batch.filtered == {"readings": 1}
    [failure] = batch.rejections
    assert (failure.stage, failure.reason, failure.stage_name, failure.offset) == ("stage", "stage", "fahrenheit", 2)
    assert batch.next_offsets == {(TOPIC, 1): 4}  # the filtered and the failed message are committed too
    assert len(batch) == 4


def test_the_id_is_taken_before_the_stages_from_the_configured_field():
    pipeline = pipeline_with({"name": "r", "kind": "rename", "fields": {"id": "old_id"}}, id_field="order_id")
    [document] = pipeline.batch([message(reading(order_id="o-1", id="x"))]).documents
    assert document["_id"] == "o-1"
    assert document["data"] == {"old_id": "x"}


def test_a_stage_set_timestamp_is_the_stored_timestamp():
    pipeline = pipeline_with({"name": "t", "kind": "set", "fields": {"timestamp": "parse_time(when, '%Y/%m/%d')"}})
    [document] = pipeline.batch([message(reading(when="2024/02/01"))]).documents
    assert document["timestamp"] == datetime(2024, 2, 1, tzinfo=UTC)


def test_the_kafka_name_carries_the_key_and_the_kafka_timestamp():
    pipeline = pipeline_with({"name": "k", "kind": "set", "fields": {"k": "kafka.key", "at": "kafka.timestamp"}})
    [document] = pipeline.batch([message(reading(), key=b"sensor-7")]).documents
    assert document["data"] == {"k": "sensor-7", "at": datetime(2024, 6, 1, 12, 0, tzinfo=UTC)}
