"""Tools of the fault suite: a producer of known ids, a private stack whose servers can be killed, and a relay.

Scenarios that kill the broker or the store run them on ports and a state dir of their own, so the
session's stack (and every other test) never notices; the artifact cache is shared.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, Message, Producer

from streamd import config as config_module
from streamd import stack
from streamd.config import Config
from streamd.stack.pidfile import owned_pid

from .probes import STACK_STATE_DIR, free_port

# Every POISON_EVERY-th known message is poison: valid JSON without `text`, so it must be dead-lettered.
POISON_EVERY = 250


def known_id(run: str, n: int) -> str:
    return f"{run}-{n:06d}"


def known_message(run: str, n: int) -> bytes:
    message_id = known_id(run, n)
    if n % POISON_EVERY == POISON_EVERY - 1:
        return orjson.dumps({"id": message_id, "note": "no text: poison"})
    return orjson.dumps({"id": message_id, "text": f"message {n}", "source": "fault-suite"})


def poison_count(count: int) -> int:
    return count // POISON_EVERY


class KnownProducer:
    """Sends messages with ids <run>-000000, <run>-000001… at `rate` per second from a thread, like a client
    application would (idempotent, acks=all, retried by librdkafka until acknowledged), until `limit` are
    sent or stop() is called; `count` is then how many were sent. `longest_stall` is the longest time
    between two acknowledgements while some were outstanding: how long a fault held the producer up."""

    def __init__(self, settings: Config, run: str, limit: int, rate: float) -> None:
        self.run, self.limit, self.rate = run, limit, rate
        self.count = 0
        self.acked = 0
        self.failed: list[str] = []
        self.longest_stall = 0.0
        self._last_progress: float | None = None  # the first send, then the latest acknowledgement
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka.brokers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
            }
        )
        self.topic = settings.kafka.topic
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._send, name="known-producer", daemon=True)

    def start(self) -> KnownProducer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    def wait(self, timeout: float) -> None:
        """Until every message is acknowledged or failed; raises when some failed or time ran out."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the producer was still sending after {timeout:.0f} s"
        assert not self.failed, f"{len(self.failed)} messages failed, e.g. {self.failed[:3]}"
        assert self.acked == self.count

    def _send(self) -> None:
        started = time.monotonic()
        for n in range(self.limit):
            due = started + n / self.rate
            while (wait := due - time.monotonic()) > 0:
                self.producer.poll(min(wait, 0.05))
            if self.stopping.is_set():
                break
            key = known_id(self.run, n).encode()
            while True:
                try:
                    self.producer.produce(self.topic, known_message(self.run, n), key, on_delivery=self._delivered)
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.count += 1
            if self._last_progress is None:
                self._last_progress = time.monotonic()
        self.producer.flush(120)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.acked += 1
            now = time.monotonic()
            if self._last_progress is not None:
                self.longest_stall = max(self.longest_stall, now - self._last_progress)
            self._last_progress = now
        else:
            self.failed.append(f"{message.key().decode()}: {error.str()}")


def private_stack_config(state_dir: Path) -> Config:
    """A stack of its own: free loopback ports, its own data, the shared artifact cache."""
    return config_module.from_mapping(
        {
            "state_dir": str(state_dir),
            "kafka": {"brokers": f"127.0.0.1:{free_port()}"},
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}"},
            "stack": {"kafka_controller_port": free_port(), "cache_dir": str(STACK_STATE_DIR / "cache")},
            "supervisor": {"graceful_timeout": 20},
        },
        label="fault stack",
    )


def kill_server(settings: Config, name: str) -> int:
    """SIGKILL a server of the private stack (kafka or store), as a crash would; returns its pid."""
    pid = owned_pid(settings, name)
    assert pid is not None, f"the private {name} is not running"
    os.killpg(pid, signal.SIGKILL)  # it leads its own session: the whole group, like a power cut
    deadline = time.monotonic() + 10
    while owned_pid(settings, name) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def restart_servers(settings: Config) -> None:
    """Start again whatever of the private stack is down, and wait until it serves."""
    stack.ensure_running(settings)


class LoopbackRelay:
    """A loopback port that refuses connections until open(), then relays them to `target_port`.

    Kafka clients use their bootstrap address only to learn the brokers' advertised addresses, so a
    client bootstrapped here cannot reach the cluster before open() and reaches it directly after.
    """

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.listener: socket.socket | None = None

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # either side went away: the other one is closed below
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@contextmanager
def relay_to(port: int) -> Iterator[LoopbackRelay]:
    relay = LoopbackRelay(port)
    try:
        yield relay
    finally:
        relay.close()
