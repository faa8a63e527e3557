"""GET /metrics, the middleware that counts every request, and the series read at scrape time.

What the children count is summed from the multiprocess directory (streamd.metrics). Two things are
better asked at the moment of the scrape than recorded by someone: the consumer group's lag and the
analyzer's (from Kafka, see lag.py) and each child's state and restarts (from the supervisor's control socket, which
is the only place that knows them). A scrape while Kafka or the supervisor is away leaves their series
out rather than failing, so the rest still arrives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import falcon
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from streamd import control
from streamd.api.auth import METRICS
from streamd.api.lag import GroupLag, KafkaReading, KafkaUnreadable, PartitionLag
from streamd.api.params import reject_unknown
from streamd.children import ChildState
from streamd.config import Config
from streamd.metrics import exposition, series

log = logging.getLogger("streamd.api")


def _reading(lag: GroupLag, what: str) -> KafkaReading | None:
    try:
        return lag.read()
    except KafkaUnreadable as exc:
        log.warning("/metrics without %s: %s", what, exc)
        return None


def _per_partition(
    name: str, doc: str, reading: KafkaReading, value: Callable[[PartitionLag], float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["topic", "partition"])
    for partition in reading.partitions:
        family.add_metric([partition.topic, str(partition.partition)], value(partition))
    return family


class LagCollector(Collector):
    def __init__(self, lag: GroupLag) -> None:
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        reading = _reading(self.lag, "consumer lag")
        if reading is None:
            return
        yield _per_partition(
            "streamd_consumer_lag_messages",
            "Messages in the partition not yet stored: log end offset minus the group's committed offset.",
            reading,
            lambda partition: partition.lag,
        )
        yield _per_partition(
            "streamd_consumer_offsets_beyond_end",
            "1 while the group's committed offset is beyond the partition's log end (the topic was recreated).",
            reading,
            lambda partition: 1.0 if partition.beyond_end else 0.0,
        )
        yield GaugeMetricFamily(
            "streamd_dead_letter_topic_messages",
            "Messages held by the dead-letter topic (within its retention).",
            value=reading.dead_letters,
        )


class AnalyzerLagCollector(Collector):
    """The analyzer's lag: what its group (analytics.group) has not absorbed into the windows yet."""

    def __init__(self, lag: GroupLag) -> None:
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        reading = _reading(self.lag, "the analyzer's lag")
        if reading is not None:
            yield _per_partition(
                "streamd_analyzer_lag_messages",
                "Messages in the partition the analyzer has not absorbed into its windows yet: log end offset "
                "minus the analytics group's committed offset.",
                reading,
                lambda partition: partition.lag,
            )


class SupervisorCollector(Collector):
    def __init__(self, config: Config) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        status, problem = control.status_if_running(self.config)
        if problem is not None:
            log.warning("/metrics without child states: the supervisor did not answer (%s)", problem)
        if status is None:
            return  # an API run on its own has no children to report
        restarts = CounterMetricFamily(
            "streamd_child_restarts", "Times the supervisor restarted the child after it died.", labels=["child"]
        )
        states = GaugeMetricFamily(
            "streamd_child_state",
            "1 for the child's current supervisor state, 0 for the others.",
            labels=["child", "state"],
        )
        for child in status["children"]:
            restarts.add_metric([child["name"]], child["restarts"])
            for state in ChildState:
                states.add_metric([child["name"], state.value], 1.0 if child["state"] == state.value else 0.0)
        yield restarts
        yield states


class MetricsResource:
    scopes = {"GET": METRICS}

    def __init__(self, config: Config, lag: GroupLag, analyzer_lag: GroupLag | None = None) -> None:
        collectors: list[Collector] = [LagCollector(lag), SupervisorCollector(config)]
        if analyzer_lag is not None:
            collectors.append(AnalyzerLagCollector(analyzer_lag))
        self.registry = exposition.registry(collectors)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reject_unknown(req.params, ())
        resp.data = exposition.render(self.registry)
        resp.content_type = exposition.CONTENT_TYPE


class RequestMetrics:
    """Falcon middleware: every answered request by route template (never the raw path), method and status."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        # The template keeps the label set small: /messages/{message_id}, not one series per id.
        route = req.uri_template or "unmatched"
        series.HTTP_REQUESTS.labels(route, req.method, str(resp.status_code)).inc()
        started = getattr(req.context, "started", None)
        if started is not None:
            series.HTTP_SECONDS.labels(route, req.method).observe(time.perf_counter() - started)
