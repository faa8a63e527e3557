"""What a scrape sees: every process's series added up, plus whatever is read at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from streamd.metrics import multiprocess_directory

# The text format every Prometheus version reads; generate_latest writes names it can parse (underscores only).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class ThisProcess(Collector):
    """The in-memory registry of this process, when no multiprocess directory is set (tests, a bare API)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry for /metrics: the series of every streamd process, then `extra` collectors."""
    scrape = CollectorRegistry()
    path = multiprocess_directory()
    if path is not None:
        MultiProcessCollector(scrape, path=str(path))
    else:
        scrape.register(ThisProcess())
    for collector in extra:
        scrape.register(collector)
    return scrape


def render(scrape: CollectorRegistry) -> bytes:
    """The Prometheus text format of everything `scrape` collects now."""
    return generate_latest(scrape)


def totals(scrape: CollectorRegistry, family: str, label: str | None = None) -> dict[str, float]:
    """One counter family's values summed per value of `label` (or under "" for all), for /stats.

    `family` is the name without `_total`, as prometheus-client names counter families.
    """
    sums: dict[str, float] = {}
    for metric in scrape.collect():
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.name != family + "_total":
                continue
            key = sample.labels.get(label, "") if label else ""
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums
