"""Dockerfile and compose.yaml, checked without a container engine (none runs where these tests run).

The Dockerfile is read by Docker's own parser (the `dockerfile` package wraps buildkit's Go parser) and held to
stated rules, hadolint's most relevant among them: a pinned base, no ADD, pip without a cache, a non-root USER
before the entrypoint, exec-form ENTRYPOINT/CMD/HEALTHCHECK, and every COPY source present and not
ignored. compose.yaml is validated against the Compose specification's JSON schema (tests/compose-spec.json,
schema/compose-spec.json of github.com/compose-spec/compose-spec at 170098ba, 2026-06-23). Both are then read
together with the shipped config.yaml the way the container would load it, so the image and the services agree
with the config schema (env names, the API port, the state directory, the graceful timeout).
"""

import json
import re
from pathlib import Path

import dockerfile
import jsonschema
import pytest
import yaml

from streamd import config as config_module

REPO = Path(__file__).resolve().parent.parent
COMPOSE_SCHEMA = json.loads((REPO / "tests" / "compose-spec.json").read_text())


def final_stage() -> list[dockerfile.Command]:
    commands = dockerfile.parse_file(str(REPO / "Dockerfile"))
    last_from = max(index for index, command in enumerate(commands) if command.cmd == "FROM")
    return commands[last_from:]


def instructions(cmd: str, stage: list[dockerfile.Command] | None = None) -> list[dockerfile.Command]:
    commands = dockerfile.parse_file(str(REPO / "Dockerfile")) if stage is None else stage
    return [command for command in commands if command.cmd == cmd]


def image_environment() -> dict[str, str]:
    """The STREAMD_* variables the image sets (the others, such as PATH, are not streamd's)."""
    environment = {}
    for command in instructions("ENV", final_stage()):
        pairs = dict(zip(command.value[::2], command.value[1::2], strict=True))
        environment |= {name: value for name, value in pairs.items() if name.startswith(config_module.ENV_PREFIX)}
    return environment


def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def container_config(environment: dict[str, str]) -> config_module.Config:
    """The shipped config.yaml as the supervisor in the container loads it (the image copies it there)."""
    return config_module.load(REPO / "config.yaml", environ=environment)


def seconds(duration: str) -> float:
    """A Compose duration such as 45s, 1m30s or 500ms."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(number + unit for number, unit in parts) == duration, f"not a duration: {duration}"
    return sum(float(number) * units[unit] for number, unit in parts)


# The Dockerfile


def test_every_base_image_is_pinned_and_the_runtime_is_python_3_11_slim():
    bases = [command.value[0] for command in instructions("FROM")]
    assert all(":" in base and not base.endswith(":latest") for base in bases), bases
    assert final_stage()[0].value[0] == "python:3.11-slim"


def test_the_container_runs_as_a_user_it_creates_not_as_root():
    stage = final_stage()
    users = instructions("USER", stage)
    assert users, "the runtime stage never leaves root"
    user = users[-1].value[0].split(":")[0]
    assert user not in ("root", "0")
    created = [command.value[0] for command in instructions("RUN", stage) if "useradd" in command.value[0]]
    assert any(line.endswith(f" {user}") for line in created), f"USER {user} is never created"
    assert stage.index(users[-1]) < stage.index(instructions("ENTRYPOINT", stage)[-1])


def test_the_entrypoint_is_streamd_start_in_exec_form_so_the_supervisor_gets_sigterm():
    entrypoint = instructions("ENTRYPOINT", final_stage())[-1]
    assert entrypoint.json and list(entrypoint.value) == ["streamd", "start"]
    assert all(command.json for command in instructions("CMD", final_stage()))


def test_the_healthcheck_asks_health_on_the_port_the_api_listens_on():
    healthcheck = instructions("HEALTHCHECK", final_stage())[-1]
    assert healthcheck.json and healthcheck.value[0] == "CMD"
    port = container_config(image_environment()).api.port
    assert f"127.0.0.1:{port}/health'" in " ".join(healthcheck.value)
    assert [command.value[0] for command in instructions("EXPOSE", final_stage())] == [str(port)]


def test_the_image_settings_are_config_keys_that_never_start_a_local_stack():
    settings = container_config(image_environment())
    assert settings.stack.local is False
    assert settings.api.host == "0.0.0.0"
    home = re.search(r"--home-dir (\S+)", " ".join(command.value[0] for command in instructions("RUN", final_stage())))
    workdir = instructions("WORKDIR", final_stage())[-1].value[0]
    assert home and settings.state_path == Path(home.group(1)) == Path(workdir)


def test_the_image_follows_the_lint_rules_hadolint_would_apply():
    assert not instructions("ADD"), "COPY, not ADD (DL3020)"
    runs = " && ".join(command.value[0] for command in instructions("RUN"))
    assert all("--no-cache-dir" in part for part in runs.split("&&") if "pip install" in part), "DL3042"
    assert "apt-get install" not in runs or "--no-install-recommends" in runs, "DL3015"
    assert "sudo" not in runs, "DL3004"


def test_every_copied_file_exists_and_is_not_excluded_from_the_build_context():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"}
    for command in instructions("COPY"):
        if any(flag.startswith("--from=") for flag in command.flags):
            continue
        for source in command.value[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            assert Path(source).parts[0] not in ignored, f"COPY {source}: excluded by .dockerignore"


# compose.yaml


def test_compose_file_follows_the_compose_specification():
    jsonschema.Draft7Validator(COMPOSE_SCHEMA).validate(compose())


def test_the_schema_check_rejects_what_compose_would_reject():
    broken = compose()
    broken["services"]["streamd"]["restart_policy"] = "always"  # a typo of `restart`
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(COMPOSE_SCHEMA).validate(broken)


def test_kafka_is_3_9_in_kraft_mode_and_the_store_is_mongodb_7():
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:3.9.")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in name for name in kafka["environment"])
    assert services["mongodb"]["image"] == "mongo:7"


def test_streamd_waits_for_healthy_servers_and_reaches_them_by_service_name():
    services = compose()["services"]
    streamd = services["streamd"]
    assert streamd["build"] == "."
    for server in ("kafka", "mongodb"):
        assert streamd["depends_on"][server]["condition"] == "service_healthy"
        assert services[server]["healthcheck"]["test"]
    settings = container_config(image_environment() | streamd["environment"])
    assert settings.stack.local is False
    assert settings.kafka.brokers in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert settings.mongodb.uri.removeprefix("mongodb://").split(":")[0] == "mongodb"
    assert streamd["ports"] == [f"127.0.0.1:{settings.api.port}:{settings.api.port}"]


def test_compose_lets_the_supervisor_stop_gracefully_before_it_kills():
    streamd = compose()["services"]["streamd"]
    settings = container_config(image_environment() | streamd["environment"])
    assert seconds(streamd["stop_grace_period"]) > settings.supervisor.graceful_timeout
