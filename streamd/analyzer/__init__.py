"""The analyzer child: a second consumer group on the topic, keeping tumbling-window aggregates in event time.

It runs every message through the same pipeline as the consumers (parse, validate, stages) and counts
exactly the documents they would store, per window length, window and group (analytics.group_by),
with count, min, max and sum of the configured numeric fields; the API computes the mean. Results live
in analytics.collection, one document per window and group, exactly once in effect under any crash.

    windows.py     pure: window bounds, group keys, stream time, lateness, per-batch deltas
    aggregates.py  the window documents: one read per batch, conditional updates keyed on absorbed offsets
    loop.py        Analyzer: consume -> pipeline -> contributions -> window writes -> commit with stream time
"""

from __future__ import annotations

import logging

from streamd.analyzer.loop import Analyzer
from streamd.config import Config, ConfigError
from streamd.kafka import KafkaUnavailable
from streamd.lifecycle import Shutdown

__all__ = ["SECTIONS", "Analyzer", "run"]

log = logging.getLogger("streamd.analyzer")

# What the analyzer reads of the config: the consumers' pipeline (kafka, consumer, stages) and its own section.
SECTIONS = frozenset({"kafka", "mongodb", "consumer", "stages", "analytics", "logging"})


def run(config: Config, shutdown: Shutdown) -> int:
    """The analyzer child's main; returns its exit status."""
    try:
        analyzer = Analyzer.open(config, shutdown)
    except (KafkaUnavailable, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    log.info(
        "analyzing %s as group %s: windows %s by %s",
        config.kafka.topic,
        config.analytics.group,
        ", ".join(config.analytics.windows),
        ", ".join(config.analytics.group_by) or "nothing",
    )
    clean = False
    try:
        analyzer.run()
        clean = True
    finally:
        analyzer.close(clean)
        log.info("stopped: %s", analyzer.counters)
    return 0
