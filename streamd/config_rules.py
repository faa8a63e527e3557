"""Rules across keys: values that each pass their own bounds (config_values.py) but cannot work together.

config.py's `_checked_across` turns each problem into a ConfigError naming the file; each sentence names
both keys, so a start (exit 2) or a reload (the old config runs on) says which pair to change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamd.config import Config


def conflicts(config: Config) -> Iterator[str]:
    """Values that each pass their own bounds but cannot work together; each names both keys."""
    supervisor = config.supervisor
    if supervisor.backoff_initial > supervisor.backoff_max:
        yield (
            f"supervisor.backoff_initial ({supervisor.backoff_initial:g}) is longer than supervisor.backoff_max "
            f"({supervisor.backoff_max:g}), the longest restart delay; lower the first or raise the second"
        )
    # A child that dies at once is restarted after initial, 2×initial, … seconds; when crash_limit exits
    # cannot fit in crash_window, the crash loop is never stopped and the child restarts forever.
    needed = sum(
        min(supervisor.backoff_initial * 2**n, supervisor.backoff_max) for n in range(supervisor.crash_limit - 1)
    )
    if needed > supervisor.crash_window:
        yield (
            f"supervisor.crash_limit ({supervisor.crash_limit}) exits take at least {needed:g} s of restart delays, "
            f"longer than supervisor.crash_window ({supervisor.crash_window:g} s), so a crash loop would never be "
            "stopped; raise crash_window or lower crash_limit"
        )
    kafka = config.kafka
    if kafka.dead_letter_topic == kafka.topic:
        yield (
            f"kafka.dead_letter_topic is kafka.topic ({kafka.topic!r}): the consumers would read their own dead "
            "letters back; name another topic"
        )
    analytics = config.analytics
    if analytics.enabled and analytics.group == config.consumer.group:
        yield (
            f"analytics.group is consumer.group ({analytics.group!r}): the analyzer and the consumers would split "
            "the partitions and each see part of the stream; name another group"
        )
    if analytics.enabled and analytics.collection == config.mongodb.collection:
        yield (
            f"analytics.collection is mongodb.collection ({analytics.collection!r}): window aggregates would be "
            "written among the messages; name another collection"
        )
    if config.auth.metrics_port == config.api.port:
        yield (
            f"auth.metrics_port is api.port ({config.api.port}): /metrics gets a port of its own only on another "
            "one; choose a free port, or 0 to keep /metrics on api.port"
        )
