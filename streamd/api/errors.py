"""Every error the API answers with, and the one serializer that renders them all as JSON.

A body always has `status`, `title` and `description`; errors about the request also name the
offending `parameters`, so a client can tell which part of its request to fix without parsing prose.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import falcon
import orjson
from pymongo.errors import PyMongoError

from streamd.store import UNAVAILABLE

log = logging.getLogger("streamd.api")

# Echoing a 10 kB query value back would only make the error harder to read.
ECHO_LIMIT = 60


def shown(value: str) -> str:
    """A user-supplied value as it appears in an error description."""
    return repr(value if len(value) <= ECHO_LIMIT else value[:ECHO_LIMIT] + "…")


class BadParameters(falcon.HTTPBadRequest):
    """A request whose parameters the API cannot use; the body lists them under `parameters`."""

    def __init__(self, title: str, description: str, parameters: list[str]) -> None:
        super().__init__(title=title, description=description)
        self.parameters = parameters

    def to_dict(self, obj_type: type[MutableMapping[str, Any]] = dict) -> MutableMapping[str, Any]:
        body = super().to_dict(obj_type)
        body["parameters"] = self.parameters
        return body


class InvalidParameter(BadParameters):
    """One parameter with an unusable value; `problem` says what is expected."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__("Invalid parameter", f"{name}: {problem}", [name])


class UnknownParameters(BadParameters):
    """Query parameters no endpoint reads: rejected, so a typo or `source[$ne]` never passes silently."""

    def __init__(self, names: list[str], known: list[str]) -> None:
        plural = "s" if len(names) > 1 else ""
        description = (
            f"unknown query parameter{plural} {', '.join(shown(name) for name in names)}; "
            f"this endpoint accepts {', '.join(known) or 'no query parameters'}."
        )
        super().__init__("Unknown parameter", description, names)


class MessageNotFound(falcon.HTTPNotFound):
    def __init__(self, message_id: str) -> None:
        super().__init__(title="Message not found", description=f"no message has the id {shown(message_id)}.")


class StoreUnavailable(falcon.HTTPServiceUnavailable):
    def __init__(self, reason: str) -> None:
        super().__init__(
            title="Store unavailable",
            description=f"the message store cannot be reached ({reason}); retry shortly.",
            retry_after=5,
        )


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Always JSON, whatever the client's Accept header: one error format is easier to handle than two."""
    body = {"status": error.status_code, **error.to_dict()}
    resp.data = orjson.dumps(body)
    resp.content_type = falcon.MEDIA_JSON


def route_not_found(req: falcon.Request, resp: falcon.Response, error: Exception, params: dict) -> None:
    raise falcon.HTTPRouteNotFound(
        title="Not found",
        description=f"no resource at {shown(req.path)}; GET /openapi.json lists every route the API serves.",
    )


def unexpected_error(req: falcon.Request, resp: falcon.Response, error: Exception, params: dict) -> None:
    log.error("%s %s failed", req.method, req.relative_uri, exc_info=error)
    raise falcon.HTTPInternalServerError(description="the API hit an unexpected error; it is in the api log.")


def store_error(req: falcon.Request, resp: falcon.Response, error: Exception, params: dict) -> None:
    # Losing the store is an outage to wait out, not a bug in the request: 503 tells clients and load
    # balancers to retry, where a 500 would say the request itself broke something.
    timed_out = isinstance(error, PyMongoError) and error.timeout
    if timed_out or isinstance(error, UNAVAILABLE):
        log.warning("%s %s: store unreachable (%s)", req.method, req.path, type(error).__name__)
        raise StoreUnavailable("timed out" if timed_out else "no connection")
    unexpected_error(req, resp, error, params)
