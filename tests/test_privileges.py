"""Privilege drop, on a real process: bind as root, then serve as an unprivileged user.

The server under test runs from a virtualenv of Debian's /usr/bin/python3 outside /root,
so a process that is no longer root can still import it; one test runs the project's own
venv, whose interpreter lives where nobody cannot read it.
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

from dovecot import USERS
from helpers import BIN, PASSWORD, MailEnv, free_port, wait_port
from pop2gate.pop2.client import Client
from pop2gate.stores.folders import encode_mutf7

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
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"HELO alice {PASSWORD}\r\nREAD\r\nRETR\r\nACKD\r\nQUIT\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        assert data.endswith(b"body\r\n=0 no message 2\r\n+ OK\r\n")
        got = ids(proc.pid)  # after a session: the listener accepts before the switch
        assert got["Uid"] == [NOBODY.pw_uid] * 4
        assert got["Gid"] == [NOBODY.pw_gid] * 4
        assert got["Groups"] == [NOBODY.pw_gid]
        assert uid not in shared_env.files("alice")  # nobody could delete it
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "running as user=nobody" in err


def test_user_add_as_root_leaves_the_users_file_to_the_serving_user(venv, shared_env):
    port = privileged_port()
    shared_env.server["user"] = None  # unset: serve as root becomes nobody
    give_to_nobody(shared_env.root)
    cfg = shared_env.write_config(f"127.0.0.1:{port}")
    added = subprocess.run([str(BIN / "pop2gate"), "user", "add", "-c", str(cfg), "bob"], input="bob pw\n",
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    st = shared_env.users_file.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)
    proc = subprocess.Popen([str(venv), "serve", "-c", str(cfg)], stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc)  # it started as nobody: the rewritten file is readable
        with Client.connect("127.0.0.1", port, timeout=10) as client:
            assert client.helo("bob", "bob pw") == 0
            client.quit()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


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


def test_not_root_without_user_stays_who_it_is(venv, shared_env):
    shared_env.server["user"] = None
    shared_env.deliver("alice", b"x\n")
    give_to_nobody(shared_env.root)
    cfg = shared_env.write_config()
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
         str(venv), "serve", "--inetd", "-c", str(cfg), "--log-level", "debug"],
        input=f"HELO alice {PASSWORD}\r\nQUIT\r\n".encode(), capture_output=True, timeout=60,
    )
    assert proc.stdout.endswith(b"#1 message in INBOX\r\n+ OK\r\n"), proc.stderr
    assert b"running as" not in proc.stderr  # nothing switched, nothing to warn about


def serve(pop2gate: Path, cfg: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(pop2gate), "serve", "-c", str(cfg), "--log-level", "debug"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    return proc.communicate(timeout=10)[1]


def one_session(port: int) -> bytes:
    """HELO alice, READ, RETR, ACKS, QUIT, each reply awaited: the message's octets."""
    with Client.connect("127.0.0.1", port, timeout=20) as c:
        assert c.helo("alice", PASSWORD) == 1
        assert c.read() > 0
        data = c.retr()
        c.acks()
        c.quit()
    return data


def test_root_without_user_serves_as_nobody(venv, shared_env):
    shared_env.server["user"] = None  # no `user` key at all
    shared_env.deliver("alice", b"Subject: a\n\nbody\n")
    give_to_nobody(shared_env.root)
    port = free_port()
    proc = serve(venv, shared_env.write_config(f"127.0.0.1:{port}"))
    try:
        wait_port(port, proc)
        assert one_session(port) == b"Subject: a\r\n\r\nbody\r\n"  # served: the switch is done
        got = ids(proc.pid)
        assert got["Uid"] == [NOBODY.pw_uid] * 4
        assert got["Gid"] == [NOBODY.pw_gid] * 4
        assert got["Groups"] == [NOBODY.pw_gid]
    finally:
        err = stop(proc)
    assert "running as user=nobody" in err and "running as root" not in err


def test_explicit_root_stays_root_with_a_warning(venv, shared_env):
    shared_env.server["user"] = "root"
    shared_env.deliver("alice", b"x\n")  # the files stay root's, mode 0700/0600
    port = free_port()
    proc = serve(venv, shared_env.write_config(f"127.0.0.1:{port}"))
    try:
        wait_port(port, proc)
        assert one_session(port) == b"x\r\n"
        assert ids(proc.pid)["Uid"] == [0] * 4
    finally:
        err = stop(proc)
    assert "WARNING" in err and "running as root (server.user = 'root')" in err


