"""GET /openapi.json: the API's contract, an OpenAPI 3.1 document built from the values the code checks with.

Bounds, patterns and names come from the modules that enforce them (params.py, ids.py, the config of this
process), never copied as numbers, so the document cannot drift from what a request is held to. A route
without an operation here, or an operation without a route, fails tests/test_openapi.py; every answer's
status, type and body are fuzzed against this document by tests/test_openapi_fuzz.py.

What the document leaves out on purpose:
- 405 Method Not Allowed (JSON, with an `Allow` header) answers any method a path lacks. OpenAPI describes
  the methods a path has, so it is said here once, in `info.description`, and not on every operation.
- OPTIONS, which Falcon answers for every route by itself (200, `Allow`, no body).
- 500, which is a bug: the fuzz test fails on any 5xx the document does not promise (503 is promised where
  the store or Kafka can be away).

Bodies are JSON Schema 2020-12, the dialect of OpenAPI 3.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import falcon
import orjson

from streamd.api.aggregates import FIXED as AGGREGATE_PARAMETERS
from streamd.api.auth import PUBLIC, READ, keys_required
from streamd.api.dashboard import PAGE, Asset
from streamd.api.ingest import NDJSON
from streamd.api.params import (
    CURSOR_PATTERN,
    DATA_PREFIX,
    DEFAULT_LIMIT,
    MAX_DATA_FILTERS,
    MAX_LIMIT,
    MAX_VALUE_LENGTH,
    reject_unknown,
)
from streamd.api.stats import RATE_WINDOWS, SINCE_START
from streamd.config import SCOPES, Config
from streamd.ids import STORED_ID_PATTERN
from streamd.message_schema import builtin_schema
from streamd.metrics.exposition import CONTENT_TYPE as METRICS_CONTENT_TYPE
from streamd.stages.spec import FIELD_NAME

OPENAPI_VERSION = "3.1.0"
JSON = falcon.MEDIA_JSON
EVENT_STREAM = "text/event-stream"
DATA_FIELD_PATTERN = "^" + DATA_PREFIX.replace(".", r"\.") + FIELD_NAME.pattern + "$"


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def error(description: str, retry: bool = False) -> dict[str, Any]:
    """A response whose body is the API's one error shape (errors.serialize_error)."""
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": ref("schemas", "Error")}}}
    if retry:
        response["headers"] = {"Retry-After": ref("headers", "Retry-After")}
    return response


