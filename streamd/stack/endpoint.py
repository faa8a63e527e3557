"""Where the configured Kafka and store live, and whether anything answers there.

The fast "does it answer" check is a TCP connect: it decides in milliseconds whether streamd must start
a local server, while the protocol-level readiness checks live with each server kind.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

KAFKA_DEFAULT_PORT = 9092
MONGODB_DEFAULT_PORT = 27017


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def bind_host(self) -> str:
        """The address a local server binds: "localhost" may resolve to ::1 first, but clients fall back to
        127.0.0.1, so binding the IPv4 loopback serves both."""
        return "127.0.0.1" if self.host == "localhost" else self.host

    def answers(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout):
                return True
        except OSError:
            return False


def parse_hostport(text: str, default_port: int) -> Endpoint:
    """ "host", "host:port", "[v6]:port" or "scheme://host:port" (librdkafka accepts a listener scheme)."""
    text = text.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"{text!r} names no host")
    if not port:
        return Endpoint(host, default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port")
    return Endpoint(host, int(port))


def kafka_endpoints(brokers: str) -> list[Endpoint]:
    return [parse_hostport(entry, KAFKA_DEFAULT_PORT) for entry in brokers.split(",") if entry.strip()]


def is_srv_uri(uri: str) -> bool:
    return uri.startswith("mongodb+srv://")


def mongodb_endpoints(uri: str) -> list[Endpoint]:
    """The hosts of a mongodb:// URI, without pymongo's parser: that one resolves mongodb+srv:// names in DNS
    and validates options, neither of which a port probe needs."""
    rest = uri.split("://", 1)[1] if "://" in uri else uri
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return [parse_hostport(entry, MONGODB_DEFAULT_PORT) for entry in hosts.split(",") if entry.strip()]


def any_answers(endpoints: Callable[[str], list[Endpoint]], address: str) -> bool:
    """True when any host of `address` accepts a connection; False, not an error, when it does not parse."""
    try:
        return any(endpoint.answers() for endpoint in endpoints(address))
    except ValueError:
        return False
