"""Whether the pipeline can work yet: the configured Kafka answers a metadata request and the store a ping.

The supervisor tells systemd READY=1, and logs "N of N children are running", only once both answer, so
`systemctl start` and health checks do not call a pipeline ready whose every client fails seconds later.

The checks run in a probe process (`python -m streamd.readiness`, config on stdin) that prints one line
per change: `waiting <what>` and, at last, `ready`.  The supervisor reads those lines in its select loop.
Not a thread in the supervisor: it forks every child, and librdkafka and pymongo handles are not
fork-safe; and a check can take seconds, which the supervisor's loop must never wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

import orjson

from streamd.config import Config, ConfigError, from_mapping, to_mapping
from streamd.redaction import masked_uri

log = logging.getLogger("streamd.supervisor")

CHECK_TIMEOUT = 2.0  # seconds one check may take
RETRY_SECONDS = 1.0


class ReadinessProbe:
    """The supervisor's end: starts the probe process and follows what it says."""

    def __init__(self, config: Config) -> None:
        self.ready = False
        self.waiting_for: str | None = "the first check of Kafka and the store"
        self.logged_wait = False  # "… answers now" only follows a "waiting for …" line
        self.buffer = b""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamd.readiness"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write(orjson.dumps(to_mapping(config)))
            self.process.stdin.close()
        os.set_blocking(self.process.stdout.fileno(), False)

    def fileno(self) -> int:
        assert self.process.stdout is not None
        return self.process.stdout.fileno()

    def read(self) -> None:
        """Take in what the probe said; logs each new wait, and the end of a wait."""
        assert self.process.stdout is not None
        try:
            chunk = os.read(self.fileno(), 4096)
        except BlockingIOError:
            return
        if not chunk:
            if not self.ready:
                # Our bug, not the user's: the probe never ends without saying ready.  Do not hold READY forever.
                log.error("the readiness probe ended without an answer; reporting ready without it")
                self.ready, self.waiting_for = True, None
            self.process.stdout.close()
            return
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            verb, _, rest = line.decode(errors="replace").partition(" ")
            if verb == "ready":
                if self.logged_wait:
                    log.info("%s answers now", str(self.waiting_for).partition(" (")[0])
                self.ready, self.waiting_for = True, None
            elif verb == "waiting":
                self.waiting_for, self.logged_wait = rest, True
                log.warning("waiting for %s before reporting ready", rest)

    @property
    def open(self) -> bool:
        return self.process.stdout is not None and not self.process.stdout.closed

    def forget(self) -> None:
        """In a forked child: close our end of the probe's pipe, which belongs to the supervisor."""
        if self.open:
            self.process.stdout.close()  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


class Checks:
    """The two checks, with clients made at the first check and kept for the next ones: librdkafka then
    reconnects with its own backoff instead of starting over every second."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.admin = None
        self.client = None

    def first_missing(self) -> str | None:
        """What the pipeline still waits for, with why (`Kafka at host:9092 (…)`); None once both answer."""
        import pymongo
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        from streamd.kafka import make_client
        from streamd.store import connect, failure_reason

        config = self.config
        kafka = f"Kafka at {config.kafka.brokers}"
        try:
            if self.admin is None:
                self.admin = make_client(AdminClient, config.kafka, "readiness")
            self.admin.list_topics(timeout=CHECK_TIMEOUT)
        except KafkaException as exc:
            return f"{kafka} ({exc.args[0].str()})"
        except ConfigError as exc:
            return f"{kafka} ({exc})"
        store = f"the store at {masked_uri(config.mongodb.uri)}"
        try:
            if self.client is None:
                self.client = connect(config.mongodb)
            with pymongo.timeout(CHECK_TIMEOUT):
                self.client.admin.command("ping")
        except (pymongo.errors.PyMongoError, ConfigError) as exc:
            return f"{store} ({failure_reason(exc)})"
        return None


def main() -> int:
    from streamd.lifecycle import die_with_parent

    die_with_parent(signal.SIGKILL, os.getppid())
    logging.disable(logging.CRITICAL)  # librdkafka would log every refused connection; the line says why
    checks = Checks(from_mapping(orjson.loads(sys.stdin.buffer.read())))
    said = None
    try:
        while (missing := checks.first_missing()) is not None:
            # The reason may change every try (a timeout, then a refusal): a new line only for a new thing.
            what = missing.partition(" (")[0]
            if what != said:
                print(f"waiting {missing}", flush=True)
                said = what
            time.sleep(RETRY_SECONDS)
        print("ready", flush=True)
    except BrokenPipeError:
        pass  # the supervisor stopped listening: it is stopping
    return 0


if __name__ == "__main__":
    sys.exit(main())
