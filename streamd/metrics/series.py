"""Every series a child records, and the two helpers the consumer's hot path records them with.

The producer's `ProduceReport` and the consumer's `ConsumerCounters` keep their plain numbers (each
process logs them when it stops); their counting methods increment the series here beside them, so a
reader sees every Prometheus update where it happens.

Series computed when /metrics is scraped (consumer lag, child states) are not here: they are read from
Kafka and the supervisor at that moment, see streamd/api/metrics.py.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tallies
from collections.abc import Iterable
from datetime import UTC, datetime

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

STAGE_FILTERED = Counter(
    "streamd_stage_messages_filtered",
    "Messages a filter stage dropped (committed, neither stored nor dead-lettered), by stage name.",
    ["stage"],
)
STAGE_FAILED = Counter(
    "streamd_stage_messages_failed",
    "Messages a stage failed on (dead-lettered with reason stage), by stage name.",
    ["stage"],
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

# --- analyzer ---------------------------------------------------------------------------------------

ANALYZER_ABSORBED = Counter(
    "streamd_analyzer_messages_absorbed",
    "Messages the analyzer took into their windows, on time in every window length.",
)
ANALYZER_LATE = Counter(
    "streamd_analyzer_messages_late",
    "Messages past the allowed lateness of at least one of their windows, counted in its `late`.",
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


def count_by_label(counter: Counter, labels: Iterable[str]) -> Tallies[str]:
    """Count each label into a one-label Prometheus counter (one increment per label); the counts by label."""
    counts = Tallies(labels)
    for label, count in counts.items():
        counter.labels(label).inc(count)
    return counts


def stored_batch(messages: int, documents: list[dict], duplicates: int, now: datetime | None = None) -> None:
    """Record one batch the store accepted: its size, and each new document's time from timestamp to stored."""
    BATCH_SIZE.observe(messages)
    if duplicates:
        # insert_many does not say which documents were the duplicates, and a replayed message's age
        # measures the outage that caused the replay, not the pipeline's latency: leave the batch out.
        return
    stored_at = (now or datetime.now(UTC)).timestamp()
    # A producer whose clock runs ahead would give negative ages; they count as immediate.
    observe_all(END_TO_END_SECONDS, [max(stored_at - document["timestamp"].timestamp(), 0.0) for document in documents])


def observe_all(histogram: Histogram, values: list[float]) -> None:
    """histogram.observe(value) for every value, with one write per bucket touched instead of one per value.

    In multiprocess mode every observe() is two locked memory-map writes, about 2.1 µs: per message, that was
    the consumer's largest cost after parsing (1 ms per batch of 500). Adding the batch up first goes through
    prometheus-client's value objects, which are not public: tests/test_metrics.py holds the result to what
    observe() gives, so an upgrade that changes them fails there, not in production.
    """
    if not values:
        return
    tallies = Tallies(bisect_left(histogram._upper_bounds, value) for value in values)  # observe(): value <= bound
    histogram._sum.inc(sum(values))
    for index, count in tallies.items():
        histogram._buckets[index].inc(count)
