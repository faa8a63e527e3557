"""The real Supervisor and consumers, where one payload makes a consumer process die (tests/test_quarantine.py).

Run as `python tests/deadly_supervisor.py CONFIG`. Only the consumers are planned. A batch holding a
message whose value contains b"deadly" makes the consumer process die as $DEADLY_MODE says:
"exit" (os._exit(1), every time: a native crash as far as the supervisor can tell), or "hang-once"
(writes its pid to $DEADLY_MARK and sleeps, the first time only: the test kill -9s it mid-batch).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime

from confluent_kafka import Message

from streamd import config as config_module
from streamd import consumer, logs
from streamd.children import ChildSpec
from streamd.config import Config
from streamd.lifecycle import Shutdown
from streamd.pipeline import MessageBatch, Pipeline
from streamd.supervisor import Supervisor, plan_children

real_batch = Pipeline.batch


def deadly_batch(self: Pipeline, messages: Iterable[Message], ingested_at: datetime | None = None) -> MessageBatch:
    messages = list(messages)
    if any(m.error() is None and b"deadly" in (m.value() or b"") for m in messages):
        if os.environ["DEADLY_MODE"] == "exit":
            os._exit(1)
        mark = os.environ["DEADLY_MARK"]
        if not os.path.exists(mark):
            with open(mark + ".tmp", "w") as out:
                out.write(str(os.getpid()))
            os.rename(mark + ".tmp", mark)
            time.sleep(3600)
    return real_batch(self, messages, ingested_at)


def deadly_consumer(config: Config, shutdown: Shutdown) -> int:
    Pipeline.batch = deadly_batch  # type: ignore[method-assign]
    return consumer.run(config, shutdown)


def consumers_only(config: Config, services: Sequence[ChildSpec]) -> list[ChildSpec]:
    return [
        replace(spec, target=deadly_consumer)
        for spec in plan_children(config, services)
        if spec.name.startswith("consumer-")
    ]


if __name__ == "__main__":
    settings = config_module.load(sys.argv[1])
    logs.configure(settings.logging, "supervisor")
    sys.exit(Supervisor(settings, plan=consumers_only).run())
