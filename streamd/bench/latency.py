"""Latency at an offered load: produce → stored, and produce → visible through `GET /messages`.

The bench produces with the producer child's settings and pacing (streamd.producer.generate), and
remembers each acknowledged message's partition, offset, id and Kafka create time. Then:

- stored: when the group's committed offset first passed the message. The consumer commits right after
  the write returns, so this is the store write plus one commit round trip, seen within COMMIT_POLL.
- visible: when a `GET /messages?source=…` poll (one request at a time, as a dashboard would) first
  listed it, seen within the poll's own duration.

Both clocks are this machine's wall clock, the producer's and the observer's alike.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlencode

import orjson
from confluent_kafka import KafkaError, Message
from confluent_kafka.admin import AdminClient

from streamd.bench.scratch import BenchError
from streamd.bench.supervised import CommitWatch, SupervisedRun, group_settled
from streamd.config import Config
from streamd.credentials import mongo_client
from streamd.kafka import make_client
from streamd.lifecycle import Shutdown
from streamd.producer import Sender, generate
from streamd.retention import delete_expired

COMMIT_POLL = 0.005
VISIBLE_POLL = 0.02  # pause between two GET /messages, so the poller does not monopolise a worker
PAGE = 1000  # the API's largest page: a message is missed only if 1000 newer ones arrive between two polls
# A message's own timestamp is taken just before its Kafka create time; the margin covers that and ordering.
SINCE_MARGIN_MS = 100
DRAIN_SECONDS = 15.0  # after the last message is produced, how long stragglers may take to arrive
WARMUP_MESSAGES = 20
WARMUP_TIMEOUT = 60.0


class TrackingSender(Sender):
    """The producer child's own Sender, also recording every acknowledged message for the latency figures."""

    def __init__(self, config: Config) -> None:
        self.delivered: list[tuple[int, int, str, int]] = []  # partition, offset, id, create time (ms)
        super().__init__(config)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        super()._delivered(error, message)
        if error is None:
            self.delivered.append(
                (message.partition(), message.offset(), message.key().decode(), message.timestamp()[1])
            )


class VisibilityWatch(threading.Thread):
    """Polls GET /messages over one keep-alive connection; when each id was first listed.

    Each poll asks only for what it has not seen yet (`since` the oldest acknowledged message still
    missing, less a margin), as an efficient client would, so the page stays small at any load.
    """

    def __init__(self, port: int, source: str, sender: TrackingSender) -> None:
        super().__init__(name="bench-visibility", daemon=True)
        self.port = port
        self.source = source
        self.sender = sender
        self.started_ms = time.time() * 1000
        self.cursor = 0  # sender.delivered before this index has all been seen
        self.first_seen: dict[str, float] = {}
        self.requests = 0
        self.request_ms: list[float] = []  # how long each GET /messages took: a message waits for the next one
        self.failures = 0
        self.stopping = threading.Event()

    def path(self) -> str:
        delivered = self.sender.delivered
        while self.cursor < len(delivered) and delivered[self.cursor][2] in self.first_seen:
            self.cursor += 1
        oldest = delivered[self.cursor][3] if self.cursor < len(delivered) else self.started_ms
        since = datetime.fromtimestamp((min(oldest, time.time() * 1000) - SINCE_MARGIN_MS) / 1000, UTC)
        query = {"source": self.source, "limit": PAGE, "since": since.isoformat(timespec="milliseconds")}
        return "/messages?" + urlencode(query)

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stopping.is_set():
            try:
                asked = time.perf_counter()
                connection.request("GET", self.path())
                response = connection.getresponse()
                body = response.read()
                self.request_ms.append((time.perf_counter() - asked) * 1000)
            except (OSError, http.client.HTTPException):
                connection.close()
                self.failures += 1
                self.stopping.wait(VISIBLE_POLL)
                continue
            now = time.time()
            self.requests += 1
            if response.status == 200:
                for item in orjson.loads(body)["data"]:
                    self.first_seen.setdefault(item["id"], now)
            else:
                self.failures += 1
            self.stopping.wait(VISIBLE_POLL)
        connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def warm_up(run: SupervisedRun, config: Config, partitions: Sequence[int]) -> None:
    """Wait until every consumer holds partitions and a message made it through to the API.

    Measuring before the group settles would time a rebalance, not the pipeline.
    """
    run.wait_running()
    admin = make_client(AdminClient, config.kafka, "bench")
    group, processes = config.consumer.group, config.consumer.processes
    deadline = time.monotonic() + WARMUP_TIMEOUT
    sender = TrackingSender(config)
    for _ in range(WARMUP_MESSAGES):
        sender.send(b"warm-up", orjson.dumps({"text": "warm-up", "source": "bench-warm-up"}))
    if sender.flush(30) or len(sender.delivered) != WARMUP_MESSAGES:
        raise BenchError(f"Kafka did not acknowledge the warm-up messages of {config.kafka.topic}.")
    with CommitWatch(config, partitions) as commits:
        while time.monotonic() < deadline:
            run.check()
            if commits.poll() >= WARMUP_MESSAGES and group_settled(admin, group, processes):
                return
            time.sleep(0.1)
    raise BenchError(f"the scratch pipeline did not settle within {WARMUP_TIMEOUT:.0f} s:\n{run.log_tail()}")


