"""What every kind of local server provides, so the stack chooses servers by object, never by name.

Two kinds exist: `kafka_server.KAFKA` and `store_server.STORE`.  A new one (say, a schema registry)
implements this and joins `plan.KINDS`; nothing else in the stack names a server.  A kind may run several
processes (the nodes of a local Kafka cluster): one `Instance`, and one `Service`, each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from streamd.config import Config
from streamd.stack.service import Service


@dataclass(frozen=True)
class Instance:
    """One server process as the config lays it out: a row of `streamd stack status`."""

    name: str  # "kafka", "kafka-2", "store": the supervised child's name, and its pid, log and home dir names
    address: str  # where it serves, for status lines; never a URI, which may hold a password
    data_dir: Path
    answers: Callable[[], bool] = field(compare=False, repr=False)


class ServerKind(Protocol):
    name: str  # "kafka", "store": the kind, in messages
    endpoint_key: str  # the config key that says where it serves, for messages

    def address(self, config: Config) -> str:
        """Where the config points, for status lines and messages; never the URI, which may hold a password."""

    def check_endpoints(self, config: Config) -> None:
        """Refuse, with StackError, addresses a local server may not bind (not loopback, wrong count, shared)."""

    def accepts_connections(self, config: Config) -> bool:
        """The fast check: does anything accept connections where the config points (any host will do)?"""

    def answers(self, config: Config) -> bool:
        """True when a server answers its protocol where the config points, not merely a TCP connect."""

    def instances(self, config: Config) -> list[Instance]:
        """The processes the config lays out, whether running or not."""

    def provision(self, config: Config) -> object:
        """Download or build what the server lacks into the cache (progress on stderr); cached once done."""

    def preflight(self, config: Config) -> None:
        """Refuse, with StackError, to start when something the server needs besides its endpoint is taken."""

    def services(self, config: Config) -> list[Service]:
        """Its processes, ready to exec: provisioned, data directories prepared; started together."""