def json_body(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def text(minimum: int = 1) -> dict[str, Any]:
    """A query value as params.single takes it: present means non-empty and at most MAX_VALUE_LENGTH long."""
    return {"type": "string", "minLength": minimum, "maxLength": MAX_VALUE_LENGTH}


def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error the API answers with, Gunicorn's parser errors included.",
        "required": ["status", "title"],
        "properties": {
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "parameters": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The query or path parameters (or header) to fix, for a 400 about them.",
            },
            "scope": {"enum": list(SCOPES), "description": "The scope the request needs, for a 403."},
            "limit": {"type": "string", "description": "The config key of the limit the request is over."},
            "accepted": {"type": "array", "items": ref("schemas", "AcceptedMessage")},
            "rejected": {"type": "array", "items": ref("schemas", "RejectedMessage")},
            "not_accepted": {
                "type": "array",
                "items": ref("schemas", "UnacceptedMessage"),
                "description": "Valid messages Kafka did not acknowledge in time: send them again, with these ids.",
            },
        },
        "additionalProperties": False,
    },
    "AcceptedMessage": {
        "type": "object",
        "required": ["index", "id"],
        "properties": {
            "index": {"type": "integer", "minimum": 0, "description": "Where it was in the request, from 0."},
            "id": {"type": "string", "pattern": STORED_ID_PATTERN, "description": "The id it is stored under."},
            "filtered_by": {"type": "string", "description": "The filter stage the consumer will drop it at."},
        },
        "additionalProperties": False,
    },
    "RejectedMessage": {
        "type": "object",
        "required": ["index", "reason", "error"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "reason": {"type": "string", "description": "The dead-letter reason a consumer would give (schema, …)."},
            "error": {"type": "string", "description": "What is wrong with it, in one sentence."},
        },
        "additionalProperties": False,
    },
    "UnacceptedMessage": {
        "type": "object",
        "required": ["index", "id", "error"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "id": {
                "type": ["string", "null"],
                "description": "The id to send it again with (null without consumer.id_field).",
            },
            "error": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "Ingested": {
        "type": "object",
        "required": ["accepted", "rejected"],
        "properties": {
            "accepted": {"type": "array", "items": ref("schemas", "AcceptedMessage")},
            "rejected": {"type": "array", "items": ref("schemas", "RejectedMessage")},
        },
        "additionalProperties": False,
    },
    "Message": {
        "type": "object",
        "required": ["id", "content", "timestamp", "source", "ingested_at", "kafka", "data"],
        "properties": {
            "id": {"type": "string", "pattern": STORED_ID_PATTERN},
            "content": {"description": "The message's text, as sent."},
            "timestamp": {**NULLABLE_TIME, "description": "Event time, whole milliseconds, UTC (`Z`)."},
            "source": {"description": "Who sent the message (null when it named no one)."},
            "ingested_at": {**NULLABLE_TIME, "description": "When the consumer stored it."},
            "kafka": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["topic", "partition", "offset"],
                        "properties": {
                            "topic": {"type": "string"},
                            "partition": {"type": "integer", "minimum": 0},
                            "offset": {"type": "integer", "minimum": 0},
                        },
                        "additionalProperties": False,
                    },
                    {"type": "null"},
                ],
                "description": "Where the message was read (null for a document another program wrote).",
            },
            "data": {"type": "object", "description": "Every other field of the payload, as the stages left it."},
        },
        "additionalProperties": False,
    },
    "MessagePage": {
        "type": "object",
        "required": ["count", "data", "next"],
        "properties": {
            "count": {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT},
            "data": {"type": "array", "items": ref("schemas", "Message"), "maxItems": MAX_LIMIT},
            "next": {
                "type": ["string", "null"],
                "pattern": CURSOR_PATTERN,
                "description": "Pass it as `before` for the next page; null on the last page.",
            },
        },
        "additionalProperties": False,
    },
    "MessageEvent": {
        "type": "object",
        "description": "One Server-Sent Event of GET /stream, its fields as an EventSource reads them.",
        "properties": {
            "event": {"const": "message"},
            "id": {"type": "string", "pattern": CURSOR_PATTERN, "description": "Send it back as Last-Event-ID."},
            "data": {"type": "string", "contentMediaType": JSON, "contentSchema": ref("schemas", "Message")},
            "retry": {"type": "integer", "minimum": 0, "description": "Milliseconds to wait before reconnecting."},
        },
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
        "additionalProperties": False,
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "checks": {
                "type": "object",
                "required": ["kafka", "store"],
                "properties": {name: {"type": "string"} for name in ("kafka", "store", "offsets", "consumers")},
                "additionalProperties": False,
                "description": "`ok`, or what is wrong, per dependency.",
            },
        },
        "additionalProperties": False,
    },
    "PartitionLag": {
        "type": "object",
        "required": ["topic", "partition", "committed", "end", "lag", "beyond_end"],
        "properties": {
            "topic": {"type": "string"},
            "partition": {"type": "integer", "minimum": 0},
            "committed": {"type": ["integer", "null"]},
            "end": {"type": "integer"},
            "lag": {"type": "integer"},
            "beyond_end": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    "Stats": {
        "type": "object",
        "description": "A part that could not be read is null and named in `errors`.",
        "required": [
            "at",
            "totals",
            "rates",
            "sources",
            "lag",
            "dead_letters",
            "since_start",
            "stages",
            "analytics",
            "supervisor",
            "children",
            "errors",
        ],
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "totals": {
                "type": ["object", "null"],
                "required": ["messages", "collections"],
                "properties": {
                    "messages": {"type": "integer", "minimum": 0},
                    "collections": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                },
            },
            "rates": {
                "type": ["object", "null"],
                "required": list(RATE_WINDOWS),
                "properties": {name: {"type": "number", "minimum": 0} for name in RATE_WINDOWS},
                "additionalProperties": False,
            },
            "sources": {
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "required": ["source", "count"],
                    "properties": {"count": {"type": "integer", "minimum": 0}},
                },
            },
            "lag": {
                "type": ["object", "null"],
                "required": ["total", "partitions", "problems"],
                "properties": {
                    "total": {"type": "integer"},
                    "partitions": {"type": "array", "items": ref("schemas", "PartitionLag")},
                    "problems": {"type": "array", "items": {"type": "string"}},
                },
            },
            "dead_letters": {
                "type": "object",
                "required": ["topic", "messages", "since_start"],
                "properties": {
                    "topic": {"type": "string"},
                    "messages": {"type": ["integer", "null"]},
                    "since_start": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
            "since_start": {
                "type": "object",
                "required": list(SINCE_START),
                "properties": {name: {"type": "integer", "minimum": 0} for name in SINCE_START},
            },
            "stages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "kind", "filtered", "failed"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "filtered": {"type": "integer", "minimum": 0},
                        "failed": {"type": "integer", "minimum": 0},
                    },
                },
            },
            "analytics": {
                "type": ["object", "null"],
                "required": ["group", "lag", "partitions", "since_start"],
                "properties": {
                    "group": {"type": "string"},
                    "lag": {"type": ["integer", "null"]},
                    "partitions": {"type": "array", "items": ref("schemas", "PartitionLag")},
                    "since_start": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
            "supervisor": {
                "type": ["object", "null"],
                "required": ["pid", "uptime", "stopping"],
                "properties": {
                    "pid": {"type": "integer"},
                    "uptime": {"type": "number"},
                    "stopping": {"type": "boolean"},
                },
            },
            "children": {
                "type": "array",
                "items": {"type": "object", "required": ["name", "state"], "properties": {"name": {"type": "string"}}},
            },
            "errors": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Aggregate": {
        "type": "object",
        "required": ["start", "end", "group", "count", "fields", "late"],
        "properties": {
            "start": NULLABLE_TIME,
            "end": NULLABLE_TIME,
            "group": {"type": "object", "description": "The analytics.group_by values of this group."},
            "count": {"type": "integer", "minimum": 0},
            "fields": {
                "type": "object",
                "description": "Per analytics.fields field: count, min, max, sum and their mean (null for none).",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"mean": {"type": ["number", "null"]}},
                },
            },
            "late": {"type": "integer", "minimum": 0},
        },
        "additionalProperties": False,
    },
}

