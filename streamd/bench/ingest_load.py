"""POST /messages under load: messages per second through batches of 100, and each request's latency.

Closed loop: each connection (a keep-alive HTTP/1.1 connection of its own thread) sends its next batch as
soon as the last one is answered, so the rate is what the API and Kafka sustain, not an offered one.
Every batch is the same body of generator-shaped messages without ids: the API gives each message a new
id, so every request is 100 new messages. A message counts once the API answered 202 for it, which it
does only after Kafka (acks=all) has it; the topic's end offsets are read afterwards to confirm that
exactly those reached it. Python's http.client is the client (not wrk: a body per request and the
answer's count need parsing); at batches of 100 it sends a few hundred requests a second, far below
what it costs the API to serve them.
"""

from __future__ import annotations

import http.client
import threading
import time

import orjson
from confluent_kafka.admin import AdminClient

from streamd.bench.latency import percentiles
from streamd.config import Config
from streamd.group_offsets import partitions_of, watermarks
from streamd.kafka import make_client

BATCH = 100
SOURCE = "bench-ingest"
REQUEST_TIMEOUT = 30.0
WARM_UP_SECONDS = 1.0


def batch_body(size: int = BATCH) -> bytes:
    """A JSON array of `size` messages shaped like the generator's, without ids."""
    return orjson.dumps(
        [{"text": f"bench message {n} sent through POST /messages", "source": SOURCE} for n in range(size)]
    )


def load(port: int, concurrency: int, seconds: float, size: int = BATCH) -> dict:
    """`concurrency` connections posting batches of `size` for `seconds`; rates, request latency, errors."""
    body = batch_body(size)
    lock = threading.Lock()
    latencies_ms: list[float] = []
    totals = {"accepted": 0, "errors": 0}
    deadline = time.monotonic() + seconds

    def connection() -> None:
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        mine: list[float] = []
        accepted = errors = 0
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    client.request("POST", "/messages", body, {"Content-Type": "application/json"})
                    response = client.getresponse()
                    answer = response.read()
                except (OSError, http.client.HTTPException):
                    errors += 1
                    client.close()  # reconnects on the next request
                    continue
                mine.append((time.perf_counter() - started) * 1000)
                if response.status == 202:
                    accepted += len(orjson.loads(answer)["accepted"])
                else:
                    errors += 1
        finally:
            client.close()
            with lock:
                latencies_ms.extend(mine)
                totals["accepted"] += accepted
                totals["errors"] += errors

    started = time.monotonic()
    threads = [threading.Thread(target=connection, name=f"ingest-load-{n}") for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    figures = percentiles(latencies_ms, len(latencies_ms))
    return {
        "concurrency": concurrency,
        "batch": size,
        "requests": len(latencies_ms),
        "accepted": totals["accepted"],
        "errors": totals["errors"],
        "msgs_per_s": round(totals["accepted"] / elapsed, 1),
        "rps": round(len(latencies_ms) / elapsed, 1),
        "p50_ms": figures["p50"],
        "p99_ms": figures["p99"],
    }


def messages_in_topic(config: Config, topic: str, partitions: int) -> int:
    """How many messages `topic` holds: the sum of its partitions' end offsets (it was empty before)."""
    admin = make_client(AdminClient, config.kafka, "bench")
    marks = watermarks(admin, partitions_of(topic, range(partitions)), timeout=10)
    return sum(high - low for low, high in marks.values())
