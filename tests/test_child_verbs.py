"""supervisorctl's verbs against a real supervisor with toy children: stop, start and restart one child or all."""

from __future__ import annotations

import signal

from .probes import wait_until
from .supervisor_process import process_gone
from .test_supervisor import run_streamd, toy  # noqa: F401 - toy is the fixture these tests use

CHILDREN = ("consumer-1", "consumer-2", "producer")


def command(sup, *args: str) -> dict[str, dict]:
    """Run `streamd ARGS -c <its config>`, which must succeed, and return the children's status after it."""
    result = run_streamd(*args, "-c", str(sup.config_path))
    assert result.returncode == 0, result.stderr
    return sup.children()


def test_version_is_the_installed_package_version():
    from importlib.metadata import version

    result = run_streamd("--version")
    assert result.returncode == 0
    assert result.stdout.split() == ["streamd", version("streamd")]


def test_a_stopped_child_stays_stopped_while_the_rest_runs_until_started_again(toy):  # noqa: F811
    sup = toy().start()
    before = sup.wait_running(*CHILDREN)
    children = command(sup, "stop", "consumer-1")
    assert children["consumer-1"]["state"] == "STOPPED" and children["consumer-1"]["stopped_by"] == "operator"
    assert process_gone(before["consumer-1"]["pid"])
    shown = run_streamd("status", "-c", str(sup.config_path)).stdout
    assert "stopped by operator" in next(line for line in shown.splitlines() if line.startswith("consumer-1 "))
    assert children["consumer-2"]["pid"] == before["consumer-2"]["pid"]
    assert children["producer"]["pid"] == before["producer"]["pid"]

    # A reload that restarts every consumer brings consumer-2 back with the new config, not consumer-1.
    sup.write({"consumer": {"group": "another-group"}})
    sup.signal(signal.SIGHUP)
    wait_until(
        lambda: (c := sup.children()["consumer-2"])["state"] == "RUNNING" and c["pid"] != before["consumer-2"]["pid"],
        what="consumer-2 restarted by the reload",
    )
    assert sup.children()["consumer-1"]["state"] == "STOPPED"

    after = command(sup, "start", "consumer-1")["consumer-1"]
    assert after["state"] == "RUNNING" and after["stopped_by"] is None


def test_restart_one_child_replaces_only_that_process(toy):  # noqa: F811
    sup = toy().start()
    before = sup.wait_running(*CHILDREN)
    after = command(sup, "restart", "producer")
    assert after["producer"]["state"] == "RUNNING" and after["producer"]["pid"] != before["producer"]["pid"]
    assert [after[name]["pid"] for name in ("consumer-1", "consumer-2")] == [
        before[name]["pid"] for name in ("consumer-1", "consumer-2")
    ]
    assert any(event.startswith(f"producer {before['producer']['pid']} stopped cleanly") for event in sup.events())


def test_restart_without_a_child_restarts_every_child_gracefully_but_not_the_supervisor(toy):  # noqa: F811
    sup = toy().start()
    before = sup.wait_running(*CHILDREN)
    supervisor_pid = sup.status()["pid"]
    after = command(sup, "restart")
    assert sup.status()["pid"] == supervisor_pid
    for name in CHILDREN:
        assert after[name]["state"] == "RUNNING" and after[name]["pid"] != before[name]["pid"], name
    stopped = {event.split()[0] for event in sup.events() if event.endswith("stopped cleanly")}
    assert stopped == set(CHILDREN)


def test_an_unknown_child_is_refused_with_the_names_there_are(toy):  # noqa: F811
    sup = toy().start()
    sup.wait_running(*CHILDREN)
    for verb in ("stop", "start", "restart"):
        result = run_streamd(verb, "consumer-9", "-c", str(sup.config_path))
        assert result.returncode == 2, (verb, result.stderr)
        assert "consumer-9" in result.stderr and all(name in result.stderr for name in CHILDREN)
    assert {child["state"] for child in sup.children().values()} == {"RUNNING"}


def test_a_child_verb_without_a_supervisor_says_none_runs(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    result = run_streamd("restart", "producer", "-c", str(config))
    assert result.returncode == 1
    assert "no streamd supervisor is running" in result.stderr
