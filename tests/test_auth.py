"""Who may call what: the scopes each route declares, 401 and 403 as JSON, the rate limit's 429, /metrics apart.

Most tests run the middleware in-process (falcon.testing) on small resources of their own, or on the real
app with Kafka and the store on closed ports (a request that got past the check would answer 503 there,
not 401); one runs the real Gunicorn server of `streamd start` with auth.required on.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import falcon
import falcon.testing
import pytest

from streamd import config as config_module
from streamd.api import create_app
from streamd.api.auth import (
    ADMIN,
    INGEST,
    PUBLIC,
    READ,
    Authorization,
    Buckets,
    RateLimiter,
    is_loopback,
    keys_required,
    presented_key,
    scope_of,
)
from streamd.api.errors import serialize_error
from streamd.api_keys import CHECK_SECONDS, KeyRing, issue, keys_path, revoke
from streamd.config import Config

from .probes import free_port, wait_until
from .supervisor_process import start_streamd


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(tmp_path: Path, **auth: object) -> Config:
    """A config whose Kafka and store are closed ports and whose keys live in tmp_path."""
    return config_module.from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "kafka": {"brokers": f"127.0.0.1:{free_port()}"},
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}", "timeout_ms": 200},
            "auth": {"required": True, **auth},
        }
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the rules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "required"),
    [
        ("127.0.0.1", False),
        ("127.0.0.53", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.20", True),
        ("api.example.org", True),
    ],
)
def test_auto_asks_for_keys_unless_the_api_binds_a_loopback_address(host, required):
    config = config_module.from_mapping({"api": {"host": host}})
    assert config.auth.required == "auto", "auto is the shipped default"
    assert keys_required(config) is required
    assert is_loopback(host) is not required


@pytest.mark.parametrize(("setting", "host"), [(True, "127.0.0.1"), (False, "0.0.0.0")])
def test_true_and_false_decide_whatever_the_host(setting, host):
    config = config_module.from_mapping({"api": {"host": host}, "auth": {"required": setting}})
    assert keys_required(config) is setting


class Declared:
    scopes = {"GET": READ, "POST": INGEST}


class Undeclared:
    pass


def test_a_method_needs_its_declared_scope_head_what_get_needs_and_anything_undeclared_admin():
    assert scope_of(Declared(), "GET") == READ
    assert scope_of(Declared(), "HEAD") == READ
    assert scope_of(Declared(), "POST") == INGEST
    assert scope_of(Declared(), "DELETE") == ADMIN
    assert scope_of(Undeclared(), "GET") == ADMIN


def test_a_key_is_read_from_bearer_or_from_the_password_of_basic():
    basic = base64.b64encode(b"prometheus:sdk_x_y").decode()
    assert presented_key("Bearer sdk_x_y") == "sdk_x_y"
    assert presented_key("bearer  sdk_x_y ") == "sdk_x_y"
    assert presented_key(f"Basic {basic}") == "sdk_x_y"
    for unusable in ("Bearer", "Basic !!!", f"Basic {base64.b64encode(b'no-colon').decode()}", "Token sdk_x_y", ""):
        assert presented_key(unusable) is None, unusable


def test_the_rate_limit_allows_a_burst_then_the_rate_and_keys_do_not_share_a_bucket():
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.wait("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait("a") == pytest.approx(0.5)
    assert limiter.wait("b") == 0.0, "another key has its own bucket"
    clock.now += 0.5
    assert limiter.wait("a") == 0.0
    assert limiter.wait("a") > 0
    clock.now += 100
    assert [limiter.wait("a") for _ in range(4)][-1] > 0, "an idle key saves up no more than the burst"


def test_the_buckets_are_shared_with_processes_forked_after_they_were_made(tmp_path):
    clock = Clock()  # the fork copies it: both processes read the same time
    limiter = RateLimiter(rate=0.001, burst=5, clock=clock, buckets=Buckets(tmp_path / "rate.lock"))
    child = os.fork()
    if child == 0:  # the child takes three tokens, as another Gunicorn worker would
        os._exit(0 if [limiter.wait("0123456789ab") for _ in range(3)] == [0.0] * 3 else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [limiter.wait("0123456789ab") == 0.0 for _ in range(3)] == [True, True, False]


def test_a_full_table_of_buckets_still_limits_every_key(tmp_path):
    limiter = RateLimiter(rate=0.001, burst=1, buckets=Buckets())
    many = [f"{n:012x}" for n in range(Buckets.SLOTS + 10)]
    assert all(limiter.wait(key) == 0.0 for key in many[: Buckets.SLOTS])
    assert all(limiter.wait(key) > 0 for key in many[: Buckets.SLOTS])
    assert limiter.wait(many[-1]) > 0, "past the table's size, a key shares a slot (and its limit)"


# --- the middleware on resources of its own ---------------------------------------------------------------


class Ok:
    def __init__(self, scopes: dict[str, str]) -> None:
        self.scopes = scopes

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"key": req.context.api_key.name if req.context.api_key else None}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"posted": True}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"deleted": True}


class Guarded:
    """An app of three routes behind the middleware, with a clock the test moves."""

    def __init__(self, config: Config) -> None:
        self.clock = Clock()
        self.config = config
        self.ring = KeyRing(keys_path(config), self.clock)
        limiter = RateLimiter(config.auth.rate_limit, config.auth.rate_burst, self.clock)
        app = falcon.App(middleware=[Authorization(config, self.ring, limiter)])
        app.set_error_serializer(serialize_error)
        app.add_route("/open", Ok({"GET": PUBLIC}))
        app.add_route("/data", Ok({"GET": READ, "POST": INGEST}))
        self.client = falcon.testing.TestClient(app)

    def key(self, name: str, *scopes: str) -> str:
        token = issue(keys_path(self.config), name, scopes)[1]
        self.clock.now += CHECK_SECONDS  # the ring looks at the file again
        return token


@pytest.fixture
def guarded(tmp_path: Path) -> Guarded:
    return Guarded(settings(tmp_path))


def test_without_a_key_a_guarded_route_is_a_json_401_with_basic_and_bearer_challenges(guarded):
    refused = guarded.client.simulate_get("/data")
    assert refused.status_code == 401
    # Basic first: browsers read the first challenge of the header, and answer Basic with their prompt.
    assert refused.headers["www-authenticate"] == 'Basic realm="streamd", charset="UTF-8", Bearer realm="streamd"'
    assert refused.json["status"] == 401 and "scope read" in refused.json["description"]
    assert guarded.client.simulate_get("/open").status_code == 200


def test_an_unknown_key_is_a_401_saying_invalid_token(guarded):
    guarded.key("real", READ)
    refused = guarded.client.simulate_get("/data", headers=bearer("sdk_0123456789ab_guess"))
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]


def test_a_key_without_the_scope_is_a_403_naming_the_scope_and_with_it_the_request_runs(guarded):
    reader = guarded.key("viewer", READ)
    assert guarded.client.simulate_get("/data", headers=bearer(reader)).json == {"key": "viewer"}
    refused = guarded.client.simulate_post("/data", headers=bearer(reader))
    assert refused.status_code == 403
    assert refused.json["scope"] == INGEST and "'viewer'" in refused.json["description"]
    writer = guarded.key("ci", INGEST)
    assert guarded.client.simulate_post("/data", headers=bearer(writer)).json == {"posted": True}


def test_an_undeclared_method_needs_admin_and_admin_may_do_everything(guarded):
    writer = guarded.key("ci", INGEST, READ)
    assert guarded.client.simulate_delete("/data", headers=bearer(writer)).status_code == 403
    admin = guarded.key("ops", ADMIN)
    for method in ("GET", "POST", "DELETE"):
        assert guarded.client.simulate_request(method, "/data", headers=bearer(admin)).status_code == 200


def test_a_revoked_key_is_refused_once_the_worker_looks_at_the_file_again(guarded):
    reader = guarded.key("viewer", READ)
    assert guarded.client.simulate_get("/data", headers=bearer(reader)).status_code == 200
    revoke(keys_path(guarded.config), "viewer")
    guarded.clock.now += CHECK_SECONDS
    assert guarded.client.simulate_get("/data", headers=bearer(reader)).status_code == 401


def test_past_the_burst_a_key_gets_429_with_retry_after_until_a_token_is_back(tmp_path):
    guarded = Guarded(settings(tmp_path, rate_limit=0.5, rate_burst=2))
    reader = guarded.key("busy", READ)
    other = guarded.key("calm", READ)
    assert [guarded.client.simulate_get("/data", headers=bearer(reader)).status_code for _ in range(2)] == [200, 200]
    limited = guarded.client.simulate_get("/data", headers=bearer(reader))
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert limited.json["status"] == 429 and "auth.rate_limit" in limited.json["description"]
    assert guarded.client.simulate_get("/data", headers=bearer(other)).status_code == 200
    guarded.clock.now += 2
    assert guarded.client.simulate_get("/data", headers=bearer(reader)).status_code == 200


def test_public_scopes_open_a_scope_to_requests_without_a_key_but_a_sent_key_is_still_checked(tmp_path):
    guarded = Guarded(settings(tmp_path, public_scopes=[READ]))
    assert guarded.client.simulate_get("/data").json == {"key": None}
    assert guarded.client.simulate_post("/data").status_code == 401
    assert guarded.client.simulate_get("/data", headers=bearer("sdk_0123456789ab_guess")).status_code == 401


def test_with_auth_off_no_key_is_asked_for(tmp_path):
    guarded = Guarded(settings(tmp_path, required=False))
    assert guarded.client.simulate_post("/data").status_code == 200


# --- the real app ------------------------------------------------------------------------------------------


def routes(app: falcon.App) -> Iterator[tuple[str, object]]:
    """Every (template, resource) of the app. Falcon has no public listing; its compiled router's tree is it."""
    pending = list(app._router._roots)
    while pending:
        node = pending.pop()
        pending.extend(node.children)
        if node.resource is not None:
            yield node.uri_template, node.resource


