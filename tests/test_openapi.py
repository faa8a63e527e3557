"""The contract: GET /openapi.json describes exactly the routes and methods the app serves, and is valid OpenAPI 3.1.

What the live API answers is held to the document by the fuzz test (test_openapi_fuzz.py); here the document is
checked against the app's own router and against the OpenAPI 3.1 meta-schema, without servers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import falcon.inspect
import falcon.testing
import pytest
from openapi_spec_validator import validate

from streamd import config as config_module
from streamd.api.params import MAX_DATA_FILTERS, MAX_LIMIT, MAX_VALUE_LENGTH
from streamd.api_keys import issue, keys_path
from streamd.ids import is_stored_id

from .probes import STAGES, api_client, free_port

# Methods Falcon answers for every route by itself (OPTIONS, and 405 for the rest); the document says so once.
ROUTED_BY_FALCON = "internal"


def offline_config(**sections: dict) -> config_module.Config:
    return config_module.from_mapping(
        {
            "kafka": {"brokers": f"127.0.0.1:{free_port()}"},
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}", "timeout_ms": 200},
            **sections,
        }
    )


def served(app: falcon.App) -> set[tuple[str, str]]:
    """(path template, method) of every responder the application defines itself."""
    return {
        (route.path, method.method.lower())
        for route in falcon.inspect.inspect_app(app).routes
        for method in route.methods
        if not getattr(method, ROUTED_BY_FALCON)
    }


def described(document: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def document_of(client: falcon.testing.TestClient, key: str | None = None) -> dict:
    response = client.simulate_get("/openapi.json", headers={"Authorization": f"Bearer {key}"} if key else None)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return response.json


@pytest.fixture
def api() -> Iterator[tuple[falcon.App, dict]]:
    with api_client(offline_config()) as client:
        yield client.app, document_of(client)


def test_every_route_and_method_is_described_and_nothing_else(api):
    app, document = api
    assert served(app) - described(document) == set(), "routes the document does not describe"
    assert described(document) - served(app) == set(), "operations no route serves"


def test_the_document_is_valid_openapi_3_1(api):
    _, document = api
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises, naming the first invalid part


def test_every_operation_says_what_it_does_and_how_it_fails(api):
    _, document = api
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            successes = [status for status in operation["responses"] if status.startswith("2")]
            assert successes, f"{method.upper()} {path} documents no success"
            # Every endpoint refuses unknown query parameters, so every one can answer 400.
            assert "400" in operation["responses"], f"{method.upper()} {path} documents no 400"
            for parameter in operation["parameters"]:
                assert parameter.get("description"), f"{method.upper()} {path}: {parameter['name']} is undescribed"


def test_every_path_parameter_of_a_route_is_described(api):
    _, document = api
    for path, item in document["paths"].items():
        in_template = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            in_path = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert in_path == in_template, f"{method.upper()} {path}"


def parameter(document: dict, path: str, name: str) -> dict:
    return next(p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name)


def test_bounds_are_the_ones_the_api_enforces(api):
    _, document = api
    limit = parameter(document, "/messages", "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, MAX_LIMIT)
    assert parameter(document, "/messages", "source")["schema"]["maxLength"] == MAX_VALUE_LENGTH
    assert parameter(document, "/messages", "data")["schema"]["maxProperties"] == MAX_DATA_FILTERS
    message_id = re.compile(parameter(document, "/messages/{message_id}", "message_id")["schema"]["pattern"])
    for candidate in ("order-123", "~data-stream:0:42", "0190f3c4-7b1e-7c2a-9d4e-3f2a1b0c9d8e", "$where", "-x", ""):
        assert bool(message_id.search(candidate)) == is_stored_id(candidate), candidate


def test_collections_and_windows_follow_this_processs_config():
    config = offline_config(stages=STAGES, analytics={"windows": ["30s", "1h"], "group_by": ["source", "site"]})
    with api_client(config) as client:
        document = document_of(client)
    assert parameter(document, "/messages", "collection")["schema"]["enum"] == ["messages", "alerts"]
    assert parameter(document, "/aggregates", "window")["schema"]["enum"] == ["30s", "1h"]
    names = {p["name"] for p in document["paths"]["/aggregates"]["get"]["parameters"]}
    assert {"source", "site"} <= names


def test_an_unknown_route_points_to_the_document(offline_client):
    response = offline_client.simulate_get("/no-such-route")
    assert response.status_code == 404
    assert "/openapi.json" in response.json["description"]


def test_the_document_refuses_query_parameters_like_every_endpoint():
    with api_client(offline_config()) as client:
        response = client.simulate_get("/openapi.json", query_string="x=1")
    assert response.status_code == 400
    assert response.json["parameters"] == ["x"]


def test_a_method_the_document_does_not_list_is_a_json_405_allowing_exactly_those_it_lists(api):
    app, document = api
    client = falcon.testing.TestClient(app)
    for path, item in document["paths"].items():
        concrete = re.sub(r"{\w+}", "x", path)
        response = client.simulate_request("DELETE", concrete)
        assert response.status_code == 405, path
        assert response.json["status"] == 405
        allowed = {method.strip().lower() for method in response.headers["allow"].split(",")}
        assert allowed == {*item, "options"}, path


def guarded(document: dict) -> dict[str, dict]:
    """Operation label -> what the document says of who may call it: its security and its auth answers."""
    return {
        f"{method.upper()} {path}": {
            "security": operation["security"],
            "answers": sorted(set(operation["responses"]) & {"401", "403", "429"}),
        }
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def test_on_loopback_with_auth_auto_every_operation_is_open():
    with api_client(offline_config()) as client:
        document = document_of(client)
    assert all(access == {"security": [], "answers": []} for access in guarded(document).values())


def test_with_keys_required_each_operation_names_the_key_and_the_answers_the_middleware_gives(tmp_path):
    config = offline_config(state_dir=str(tmp_path), auth={"required": True, "public_scopes": ["metrics"]})
    reader = issue(keys_path(config), "reader", ["read"])[1]
    with api_client(config) as client:
        assert client.simulate_get("/openapi.json").status_code == 401
        document = document_of(client, reader)
        access = guarded(document)
        assert set(document["components"]["securitySchemes"]) == {"apiKey", "apiKeyAsPassword"}
        keyed = [{"apiKey": []}, {"apiKeyAsPassword": []}]
        for label in ("GET /messages", "POST /messages", "GET /stats", "GET /openapi.json", "GET /ready", "GET /"):
            assert access[label] == {"security": keyed, "answers": ["401", "403", "429"]}, label
        for label in ("GET /health", "HEAD /health"):
            assert access[label] == {"security": [], "answers": []}, label
        # A public scope: no key needed, but a key that is sent is still checked (and counted).
        assert access["GET /metrics"] == {"security": [{}, *keyed], "answers": ["401", "429"]}
        # What the document promises is what the middleware answers.
        assert client.simulate_get("/messages").status_code == 401
        assert client.simulate_post("/messages", body="{}").status_code == 401
        assert client.simulate_get("/health").status_code == 200


def test_post_messages_is_described_while_ingest_is_enabled_with_the_consumers_schema():
    with api_client(offline_config()) as client:
        document = document_of(client)
    body = document["paths"]["/messages"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-ndjson"}
    payload = document["components"]["schemas"]["Payload"]
    assert payload["required"] == ["text"] and "id" in payload["properties"]
    assert body["application/x-ndjson"]["schema"]["maxItems"] == 1000
    with api_client(offline_config(ingest={"enabled": False})) as client:
        assert "post" not in document_of(client)["paths"]["/messages"]
