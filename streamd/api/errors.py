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


# --- POST /messages ---------------------------------------------------------------------------------


class IngestDisabled(falcon.HTTPMethodNotAllowed):
    def __init__(self) -> None:
        super().__init__(
            ["GET"],
            title="Ingest disabled",
            description="this server does not accept messages (ingest.enabled is false); "
            "set ingest.enabled: true to POST to /messages.",
        )


class UnsupportedBody(falcon.HTTPUnsupportedMediaType):
    def __init__(self, content_type: str | None) -> None:
        got = shown(content_type) if content_type else "no Content-Type"
        super().__init__(
            title="Unsupported Content-Type",
            description=f"POST /messages reads application/json (one message or an array of them) or "
            f"application/x-ndjson (one message per line), got {got}.",
        )


class LimitExceeded(falcon.HTTPError):
    """A request over one of the ingest limits; the body names the config key under `limit`."""

    def __init__(self, status: str, title: str, description: str, limit: str) -> None:
        super().__init__(status, title=title, description=description)
        self.limit = limit

    def to_dict(self, obj_type: type[MutableMapping[str, Any]] = dict) -> MutableMapping[str, Any]:
        body = super().to_dict(obj_type)
        body["limit"] = self.limit
        return body


class BodyTooLarge(LimitExceeded):
    def __init__(self, length: int | None, limit: int) -> None:
        # Without a Content-Length (chunked), reading stops one byte past the limit: the size stays unknown.
        size = "" if length is None else f"{length} bytes, "
        super().__init__(
            falcon.HTTP_413,
            "Body too large",
            f"the body is {size}over ingest.max_body_bytes ({limit}); send fewer messages per request.",
            "ingest.max_body_bytes",
        )


class BatchTooLong(LimitExceeded):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            falcon.HTTP_400,
            "Batch too long",
            f"the body holds {count} messages, over ingest.max_batch ({limit}); split it into smaller requests.",
            "ingest.max_batch",
        )


class BodyNotUsable(falcon.HTTPBadRequest):
    """A body from which no message can be read (empty, or JSON that does not parse)."""

    def __init__(self, title: str, description: str) -> None:
        super().__init__(title=title, description=description)


class IngestMisconfigured(falcon.HTTPInternalServerError):
    """The config the check or the producer needs cannot be used (a schema file gone, kafka.client refused)."""

    def __init__(self, problem: str) -> None:
        super().__init__(title="Ingest misconfigured", description=f"{problem} Fix the config and reload streamd.")


class MessagesRejected(falcon.HTTPBadRequest):
    """Every message of the request is invalid: nothing was produced; `rejected` says why, by index."""

    def __init__(self, rejected: list[dict[str, Any]]) -> None:
        count = len(rejected)
        super().__init__(
            title="No valid message",
            description=f"{'the message is' if count == 1 else f'all {count} messages are'} invalid and "
            "none was sent to Kafka; `rejected` gives the reason for each, by index.",
        )
        self.rejected = rejected

    def to_dict(self, obj_type: type[MutableMapping[str, Any]] = dict) -> MutableMapping[str, Any]:
        body = super().to_dict(obj_type)
        body["accepted"] = []
        body["rejected"] = self.rejected
        return body


class MessagesNotAccepted(falcon.HTTPServiceUnavailable):
    """Kafka did not acknowledge some valid messages in time: they are listed under `not_accepted`,
    beside those it did acknowledge (`accepted`) and the invalid ones (`rejected`)."""

    def __init__(
        self,
        accepted: list[dict[str, Any]],
        rejected: list[dict[str, Any]],
        not_accepted: list[dict[str, Any]],
        retry_after: int,
    ) -> None:
        super().__init__(
            title="Messages not accepted",
            description=f"Kafka did not acknowledge {len(not_accepted)} of the messages; send those listed "
            f"in `not_accepted` again after {retry_after} s, each with the id given there, so that a copy "
            "that reached Kafka after all is stored once.",
            retry_after=retry_after,
        )
        self.accepted, self.rejected, self.not_accepted = accepted, rejected, not_accepted

    def to_dict(self, obj_type: type[MutableMapping[str, Any]] = dict) -> MutableMapping[str, Any]:
        body = super().to_dict(obj_type)
        body.update(accepted=self.accepted, rejected=self.rejected, not_accepted=self.not_accepted)
        return body


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
