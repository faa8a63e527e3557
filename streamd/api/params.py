"""Query and path parameters, validated into typed values before anything reaches MongoDB.

Every value ends as an int, a datetime or a plain str used as an equality value, so no request can
smuggle an operator (`source[$ne]=x` is an unknown parameter, `$ne` as a value is just a string).
User fields are filtered as `?data.<field>=<value>`: the field name must be one a stage could write
(streamd.stages.spec.FIELD_NAME: no `$`, no `.`), and the value is a literal, compared as the string
and, when it reads as one, as the JSON number or boolean it spells.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from streamd.api.errors import BadParameters, InvalidParameter, UnknownParameters, shown
from streamd.ids import is_stored_id
from streamd.stages.spec import FIELD_NAME
from streamd.store import DataValue

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Longer than any id, source or cursor we produce; anything longer is a mistake or an attack.
MAX_VALUE_LENGTH = 256

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)
_DIGITS = re.compile(r"[0-9]{1,4}")
CURSOR_PATTERN = rf"^[A-Za-z0-9_-]{{1,{MAX_VALUE_LENGTH}}}$"  # unpadded URL-safe base64, as Cursor.encode writes
_CURSOR_TOKEN = re.compile(CURSOR_PATTERN)
DATA_PREFIX = "data."
MAX_DATA_FILTERS = 5  # each one filters the index walk of /messages; more would only make a scan
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_BSON_INT = range(-(2**63), 2**63)

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
    """One page of GET /messages: newest first, optionally narrowed by source, time and user fields,
    in one collection (None: mongodb.collection)."""

    limit: int = DEFAULT_LIMIT
    before: Cursor | None = None
    source: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    collection: str | None = None
    data: tuple[tuple[str, tuple[DataValue, ...]], ...] = ()  # (user field, the values it may equal)

    PARAMETERS = ("limit", "before", "source", "since", "until", "collection", "data.<field>")

    @classmethod
    def from_params(cls, params: Params, collections: Sequence[str] = ()) -> MessageQuery:
        """The query of these parameters; `collections` are the names `collection` may take."""
        reject_unknown(params, cls.PARAMETERS)
        limit, before = single(params, "limit"), single(params, "before")
        source, since, until = single(params, "source"), single(params, "since"), single(params, "until")
        return cls(
            limit=DEFAULT_LIMIT if limit is None else parse_limit(limit),
            before=None if before is None else parse_cursor(before),
            source=source,
            since=None if since is None else parse_instant("since", since),
            until=None if until is None else parse_instant("until", until),
            collection=parse_collection(params, collections),
            data=parse_data_filters(params),
        )


def reject_unknown(params: Params, known: Sequence[str]) -> None:
    """Refuse parameters not in `known`; a `data.<field>` entry in it admits every name starting with `data.`,
    which parse_data_filters then checks one by one."""
    open_prefix = DATA_PREFIX if f"{DATA_PREFIX}<field>" in known else None
    unknown = sorted(name for name in set(params) - set(known) if not (open_prefix and name.startswith(open_prefix)))
    if unknown:
        raise UnknownParameters(unknown, list(known))


def parse_collection(params: Params, collections: Sequence[str]) -> str | None:
    """The `collection` parameter: one of `collections` (the main one and those route stages name), or None."""
    name = single(params, "collection")
    if name is None or name in collections:
        return name
    raise InvalidParameter("collection", f"expected one of {', '.join(collections)}, got {shown(name)}.")


def parse_data_filters(params: Params) -> tuple[tuple[str, tuple[DataValue, ...]], ...]:
    """Every `data.<field>=<value>` parameter, sorted by name: field names a stage could write, literal values."""
    names = sorted(name for name in params if name.startswith(DATA_PREFIX))
    for name in names:
        if not FIELD_NAME.fullmatch(name[len(DATA_PREFIX) :]):
            # Named in full under `parameters`, shortened in the sentence: the name is the client's own text.
            raise BadParameters(
                "Invalid parameter",
                f"{shown(name)}: expected data.<field> with a top-level field name (a letter or '_', then letters, "
                "digits, '_' or '-', at most 128).",
                [name],
            )
    if len(names) > MAX_DATA_FILTERS:
        raise InvalidParameter(names[MAX_DATA_FILTERS], f"more than {MAX_DATA_FILTERS} data.<field> filters.")
    return tuple((name[len(DATA_PREFIX) :], data_values(single(params, name) or "")) for name in names)


def data_values(text: str) -> tuple[DataValue, ...]:
    """What a user field must equal to match `text`: the string itself, and the number or boolean it spells."""
    if text in ("true", "false"):
        return text, text == "true"
    if _JSON_NUMBER.fullmatch(text):
        number: int | float = int(text) if text.lstrip("-").isdigit() else float(text)
        # BSON holds 64-bit integers and finite doubles; a value beyond them can only match as a string.
        if (isinstance(number, int) and number in _BSON_INT) or (isinstance(number, float) and math.isfinite(number)):
            return text, number
    return (text,)


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
