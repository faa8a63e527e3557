"""Throughput of the supervised pipeline: a pre-filled backlog drained by 1, 2, 4… consumer processes.

The clock starts when the first batch is committed, not when the supervisor starts: process start-up,
imports and the group join are reported apart as `startup_s`, because a long-running pipeline pays
them once while the rate is what it sustains.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from streamd.bench import usage
from streamd.bench.scratch import BenchError, Scratch
from streamd.bench.supervised import CommitWatch, GroupMembers, SupervisedRun
from streamd.config import Config
from streamd.stages import routed_collections
from streamd.store import MessageStore

COMMIT_POLL = 0.02
# Timed from the settled group only if at most this share of the backlog was stored by then (a fifth is left to
# time); else from the first commit, as a window of a few batches would time the batches, not a rate.
SETTLED_SHARE = 0.8
# The slowest rate at which a drain still counts as moving; below it the run is declared stalled.
MIN_RATE = 200.0
GRACE = 60.0


@dataclass(frozen=True)
class DrainResult:
    processes: int
    msgs_per_s: float  # messages stored after the start of timing (all committed at its end), over the time since it
    startup_s: float  # supervisor launch to the start of timing (every consumer holding partitions, a commit seen)
    wall_s: float  # supervisor launch to the last commit
    stored: int  # documents in the store afterwards (every collection): the commits' promise, checked
    routed: int = 0  # of those, the documents route stages put in other collections than the configured one
    # The consumers' CPU time (every thread) from the first commit to the last, per message drained meanwhile.
    cpu_us_per_msg: float | None = None
    rss_mb: dict[str, dict[str, float]] = field(default_factory=dict)  # consumer → {"start": MB, "end": MB}
    usage_note: str | None = None  # why the two above are missing, when they are
    # False when most of the backlog was stored before every consumer held partitions (see SETTLED_SHARE): then
    # timed from the first commit, its rebalances included (a larger --messages leaves more to time).
    settled: bool = True

    def figures(self) -> dict:
        figures = asdict(self)
        figures["msgs_per_s"] = round(self.msgs_per_s, 1)
        figures["startup_s"], figures["wall_s"] = round(self.startup_s, 3), round(self.wall_s, 3)
        return figures


def drain(
    scratch: Scratch,
    topic: str,
    ends: dict[int, int],
    processes: int,
    api_port: int,
    *,
    name: str | None = None,
    stages: tuple[dict, ...] = (),
) -> tuple[DrainResult, dict[str, float]]:
    """Start a supervisor with `processes` consumers on the backlog of `topic`; time it until all is committed.

    `name` (default pipeline-<processes>) names the run's group and collection; `stages` are the
    consumers' stage chain. Every message must end up stored, so stages measured here must not filter
    any out. Returns the result and the resident memory of every child once the backlog is stored.
    """
    name = name or f"pipeline-{processes}"
    config = scratch.config(
        name, topic=topic, collection=scratch.collection(name), processes=processes, api_port=api_port, stages=stages
    )
    total = sum(ends.values())
    deadline = GRACE + total / MIN_RATE
    launched = time.perf_counter()
    with SupervisedRun(config) as run, CommitWatch(config, ends) as commits:
        # The start of timing: (time, documents stored then), once a commit is seen and every consumer holds
        # partitions; `earliest` is (time, committed) at the first commit, used when the group never settled.
        first: tuple[float, int] | None = None
        earliest: tuple[float, int] | None = None
        late = False  # the group settled with most of the backlog already stored
        at_first: dict[str, usage.Sample | None] = {}
        members = GroupMembers(config.kafka, config.consumer.group, processes)
        while (done := commits.poll()) < total:
            now = time.perf_counter()
            if earliest is None and done:
                earliest = (now, done)
                at_first = usage.sample_all(run.consumer_pids())
            if first is None and not late and done and members.settled():
                # Counted in the store, not from the commits: a commit refused during the rebalance is made
                # again once the group settles, and would count messages stored before as drained after.
                stored = sum(count_stored(scratch, config).values())
                if stored <= total * SETTLED_SHARE:
                    first = (time.perf_counter(), stored)
                    at_first = usage.sample_all(run.consumer_pids())
                else:  # too little left to time: timed from the first commit instead, rebalances included
                    late = True
            if now - launched > deadline:
                raise BenchError(
                    f"{processes} consumer(s) stored {done} of {total} messages in {deadline:.0f} s; "
                    f"the supervisor's log ends:\n{run.log_tail()}"
                )
            run.check()
            time.sleep(COMMIT_POLL)
        finished = time.perf_counter()
        at_last = usage.sample_all(run.consumer_pids())
        settled = first is not None
        if first is None:  # the backlog was gone before the group settled: the rate includes its rebalances
            first = earliest or (launched, 0)
        rss = run.rss_mb()
    used = usage.between(at_first, at_last, total - first[1])
    counts = count_stored(scratch, config)
    stored = sum(counts.values())
    if stored < total:
        raise BenchError(f"{processes} consumer(s) committed {total} messages but the store holds {stored}.")
    rate = (total - first[1]) / max(finished - first[0], 1e-9)
    routed = stored - counts[config.mongodb.collection]
    result = DrainResult(
        processes,
        rate,
        first[0] - launched,
        finished - launched,
        stored,
        routed,
        used.cpu_us_per_msg,
        used.rss_mb,
        used.note,
        settled,
    )
    return result, rss


def count_stored(scratch: Scratch, config: Config) -> dict[str, int]:
    """Documents in the configured collection and in each one the route stages name.

    From collStats: count_documents({}) scans on FerretDB, about 30 s at 1,000,000 documents."""
    names = dict.fromkeys([config.mongodb.collection, *routed_collections(config.stages)])
    with scratch.store() as client:
        return {name: MessageStore(config.mongodb, client, name).stats_count() for name in names}


def drop_collections(scratch: Scratch, run: str, stages: tuple[dict, ...]) -> None:
    """Remove the collections of the finished run named `run`, so that the next run starts with a database of
    the same size."""
    with scratch.store() as client:
        database = client[scratch.database]
        for name in dict.fromkeys([scratch.collection(run), *routed_collections(stages)]):
            database.drop_collection(name)
