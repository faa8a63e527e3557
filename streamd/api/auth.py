"""Who may call what: API keys and their scopes, checked before any resource runs, and a rate limit per key.

Each resource says which scope each of its methods needs, in a class attribute beside its responders:

    class MessagesResource:
        scopes = {"GET": READ, "POST": INGEST}

HEAD needs what GET needs unless declared apart. A method a resource does not declare needs `admin`, so a
responder added without a declaration fails closed instead of open. PUBLIC opens a method to everyone
(/health alone: a liveness probe must answer whoever asks; the dashboard reads like the data it shows). `admin`
holds every scope.

Whether keys are needed at all is `auth.required`: `auto` asks for them unless the API binds a loopback
address, where only this machine's users reach it. `auth.public_scopes` opens chosen scopes (say `read`)
to requests without a key; a request that does send a key is still checked, and counted against it.

Keys come as `Authorization: Bearer <key>`, or as the password of `Authorization: Basic` (any user name),
which is what Prometheus's `basic_auth` and most exporters' clients send. Keys never travel in URLs:
those end up in logs and browser histories.

The rate limit is a token bucket per key, shared by every Gunicorn worker of the API (Buckets): a key
gets `auth.rate_limit` requests per second in all, whichever workers its connections land on. Requests
without a key (public scopes, or auth off) are not limited: put a proxy in front for per-address limits.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import ipaddress
import math
import mmap
import struct
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import falcon

from streamd.api_keys import ADMIN, ApiKey, KeyRing, keys_path
from streamd.config import Config

PUBLIC = "public"
READ = "read"
INGEST = "ingest"
METRICS = "metrics"
# Served on auth.metrics_port when it is set, and only there for /metrics.
METRICS_PORT_ROUTES = ("/metrics", "/health")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat it as shared


def keys_required(config: Config) -> bool:
    """auth.required, with `auto` decided by api.host: a loopback bind may stay open, anything else may not."""
    required = config.auth.required
    return not is_loopback(config.api.host) if required == "auto" else bool(required)


def scope_of(resource: object, method: str) -> str:
    """The scope a request needs, from the resource's `scopes` declaration; undeclared means admin.

    (Falcon runs no resource middleware for a path no route matches: that is a 404 for everyone.)
    """
    declared = getattr(resource, "scopes", {})
    if method in declared:
        return declared[method]
    if method == "HEAD" and "GET" in declared:
        return declared["GET"]
    return ADMIN


def presented_key(header: str) -> str | None:
    """The key in an Authorization header (Bearer, or the password of Basic), or None for any other shape."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None


# --- the answers -----------------------------------------------------------------------------------------


def _challenges(error: str | None = None) -> list[str]:
    # Basic too, and first (Chromium reads only the first challenge of the header): a browser answers it with its
    # login prompt (the key as the password), then sends it with every request of the page, EventSource's
    # included; Prometheus's basic_auth answers it the same way.
    detail = f', error="{error}"' if error else ""
    return ['Basic realm="streamd", charset="UTF-8"', f'Bearer realm="streamd"{detail}']


class KeyMissing(falcon.HTTPUnauthorized):
    def __init__(self, scope: str) -> None:
        super().__init__(
            title="API key required",
            description=f"this request needs an API key with scope {scope}; send it as `Authorization: Bearer <key>` "
            "(`streamd keys add NAME --scope SCOPE` issues one).",
            challenges=_challenges(),
        )


class KeyInvalid(falcon.HTTPUnauthorized):
    def __init__(self) -> None:
        super().__init__(
            title="API key not valid",
            description="the API key sent is unknown, revoked or mistyped; `streamd keys list` shows the "
            "valid ones by name and id.",
            challenges=_challenges("invalid_token"),
        )


class ScopeMissing(falcon.HTTPForbidden):
    """A valid key without the scope the request needs; the body names that scope under `scope`."""

    def __init__(self, key: ApiKey, scope: str, req: falcon.Request) -> None:
        super().__init__(
            title="Scope missing",
            description=f"the API key {key.name!r} ({key.id}) has scope {', '.join(key.scopes)}, but "
            f"{req.method} {req.uri_template or req.path} needs scope {scope}; issue a key with --scope {scope}.",
        )
        self.scope = scope

    def to_dict(self, obj_type: type[MutableMapping[str, Any]] = dict) -> MutableMapping[str, Any]:
        body = super().to_dict(obj_type)
        body["scope"] = self.scope
        return body


class RateLimited(falcon.HTTPTooManyRequests):
    def __init__(self, key: ApiKey, wait: float, rate: float) -> None:
        seconds = max(1, math.ceil(wait))
        super().__init__(
            title="Too many requests",
            description=f"the API key {key.name!r} made more than {rate:g} requests per second "
            f"(auth.rate_limit); retry after {seconds} s.",
            retry_after=seconds,
        )


class NotOnThisPort(falcon.HTTPNotFound):
    def __init__(self, description: str) -> None:
        super().__init__(title="Not found", description=description)


# --- the rate limit --------------------------------------------------------------------------------------


