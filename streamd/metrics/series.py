"""Every series a child records, and the small wrappers that let the children count as they always have.

The producer's `ProduceReport` and the consumer's `ConsumerCounters` keep their plain numbers (each
process logs them when it stops); a `Tally` field adds every increase to a Prometheus counter as well,
so `counters.stored += n` is all the instrumentation the consumer's hot path needs.

Series computed when /metrics is scraped (consumer lag, child states) are not here: they are read from
Kafka and the supervisor at that moment, see streamd/api/metrics.py.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tallies
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# --- producer ---------------------------------------------------------------------------------------

PRODUCED = Counter("streamd_producer_messages_sent", "Messages handed to librdkafka for the topic.")
ACKNOWLEDGED = Counter(
    "streamd_producer_messages_acknowledged", "Messages the brokers acknowledged (acks=all, so every in-sync replica)."
)
PRODUCE_FAILED = Counter("streamd_producer_messages_failed", "Messages whose delivery failed for good.")

# --- consumer ---------------------------------------------------------------------------------------

CONSUMED = Counter("streamd_consumer_messages_consumed", "Messages fetched from Kafka by the consumer group.")
STORED = Counter("streamd_consumer_messages_stored", "Messages newly written to the store.")
DUPLICATES = Counter(
    "streamd_consumer_messages_duplicate", "Messages the store already had (a replay after a crash or rebalance)."
)
ID_CONFLICTS = Counter(
    "streamd_consumer_id_conflicts",
    "Duplicates that are not a replay: the id is stored from other Kafka coordinates with other content.",
)
DUPLICATES_UNCHECKED = Counter(
    "streamd_consumer_duplicates_unchecked",
    "Duplicates with a message id not looked up for a conflict: over the consumer's time budget (verify checks all).",
)
OFFSET_RESETS = Counter(
    "streamd_consumer_offset_resets",
    "Times a partition's offset was outside its log (topic recreated, or retention ahead of the group) and the "
    "consumer restarted it from the earliest offset.",
    ["topic", "partition"],
)
REJECTED = Counter(
    "streamd_consumer_messages_rejected",
    "Messages the consumer cannot store (pipeline.Rejection), by reason; they go to the dead-letter topic.",
    ["reason"],
)
DEAD_LETTERED = Counter(
    "streamd_consumer_messages_dead_lettered",
    "Rejected messages the dead-letter topic acknowledged, by reason.",
    ["reason"],
)

BATCH_SIZE = Histogram(
    "streamd_consumer_batch_size_messages",
    "Messages per consumed batch written to the store.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 50_000),
)
STORE_WRITE_SECONDS = Histogram(
    "streamd_store_write_duration_seconds",
    "Duration of one insert_many of a batch, failed attempts included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
END_TO_END_SECONDS = Histogram(
    "streamd_end_to_end_latency_seconds",
    "From a message's timestamp to the moment it was stored.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)

# --- API --------------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "streamd_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "streamd_http_request_duration_seconds",
    "Time to answer a request (for /stream: until the stream starts), by route template and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# A live gauge: a worker's open streams vanish with the worker (the master calls metrics.forget).
OPEN_STREAMS = Gauge("streamd_http_streams_open", "Live /stream responses being served.", multiprocess_mode="livesum")


class Tally:
    """A whole-number attribute whose increases are also counted into a Prometheus counter.

    Used as a dataclass field default: the dataclass takes its default (0) from `__get__` on the class
    and routes every assignment, `__init__`'s included, through `__set__`.
    """

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.attribute = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attribute = f"_{name}_tally"

    def __get__(self, instance: object, owner: type | None = None) -> int:
        if instance is None:
            return 0
        return instance.__dict__.get(self.attribute, 0)

    def __set__(self, instance: object, value: int) -> None:
        increase = value - instance.__dict__.get(self.attribute, 0)
        # A Prometheus counter only goes up; setting a lower value resets the number, not the series.
        if increase > 0:
            self.counter.inc(increase)
        instance.__dict__[self.attribute] = value


class LabelTally(Tallies):
    """A collections.Counter (label -> count) whose increases also count into a one-label Prometheus counter.

    Used as a dataclass field's default_factory: `field(default_factory=LabelTally.of(REJECTED))`.
    """

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    @classmethod
    def of(cls, counter: Counter) -> Callable[[], LabelTally]:
        return lambda: cls(counter)

    def __setitem__(self, label: str, value: int) -> None:
        # Counter.update() and `tallies[x] += n` both end here.
        increase = value - self.get(label, 0)
        if increase > 0:
            self.counter.labels(label).inc(increase)
        super().__setitem__(label, value)

    def __reduce__(self) -> Any:
        # A copy is a plain Counter: rebuilding a LabelTally item by item would count everything again.
        return Tallies, (dict(self),)


def observe_all(histogram: Histogram, amounts: Iterable[float]) -> None:
    """histogram.observe() for each amount, with one file write per bucket touched instead of one per amount.

    A batch of 500 messages mostly lands in one or two buckets; observing them one by one would cost
    about a millisecond of locked memory-map writes per batch on the consumer's hot path. This relies on
    the layout of prometheus_client's Histogram (one value per bucket, and a sum); the tests compare it
    with observe() so an upgrade that changes the layout fails loudly.
    """
    bounds = histogram._upper_bounds
    per_bucket: dict[int, int] = {}
    total = 0.0
    for amount in amounts:
        index = bisect.bisect_left(bounds, amount)
        per_bucket[index] = per_bucket.get(index, 0) + 1
        total += amount
    if not per_bucket:
        return
    histogram._sum.inc(total)
    for index, count in per_bucket.items():
        histogram._buckets[index].inc(count)


def stored_batch(messages: int, documents: list[dict], duplicates: int, now: datetime | None = None) -> None:
    """Record one batch the store accepted: its size, and each new document's time from timestamp to stored."""
    BATCH_SIZE.observe(messages)
    if duplicates:
        # insert_many does not say which documents were the duplicates, and a replayed message's age
        # measures the outage that caused the replay, not the pipeline's latency: leave the batch out.
        return
    stored_at = (now or datetime.now(UTC)).timestamp()
    # A producer whose clock runs ahead would give negative ages; they count as immediate.
    observe_all(END_TO_END_SECONDS, (max(stored_at - doc["timestamp"].timestamp(), 0.0) for doc in documents))
