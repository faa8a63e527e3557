"""What every kind of local server provides, so the stack chooses servers by object, never by name.

Two kinds exist: `kafka_server.KAFKA` and `store_server.STORE`.  A new one (say, a schema registry)
implements this and joins `plan.KINDS`; nothing else in the stack names a server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from streamd.config import Config
from streamd.stack.endpoint import Endpoint
from streamd.stack.service import Service


class ServerKind(Protocol):
    name: str  # "kafka", "store": the supervised child's name, and its pid, log and data file names
    endpoint_key: str  # the config key that says where it serves, for messages

    def address(self, config: Config) -> str:
        """Where the config points, for status lines and messages; never the URI, which may hold a password."""

    def check_endpoint(self, config: Config) -> Endpoint:
        """The one loopback address a local server may bind; StackError for anything else."""

    def accepts_connections(self, config: Config) -> bool:
        """The fast check: does anything accept connections where the config points (any host will do)?"""

    def answers(self, config: Config) -> bool:
        """True when a server answers its protocol where the config points, not merely a TCP connect."""

    def data_dir(self, config: Config) -> Path: ...

    def provision(self, config: Config) -> object:
        """Download or build what the server lacks into the cache (progress on stderr); cached once done."""

    def preflight(self, config: Config) -> None:
        """Refuse, with StackError, to start when something the server needs besides its endpoint is taken."""

    def service(self, config: Config) -> Service:
        """The server, ready to exec: provisioned, its data directory prepared."""
