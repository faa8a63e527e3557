"""The `kafka` field of a stored document: one string, read back in either the new or the older form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamd.coordinates import Coordinates, read, stored

TOPICS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=249)


def test_a_message_is_stored_with_its_coordinates_as_one_string():
    assert stored("data-stream", 2, 1041) == "data-stream:2:1041"


@given(TOPICS, st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1))
def test_what_is_stored_reads_back_as_the_same_coordinates(topic, partition, offset):
    assert read(stored(topic, partition, offset)) == Coordinates(topic, partition, offset)


def test_documents_stored_before_with_a_subdocument_still_read():
    assert read({"topic": "data-stream", "partition": 0, "offset": 7}) == Coordinates("data-stream", 0, 7)


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        "",
        "data-stream",
        "data-stream:0",
        ":0:7",
        "data-stream:x:7",
        "data-stream:0:-7",
        {"topic": "t"},
        {"topic": "t", "partition": "0", "offset": 7},
    ],
)
def test_anything_else_is_no_coordinates(value):
    """What another program wrote in `kafka` is not taken for a place in a topic."""
    assert read(value) is None


def test_coordinates_print_as_the_logs_and_verify_name_them():
    assert str(Coordinates("data-stream", 2, 1041)) == "data-stream[2]@1041"
