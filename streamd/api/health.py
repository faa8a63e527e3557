"""GET /health (this process answers) and GET /ready (and can reach Kafka and the store)."""

from __future__ import annotations

import falcon
import pymongo
from confluent_kafka import KafkaException
from pymongo.errors import PyMongoError

from streamd.api.backends import Backends
from streamd.api.lag import GroupLag, KafkaUnreadable
from streamd.api.params import reject_unknown

# A load balancer's probe gives up after a few seconds; a check must answer before that, and a
# check that hangs would hold one of the worker's few threads.
CHECK_TIMEOUT = 2.0


class HealthResource:
    """Liveness only: touching a dependency here would get a healthy API restarted for an outage elsewhere."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reject_unknown(req.params, ())
        resp.media = {"status": "ok"}


class ReadyResource:
    def __init__(self, backends: Backends, lag: GroupLag | None = None) -> None:
        self.backends = backends
        self.lag = lag

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reject_unknown(req.params, ())
        checks = {"kafka": self.check_kafka(), "store": self.check_store()}
        if self.lag is not None and checks["kafka"] == "ok":
            checks["offsets"] = self.check_offsets(self.lag)
        ready = all(result == "ok" for result in checks.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ok" if ready else "unavailable", "checks": checks}

    def check_kafka(self) -> str:
        try:
            admin = self.backends.kafka
        except KafkaException as exc:  # e.g. a bad property in kafka.client
            return f"misconfigured ({exc.args[0].str()})"
        try:
            admin.list_topics(timeout=CHECK_TIMEOUT)
            return "ok"
        except KafkaException as exc:
            return f"unreachable ({exc.args[0].str()})"
        finally:
            admin.poll(0)  # hands librdkafka's queued log lines to the logger

    @staticmethod
    def check_offsets(lag: GroupLag) -> str:
        """Not ready while a committed offset points beyond its log end: the pipeline is not where it thinks."""
        try:
            problems = lag.read().problems
        except KafkaUnreadable as exc:
            return f"unreadable ({exc})"
        return "; ".join(problems) if problems else "ok"

    def check_store(self) -> str:
        try:
            # pymongo's client-side timeout also replaces serverSelectionTimeoutMS, which would
            # otherwise let the check wait the full mongodb.timeout_ms.
            with pymongo.timeout(min(CHECK_TIMEOUT, self.backends.config.mongodb.timeout_ms / 1000)):
                self.backends.store.ping()
            return "ok"
        except PyMongoError as exc:
            # The first clause names the server and the socket error; the topology dump after it
            # belongs in a debugger, not in a probe's answer.
            reason = str(exc).partition(" (configured timeouts")[0].partition(", Timeout:")[0]
            return f"unreachable ({reason[:200]})"
