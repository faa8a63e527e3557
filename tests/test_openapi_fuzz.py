"""The live API against its own document: Schemathesis fuzzes every operation of GET /openapi.json.

streamd runs for real (the supervisor, its pipeline and the API under Gunicorn, on loopback, on this test's
topic and database), with messages seeded in the store so lookups by id meet real documents. For every
operation, Schemathesis generates requests that fit the document (positive) and requests that break it
(negative), and each answer must be: no 5xx but those the document promises, a documented status,
content type, headers and body, and a 4xx for every request the document forbids.

Bounded for CI: API_FUZZ_EXAMPLES examples per operation and mode (default below), derandomized and
without Hypothesis's example database, so a run is the same run every time. Set the variable higher to
fuzz longer locally (e.g. API_FUZZ_EXAMPLES=500), and API_FUZZ_SEED=<n> to draw other examples than CI's.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from streamd import config as config_module
from streamd.api.ingest import NDJSON
from streamd.api_keys import issue, keys_path
from streamd.config import Config
from streamd.store import MessageStore

from .probes import STAGES, wait_until
from .supervisor_process import SupervisorProcess, api_url, start_streamd

# Not STREAMD_*: the supervisor under test takes every such variable for a config key.
EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "200"))
# Unset: derandomized, the same examples every run (CI). A number: other examples, the same for that number.
SEED = int(os.environ["API_FUZZ_SEED"]) if os.environ.get("API_FUZZ_SEED") else None
# A 200 from /stream lasts api.stream_seconds (1 s here): its examples are fewer, so it stays within budget.
STREAM_EXAMPLES = max(2, EXAMPLES // 5)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Where a request that fits the document can still be refused: a cursor (`before`, Last-Event-ID) is a token
# this API wrote, which no pattern can tell from another token of the same letters. Everywhere else, a request
# that fits the document must be served (a 2xx, or 404 for an id no message has).
# POST /messages too: consumer.schema and the stages may refuse a message the document's Payload allows.
INEXACT = {("GET", "/messages"), ("GET", "/stream"), ("POST", "/messages")}
# A request the document forbids must be refused: 400 by the API, 404 when it names no route, 413 and 415 for
# a POST body over the limit or of another type, 414 and 431 by Gunicorn's parser; 401, 403 and 429 for keys.
REFUSALS = [400, 401, 403, 404, 413, 414, 415, 429, 431]
# The runs of the fuzzer against an API that asks for keys (auth.required): without a key every operation but
# the open ones must answer the documented 401; with an admin key, everything is served.
RUNS = ("without a key", "with a key")
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def seeded() -> list[dict]:
    """Documents of every shape the API must render: user fields, a fallback id, no source, no times."""
    return [
        {
            "_id": "order-1",
            "content": "first",
            "timestamp": T0,
            "source": "sensor-a",
            "ingested_at": T0 + timedelta(seconds=1),
            "kafka": "data-stream:0:7",
            "data": {"temperature": 21.5, "sensor": "A", "when": T0, "tags": ["x", 1, None]},
        },
        {
            "_id": "~data-stream:1:42",
            "content": "sent without an id",
            "timestamp": T0 + timedelta(minutes=1),
            "source": None,
            "ingested_at": T0 + timedelta(minutes=1),
            "kafka": {"topic": "data-stream", "partition": 1, "offset": 42},
        },
        {"_id": "written-by-someone-else", "content": {"not": "text"}, "timestamp": None},
    ]


@schemathesis.serializer(NDJSON)
def ndjson(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    """A batch as NDJSON, one JSON value a line; anything else (a negative case) as its JSON text, one line."""
    items = value if isinstance(value, list) else [value]
    # The standard library's encoder: a generated integer may exceed the 64 bits orjson writes.
    return "".join(json.dumps(item) + "\n" for item in items).encode()


@dataclass
class LiveApi:
    sup: SupervisorProcess
    key: str  # an admin key: every operation is served with it

    def headers(self, run: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if run == "with a key" else {}


@pytest.fixture
def live_api(pipeline_config: Config, store: MessageStore, tmp_path: Path) -> Iterator[LiveApi]:
    store.insert_many(seeded())
    # A route stage gives `?collection=` a second name; a second group_by field, /aggregates a second filter.
    raw = config_module.to_mapping(pipeline_config) | {"stages": STAGES}
    raw["analytics"]["group_by"] = ["source", "sensor"]
    # Keys asked for, as on a shared network; no rate limit, so that a 429 never stands in for an answer.
    raw["auth"] = {"required": True, "rate_limit": 0}
    config = config_module.from_mapping(raw)
    key = issue(keys_path(config), "fuzzer", ["admin"])[1]
    sup = start_streamd(tmp_path, config, api={"stream_seconds": 1})
    live = LiveApi(sup, key)

    def ready() -> bool:
        try:
            response = requests.get(api_url(sup, "/ready"), headers=live.headers("with a key"), timeout=5)
        except requests.RequestException:
            return False
        return response.status_code == 200

    try:
        # Ready: Kafka and the store answer and a consumer runs, so no 503 is the environment's fault.
        wait_until(lambda: sup.process.poll() is not None or ready(), "/ready", 90)
        assert sup.process.poll() is None, f"streamd stopped; log:\n{sup.log_tail()}"
        yield live
    finally:
        sup.kill()


def fuzzed(operation: schemathesis.APIOperation, mode: GenerationMode, call: dict, sent: Counter) -> str | None:
    """What the first failing case of `operation` in `mode` broke (Hypothesis shrinks it), or None;
    `sent` counts the requests per operation."""
    examples = STREAM_EXAMPLES if operation.path == "/stream" else EXAMPLES
    checks = CHECKS if (operation.method.upper(), operation.path) in INEXACT else [*CHECKS, positive_data_acceptance]

    @seed(SEED)
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=SEED is None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    def run(case: schemathesis.Case) -> None:
        sent[operation.label] += 1
        case.call_and_validate(checks=checks, **call)

    try:
        run()
        if mode is GenerationMode.POSITIVE:  # the boundaries of both modes, once per operation
            covered(operation, checks, call, sent)
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:
            return None  # an operation without parameters has no request to break
        return f"{operation.label}: no request fits the document"
    except Exception as failure:  # Schemathesis's failures carry the case as a curl command
        return f"{operation.label} ({mode.value}): {failure}"
    return None


def meaningful(operation: schemathesis.APIOperation, call: dict) -> list[schemathesis.Case]:
    """Requests a generator almost never writes, which must succeed: real ids, a real cursor, a real user field."""
    if operation.path == "/messages/{message_id}":
        return [operation.Case(path_parameters={"message_id": document["_id"]}) for document in seeded()]
    if operation.label == "GET /messages":
        # Without a key the page is a 401: any token of the right shape then does (it is refused first).
        listing = requests.get(
            f"{call['base_url']}/messages", params={"limit": "1"}, headers=call["headers"], timeout=10
        )
        cursor = listing.json()["next"] if listing.status_code == 200 else "AAAA"
        return [
            operation.Case(query={"before": cursor, "limit": 2}),
            operation.Case(query={"data.sensor": "A", "data.temperature": "21.5", "since": T0.isoformat()}),
        ]
    return []


def covered(operation: schemathesis.APIOperation, checks: list, call: dict, sent: Counter) -> None:
    """Schemathesis's coverage cases: each bound, each enum value, just past each, a missing or repeated
    parameter, a method the path lacks."""
    schema = operation.schema
    generation = schema.config.generation_for(operation=operation)
    for case in schema.iter_coverage_cases(
        operation, generation_modes=list(GenerationMode), generation_config=generation
    ):
        sent[operation.label] += 1
        case.call_and_validate(checks=checks, **call)


@pytest.mark.parametrize("run", RUNS)
def test_every_operation_answers_as_its_document_says(live_api, run):
    base = api_url(live_api.sup, "")
    headers = live_api.headers(run)
    # A config of its own: no schemathesis.toml found on the way changes what this test checks.
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}})
    schema = schemathesis.openapi.from_url(
        f"{base}/openapi.json", config=config, timeout=10, headers=live_api.headers("with a key")
    )
    with requests.Session() as session:
        call = {"base_url": base, "session": session, "headers": headers, "timeout": 15}
        failures = []
        sent: Counter = Counter()
        for result in schema.get_all_operations():
            operation = result.ok()
            failures += [
                found
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                if (found := fuzzed(operation, mode, call, sent))
            ]
            expected = 200 if headers else 401
            for case in meaningful(operation, call):
                assert case.call_and_validate(checks=CHECKS, **call).status_code == expected, case.as_curl_command()
    assert not failures, "\n\n".join(failures)
    # A fuzzer that sent nothing would pass too: every operation was called, the parameterised ones many times.
    assert set(sent) == {result.ok().label for result in schema.get_all_operations()}
    assert sent["GET /messages"] >= EXAMPLES, sent
    print(sent)
