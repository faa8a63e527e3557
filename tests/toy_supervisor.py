"""The real Supervisor with toy children, so its process behaviour is tested without Kafka or a store.

Run as `python tests/toy_supervisor.py CONFIG`.  The toy plan follows the config like the real one:
`consumer.processes` sleepers named consumer-N, and a producer whose behaviour is picked by
`producer.source`: "sleeper" (default), "crasher" (exits 3 at once) or "stubborn" (ignores SIGTERM).
Consumers are sleepers; with `consumer.group: slow-stop` they take a second and a half to stop.
Every toy child appends "<name> <pid> <event>" to $TOY_EVENTS so tests can see starts and clean stops.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence

from streamd import config as config_module
from streamd import logs
from streamd.children import ChildSpec
from streamd.config import Config
from streamd.lifecycle import Shutdown
from streamd.supervisor import Supervisor


def record(event: str) -> None:
    with open(os.environ["TOY_EVENTS"], "a") as events:
        events.write(f"{os.environ.get('TOY_NAME', '?')} {os.getpid()} {event}\n")


def named(name: str, body):
    def target(config: Config, shutdown: Shutdown) -> int:
        os.environ["TOY_NAME"] = name
        record("started")
        return body(config, shutdown)

    return target


def sleeper(config: Config, shutdown: Shutdown) -> int:
    while not shutdown.wait(0.05):
        pass
    record("stopped cleanly")
    return 0


def slow_stopper(config: Config, shutdown: Shutdown) -> int:
    while not shutdown.wait(0.05):
        pass
    time.sleep(1.5)  # a consumer finishing its batch against a slow store
    record("stopped cleanly")
    return 0


def crasher(config: Config, shutdown: Shutdown) -> int:
    time.sleep(0.05)
    return 3


def stubborn(config: Config, shutdown: Shutdown) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)
    return 0


BEHAVIOURS = {"sleeper": sleeper, "crasher": crasher, "stubborn": stubborn}


def toy_plan(config: Config, services: Sequence[ChildSpec]) -> list[ChildSpec]:
    specs = [
        ChildSpec(
            f"consumer-{i}",
            f"streamd: consumer {i}",
            named(f"consumer-{i}", slow_stopper if config.consumer.group == "slow-stop" else sleeper),
            frozenset({"consumer"}),
        )
        for i in range(1, config.consumer.processes + 1)
    ]
    if config.producer.enabled:
        body = BEHAVIOURS.get(config.producer.source, sleeper)
        specs.append(ChildSpec("producer", "streamd: producer", named("producer", body), frozenset({"producer"})))
    return specs


if __name__ == "__main__":
    settings = config_module.load(sys.argv[1])
    logs.configure(settings.logging, "supervisor")
    sys.exit(Supervisor(settings, plan=toy_plan).run())
