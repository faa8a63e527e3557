"""API keys: issued once, stored only as a hash in a 0600 file, revoked by name or id; `streamd keys` around them."""

from __future__ import annotations

import hashlib
import hmac
import stat
import threading
from pathlib import Path

import orjson
import pytest
import yaml

from streamd import api_keys
from streamd.api_keys import KeyRing, KeysFileError, issue, read_keys, revoke

from .test_cli import streamd


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "api-keys.json"


def test_a_key_is_shown_once_and_the_file_keeps_only_its_sha256_readable_by_the_owner_alone(path):
    key, token = issue(path, "grafana", ["read"])
    assert token.startswith(f"sdk_{key.id}_") and len(token) > 50
    text = path.read_text()
    assert token not in text and token.rpartition("_")[2] not in text, "the secret is never stored"
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keys(path) == {key.id: key}
    assert key.scopes == ("read",) and key.created.endswith("Z")


def test_two_keys_never_share_a_secret_or_an_id(path):
    (first, one), (second, other) = issue(path, "a", ["read"]), issue(path, "b", ["read"])
    assert one != other and first.id != second.id


def test_a_key_matches_only_itself_through_a_constant_time_comparison(path, monkeypatch):
    key, token = issue(path, "ci", ["ingest"])
    compared = []
    constant_time = hmac.compare_digest

    def recording(a, b):
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", recording)
    assert key.matches(token)
    assert not key.matches(token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert len(compared) == 2 and all(stored == key.sha256 for stored, _ in compared)


def test_admin_holds_every_scope_and_other_scopes_only_themselves(path):
    admin, _ = issue(path, "ops", ["admin"])
    reader, _ = issue(path, "viewer", ["read"])
    assert all(admin.allows(scope) for scope in ("read", "ingest", "metrics", "admin"))
    assert reader.allows("read") and not reader.allows("ingest") and not reader.allows("admin")


@pytest.mark.parametrize(
    ("name", "scopes", "complaint"),
    [
        ("two words", ["read"], "key name 'two words'"),
        ("", ["read"], "key name ''"),
        ("ok", [], "at least one --scope"),
        ("ok", ["write"], "unknown scope 'write'"),
    ],
)
def test_a_bad_name_or_scope_is_refused_naming_it(path, name, scopes, complaint):
    with pytest.raises(KeysFileError, match=complaint):
        issue(path, name, scopes)
    assert not path.exists()


def test_a_name_is_issued_once_and_revoked_by_name_or_by_id(path):
    first, _ = issue(path, "grafana", ["read"])
    with pytest.raises(KeysFileError, match="a key named 'grafana' exists"):
        issue(path, "grafana", ["admin"])
    second, _ = issue(path, "ci", ["ingest"])
    assert revoke(path, "grafana") == first
    assert revoke(path, second.id) == second
    assert read_keys(path) == {}
    with pytest.raises(KeysFileError, match="no key has the name or id 'grafana'"):
        revoke(path, "grafana")


def test_concurrent_writers_lose_no_key(path):
    threads = [threading.Thread(target=issue, args=(path, f"key-{n}", ["read"])) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(key.name for key in read_keys(path).values()) == [f"key-{n}" for n in range(8)]


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"{not json", "is not JSON"),
        (b"[]", 'expected an object with a "keys" list'),
        (b'{"keys": [{"id": "x", "name": "a"}]}', r"keys\[0\] is not a key entry"),
    ],
)
def test_a_keys_file_streamd_cannot_use_is_named_with_what_to_do(path, content, complaint):
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(KeysFileError, match=complaint) as refused:
        read_keys(path)
    assert str(refused.value).startswith(str(path))


# --- what an API worker sees -----------------------------------------------------------------------------


def test_the_ring_sees_a_revocation_and_a_new_key_once_it_looks_again_within_a_second(path):
    key, token = issue(path, "grafana", ["read"])
    clock = Clock()
    ring = KeyRing(path, clock)
    assert ring.authenticate(token) == key
    revoke(path, "grafana")
    _, newer = issue(path, "ci", ["ingest"])
    assert ring.authenticate(token) == key, "the file is looked at no more than once a second"
    clock.now += api_keys.CHECK_SECONDS
    assert ring.authenticate(token) is None
    assert ring.authenticate(newer).name == "ci"


def test_the_ring_refuses_tokens_of_the_wrong_shape_or_with_a_wrong_secret(path):
    key, token = issue(path, "grafana", ["read"])
    ring = KeyRing(path)
    prefix, identifier, secret = token.split("_", 2)
    for wrong in ("", "Bearer", token.upper(), f"{prefix}_{identifier}_", f"{prefix}_{identifier}_{secret}x"):
        assert ring.authenticate(wrong) is None, wrong


def test_a_broken_keys_file_fails_closed_until_it_is_fixed(path):
    _, token = issue(path, "grafana", ["read"])
    good = path.read_bytes()
    clock = Clock()
    ring = KeyRing(path, clock)
    path.write_bytes(b"{broken")
    clock.now += api_keys.CHECK_SECONDS
    assert ring.authenticate(token) is None
    path.write_bytes(good)
    clock.now += api_keys.CHECK_SECONDS
    assert ring.authenticate(token) is not None


def test_no_keys_file_means_no_valid_key(path):
    assert KeyRing(path).authenticate("sdk_0123456789ab_secret") is None


# --- `streamd keys` ---------------------------------------------------------------------------------------


def test_streamd_keys_adds_lists_and_revokes_without_ever_printing_a_stored_secret(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    added = streamd("keys", "add", "ci", "--scope", "ingest", "--scope", "read", "-c", str(config))
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("sdk_") and "\n" not in token, "stdout is the key alone"
    assert "shown only this once" in added.stderr
    listed = streamd("keys", "list", "-c", str(config))
    assert listed.returncode == 0 and "ci" in listed.stdout and "ingest,read" in listed.stdout
    as_json = orjson.loads(streamd("keys", "list", "--json", "-c", str(config)).stdout)
    assert [entry["name"] for entry in as_json] == ["ci"] and "sha256" not in as_json[0]
    assert token not in listed.stdout + str(as_json)
    assert streamd("keys", "revoke", "ci", "-c", str(config)).returncode == 0
    again = streamd("keys", "revoke", "ci", "-c", str(config))
    assert again.returncode == 1 and again.stderr.startswith("streamd: ") and "Traceback" not in again.stderr
    assert read_keys(tmp_path / "state" / "api-keys.json") == {}


def test_streamd_keys_add_refuses_an_unknown_scope_with_usage(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    result = streamd("keys", "add", "ci", "--scope", "write", "-c", str(config))
    assert result.returncode == 2 and "invalid choice: 'write'" in result.stderr