HEADERS: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "ETag": {"description": "The file's version; send it back as If-None-Match.", "schema": {"type": "string"}},
    "WWW-Authenticate": {
        "description": "How to send a key: Bearer (and Basic for /metrics).",
        "schema": {"type": "string"},
    },
}

RESPONSES: dict[str, Any] = {
    "BadRequest": error(
        "A parameter is unknown, repeated, empty, too long or out of its bounds; `parameters` names it."
    ),
    "StoreUnavailable": error("The message store cannot be reached right now.", retry=True),
    # Gunicorn's parser answers these (streamd.api.worker makes them JSON) before any route sees the request.
    "UriTooLong": error("The request line is longer than Gunicorn's limit_request_line."),
    "HeadersTooLarge": error("A header is larger than Gunicorn's limit_request_field_size, or there are too many."),
    "Unauthorized": {
        **error("No API key was sent, or the one sent is unknown or revoked."),
        "headers": {"WWW-Authenticate": ref("headers", "WWW-Authenticate")},
    },
    "Forbidden": error("The API key lacks the scope this operation needs; `scope` names it."),
    "TooManyRequests": error("The API key is over auth.rate_limit.", retry=True),
}

SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key issued by `streamd keys add NAME --scope SCOPE`, as `Authorization: Bearer <key>`.",
    },
    "apiKeyAsPassword": {
        "type": "http",
        "scheme": "basic",
        "description": "The same key as the password of Basic auth (any user name), as Prometheus sends it.",
    },
}