def offered_load(run: SupervisedRun, config: Config, partitions: Sequence[int], rate: float, seconds: float) -> dict:
    """Latency percentiles (ms) at `rate` messages/s, in two passes of `seconds` each.

    The first pass has no reader, so `stored` is the pipeline's own latency. The second polls the API
    as well, for `visible`, and reports `stored_while_polled`: on a store where every read scans the
    collection (FerretDB on SQLite), the reader slows the writers, and that is worth seeing apart.
    Each pass starts from an empty collection, so read costs do not depend on earlier passes.
    """
    quiet = _pass(run, config, partitions, rate, seconds, watch_api=False)
    polled = _pass(run, config, partitions, rate, seconds, watch_api=True)
    return {
        "offered_msgs_per_s": rate,
        "achieved_msgs_per_s": quiet["achieved_msgs_per_s"],  # the pass `stored` comes from
        "achieved_polled_msgs_per_s": polled["achieved_msgs_per_s"],  # the pass `visible` comes from
        "seconds": seconds,
        "produced": quiet["produced"] + polled["produced"],
        "failed": quiet["failed"] + polled["failed"],
        "stored": quiet["stored"],
        "visible": polled["visible"],
        "stored_while_polled": polled["stored"],
    }


def _pass(
    run: SupervisedRun, config: Config, partitions: Sequence[int], rate: float, seconds: float, watch_api: bool
) -> dict:
    with mongo_client(config.mongodb, serverSelectionTimeoutMS=config.mongodb.timeout_ms) as client:
        # In chunks: one delete_many({}) of a 5000 msg/s pass (50,000 documents) fails on FerretDB.
        delete_expired(client[config.mongodb.database][config.mongodb.collection], datetime.now(UTC))
    source = f"bench-{rate:g}-{'polled' if watch_api else 'quiet'}"
    count = max(1, round(rate * seconds))
    sender = TrackingSender(config)
    shutdown = Shutdown()
    visible = VisibilityWatch(config.api.port, source, sender)
    with CommitWatch(config, partitions) as commits:
        commits.poll()
        if watch_api:
            visible.start()
        producing = threading.Thread(
            target=generate, args=(sender, source, rate, count, shutdown), name="bench-producer", daemon=True
        )
        began = time.monotonic()
        producing.start()
        while producing.is_alive():
            commits.poll()
            time.sleep(COMMIT_POLL)
        producing_s = time.monotonic() - began
        sender.flush(30)
        ends: dict[int, int] = {}
        for partition, offset, _, _ in sender.delivered:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            run.check()
            commits.poll()
            if all(commits.current[p] >= end for p, end in ends.items()):
                break
            time.sleep(COMMIT_POLL)
        if watch_api:
            while time.monotonic() < deadline and len(visible.first_seen) < len(sender.delivered):
                time.sleep(0.05)
            visible.stop()
    stored, visible_ms = [], []
    for partition, offset, message_id, created_ms in sender.delivered:
        at = commits.stored_at(partition, offset)
        if at is not None:
            stored.append(at * 1000 - created_ms)
        seen = visible.first_seen.get(message_id)
        if seen is not None:
            visible_ms.append(seen * 1000 - created_ms)
    produced = len(sender.delivered)
    return {
        "produced": produced,
        # What the bench's producer really offered (message n is due n/rate after the first): it may fall
        # short of `rate` on a loaded machine, and a latency figure is only worth the rate it was taken at.
        "achieved_msgs_per_s": round(max(produced - 1, 0) / max(producing_s, 1e-9), 1),
        "failed": sender.report.failed,
        "stored": percentiles(stored, produced),
        "visible": {
            **percentiles(visible_ms, produced),
            "polls": visible.requests,
            "request_ms": percentiles(visible.request_ms, len(visible.request_ms)),
        },
    }


def percentiles(values_ms: list[float], expected: int) -> dict:
    """p50/p95/p99 (nearest rank) of what arrived, and how many of `expected` never did."""
    ordered = sorted(values_ms)

    def rank(p: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 1)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "missing": expected - len(ordered)}
