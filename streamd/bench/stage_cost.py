"""What the stages cost: the backlog drained with a realistic 4-stage chain, next to the same drain with none.

Both drains run back to back in the same bench run, on the same backlog, store and consumer count, so
the ratio compares like with like on a shared machine. One consumer process: it is where the
consumer's own per-message work (which the stages add to) shows most, and on FerretDB/SQLite it is
also the fastest configuration (see docs/performance.md).

The chain does what a user's would, on the generator's messages: a filter, a `set` with arithmetic
and string functions, a rename, and a route sending one message in ten to a second collection. The
filter keeps every bench message on purpose: a chain that dropped some would write less and look
cheaper than the stages are, and the drain checks that every committed message is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamd.bench import pipeline_runs
from streamd.bench.scratch import Scratch
from streamd.bench.supervised import keep_largest

PROCESSES = 1
TARGET = 0.85  # issue 10: throughput with the chain at least 0.85 times the throughput without
ROUTED_COLLECTION = "stages_routed"
CHAIN: tuple[dict, ...] = (
    {"name": "not-debug", "kind": "filter", "where": 'source != "debug" and not text.startswith("DEBUG")'},
    {
        "name": "enrich",
        "kind": "set",
        "fields": {
            "origin": "upper(source)",
            "words": 'len(text.split(" "))',
            "score": "round(len(text) * 1.5 + kafka.partition / 4, 2)",
        },
    },
    {"name": "tidy", "kind": "rename", "fields": {"words": "word_count"}},
    {"name": "sample", "kind": "route", "where": "kafka.offset % 10 == 0", "collection": ROUTED_COLLECTION},
)
ORDER = (("none", ()), ("chain", CHAIN), ("chain", CHAIN), ("none", ()))


def measure(
    scratch: Scratch, topic: str, ends: dict[int, int], port: Callable[[], int], progress: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, float]]:
    """Drain the backlog of `topic` without stages and with CHAIN, in the order none, chain, chain, none,
    keeping each one's best rate: both rates and their ratio, and the largest resident size of each child.
    `port` gives a free port for each run's API.

    The local store slows down as its database file grows, so a run's collections are dropped once it is
    counted, and the ABBA order gives neither label the advantage of running first.
    """
    best: dict[str, pipeline_runs.DrainResult] = {}
    rss: dict[str, float] = {}
    for round_number, (label, stages) in enumerate(ORDER, start=1):
        progress(
            f"stage cost {round_number}/{len(ORDER)}: {PROCESSES} consumer process, {label_of(stages)}, "
            f"draining {sum(ends.values()):,} messages"
        )
        name = f"stages-{label}-{round_number}"
        result, sizes = pipeline_runs.drain(scratch, topic, ends, PROCESSES, port(), name=name, stages=stages)
        pipeline_runs.drop_collections(scratch, name, stages)
        if label not in best or result.msgs_per_s > best[label].msgs_per_s:
            best[label] = result
        keep_largest(rss, sizes)
        progress(f"  {result.msgs_per_s:,.0f} msg/s, {result.routed:,} routed to {ROUTED_COLLECTION}")
    ratio = best["chain"].msgs_per_s / max(best["none"].msgs_per_s, 1e-9)
    figures = {
        "processes": PROCESSES,
        "chain": [f"{stage['name']} ({stage['kind']})" for stage in CHAIN],
        "without_stages": best["none"].figures(),
        "with_stages": best["chain"].figures(),
        "ratio": round(ratio, 3),
        "target": TARGET,
    }
    return figures, rss


def label_of(stages: tuple[dict, ...]) -> str:
    return f"{len(stages)} stages" if stages else "no stages"