class Buckets:
    """Every key's bucket (tokens left, when counted), in memory shared by the workers of one Gunicorn master.

    The master makes it before it forks: an anonymous MAP_SHARED mapping is the same memory in every
    worker. Updates are serialized by a POSIX record lock on `lock_path` (the kernel drops it when its
    holder dies, so a worker killed mid-request cannot wedge the others) and, within one worker, by a
    thread lock (record locks belong to a process, not to a thread). Without `lock_path` it serves one
    process. A slot is the key's id as a number (ids are 12 hex digits) and two floats; in a table full of
    keys (more than SLOTS of them in one server's life) a newer key shares the bucket of its home slot.
    """

    SLOTS = 4096
    SLOT = struct.Struct("=Qdd")

    def __init__(self, lock_path: Path | None = None) -> None:
        self.memory = mmap.mmap(-1, self.SLOTS * self.SLOT.size)
        self._thread_lock = threading.Lock()
        self._lock_file = None
        if lock_path is not None:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(lock_path, "a+b")  # noqa: SIM115 - held for the server's life

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_file is None:
                yield
                return
            fcntl.lockf(self._lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._lock_file, fcntl.LOCK_UN)

    def slot(self, key_id: str) -> tuple[int, int]:
        """(offset, tag) of the key's slot: its own, a free one, or, in a full table, its home slot and owner."""
        tag = int(key_id, 16) + 1  # 0 marks a free slot
        home = tag % self.SLOTS
        for probe in range(self.SLOTS):
            offset = ((home + probe) % self.SLOTS) * self.SLOT.size
            found = self.SLOT.unpack_from(self.memory, offset)[0]
            if found in (tag, 0):
                return offset, tag
        # Full: take the home slot's owner for this key's too, so that both share one bucket.
        offset = home * self.SLOT.size
        return offset, self.SLOT.unpack_from(self.memory, offset)[0]

    def get(self, key_id: str) -> tuple[float, float] | None:
        offset, tag = self.slot(key_id)
        found, tokens, then = self.SLOT.unpack_from(self.memory, offset)
        return (tokens, then) if found == tag else None

    def put(self, key_id: str, tokens: float, then: float) -> None:
        offset, tag = self.slot(key_id)
        self.SLOT.pack_into(self.memory, offset, tag, tokens, then)


class RateLimiter:
    """A token bucket per key: `burst` requests at once, then `rate` per second.

    Only keys that authenticated get a bucket, so the table is as large as the keys file whoever calls.
    The default clock, CLOCK_MONOTONIC, is one clock for every process of the machine, which shared
    buckets need.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, buckets: Buckets | None = None
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.buckets = buckets if buckets is not None else Buckets()

    def wait(self, key_id: str) -> float:
        """0 when the request may go (a token is taken), else the seconds until a token is back."""
        with self.buckets.locked():
            now = self.clock()
            tokens, then = self.buckets.get(key_id) or (float(self.burst), now)
            tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate)
            if tokens >= 1:
                self.buckets.put(key_id, tokens - 1, now)
                return 0.0
            self.buckets.put(key_id, tokens, now)
            return (1 - tokens) / self.rate


# --- the middleware --------------------------------------------------------------------------------------


class Authorization:
    """Falcon middleware: authenticates, authorizes and rate-limits each request once it is routed."""

    def __init__(
        self,
        config: Config,
        keys: KeyRing | None = None,
        limiter: RateLimiter | None = None,
        buckets: Buckets | None = None,
    ) -> None:
        """`buckets` shares the rate limit with other processes (server.py); `keys` and `limiter` are for tests."""
        self.required = keys_required(config)
        self.public = frozenset(config.auth.public_scopes)
        self.keys = keys if keys is not None else KeyRing(keys_path(config))
        auth = config.auth
        if limiter is None and auth.rate_limit > 0:
            limiter = RateLimiter(auth.rate_limit, auth.rate_burst, buckets=buckets)
        self.limiter = limiter
        self.metrics_port = str(auth.metrics_port) if auth.metrics_port else None

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, Any]
    ) -> None:
        self.check_port(req)
        scope = scope_of(resource, req.method)
        req.context.api_key = None
        if scope == PUBLIC or not self.required:
            return
        header = req.get_header("Authorization")
        if header is None:
            if scope in self.public:
                return
            raise KeyMissing(scope)
        token = presented_key(header)
        key = self.keys.authenticate(token) if token is not None else None
        if key is None:
            raise KeyInvalid()
        if not key.allows(scope) and scope not in self.public:
            raise ScopeMissing(key, scope, req)
        if self.limiter is not None:
            wait = self.limiter.wait(key.id)
            if wait > 0:
                raise RateLimited(key, wait, self.limiter.rate)
        req.context.api_key = key

    def check_port(self, req: falcon.Request) -> None:
        """With auth.metrics_port set, /metrics is served there alone, and that port serves nothing else but /health."""
        if self.metrics_port is None:
            return
        # Gunicorn's SERVER_PORT is the port of the listening socket the request came in on, not the Host header's.
        on_metrics_port = req.env.get("SERVER_PORT") == self.metrics_port
        route = req.uri_template
        if on_metrics_port and route not in METRICS_PORT_ROUTES:
            raise NotOnThisPort(f"port {self.metrics_port} (auth.metrics_port) serves only /metrics and /health.")
        if not on_metrics_port and route == "/metrics":
            raise NotOnThisPort(f"/metrics is served on port {self.metrics_port} (auth.metrics_port).")