def _unusable_ca_file(env: MailEnv) -> str:
    ca = env.root / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=pop2gate test CA", "-days", "1", "-keyout", str(env.root / "ca.key"),
                    "-out", str(ca)], check=True, capture_output=True)
    os.chmod(ca, 0o600)
    os.chown(ca, 0, 0)
    return f'[[backend]]\nname = "imap"\ntype = "imap"\nurl = "imap://127.0.0.1:143"\nca_file = "{ca}"\n'


@pytest.mark.parametrize("key,inetd", [("path", False), ("users_file", False), ("ca_file", False),
                                       ("users_file", True)])
def test_store_path_nobody_cannot_use_exits_2_naming_the_key(venv, shared_env, key, inetd):
    shared_env.server["user"] = None
    give_to_nobody(shared_env.root)
    extra = ""
    if key == "path":
        os.chown(shared_env.mail, 0, 0)  # mode 0755: nobody may read it, not create below it
    elif key == "users_file":
        os.chown(shared_env.users_file, 0, 0)  # mode 0600
    else:
        extra = _unusable_ca_file(shared_env)
    port = free_port()
    cfg = shared_env.write_config(f"127.0.0.1:{port}")
    cfg.write_text(cfg.read_text() + extra)
    args = [str(venv), "serve", *(["--inetd"] if inetd else []), "-c", str(cfg)]
    proc = subprocess.run(args, input=f"HELO alice {PASSWORD}\r\n", capture_output=True, text=True, timeout=30)
    backend = 1 if key == "ca_file" else 0
    assert proc.returncode == 2, proc.stderr
    assert f"pop2gate: config error: backend.{backend}.{key}: " in proc.stderr
    assert "by user nobody" in proc.stderr
    assert [k for k in ("path", "users_file", "ca_file") if f".{k}:" in proc.stderr] == [key]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def readable_by_nobody(path: Path) -> bool:
    """access(2) as nobody: `test -r` in a child that became nobody."""
    return subprocess.run(["test", "-r", str(path)], user=NOBODY.pw_uid, group=NOBODY.pw_gid,
                          extra_groups=[]).returncode == 0


def imports_after_the_drop(stderr: str) -> list[str]:
    """Modules -X importtime saw imported between the switch to nobody and the shutdown."""
    after = stderr.split("running as user=nobody", 1)[1].split("shutting down", 1)[0]
    return [line.rsplit("|", 1)[1].strip() for line in after.splitlines() if line.startswith("import time:")]


def test_project_venv_serves_after_the_drop(shared_env, dovecot):
    """Codecs a session loads lazily (utf-16-be for a non-ASCII FOLD, idna for an IMAP host
    name) are loaded before the drop. Here the project's venv has its interpreter in root's
    pyenv home, closed to nobody, so a late import fails the session; where nobody can read
    it, -X importtime still shows a late import, and the test asserts there is none."""
    import encodings

    stdlib_closed = not readable_by_nobody(Path(encodings.__file__).parent / "utf_16_be.py")
    folder = "Grüße"
    shared_env.deliver("alice", b"Subject: umlauts\n\nfold\n", folder=encode_mutf7(folder))
    give_to_nobody(shared_env.root)
    dovecot.append("carol", b"Subject: over imap\n\nimap body\n")
    shared_env.server["user"] = "nobody"
    port = free_port()
    cfg = shared_env.write_config(f"127.0.0.1:{port}")
    cfg.write_text(cfg.read_text() + f'[[backend]]\nname = "dc"\ntype = "imap"\n'
                   f'url = "imap://localhost:{dovecot.port}"\nca_file = "{dovecot.ca_file}"\n'
                   '[routing.users]\ncarol = "dc"\n')
    proc = serve(BIN / "pop2gate", cfg, PYTHONPROFILEIMPORTTIME="1")
    try:
        wait_port(port, proc)
        with Client.connect("127.0.0.1", port, timeout=20) as c:
            c.helo("alice", PASSWORD)
            assert c.fold(folder) == 1
            assert c.read() > 0 and c.retr() == b"Subject: umlauts\r\n\r\nfold\r\n"
            c.acks()
            c.quit()
        with Client.connect("127.0.0.1", port, timeout=20) as c:  # STARTTLS to "localhost"
            assert c.helo("carol", USERS["carol"]) >= 1
            c.quit()
        assert ids(proc.pid)["Uid"] == [NOBODY.pw_uid] * 4
    finally:
        err = stop(proc)
    assert "Traceback" not in err, err
    assert imports_after_the_drop(err) == [], f"stdlib closed to nobody: {stdlib_closed}"
