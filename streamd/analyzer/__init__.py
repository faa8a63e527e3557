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
from streamd.config import Config
from streamd.consumer import run_member
from streamd.lifecycle import Shutdown

__all__ = ["SECTIONS", "Analyzer", "run"]

log = logging.getLogger("streamd.analyzer")

# What the analyzer reads of the config: the consumers' pipeline (kafka, consumer, stages) and its own section.
SECTIONS = frozenset({"kafka", "mongodb", "consumer", "stages", "analytics", "logging"})


def run(config: Config, shutdown: Shutdown) -> int:
    """The analyzer child's main; returns its exit status."""
    analytics = config.analytics
    started = (
        f"analyzing {config.kafka.topic} as group {analytics.group}: windows {', '.join(analytics.windows)} "
        f"by {', '.join(analytics.group_by) or 'nothing'}"
    )
    return run_member(lambda: Analyzer.open(config, shutdown), started, log)
