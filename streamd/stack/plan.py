"""Which local servers this config needs: the decision `stack.local` makes, shared by `stack up` and the
supervisor so both start exactly the same things."""

from __future__ import annotations

from streamd.config import Config
from streamd.stack.kafka_server import KAFKA
from streamd.stack.kind import ServerKind
from streamd.stack.pidfile import owned_pid
from streamd.stack.service import Service, StackError
from streamd.stack.store_server import STORE

KINDS: tuple[ServerKind, ...] = (KAFKA, STORE)  # in start order


def needed_kinds(config: Config) -> list[ServerKind]:
    """The servers to run locally: none for `false`, the silent ones for `auto`, all for `true` (except
    ones this state dir already runs detached, which `stack up` may be asked to start twice)."""
    if config.stack.local is False:
        return []
    kinds = []
    for kind in KINDS:
        if config.stack.local is True:
            kind.check_endpoints(config)  # before probing: whatever answers at a remote address is not ours
        if not kind.accepts_connections(config):
            # Refuse a non-loopback address or a wrong count before anything is downloaded or started for it.
            kind.check_endpoints(config)
            kinds.append(kind)
        elif config.stack.local is True and not any(
            owned_pid(config, instance.name) for instance in kind.instances(config)
        ):
            key = kind.endpoint_key
            raise StackError(
                f"stack.local is true but {key} ({kind.address(config)}) is already served by "
                f"another process; stop it, change {key} to a free port, or set stack.local: auto to use it."
            )
    return kinds


def needed(config: Config) -> list[str]:
    """Names of the servers to run locally (see needed_kinds)."""
    return [kind.name for kind in needed_kinds(config)]


def provision(config: Config) -> None:
    """Download or build what the needed local servers lack (progress on stderr); cached once done."""
    for kind in needed_kinds(config):
        kind.provision(config)


def services_to_run(config: Config) -> list[Service]:
    """The local servers to start, prepared (data dirs, Kafka storage formatted); [] when none are needed.
    All of them are to be launched before waiting for any: a Kafka node is ready only once a majority of
    its quorum runs."""
    kinds = needed_kinds(config)
    for kind in kinds:
        kind.preflight(config)  # all of them before any is prepared
    return [service for kind in kinds for service in kind.services(config)]
