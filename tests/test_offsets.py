"""Where a partition restarts when its offset is outside its log, and how that is told (streamd.offsets)."""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING

from streamd.offsets import Restart


def test_an_offset_beyond_the_end_is_told_as_a_recreated_topic_and_restarts_at_the_earliest_offset():
    restart = Restart("orders", 2, position=20, start=0, end=5)
    assert restart.out_of_range
    assert "orders[2]" in str(restart) and "20" in str(restart) and "recreated" in str(restart)
    assert (restart.assignment.partition, restart.assignment.offset) == (2, 0)


def test_an_offset_before_the_start_is_told_as_retention():
    assert "retention" in str(Restart("orders", 0, position=3, start=10, end=50))


def test_a_partition_never_committed_restarts_quietly_and_without_watermarks_at_the_logical_beginning():
    assert not Restart("orders", 0, position=None, start=0, end=5).out_of_range
    assert Restart("orders", 0, position=7, start=None, end=None).assignment.offset == OFFSET_BEGINNING
