"""contrib/: the systemd units pass `systemd-analyze verify` (no running systemd needed), keep
their hardening, and the haproxy config is valid. The inetd line and the xinetd file are run
for real in tests/test_inetd.py, the haproxy config in tests/test_scaleout.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import BIN, need_program

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def _verify(units: Path) -> subprocess.CompletedProcess[str]:
    names = sorted(str(p) for p in units.iterdir())
    return subprocess.run([need_program("systemd-analyze"), "verify", "--man=no", *names],
                          capture_output=True, text=True, timeout=60)


def _units(tmp_path: Path, edit: tuple[str, str] | None = None) -> Path:
    """The units in a directory of their own, ExecStart's pop2gate being this venv's (verify checks it)."""
    for name in ("pop2gate.service", "pop2gate.socket"):
        text = (CONTRIB / "systemd" / name).read_text().replace("/usr/local/bin/pop2gate", str(BIN / "pop2gate"))
        if edit is not None:
            text = text.replace(*edit)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_units_pass_systemd_analyze_verify(tmp_path):
    result = _verify(_units(tmp_path))
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr


def test_verify_finds_a_mistake(tmp_path):
    """The check above can fail: a misspelt key is reported."""
    result = _verify(_units(tmp_path, ("NoNewPrivileges=yes", "NoNewPrivilege=yes")))
    assert "Unknown key 'NoNewPrivilege'" in result.stderr


def _settings(name: str) -> dict[str, str]:
    pairs = [ln.split("=", 1) for ln in (CONTRIB / "systemd" / name).read_text().splitlines()
             if "=" in ln and not ln.startswith("#")]
    return {k: v for k, v in pairs}


def test_service_is_hardened():
    unit = _settings("pop2gate.service")
    assert unit["ExecStart"] == "/usr/local/bin/pop2gate serve -c /etc/pop2gate/pop2gate.toml"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["NoNewPrivileges"] == "yes" and unit["ProtectSystem"] == "strict" and unit["PrivateTmp"] == "yes"
    assert unit["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert unit["User"] == "pop2gate"


def test_socket_listens_on_port_109():
    unit = _settings("pop2gate.socket")
    assert unit["ListenStream"] == "109" and unit["Accept"] == "no"


@pytest.mark.parametrize("edit,valid", [(None, True), (("mode tcp", "mode tcpx"), False)])
def test_haproxy_config_is_valid(tmp_path, edit, valid):
    text = (CONTRIB / "haproxy" / "haproxy.cfg").read_text()
    assert "send-proxy-v2" in text and "mode tcp" in text
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text.replace(*edit) if edit else text)
    result = subprocess.run([need_program("haproxy"), "-c", "-f", str(cfg)], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode == 0) == valid, result.stdout + result.stderr
