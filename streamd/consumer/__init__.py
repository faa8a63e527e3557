"""The consumer child: Kafka in, MongoDB at rest, and an offset committed only once its message is safe.

Each batch goes fetch -> store -> dead-letter -> commit. "Safe" means stored, or acknowledged by the
dead-letter topic; a committed offset therefore never covers a message that is in neither place.
Writes are idempotent (the message id is the `_id`), which is what lets this package be simple about
failure: whenever in doubt it does not commit, and the replay that follows only produces duplicates
the store skips.

While the store or the dead-letter topic is unavailable the consumer keeps its batch, pauses its
partitions and keeps polling: it stays a member of the group (max.poll.interval.ms) and serves
rebalances without fetching more, and resumes by itself once the write goes through.

Every consumer process joins the same group with cooperative-sticky assignment. When partitions are
revoked, the offsets of finished batches are committed first (so the new owner starts after them), and
whatever of an unfinished batch belongs to them is dropped: the new owner consumes it from the last
commit, so no message is lost and none is written by two consumers.

A message that kills the consumer process itself (not an exception of a stage: those become dead
letters in streamd.pipeline) is handled by streamd.quarantine: each batch is recorded as in flight,
and after repeated deaths on one message alone, that message is dead-lettered with reason `crash`.

The parts, one job each:

    loop.py       BatchConsumer: fetch -> quarantine portions -> pipeline -> sink -> book -> commit
    sink.py       store, then dead-letter topic; holds with backoff while either is away
    book.py       OffsetBook: finished offsets until their commit is confirmed; refused commits retried
    hold.py       PartitionHold: assignment, pause/resume, strays, offset restarts, rebalance callbacks
    conflicts.py  telling replays from id conflicts, within a time budget
    counts.py     ConsumerCounters: the numbers of the last log line, and their Prometheus series
"""

from __future__ import annotations

import logging

from streamd.config import Config, ConfigError
from streamd.consumer.counts import ConsumerCounters
from streamd.consumer.loop import BatchConsumer
from streamd.kafka import KafkaUnavailable
from streamd.lifecycle import Shutdown

__all__ = ["SECTIONS", "BatchConsumer", "ConsumerCounters", "run"]

log = logging.getLogger(__name__)


# What a consumer child reads of the config: a reload that changes one of these restarts it.
SECTIONS = frozenset({"kafka", "mongodb", "consumer", "stages", "logging"})


def run(config: Config, shutdown: Shutdown) -> int:
    """The consumer child's main; returns its exit status."""
    try:
        batches = BatchConsumer.open(config, shutdown)
    except (KafkaUnavailable, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    log.info("consuming %s as group %s", config.kafka.topic, config.consumer.group)
    clean = False
    try:
        batches.run()
        clean = True
    finally:
        batches.close(clean)
        log.info("stopped: %s", batches.counters)
    return 0
