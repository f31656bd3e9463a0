"""Privilege drop, on a real process: bind as root, then serve as an unprivileged user.

The server under test runs from a virtualenv of Debian's /usr/bin/python3 outside /root,
so a process that is no longer root can still import it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import PASSWORD, MailEnv, wait_port

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture(scope="module")
def venv():
    """pop2gate installed (not editable) in a venv every user can read."""
    assert os.geteuid() == 0, "privilege-drop tests need root (make test runs as root in CI)"
    assert os.access(SYSTEM_PYTHON, os.X_OK), f"{SYSTEM_PYTHON} missing: run scripts/install-test-deps.sh"
    path = Path(tempfile.mkdtemp(prefix="p2g-venv-"))
    os.chmod(path, 0o755)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(path / "venv")], check=True, capture_output=True)
    # build from a copy, so the build leaves nothing in the work tree
    source = path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([str(path / "venv" / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    "-c", str(source / "constraints.txt"), str(source)], check=True, capture_output=True, timeout=600)
    yield path / "venv" / "bin" / "pop2gate"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_env():
    """A Maildir store in a directory nobody can use (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="p2g-priv-"))
    os.chmod(root, 0o755)
    env = MailEnv(root)
    env.add_user("alice")
    yield env
    shutil.rmtree(root, ignore_errors=True)


def give_to_nobody(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.chown(p, NOBODY.pw_uid, NOBODY.pw_gid)


def privileged_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port below 1024 on 127.0.0.1")


def ids(pid: int) -> dict[str, list[int]]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in status}
    return {k: [int(x) for x in fields[k]] for k in ("Uid", "Gid", "Groups")}


def test_serve_binds_as_root_then_runs_as_nobody(venv, shared_env):
    port = privileged_port()
    shared_env.server["user"] = "nobody"
    uid = shared_env.deliver("alice", b"Subject: a\n\nbody\n")
    give_to_nobody(shared_env.root)
    cfg = shared_env.write_config(f"127.0.0.1:{port}")
    proc = subprocess.Popen([str(venv), "serve", "-c", str(cfg), "--log-level", "debug"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc)
        got = ids(proc.pid)
        assert got["Uid"] == [NOBODY.pw_uid] * 4
        assert got["Gid"] == [NOBODY.pw_gid] * 4
        assert got["Groups"] == [NOBODY.pw_gid]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"HELO alice {PASSWORD}\r\nREAD\r\nRETR\r\nACKD\r\nQUIT\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        assert data.endswith(b"body\r\n=0 no message 2\r\n+ OK\r\n")
        assert uid not in shared_env.files("alice")  # nobody could delete it
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "running as user=nobody" in err


def test_inetd_mode_drops_before_serving(venv, shared_env):
    shared_env.server["user"] = "nobody"
    shared_env.deliver("alice", b"x\n")
    give_to_nobody(shared_env.root)
    cfg = shared_env.write_config()
    proc = subprocess.run([str(venv), "serve", "--inetd", "-c", str(cfg), "--log-level", "debug"],
                          input=f"HELO alice {PASSWORD}\r\nREAD\r\nRETR\r\nACKS\r\nQUIT\r\n".encode(),
                          capture_output=True, timeout=60)
    assert proc.stdout.endswith(b"x\r\n=0 no message 2\r\n+ OK\r\n"), proc.stderr
    assert b"running as user=nobody" in proc.stderr
    seen = list((shared_env.mail / "alice" / "cur").iterdir())
    assert len(seen) == 1 and seen[0].stat().st_uid == NOBODY.pw_uid


def test_unknown_user_is_a_config_error(venv, shared_env):
    shared_env.server["user"] = "no-such-user-here"
    cfg = shared_env.write_config()
    proc = subprocess.run([str(venv), "serve", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "server.user" in proc.stderr and "no such user" in proc.stderr


def test_not_root_cannot_become_another_user(venv, shared_env):
    shared_env.server["user"] = "root"
    give_to_nobody(shared_env.root)
    cfg = shared_env.write_config()
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
         str(venv), "serve", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "cannot become 'root': not running as root" in proc.stderr
