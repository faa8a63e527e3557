"""The analyzer's windows (streamd.analyzer.windows): bounds, groups, lateness, and exactness under any batching.

The property at the heart of the analyzer: cutting a partition's messages into batches in any way, and
crashing after writing any part of a batch's windows (then replaying from the last commit, with the
stream time committed beside it), gives the same window documents as one clean pass.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from streamd import config as config_module
from streamd import coordinates
from streamd.analyzer.windows import (
    WindowSpec,
    apply,
    by_window,
    contributions,
    field_value,
    fold,
    micros,
    window_id,
)

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def spec(lateness: float = 30, windows=("1m", "1h"), fields=("v",)) -> WindowSpec:
    settings_ = config_module.from_mapping(
        {"analytics": {"windows": list(windows), "fields": list(fields), "allowed_lateness": lateness}}, label="test"
    )
    return WindowSpec.from_config(settings_.analytics)


def document(partition: int, offset: int, seconds: float, source: str = "A", value: object = 1) -> dict:
    data = {} if value is None else {"v": value}
    return {
        "_id": f"{partition}-{offset}",
        "content": "x",
        "timestamp": BASE + timedelta(seconds=seconds),
        "source": source,
        "kafka": coordinates.stored("t", partition, offset),
        **({"data": data} if data else {}),
    }


def test_a_message_counts_in_the_epoch_aligned_window_of_its_event_time_for_each_length():
    found = contributions([document(0, 0, 75)], spec(), {})
    assert {(c.key.window, c.key.start, c.key.end) for c in found} == {
        ("1m", BASE + timedelta(minutes=1), BASE + timedelta(minutes=2)),
        ("1h", BASE, BASE + timedelta(hours=1)),
    }
    assert all(c.key.group == {"source": "A"} and not c.late for c in found)


def test_fields_other_than_content_source_and_timestamp_are_read_from_data():
    stored = document(0, 0, 0, value=21.5)
    assert field_value(stored, "v") == 21.5
    assert field_value(stored, "source") == "A"
    assert field_value({"source": "A"}, "v") is None  # no `data`: the tutorial's messages


def test_the_same_group_names_the_same_window_document_whatever_the_key_order():
    assert window_id("1m", BASE, {"a": 1, "b": "x"}) == window_id("1m", BASE, {"b": "x", "a": 1})
    assert window_id("1m", BASE, {"source": "A"}) != window_id("1m", BASE, {"source": "B"})
    assert window_id("1m", BASE, {"source": "A"}).startswith("1m:2024-05-01T12:00:00Z:")


def test_a_message_is_late_once_its_partitions_stream_time_passed_its_window_end_plus_the_lateness():
    found = contributions(
        [document(0, 0, 200), document(0, 1, 50), document(0, 2, 119), document(0, 3, 150), document(1, 0, 10)],
        spec(lateness=30, windows=("1m",)),
        {},
    )
    late = {(c.partition, c.offset): c.late for c in found}
    # Partition 0's stream time is 200 s from its first message on.
    assert late[(0, 1)] is True  # [0, 60): 60 + 30 <= 200
    assert late[(0, 2)] is True  # [60, 120): 120 + 30 <= 200
    assert late[(0, 3)] is False  # [120, 180): 180 + 30 > 200
    assert late[(1, 0)] is False  # another partition: its own stream time (10 s)


def test_late_messages_count_in_late_only_and_non_numeric_values_are_not_aggregated():
    found = contributions(
        [document(0, 0, 200, value=5), document(0, 1, 10, value=7), document(0, 2, 201, value="hot")],
        spec(lateness=0, windows=("1m",)),
        {},
    )
    documents = {}
    for key, part in by_window(found).items():
        documents[key] = apply(None, fold(part[0].key, part, {}))
    newest = documents[window_id("1m", BASE + timedelta(minutes=3), {"source": "A"})]
    assert (newest["count"], newest["fields"]["v"]) == (2, {"count": 1, "sum": 5, "min": 5, "max": 5})
    oldest = documents[window_id("1m", BASE, {"source": "A"})]
    assert (oldest["count"], oldest["late"], oldest["fields"]) == (0, 1, {})


def test_fold_leaves_out_what_the_document_has_absorbed():
    found = contributions([document(0, o, 1) for o in range(5)], spec(windows=("1m",)), {})
    delta = fold(found[0].key, found, {0: 2})
    assert (delta.count, delta.absorbed) == (2, {0: 4})
    assert fold(found[0].key, found, {0: 4}) is None


# --- exactly once in effect, under any batching and any crash --------------------------------------------


def oracle(partitions: list[list[tuple[float, str, int]]], lateness: int, window: int) -> Counter:
    """Written independently of the module: (start, source, on time or late) -> messages."""
    counts: Counter = Counter()
    for messages in partitions:
        stream_time = None
        for seconds, source, _ in messages:
            stream_time = seconds if stream_time is None else max(stream_time, seconds)
            start = seconds // window * window
            counts[start, source, start + window + lateness <= stream_time] += 1
    return counts


class Run:
    """A simulated analyzer and its store: consume in batches, write windows, commit; crash and replay."""

    def __init__(self, documents: list[list[dict]], window_spec: WindowSpec) -> None:
        self.documents = documents
        self.spec = window_spec
        self.store: dict[str, dict] = {}
        self.committed: dict[int, tuple[int, int | None]] = {p: (0, None) for p in range(len(documents))}
        self.restart()

    def restart(self) -> None:
        self.position = {p: offset for p, (offset, _) in self.committed.items()}
        self.times = {p: t for p, (_, t) in self.committed.items() if t is not None}

    def batch(self, picks: list[int]) -> list[dict]:
        taken = []
        for partition in picks:
            if self.position[partition] < len(self.documents[partition]):
                taken.append(self.documents[partition][self.position[partition]])
                self.position[partition] += 1
        return taken

    def step(self, picks: list[int], crash_after: int | None) -> None:
        taken = self.batch(picks)
        if not taken:
            return
        times = dict(self.times)
        pending = by_window(contributions(taken, self.spec, times))
        for written, (key, part) in enumerate(pending.items()):
            if crash_after is not None and written >= crash_after:
                self.restart()  # killed: nothing committed, the next member replays from the last commit
                return
            delta = fold(part[0].key, part, {int(p): o for p, o in self.store.get(key, {}).get("absorbed", {}).items()})
            if delta is not None:
                self.store[key] = apply(self.store.get(key), delta)
        self.times = times
        for partition in {coordinates.read(d["kafka"]).partition for d in taken}:
            self.committed[partition] = (self.position[partition], times.get(partition))

    def done(self) -> bool:
        return all(self.position[p] == len(messages) for p, messages in enumerate(self.documents))


partition_messages = st.lists(
    st.tuples(st.integers(0, 600), st.sampled_from(["A", "B"]), st.integers(-50, 50)), max_size=25
)


@settings(max_examples=300, deadline=None)
@given(
    partitions=st.lists(partition_messages, min_size=1, max_size=3),
    steps=st.lists(
        st.tuples(st.lists(st.integers(0, 2), min_size=1, max_size=12), st.none() | st.integers(0, 4)), max_size=40
    ),
    lateness=st.sampled_from([0, 30, 120]),
)
def test_any_batching_and_any_crash_give_the_windows_of_one_clean_pass(partitions, steps, lateness):
    window_spec = spec(lateness=lateness, windows=("1m", "5m"))
    documents = [
        [document(p, o, seconds, source, value) for o, (seconds, source, value) in enumerate(messages)]
        for p, messages in enumerate(partitions)
    ]
    clean = Run(documents, window_spec)
    while not clean.done():
        clean.step(list(range(len(documents))) * 30, None)
    chopped = Run(documents, window_spec)
    for picks, crash_after in steps:
        chopped.step([p % len(documents) for p in picks], crash_after)
    while not chopped.done():
        chopped.step([0, 1, 2][: len(documents)], None)

    assert chopped.store == clean.store
    for window, length in (("1m", 60), ("5m", 300)):
        expected = oracle(partitions, lateness, length)
        got: Counter = Counter()
        for stored in clean.store.values():
            if stored["window"] == window:
                start = int((stored["start"] - BASE).total_seconds())
                got[start, stored["group"]["source"], False] += stored["count"]
                got[start, stored["group"]["source"], True] += stored["late"]
        assert +got == expected
        sums = {
            (int((d["start"] - BASE).total_seconds()), d["group"]["source"]): d["fields"].get("v", {}).get("sum", 0)
            for d in clean.store.values()
            if d["window"] == window
        }
        assert sum(sums.values()) == sum(
            value
            for messages in partitions
            for index, (seconds, source, value) in enumerate(messages)
            if not _late(messages, index, lateness, length)
        )


def _late(messages: list[tuple[int, str, int]], index: int, lateness: int, length: int) -> bool:
    seconds = messages[index][0]
    stream_time = max(m[0] for m in messages[: index + 1])
    return seconds // length * length + length + lateness <= stream_time


def test_event_times_are_exact_microseconds():
    moment = datetime(2024, 5, 1, 12, 0, 0, 999_999, tzinfo=UTC)
    assert micros(moment) % 1_000_000 == 999_999
