"""Which local servers this config needs: the decision `stack.local` makes, shared by `stack up` and the
supervisor so both start exactly the same things."""

from __future__ import annotations

from collections.abc import Callable

from streamd.config import Config
from streamd.stack import kafka, store
from streamd.stack.endpoint import Endpoint, is_srv_uri, kafka_endpoints, mongodb_endpoints
from streamd.stack.pidfile import owned_pid
from streamd.stack.service import Service, StackError

SERVICE_NAMES = ("kafka", "store")

_BUILDERS: dict[str, Callable[[Config], Service]] = {"kafka": kafka.service, "store": store.service}
_PROVISIONERS: dict[str, Callable[[Config], object]] = {"kafka": kafka.provision, "store": store.provision}
_ENDPOINT_KEYS = {"kafka": "kafka.brokers", "store": "mongodb.uri"}


def configured_answers(config: Config, name: str) -> bool:
    """The fast check: does anything accept connections where the config points (any listed host will do)?"""
    try:
        if name == "kafka":
            endpoints = kafka_endpoints(config.kafka.brokers)
        elif is_srv_uri(config.mongodb.uri):
            return store.answers(config.mongodb.uri)  # only DNS knows the hosts; ask the driver
        else:
            endpoints = mongodb_endpoints(config.mongodb.uri)
    except ValueError:
        return False
    return any(endpoint.answers() for endpoint in endpoints)


def needed(config: Config) -> list[str]:
    """Names of the servers to run locally: none for `false`, the silent ones for `auto`, all for `true`
    (except ones this state dir already runs detached, which `stack up` may be asked to start twice)."""
    if config.stack.local is False:
        return []
    names = []
    for name in SERVICE_NAMES:
        if config.stack.local is True:
            _check_endpoint(config, name)  # before probing: whatever answers at a remote address is not ours
        if not configured_answers(config, name):
            _check_endpoint(config, name)
            names.append(name)
        elif config.stack.local is True and owned_pid(config, name) is None:
            key = _ENDPOINT_KEYS[name]
            raise StackError(
                f"stack.local is true but {key} ({_endpoint_text(config, name)}) is already served by "
                f"another process; stop it, change {key} to a free port, or set stack.local: auto to use it."
            )
    return names


def provision(config: Config) -> None:
    """Download or build what the needed local servers lack (progress on stderr); cached once done."""
    for name in needed(config):
        _PROVISIONERS[name](config)


def services_to_run(config: Config) -> list[Service]:
    """The local servers to start, prepared (data dirs, Kafka storage formatted); [] when none are needed."""
    names = needed(config)
    if "kafka" in names and Endpoint("127.0.0.1", config.stack.kafka_controller_port).answers():
        raise StackError(
            f"stack.kafka_controller_port {config.stack.kafka_controller_port} is already in use on "
            f"127.0.0.1; choose a free port for the local KRaft controller."
        )
    return [_BUILDERS[name](config) for name in names]


def _check_endpoint(config: Config, name: str) -> None:
    """Refuse a non-loopback or multi-host address before anything is downloaded or started for it."""
    if name == "kafka":
        kafka.broker_endpoint(config)
    else:
        store.store_endpoint(config)


def _endpoint_text(config: Config, name: str) -> str:
    """The address without the URI, which may carry a password."""
    if name == "kafka":
        return config.kafka.brokers
    try:
        return ", ".join(map(str, mongodb_endpoints(config.mongodb.uri)))
    except ValueError:
        return "an unparsable address"