TIME_RANGE = (
    query(
        "since",
        "Only messages at or after this time (ISO 8601; without an offset, UTC).",
        {**text(), "format": "date-time"},
    ),
    query(
        "until", "Only messages before this time (ISO 8601; without an offset, UTC).", {**text(), "format": "date-time"}
    ),
)
LIMIT = query(
    "limit",
    "Most items in the answer.",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
)


def collection_parameter(collections: Sequence[str]) -> dict[str, Any]:
    return query(
        "collection",
        "The collection to read: mongodb.collection (the default) or one a route stage writes.",
        {"type": "string", "enum": list(collections)},
    )


def operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    parameters: Iterable[dict[str, Any]] = (),
    **extra: Any,
) -> dict[str, Any]:
    """One operation; every operation refuses unknown query parameters with a 400, and a request Gunicorn
    will not read with a 414 or 431."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": list(parameters),
        "responses": {
            "400": ref("responses", "BadRequest"),
            "414": ref("responses", "UriTooLong"),
            "431": ref("responses", "HeadersTooLarge"),
            **responses,
        },
        **extra,
    }


def ingest_operation(config: Config) -> dict[str, Any]:
    """POST /messages: what the request may hold and every answer (streamd/api/ingest.py).

    A lone message is described by the schema every message is held to (`Payload`); in a batch each item is
    judged on its own and a bad one is refused by index in a 202, so a batch's items are any JSON value.
    """
    batch = {
        "type": "array",
        "minItems": 1,
        "maxItems": config.ingest.max_batch,
        "items": {"description": "One message, judged on its own against `Payload`: refused by index if it fails."},
    }
    return operation(
        "ingestMessages",
        "Send messages to kafka.topic: each checked as the consumers would, answered once Kafka acknowledged it.",
        {
            "202": json_body(
                "Kafka acknowledged every valid message; invalid ones are in `rejected`.", ref("schemas", "Ingested")
            ),
            "400": error(
                "No message could be read (empty body, JSON that does not parse, over ingest.max_batch: `limit`), or "
                "every message is invalid (`rejected`, by index): nothing was sent."
            ),
            "413": error("The body is over ingest.max_body_bytes (`limit`)."),
            "415": error("The Content-Type is neither application/json nor application/x-ndjson."),
            "503": error(
                "Kafka did not acknowledge some valid messages within ingest.ack_timeout (or the queue is full): "
                "`not_accepted` lists them, to send again with their ids; the store keeps one per id.",
                retry=True,
            ),
        },
        requestBody={
            "required": True,
            "content": {
                JSON: {"schema": {"oneOf": [ref("schemas", "Payload"), batch]}},
                NDJSON: {
                    "schema": {
                        **batch,
                        "description": "One message per line (blank lines skipped), each judged as an item of a batch.",
                    }
                },
            },
        },
    )


def message_paths(collections: Sequence[str]) -> dict[str, Any]:
    collection = collection_parameter(collections)
    data_filters = {
        "name": "data",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "description": f"`data.<field>=<value>`: equality on a top-level user field, matched as text and as the "
        f"number or boolean it spells; at most {MAX_DATA_FILTERS}.",
        "schema": {
            "type": "object",
            "propertyNames": {"pattern": DATA_FIELD_PATTERN},
            "additionalProperties": text(),
            "maxProperties": MAX_DATA_FILTERS,
        },
    }
    listing = operation(
        "listMessages",
        "Stored messages, newest first, one page at a time.",
        {
            "200": json_body("One page of messages.", ref("schemas", "MessagePage")),
            "503": ref("responses", "StoreUnavailable"),
        },
        [
            LIMIT,
            query(
                "before",
                "The `next` value of the previous page.",
                {"type": "string", "pattern": CURSOR_PATTERN},
            ),
            query("source", "Only messages of this source (a literal, never an operator).", text()),
            *TIME_RANGE,
            collection,
            data_filters,
        ],
    )
    one = operation(
        "getMessage",
        "One message by id: in `collection`, or else in the main collection, then in each routed one.",
        {
            "200": json_body("The message.", ref("schemas", "Message")),
            "404": error("No message has this id."),
            "503": ref("responses", "StoreUnavailable"),
        },
        [
            {
                "name": "message_id",
                "in": "path",
                "required": True,
                "description": "A message id, or ~<topic>:<partition>:<offset> for a message sent without one.",
                "schema": {"type": "string", "pattern": STORED_ID_PATTERN},
            },
            collection,
        ],
    )
    stream = operation(
        "streamMessages",
        "New messages as Server-Sent Events; each response ends after api.stream_seconds and the client reconnects.",
        {
            "200": {
                "description": "Events `id: <cursor>` and `data: <message JSON>`, newest last, after one "
                "`retry: <ms>`; each event's schema describes one event, as OpenAPI 3.2's `itemSchema` would.",
                "content": {EVENT_STREAM: {"schema": ref("schemas", "MessageEvent")}},
            },
            "503": error("The store cannot be reached, or this worker serves its api.streams_per_worker feeds.", True),
        },
        [
            query("source", "Only messages of this source.", text()),
            collection,
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "The id of the last event received: the feed resumes after it (empty: from the newest).",
                "schema": {"type": "string", "pattern": f"^(?:{CURSOR_PATTERN[1:-1]})?$"},
            },
        ],
    )
    return {"/messages": {"get": listing}, "/messages/{message_id}": {"get": one}, "/stream": {"get": stream}}


def aggregate_paths(config: Config) -> dict[str, Any]:
    analytics = config.analytics
    groups = [name for name in analytics.group_by if name not in AGGREGATE_PARAMETERS]
    listing = operation(
        "listAggregates",
        "The analyzer's window aggregates, newest first.",
        {
            "200": json_body(
                "The windows of one length.",
                {
                    "type": "object",
                    "required": ["window", "aggregates"],
                    "properties": {
                        "window": {"enum": list(analytics.windows)},
                        "aggregates": {"type": "array", "items": ref("schemas", "Aggregate"), "maxItems": MAX_LIMIT},
                    },
                    "additionalProperties": False,
                },
            ),
            "503": ref("responses", "StoreUnavailable"),
        },
        [
            query(
                "window",
                "The window length (analytics.windows; the first by default).",
                {"type": "string", "enum": list(analytics.windows)},
            ),
            *(query(name, f"Only the groups whose `{name}` is this value.", text()) for name in groups),
            *TIME_RANGE,
            LIMIT,
        ],
    )
    return {"/aggregates": {"get": listing}}


def probe_paths() -> dict[str, Any]:
    health = {"200": json_body("The API process answers.", ref("schemas", "Health"))}
    ready = {
        "200": json_body("Kafka and the store answer, and a consumer runs.", ref("schemas", "Readiness")),
        "503": json_body("What is not ready, per check.", ref("schemas", "Readiness")),
    }
    return {
        "/health": {
            "get": operation("health", "Liveness: the API process answers.", health),
            "head": operation("healthHead", "Liveness, without a body.", health),
        },
        "/ready": {
            "get": operation("ready", "Readiness: Kafka, the store, the offsets and the consumers.", ready),
            "head": operation("readyHead", "Readiness, without a body.", ready),
        },
    }


def observation_paths(config: Config) -> dict[str, Any]:
    metrics = {
        "200": {
            "description": "The Prometheus text exposition format.",
            "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
        }
    }
    if config.auth.metrics_port:
        metrics = {"404": error(f"/metrics is served on port {config.auth.metrics_port} (auth.metrics_port).")}
    return {
        "/stats": {
            "get": operation(
                "stats", "The pipeline in one document.", {"200": json_body("The statistics.", ref("schemas", "Stats"))}
            )
        },
        "/metrics": {"get": operation("metrics", "Prometheus metrics of every streamd process.", metrics)},
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document.",
                {"200": json_body("The OpenAPI 3.1 document of this API.", {"type": "object"})},
            )
        },
    }


def dashboard_paths(assets: Mapping[str, Asset]) -> dict[str, Any]:
    cached = {"ETag": ref("headers", "ETag")}
    not_modified = {"description": "The file has not changed since the ETag sent in If-None-Match.", "headers": cached}
    page = assets[PAGE].content_type
    return {
        "/": {
            "get": operation(
                "dashboard",
                "The dashboard page.",
                {
                    "200": {
                        "description": "The page.",
                        "headers": cached,
                        "content": {page: {"schema": {"type": "string"}}},
                    },
                    "304": not_modified,
                },
            )
        },
        "/static/{name}": {
            "get": operation(
                "dashboardFile",
                "A file of the dashboard (script, stylesheet, icon).",
                {
                    "200": {
                        "description": "The file.",
                        "headers": cached,
                        "content": {
                            content_type: {"schema": {"type": "string"}}
                            for content_type in sorted({asset.content_type for asset in assets.values()})
                        },
                    },
                    "304": not_modified,
                    "404": error("The dashboard has no such file."),
                },
                [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": "A file name, e.g. " + ", ".join(sorted(assets)) + ".",
                        "schema": {"type": "string", "examples": sorted(assets)},
                    }
                ],
            )
        },
    }


def guard(operation: dict[str, Any], scope: str, config: Config) -> None:
    """Who may call `operation`, as auth.Authorization decides it: open, or a key with `scope` and its answers."""
    if scope == PUBLIC or not keys_required(config):
        operation["security"] = []
        return
    public = scope in config.auth.public_scopes
    # A public scope serves requests without a key, but a key that is sent is still checked.
    operation["security"] = [{}] * public + [{"apiKey": []}, {"apiKeyAsPassword": []}]
    operation["description"] = f"Needs an API key with scope `{scope}`" + (" when one is sent." if public else ".")
    answers = operation["responses"]
    answers["401"] = ref("responses", "Unauthorized")
    if not public:
        answers["403"] = ref("responses", "Forbidden")
    if config.auth.rate_limit > 0:
        answers["429"] = ref("responses", "TooManyRequests")


def build(
    config: Config,
    collections: Sequence[str],
    assets: Mapping[str, Asset],
    scope_of: Callable[[str, str], str] = lambda path, method: PUBLIC,
) -> dict[str, Any]:
    """The document for this process: `collections` are those `?collection=` takes, `assets` the dashboard's
    files, and `scope_of(path, METHOD)` the scope its resource declares (auth.scope_of)."""
    paths = {
        **message_paths(collections),
        **aggregate_paths(config),
        **probe_paths(),
        **observation_paths(config),
        **dashboard_paths(assets),
    }
    if config.ingest.enabled:  # else a POST is a 405, as for any method a path does not list
        paths["/messages"]["post"] = ingest_operation(config)
    for path, item in paths.items():
        for method, operation in item.items():
            guard(operation, scope_of(path, method.upper()), config)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "streamd",
            "version": _version(),
            "description": "Stored messages, their live feed, window aggregates, health and metrics. Every error is "
            "the JSON `Error`; a method a path does not list answers 405 with an `Allow` header.",
        },
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, "Payload": payload_schema(config)},
            "responses": RESPONSES,
            "headers": HEADERS,
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def payload_schema(config: Config) -> dict[str, Any]:
    """What a message must be (message_schema.builtin_schema, on consumer.id_field); consumer.schema and the
    stages may refuse more, by index."""
    schema = {key: value for key, value in builtin_schema(config.consumer.id_field).items() if key != "$schema"}
    return {**schema, "description": "A message as the consumers read it from Kafka; other fields are kept in `data`."}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamd")
    except PackageNotFoundError:
        return "unknown"


class OpenApiResource:
    """Serves the document, encoded once: it only changes when the process does (a reload restarts the API)."""

    scopes = {"GET": READ}

    def __init__(self, document: dict[str, Any]) -> None:
        self.body = orjson.dumps(document)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reject_unknown(req.params, ())
        resp.content_type = JSON
        resp.data = self.body
