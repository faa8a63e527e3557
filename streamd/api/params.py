"""Query and path parameters, validated into typed values before anything reaches MongoDB.

Every value ends as an int, a datetime or a plain str used as an equality value, so no request can
smuggle an operator (`source[$ne]=x` is an unknown parameter, `$ne` as a value is just a string).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from streamd.api.errors import InvalidParameter, UnknownParameters, shown
from streamd.ids import is_stored_id

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Longer than any id, source or cursor we produce; anything longer is a mistake or an attack.
MAX_VALUE_LENGTH = 256

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)
_DIGITS = re.compile(r"[0-9]{1,4}")
_CURSOR_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_VALUE_LENGTH}}}")

Params = Mapping[str, str | list[str]]


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the sort key (timestamp, id) of its last message.

    Both parts are needed: many messages can share a millisecond, and only the id breaks the tie
    the same way the (timestamp desc, _id desc) sort does.
    """

    timestamp: datetime
    id: str

    def encode(self) -> str:
        # Whole milliseconds are exactly what BSON stores, so the round trip loses nothing.
        stamp = self.timestamp if self.timestamp.tzinfo else self.timestamp.replace(tzinfo=UTC)
        millis = (stamp - EPOCH) // MILLISECOND
        return base64.urlsafe_b64encode(orjson.dumps([millis, self.id])).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """The cursor `encode` made; ValueError for anything it could not have produced."""
        if not _CURSOR_TOKEN.fullmatch(token):
            raise ValueError("not a cursor token")
        decoded = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not (isinstance(decoded, list) and len(decoded) == 2):
            raise ValueError("not a cursor")
        millis, message_id = decoded
        if type(millis) is not int or not is_stored_id(message_id):
            raise ValueError("not a cursor")
        try:
            return cls(EPOCH + millis * MILLISECOND, message_id)
        except OverflowError:
            raise ValueError("cursor time out of range") from None


@dataclass(frozen=True)
class MessageQuery:
    """One page of GET /messages: newest first, optionally narrowed by source and time."""

    limit: int = DEFAULT_LIMIT
    before: Cursor | None = None
    source: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    PARAMETERS = ("limit", "before", "source", "since", "until")

    @classmethod
    def from_params(cls, params: Params) -> MessageQuery:
        reject_unknown(params, cls.PARAMETERS)
        limit, before = single(params, "limit"), single(params, "before")
        source, since, until = single(params, "source"), single(params, "since"), single(params, "until")
        return cls(
            limit=DEFAULT_LIMIT if limit is None else parse_limit(limit),
            before=None if before is None else parse_cursor(before),
            source=source,
            since=None if since is None else parse_instant("since", since),
            until=None if until is None else parse_instant("until", until),
        )


def reject_unknown(params: Params, known: Sequence[str]) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise UnknownParameters(unknown, list(known))


def single(params: Params, name: str) -> str | None:
    """The one value of a parameter, or None when absent; repeated, empty or huge values are errors."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        raise InvalidParameter(name, "given more than once; pass it at most once.")
    if not value:
        raise InvalidParameter(name, "is empty; give it a value or leave it out.")
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidParameter(name, f"is longer than {MAX_VALUE_LENGTH} characters.")
    return value


def parse_limit(text: str) -> int:
    # Digits only: int() would also take "+5", " 5", "1_000" and non-ASCII digits.
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidParameter("limit", f"expected a whole number from 1 to {MAX_LIMIT}, got {shown(text)}.")
    return int(text)


def parse_cursor(text: str) -> Cursor:
    try:
        return Cursor.decode(text)
    except ValueError:  # binascii.Error and orjson.JSONDecodeError are ValueErrors too
        raise InvalidParameter(
            "before", "is not a cursor this API returned; pass the `next` value of the previous page."
        ) from None


def parse_instant(name: str, text: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; without an offset it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return ceil_to_millisecond(value.astimezone(UTC))
    except (ValueError, OverflowError):
        raise InvalidParameter(
            name, f"expected an ISO 8601 time such as 2024-05-01T12:00:00Z, got {shown(text)}."
        ) from None


def ceil_to_millisecond(value: datetime) -> datetime:
    # BSON keeps milliseconds and pymongo truncates the rest, which would move `since` earlier and
    # let in a message from before it. Stored times are whole milliseconds, so rounding the bound up
    # keeps both `timestamp >= since` and `timestamp < until` exact.
    extra = value.microsecond % 1000
    return value if extra == 0 else value + timedelta(microseconds=1000 - extra)


def parse_id(text: str) -> str:
    if not is_stored_id(text):
        raise InvalidParameter(
            "id",
            f"expected a message id (letters, digits and . _ : -, at most 128) or ~<topic>:<partition>:<offset>, "
            f"got {shown(text)}.",
        )
    return text
