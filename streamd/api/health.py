"""GET /health (this process answers) and GET /ready (it can reach Kafka and the store, and consumers run).

Both are served on threads of their own (see worker.py), so a busy API still answers them.
"""

from __future__ import annotations

import falcon
import pymongo
from confluent_kafka import KafkaException
from pymongo.errors import PyMongoError

from streamd import control, store
from streamd.api.auth import PUBLIC, READ
from streamd.api.backends import Backends
from streamd.api.lag import GroupLag, KafkaUnreadable
from streamd.api.params import reject_unknown
from streamd.api.single_flight import SingleFlight

# A load balancer's probe gives up after a few seconds; a check must answer before that, and a
# check that hangs would hold one of the worker's few threads.
CHECK_TIMEOUT = 2.0
# A flood of probes costs one round of checks per second per worker, not one per probe.
READY_FRESH_SECONDS = 1.0
# The supervisor names consumer children "consumer-<n>" (plan.plan_children).
CONSUMER_PREFIX = "consumer-"


class HealthResource:
    """Liveness only: touching a dependency here would get a healthy API restarted for an outage elsewhere."""

    scopes = {"GET": PUBLIC}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reject_unknown(req.params, ())
        resp.media = {"status": "ok"}

    on_head = on_get  # Falcon sends no body for HEAD


class ReadyResource:
    scopes = {"GET": READ}

    def __init__(self, backends: Backends, lag: GroupLag | None = None) -> None:
        self.backends = backends
        self.lag = lag
        self.latest = SingleFlight(self.checks, READY_FRESH_SECONDS)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reject_unknown(req.params, ())
        checks = self.latest.get()
        ready = all(result == "ok" for result in checks.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ok" if ready else "unavailable", "checks": checks}

    on_head = on_get

    def checks(self) -> dict[str, str]:
        checks = {"kafka": self.check_kafka(), "store": self.check_store()}
        if self.lag is not None and checks["kafka"] == "ok":
            checks["offsets"] = self.check_offsets(self.lag)
        consumers = self.check_consumers()
        if consumers is not None:
            checks["consumers"] = consumers
        return checks

    def check_consumers(self) -> str | None:
        """`ok` while a consumer runs; None for an API run without a supervisor, which has no consumers."""
        status, problem = control.status_if_running(self.backends.config)
        if problem is not None:
            return f"unknown (the supervisor did not answer: {problem})"
        if status is None:
            return None
        consumers = [child for child in status["children"] if child["name"].startswith(CONSUMER_PREFIX)]
        # Messages are stored while any consumer runs (the group hands it every partition); with none,
        # the pipeline has stopped even though Kafka and the store answer.
        if not consumers or any(child["state"] == "RUNNING" for child in consumers):
            return "ok"
        return "none running (" + ", ".join(f"{child['name']} {child['state']}" for child in consumers) + ")"

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
            return f"unreachable ({store.failure_reason(exc)})"
