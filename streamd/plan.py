"""Which children a config asks for, in start order: the supervisor's plan, made again on every reload.

Each child module declares beside its `run` the config it reads (`SECTIONS`); the plan only collects
them, and the supervisor restarts a child when a reload changes one of those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from streamd.children import ChildSpec, ChildTarget, Tier
from streamd.config import Config

if TYPE_CHECKING:
    from streamd.stack import Service

Planner = Callable[[Config, Sequence[ChildSpec]], list[ChildSpec]]


def plan_children(config: Config, services: Sequence[ChildSpec] = ()) -> list[ChildSpec]:
    """The children this config asks for, in start order.  Imports stay lazy so `streamd status` is quick."""
    from streamd import analyzer, consumer, producer, retention
    from streamd.api import server as api_server

    specs = list(services)
    if config.producer.enabled:
        specs.append(ChildSpec("producer", "streamd: producer", producer.run, producer.SECTIONS))
    for index in range(1, config.consumer.processes + 1):
        specs.append(ChildSpec(f"consumer-{index}", f"streamd: consumer {index}", consumer.run, consumer.SECTIONS))
    if config.analytics.enabled:
        specs.append(ChildSpec("analyzer", "streamd: analyzer", analyzer.run, analyzer.SECTIONS))
    if config.mongodb.retention is not None:
        specs.append(ChildSpec("retention", "streamd: retention", retention.run, retention.SECTIONS))
    specs.append(ChildSpec("api", "streamd: api", api_server.run, api_server.SECTIONS))
    return specs


def service_children(services: Sequence[Service]) -> list[ChildSpec]:
    """Local servers (Kafka, the store) run as children too, started first and stopped last."""
    from streamd import stack

    def runner(service: Service) -> ChildTarget:
        return lambda config, shutdown: stack.run_service(service, shutdown)

    return [
        ChildSpec(
            service.name,
            f"streamd: {service.name}",
            runner(service),
            sections=frozenset(),
            tier=Tier.SERVICE,
            ready=service.ready,
        )
        for service in services
    ]