@pytest.fixture
def app(tmp_path: Path) -> falcon.App:
    return create_app(settings(tmp_path))


def test_every_responder_of_every_route_has_a_declared_scope(app):
    found = dict(routes(app))
    assert {"/messages", "/health", "/metrics", "/stream"} <= set(found)
    for template, resource in found.items():
        methods = {name[3:].upper() for name in dir(resource) if name.startswith("on_")}
        undeclared = methods - set(resource.scopes) - {"HEAD"}
        assert not undeclared, f"{template}: {sorted(undeclared)} would need admin by default; declare them"


def concrete(template: str) -> str:
    return template.replace("{message_id}", "some-id").replace("{name}", "dashboard.js")


def test_without_a_key_every_route_but_health_answers_401_with_a_challenge_a_browser_answers(app):
    client = falcon.testing.TestClient(app)
    for template, _ in routes(app):
        answer = client.simulate_get(concrete(template))
        if template == "/health":
            assert answer.status_code == 200, template
        else:
            assert answer.status_code == 401, template
            assert answer.json["title"] == "API key required"
            # Basic makes a browser ask for the key (as the password) on the dashboard and send it on.
            assert 'Basic realm="streamd"' in answer.headers["www-authenticate"], template


def test_metrics_on_its_own_port_is_served_there_alone_and_that_port_serves_nothing_else(tmp_path):
    port = free_port()
    config = settings(tmp_path, metrics_port=port, public_scopes=["metrics"])
    client = falcon.testing.TestClient(create_app(config))
    on_metrics_port = {"SERVER_PORT": str(port)}
    assert client.simulate_get("/metrics", extras=on_metrics_port).status_code == 200
    assert client.simulate_get("/health", extras=on_metrics_port).status_code == 200
    assert client.simulate_get("/messages", extras=on_metrics_port).status_code == 404
    elsewhere = client.simulate_get("/metrics")
    assert elsewhere.status_code == 404 and str(port) in elsewhere.json["description"]


