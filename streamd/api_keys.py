"""API keys: issued once by `streamd keys add`, stored hashed in one file, checked by the API in constant time.

A key reads `sdk_<id>_<secret>`: the id names the entry (it is listed, logged and revoked by), the secret is
32 random bytes from `secrets` and is shown once, when the key is made. The file keeps the id, the name,
the scopes, the creation time and the SHA-256 of the whole key, never the key itself, so a copy of the file
(a backup, a bug report) lets nobody in.

SHA-256 and not a slow password hash (bcrypt, scrypt): those exist to make guessing a human-chosen password
expensive. A 256-bit random secret cannot be guessed at any speed, and a slow hash would cost tens of
milliseconds of CPU on every request. The digests are compared with hmac.compare_digest, so the time a
comparison takes says nothing about how much of a guess was right.

The file is JSON, written whole to a temporary file of mode 0600 and renamed over the old one, so a reader
sees the old keys or the new ones, never half a file; writers (`streamd keys`) take a lock beside it.
API workers re-read it when it changes (KeyRing), so a revoked key stops working within about a second,
without a restart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from streamd.config import SCOPES, Config

log = logging.getLogger("streamd.api")

FILE_NAME = "api-keys.json"
TOKEN_PREFIX = "sdk"
ADMIN = "admin"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
ID = re.compile(r"[0-9a-f]{12}")
DIGEST = re.compile(r"[0-9a-f]{64}")
# A keys file of more is not one streamd wrote; reading it whole into every worker would be the mistake.
FILE_LIMIT = 4 * 1024 * 1024
# How often a worker looks at the file's inode, size and mtime: a revoked key lasts at most this long.
CHECK_SECONDS = 1.0


class KeysFileError(Exception):
    """The keys file cannot be used as it is; the message names the file and what to do."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    sha256: str
    created: str

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(self.sha256, digest(token))

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "sha256": self.sha256,
            "created": self.created,
        }


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def key_id(token: str) -> str | None:
    """The id a presented key claims, or None when it does not have a key's shape at all."""
    prefix, _, rest = token.partition("_")
    identifier, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not ID.fullmatch(identifier) or not secret:
        return None
    return identifier


def keys_path(config: Config) -> Path:
    return config.resolve_path(config.auth.keys_file) if config.auth.keys_file else config.state_path / FILE_NAME


# --- the file --------------------------------------------------------------------------------------------


def read_keys(path: Path) -> dict[str, ApiKey]:
    """Every key of the file by id; no file is no keys. A file streamd cannot use raises KeysFileError."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(FILE_LIMIT + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise KeysFileError(f"{path}: cannot be read ({exc.strerror}); check its owner and mode.") from None
    if len(data) > FILE_LIMIT:
        raise KeysFileError(f"{path}: is over {FILE_LIMIT // 1024 // 1024} MiB; it is not a keys file streamd wrote.")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise KeysFileError(f"{path}: is not JSON ({exc}); restore it or delete it and issue keys again.") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeysFileError(f'{path}: expected an object with a "keys" list, as `streamd keys add` writes.')
    keys = {}
    for index, entry in enumerate(entries):
        key = _entry(entry)
        if key is None:
            raise KeysFileError(
                f"{path}: keys[{index}] is not a key entry (id, name, scopes, sha256, created); "
                "fix or remove it, or revoke and issue the key again."
            )
        keys[key.id] = key
    return keys


def _entry(entry: object) -> ApiKey | None:
    if not isinstance(entry, dict):
        return None
    identifier, name, scopes = entry.get("id"), entry.get("name"), entry.get("scopes")
    sha256, created = entry.get("sha256"), entry.get("created", "")
    if not (isinstance(identifier, str) and ID.fullmatch(identifier) and isinstance(name, str)):
        return None
    if not (isinstance(sha256, str) and DIGEST.fullmatch(sha256) and isinstance(created, str)):
        return None
    if not isinstance(scopes, list) or not scopes or not all(scope in SCOPES for scope in scopes):
        return None
    return ApiKey(identifier, name, tuple(scopes), sha256, created)


def write_keys(path: Path, keys: Iterable[ApiKey]) -> None:
    """Replace the file atomically; it is created 0600, as it lets whoever can read it know who holds what."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = orjson.dumps({"keys": [key.as_dict() for key in keys]}, option=orjson.OPT_INDENT_2) + b"\n"
    # mkstemp creates the file 0600; the rename keeps that mode.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One `streamd keys` writer at a time: two adds at once must not each write the file without the other's key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def issue(path: Path, name: str, scopes: Iterable[str], now: datetime | None = None) -> tuple[ApiKey, str]:
    """Add a key named `name` with `scopes`; returns its entry and the key itself, which nothing keeps."""
    if not NAME.fullmatch(name):
        raise KeysFileError(
            f"key name {name!r}: expected a letter or digit, then up to 63 letters, digits, '_', '.', '@' or '-'."
        )
    wanted = tuple(dict.fromkeys(scopes))
    if not wanted:
        raise KeysFileError(f"a key needs at least one --scope ({', '.join(SCOPES)}).")
    unknown = [scope for scope in wanted if scope not in SCOPES]
    if unknown:
        raise KeysFileError(f"unknown scope {unknown[0]!r}; the scopes are {', '.join(SCOPES)}.")
    with locked(path):
        keys = read_keys(path)
        if any(key.name == name for key in keys.values()):
            raise KeysFileError(f"{path}: a key named {name!r} exists; revoke it first or choose another name.")
        identifier = secrets.token_hex(6)
        while identifier in keys:
            identifier = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}_{identifier}_{secrets.token_urlsafe(32)}"
        created = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
        key = ApiKey(identifier, name, wanted, digest(token), created)
        write_keys(path, [*keys.values(), key])
    return key, token


