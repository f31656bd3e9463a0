"""The command line as users run it: real processes, real sockets, real pipes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import BIN, PASSWORD, free_port, wait_port

POP2GATE = str(BIN / "pop2gate")


def run(*args: str, stdin: str = "", **kw) -> subprocess.CompletedProcess:
    return subprocess.run([POP2GATE, *args], input=stdin, capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture
def serving(env):
    """`pop2gate serve -c FILE` as a subprocess; yields the port."""
    port = free_port()
    cfg = env.write_config(f"127.0.0.1:{port}")
    proc = subprocess.Popen([POP2GATE, "serve", "-c", str(cfg)], stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_serve_and_client_session(serving, env):
    from pop2gate.pop2.client import Client

    env.deliver("alice", b"Subject: hi\n\nhello\n")
    with Client.connect("127.0.0.1", serving, timeout=10) as c:
        assert c.greeting.text.startswith("POP2 test.invalid")
        assert c.helo("alice", PASSWORD) == 1
        assert c.read() == len(b"Subject: hi\r\n\r\nhello\r\n")
        assert c.retr() == b"Subject: hi\r\n\r\nhello\r\n"
        assert c.ackd() == 0
        c.quit()
    assert env.files("alice") == []


@pytest.mark.parametrize(
    "text,key",
    [
        ("[server]\nlisten = 'nope'\n", "server.listen"),
        ("[limits]\nlogin_timeout = -1\n", "limits.login_timeout"),
        ("[limits]\nidle_timout = 5\n", "limits.idle_timout"),
        ("[[backend]]\nname='m'\ntype='maildir'\npath='/x'\nusers_file='/y'\n[routing]\ndefault='other'\n",
         "routing.default"),
        ("[[backend]]\nname='m'\ntype='ftp'\n[routing]\ndefault='m'\n", "backend.0"),
        ("not toml [", "line 1"),
    ],
)
def test_invalid_config_exits_2_naming_the_key(tmp_path, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    result = run("serve", "-c", str(cfg))
    assert result.returncode == 2
    assert "config error" in result.stderr and key in result.stderr


def test_missing_config_exits_2(tmp_path):
    result = run("serve", "-c", str(tmp_path / "absent.toml"))
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_user_add_from_stdin(tmp_path, env):
    users = tmp_path / "u"
    result = run("user", "add", "carol", "--users-file", str(users), stdin="pw with spaces\n")
    assert result.returncode == 0, result.stderr
    assert "added user carol" in result.stdout
    assert users.stat().st_mode & 0o777 == 0o600
    assert "pw with spaces" not in users.read_text()
    from pop2gate.stores.maildir.users import read_users, verify

    assert verify(read_users(users), "carol", "pw with spaces")
    result = run("user", "add", "carol", "--users-file", str(users), stdin="new\n")
    assert "changed user carol" in result.stdout
    assert verify(read_users(users), "carol", "new")


def test_user_add_with_config_picks_users_file(env):
    cfg = env.write_config()
    result = run("user", "add", "dave", "-c", str(cfg), stdin="x\n")
    assert result.returncode == 0, result.stderr
    assert "dave:" in env.users_file.read_text()


@pytest.mark.parametrize("name", ["../root", "a/b", "", ".hidden", "x" * 65])
def test_user_add_refuses_unsafe_names(tmp_path, name):
    result = run("user", "add", name, "--users-file", str(tmp_path / "u"), stdin="x\n")
    assert result.returncode == 2
    assert not (tmp_path / "u").exists()


def _inetd(env, data: bytes, **kw) -> tuple[bytes, str]:
    cfg = env.write_config()
    proc = subprocess.run(
        [POP2GATE, "serve", "--inetd", "-c", str(cfg)], input=data, capture_output=True, timeout=30, **kw
    )
    return proc.stdout, proc.stderr.decode()


def test_inetd_mode_through_a_pipe(env):
    env.deliver("alice", b"Subject: via inetd\n\nbody\n")
    out, err = _inetd(env, f"HELO alice {PASSWORD}\r\nREAD\r\nRETR\r\nACKD\r\nQUIT\r\n".encode())
    wire = b"Subject: via inetd\r\n\r\nbody\r\n"
    assert out == (
        b"+ POP2 test.invalid pop2gate server ready\r\n#1 message in INBOX\r\n"
        + f"={len(wire)} characters in message 1\r\n".encode()
        + wire
        + b"=0 no message 2\r\n+ OK\r\n"
    )
    assert env.files("alice") == []
    assert "login" in err and PASSWORD not in err  # logs go to stderr, never the password


def test_inetd_mode_eof_after_ackd_deletes_nothing(env):
    env.deliver("alice", b"keep me\n")
    out, _ = _inetd(env, f"HELO alice {PASSWORD}\r\nREAD\r\nRETR\r\nACKD\r\n".encode())
    assert out.endswith(b"keep me\r\n=0 no message 2\r\n")
    assert len(env.files("alice")) == 1


def test_inetd_mode_on_a_socket(env):
    """The way inetd starts it: stdin and stdout are the accepted socket; the client waits for each reply."""
    from pop2gate.pop2.client import Client

    env.deliver("alice", b"x\n")
    cfg = env.write_config()
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [POP2GATE, "serve", "--inetd", "-c", str(cfg)], stdin=theirs, stdout=theirs, stderr=subprocess.PIPE
    )
    theirs.close()
    with Client.from_socket(ours, timeout=20) as c:
        assert c.greeting.text == "POP2 test.invalid pop2gate server ready"
        assert c.helo("alice", PASSWORD) == 1
        assert c.read() == 3
        assert c.retr() == b"x\r\n"
        assert c.ackd() == 0
        assert c.quit() == "OK"
    proc.wait(10)
    assert proc.returncode == 0
    assert env.files("alice") == []


def test_demo_serves_a_full_session(tmp_path):
    """`pop2gate demo`: HELO, FOLD, READ, RETR, ACKS, ACKD, NACK and QUIT as docs/protocol.md says."""
    from pop2gate.demo import DEMO_ADDRESS
    from pop2gate.pop2.client import Client

    host, port = DEMO_ADDRESS
    proc = subprocess.Popen([POP2GATE, "demo", "--dir", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc)
        uids = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                    if line.startswith("Uid:")).split()[1:]
        assert uids == [str(os.geteuid())] * 4  # its files are ours: never becomes nobody, also as root
        with Client.connect(host, port, timeout=20) as c:
            assert c.helo("demo", "demo") == 5
            sizes = [c.read(n) for n in range(1, 6)]
            assert all(s > 0 for s in sizes) and max(sizes) > 1_000_000
            assert c.read(1) == sizes[0]
            first = c.retr()
            assert len(first) == sizes[0] and first.endswith(b"\r\n")
            assert c.nack() == sizes[0]              # NACK: same message again
            assert c.retr() == first
            assert c.acks() == sizes[1]             # ACKS: keep, advance
            dots = c.retr()
            assert b"\r\n.\r\n.. two dots\r\n" in dots
            assert c.ackd() == sizes[2]             # ACKD: delete on QUIT, advance
            assert c.read(2) == 0                   # ACKD'd in this session
            assert c.read(5) == sizes[4]
            assert c.retr().endswith(b"has no line end\r\n")
            assert c.acks() == 0                    # past the end
            assert c.fold("Archive") == 1           # releases INBOX: message 2 deleted
            assert c.read() > 0
            assert c.quit() == "OK"
        with Client.connect(host, port, timeout=20) as c:
            assert c.helo("demo", "demo") == 4
            c.quit()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert f"telnet {host} {port}" in out
    assert "pop2gate fetch" in out
    mail = tmp_path / "mail" / "demo"
    assert len(os.listdir(mail / "new")) + len(os.listdir(mail / "cur")) == 4


def test_user_add_on_a_terminal_reads_without_echo(tmp_path):
    """On a terminal the password is asked twice, without echo."""
    import pty

    users = tmp_path / "u"
    pid, fd = pty.fork()
    if pid == 0:  # the child: pop2gate on a terminal
        os.execv(POP2GATE, [POP2GATE, "user", "add", "erin", "--users-file", str(users)])
    seen = b""

    def read_until(mark: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while mark not in seen and time.monotonic() < deadline:
            try:
                seen += os.read(fd, 1024)
            except OSError:
                break

    read_until(b"Password: ")
    os.write(fd, b"tty secret\n")
    read_until(b"Again: ")
    os.write(fd, b"tty secret\n")
    read_until(b"added user erin")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"tty secret" not in seen  # not echoed
    from pop2gate.stores.maildir.users import read_users, verify

    assert verify(read_users(users), "erin", "tty secret")


def test_every_limit_is_documented():
    from pop2gate.config import Limits, ServerSettings

    docs = Path(__file__).resolve().parent.parent / "docs"
    text = (docs / "configuration.md").read_text() + (docs / "imap.md").read_text()
    for name in list(Limits.model_fields) + list(ServerSettings.model_fields):
        assert f"`{name}`" in text, f"{name} is not documented"


def test_the_users_file_is_replaced_durably(tmp_path, monkeypatch):
    from pop2gate.stores.maildir.users import read_users, set_password

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "users"
    assert set_password(path, "bob", "pw")
    assert [os.path.basename(p).startswith(".users-") for p in synced] == [True, False]  # the file, then
    assert synced[1] == str(tmp_path)  # its directory: the rename is durable too
    assert list(read_users(path)) == ["bob"] and os.listdir(tmp_path) == ["users"]