def test_metrics_takes_a_key_as_the_password_of_basic_auth_as_prometheus_sends_it(tmp_path):
    config = settings(tmp_path)
    _, token = issue(keys_path(config), "prometheus", ["metrics"])
    client = falcon.testing.TestClient(create_app(config))
    refused = client.simulate_get("/metrics")
    assert refused.status_code == 401 and 'Basic realm="streamd"' in refused.headers["www-authenticate"]
    basic = base64.b64encode(f"prometheus:{token}".encode()).decode()
    answer = client.simulate_get("/metrics", headers={"Authorization": f"Basic {basic}"})
    assert answer.status_code == 200 and "streamd_" in answer.text


# --- through the real server -------------------------------------------------------------------------------


def call(port: int, path: str, token: str | None = None) -> tuple[int, dict[str, str], dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=bearer(token) if token else {})
        response = connection.getresponse()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        is_json = headers.get("content-type", "").startswith("application/json")
        return response.status, headers, json.loads(body) if is_json else {}
    except OSError:
        return 0, {}, {}
    finally:
        connection.close()


def test_the_served_api_asks_for_keys_refuses_scopes_limits_and_forgets_revoked_keys(pipeline_config, tmp_path):
    config = config_module.from_mapping(
        {**config_module.to_mapping(pipeline_config), "auth": {"required": True, "metrics_port": free_port()}}
    )
    keys = keys_path(config)
    reader = issue(keys, "viewer", [READ])[1]
    writer = issue(keys, "ci", [INGEST])[1]
    leaving = issue(keys, "leaving", [READ])[1]
    busy = issue(keys, "busy", [READ])[1]
    scraper = issue(keys, "prometheus", ["metrics"])[1]
    sup = start_streamd(
        tmp_path,
        config,
        producer={"enabled": False},
        consumer={"processes": 0},
        analytics={"enabled": False},
        # Two workers: the rate limit holds across them (each call below is a new connection, to either).
        api={"workers": 2},
        auth={"required": True, "metrics_port": config.auth.metrics_port, "rate_limit": 0.1, "rate_burst": 3},
    )
    try:
        api, metrics = config.api.port, config.auth.metrics_port
        wait_until(lambda: call(api, "/health")[0] == 200, f"the API up; log:\n{sup.log_tail()}", timeout=60)
        for path in (
            "/messages",
            "/messages/some-id",
            "/stats",
            "/aggregates",
            "/ready",
            "/stream",
            "/",
            "/openapi.json",
        ):
            status, headers, body = call(api, path)
            assert (status, body.get("title")) == (401, "API key required"), path
            assert "Bearer" in headers["www-authenticate"] and "Basic" in headers["www-authenticate"]
        assert call(api, "/metrics", scraper)[0] == 404, "/metrics moved to its own port"
        assert call(metrics, "/metrics")[0] == 401
        assert call(metrics, "/metrics", scraper)[0] == 200
        assert call(metrics, "/health")[0] == 200

        status, _, body = call(api, "/messages", writer)
        assert (status, body["scope"]) == (403, READ)
        status, _, body = call(api, "/messages", reader)
        assert status == 200 and body["data"] == []

        assert [call(api, "/messages?limit=1", busy)[0] for _ in range(3)] == [200, 200, 200]
        for _ in range(4):  # whichever worker answers
            status, headers, body = call(api, "/messages?limit=1", busy)
            assert status == 429 and 1 <= int(headers["retry-after"]) <= 10 and body["status"] == 429

        assert call(api, "/messages?limit=1", leaving)[0] == 200
        revoke(keys, "leaving")
        wait_until(lambda: call(api, "/messages?limit=1", leaving)[0] == 401, "the revoked key refused", timeout=10)
    finally:
        sup.kill()
