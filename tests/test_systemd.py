"""The shipped systemd unit: it verifies, and it says what the supervisor relies on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "streamd.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    streamd = shutil.which("streamd")
    assert streamd, "streamd must be installed (pip install -e .) for the unit's ExecStart to exist"
    # The unit names the install location in docs/operations.md; verify it against where streamd lives here.
    unit = tmp_path / "streamd.service"
    unit.write_text(UNIT.read_text().replace("/opt/streamd/bin/streamd", streamd))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "streamd.service" not in result.stderr, result.stderr


def test_the_unit_uses_notify_reloads_through_the_checking_cli_and_lets_the_supervisor_order_the_stop():
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    # `streamd reload` refuses a bad file with exit 2, so `systemctl reload` fails with the reason.
    assert settings["ExecReload"] == ["/opt/streamd/bin/streamd reload -c /etc/streamd/config.yaml"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["Restart"] == ["on-failure"]
    assert "WatchdogSec" in settings


def test_the_unit_is_hardened_and_never_starts_a_local_stack():
    settings = unit_settings()
    for option in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictNamespaces"):
        assert settings[option] == ["yes"], option
    assert settings["ProtectSystem"] == ["strict"]
    assert "STREAMD_STACK_LOCAL=false" in settings["Environment"]


def test_a_bad_config_is_not_restarted_in_a_loop():
    # `streamd start` exits 2 on a config it refuses; restarting every RestartSec cannot fix the file.
    assert unit_settings()["RestartPreventExitStatus"] == ["2"]


def test_the_documentation_is_streamds_own_and_the_install_steps_put_it_there():
    documentation = unit_settings()["Documentation"]
    assert documentation and all(uri.startswith("file:/usr/share/doc/streamd/") for uri in documentation)
    readme = (UNIT.parent.parent / "docs" / "operations.md").read_text()  # "Running under systemd"
    for uri in documentation:
        path = uri.removeprefix("file:")
        assert (UNIT.parent.parent / Path(path).name).is_file(), path
        assert "/usr/share/doc/streamd" in readme and Path(path).name in readme, path