def revoke(path: Path, name_or_id: str) -> ApiKey:
    """Remove the key with that name or id; API workers drop it within CHECK_SECONDS."""
    with locked(path):
        keys = read_keys(path)
        found = [key for key in keys.values() if name_or_id in (key.name, key.id)]
        if not found:
            raise KeysFileError(f"{path}: no key has the name or id {name_or_id!r}; `streamd keys list` shows them.")
        write_keys(path, [key for key in keys.values() if key is not found[0]])
    return found[0]


# --- the API's view --------------------------------------------------------------------------------------


class KeyRing:
    """The keys one API worker accepts, re-read when the file changes (checked at most every CHECK_SECONDS).

    A file that cannot be read leaves no key valid until it is fixed: failing closed is the point of a key,
    and `streamd keys` never writes such a file (it writes whole files atomically).
    """

    def __init__(
        self, path: Path, clock: Callable[[], float] = time.monotonic, check_seconds: float = CHECK_SECONDS
    ) -> None:
        self.path = path
        self.clock = clock
        self.check_seconds = check_seconds
        self.keys: dict[str, ApiKey] = {}
        self.signature: tuple[int, int, int] | None = None
        self.checked_at: float | None = None
        self._lock = threading.Lock()
        self.refresh()

    def authenticate(self, token: str) -> ApiKey | None:
        """The key `token` is, or None. Ids are public (listed, logged); only the secret part is compared."""
        self.refresh()
        identifier = key_id(token)
        key = self.keys.get(identifier) if identifier is not None else None
        return key if key is not None and key.matches(token) else None

    def refresh(self) -> None:
        now = self.clock()
        if self.checked_at is not None and now - self.checked_at < self.check_seconds:
            return
        with self._lock:
            if self.checked_at is not None and now - self.checked_at < self.check_seconds:
                return
            self.checked_at = now
            signature = self._signature()
            if signature == self.signature:
                return
            self.signature = signature
            try:
                self.keys = read_keys(self.path)
            except KeysFileError as exc:
                self.keys = {}
                log.error("no API key is accepted until the keys file is fixed: %s", exc)
                return
            log.info("API keys read from %s: %d", self.path, len(self.keys))

    def _signature(self) -> tuple[int, int, int]:
        # The inode changes with every rename `streamd keys` does; mtime and size catch an edit in place.
        try:
            stat = self.path.stat()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                return (-1, -1, exc.errno)
            return (0, 0, 0)
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
