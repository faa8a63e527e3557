"""Messages a user writes in a file for `streamd produce --file`: NDJSON or a JSON array, checked whole."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamd.message_file import MessageFileError, read_messages

READING = {"id": "r-1", "text": "reading", "temperature": 21.5, "sensor": "a"}


def test_one_json_object_per_line_in_file_order_blank_lines_ignored(tmp_path):
    path = tmp_path / "readings.ndjson"
    path.write_text('{"text": "first", "n": 1}\n\n  \n{"text": "second", "nested": {"a": [1, 2]}}\n')
    assert read_messages(str(path)) == [{"text": "first", "n": 1}, {"text": "second", "nested": {"a": [1, 2]}}]


def test_windows_line_endings_and_line_separators_inside_strings(tmp_path):
    path = tmp_path / "readings.ndjson"
    path.write_bytes('{"text": "a\u2028b\x85c"}\r\n{"text": "d"}\r\n'.encode())
    assert read_messages(str(path)) == [{"text": "a\u2028b\x85c"}, {"text": "d"}]


def test_a_json_array_of_objects(tmp_path):
    path = tmp_path / "readings.json"
    path.write_text(f'  [\n {orjson.dumps(READING).decode()},\n {{"text": "b"}}\n]\n')
    assert read_messages(str(path)) == [READING, {"text": "b"}]


def test_dash_reads_standard_input(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(orjson.dumps(READING) + b"\n")))
    assert read_messages("-") == [READING]


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"text": "ok"}\n{"text": "ok"}\n{"text": \n', "line 3: not JSON"),
        ('{"text": "ok"}\n\n[{"text": "in a list"}]\n', "line 3: a JSON array, not a JSON object"),
        ('{"text": "ok"}\n"just text"\n', "line 2: a JSON string, not a JSON object"),
        ('{"text": "ok"}\n42\n', "line 2: a JSON number"),
        ("null\n", "line 1: JSON null"),
        ('{"text": "ok"} {"text": "two on one line"}\n', "line 1: not JSON"),
        ('[{"text": "a"}, 7]', "item 2 of the array: a JSON number"),
        ('[{"text": "a"},\n {"text": oops}]', "line 2: not a JSON array"),
        ("", "holds no messages"),
        ("\n  \n", "holds no messages"),
        ("[]", "holds no messages"),
    ],
)
def test_a_bad_file_is_refused_whole_naming_the_line(tmp_path, content, named):
    path = tmp_path / "messages.ndjson"
    path.write_text(content)
    with pytest.raises(MessageFileError) as error:
        read_messages(str(path))
    assert named in str(error.value)
    assert str(path) in str(error.value)


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = tmp_path / "latin1.ndjson"
    path.write_bytes('{"text": "ok"}\n{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(MessageFileError, match="line 2: not UTF-8"):
        read_messages(str(path))


def test_a_missing_file_is_a_sentence(tmp_path):
    with pytest.raises(MessageFileError, match="cannot read .*missing.ndjson"):
        read_messages(str(tmp_path / "missing.ndjson"))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
messages = st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=messages, as_array=st.booleans())
def test_whatever_json_objects_are_written_they_are_read_back_equal(tmp_path, messages, as_array):
    path = tmp_path / "messages.json"
    if as_array:
        path.write_bytes(orjson.dumps(messages, option=orjson.OPT_INDENT_2))
    else:
        path.write_bytes(b"\n".join(orjson.dumps(message) for message in messages) + b"\n")
    assert read_messages(str(path)) == messages


def test_the_worked_examples_readings_are_a_valid_file():
    readings = read_messages(str(Path(__file__).resolve().parent.parent / "docs" / "examples" / "readings.ndjson"))
    assert [reading["id"] for reading in readings] == ["reading-1", "reading-2", "reading-3", "reading-4"]
    assert all("temperature" in reading and "sensor" in reading for reading in readings)
