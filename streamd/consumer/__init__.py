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

import gc
import logging
from collections.abc import Callable
from typing import Protocol

from streamd.config import Config, ConfigError
from streamd.consumer.counts import ConsumerCounters
from streamd.consumer.loop import BatchConsumer
from streamd.kafka import KafkaUnavailable
from streamd.lifecycle import Shutdown

__all__ = ["SECTIONS", "BatchConsumer", "ConsumerCounters", "GroupMember", "run", "run_member"]

log = logging.getLogger(__name__)


# What a consumer child reads of the config: a reload that changes one of these restarts it.
SECTIONS = frozenset({"kafka", "mongodb", "consumer", "stages", "logging"})


def run(config: Config, shutdown: Shutdown) -> int:
    """The consumer child's main; returns its exit status."""
    started = f"consuming {config.kafka.topic} as group {config.consumer.group}"
    return run_member(lambda: BatchConsumer.open(config, shutdown), started, log)


class GroupMember(Protocol):
    """A child that consumes in a group until asked to stop: the consumers' BatchConsumer, the Analyzer."""

    counters: object

    def run(self) -> None: ...
    def close(self, clean: bool = True) -> None: ...


def run_member(open_member: Callable[[], GroupMember], started: str, logger: logging.Logger) -> int:
    """Open, run until asked to stop, close: the main of every group-member child; returns its exit status.

    A member that cannot start (Kafka unreachable, a config the child refuses) exits 1 with one sentence;
    one that leaves on an exception closes without marking its in-flight messages done (see quarantine).
    """
    try:
        member = open_member()
    except (KafkaUnavailable, ConfigError) as exc:
        logger.error("%s", exc)
        return 1
    logger.info("%s", started)
    # Everything allocated so far (modules, clients, compiled stages) lives as long as the process: frozen, the
    # collector's full passes stop walking it for every few hundred thousand message objects.
    gc.freeze()
    clean = False
    try:
        member.run()
        clean = True
    finally:
        member.close(clean)
        logger.info("stopped: %s", member.counters)
    return 0
