"""[log]: text and JSON lines, session ids, event lines, journald, syslog; never a password.

Every test runs `pop2gate serve` as a process and talks to it as a real client does,
waiting for each reply.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, free_port, log_with, start_serve, stop_process, wait_port
from helpers import PASSWORD as ALICE_PASSWORD
from pop2gate.pop2.client import Client, ProtocolError

MARKER = "Zq7-MARKER-xK2"
PASSWORD = f"pw {MARKER} end"  # a space inside, as real passwords may have
POP2GATE = str(BIN / "pop2gate")


def start(env, log: str, *args: str, extra_env: dict[str, str] | None = None,
          backends: list[dict] | None = None) -> tuple[subprocess.Popen, int]:
    return start_serve(env, "[log]\n" + log, *args, backends=backends, env={**os.environ, **(extra_env or {})})


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return err


def sessions(port: int, env) -> None:
    """A full drain (READ, RETR, ACKD, QUIT), a bad login, and a master-style login to an unknown backend."""
    env.add_user("carol", PASSWORD)
    env.deliver("carol", b"Subject: one\n\nbody\n")
    with Client.connect("127.0.0.1", port, timeout=10) as c:
        assert c.helo("carol", PASSWORD) == 1
        c.read()
        assert c.retr() == b"Subject: one\r\n\r\nbody\r\n"
        assert c.ackd() == 0
        c.quit()
    for user in ("carol", "nowhere:carol"):
        with Client.connect("127.0.0.1", port, timeout=10) as c, pytest.raises(ProtocolError):
            c.helo(user, PASSWORD + "wrong")
    assert env.files("carol") == []


def test_json_lines_events_and_session_ids_never_a_password(env):
    proc, port = start(env, 'format = "json"\nlevel = "debug"\n')
    try:
        sessions(port, env)
    finally:
        err = stop(proc)
    assert MARKER not in err
    records = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["level"] == "debug" for r in records)
    by_session: dict[str, list[dict]] = {}
    for r in records:
        if "session" in r:
            by_session.setdefault(r["session"], []).append(r)
    logins = [rs for rs in by_session.values() if any(r.get("event", "").startswith("login") for r in rs)]
    assert len(logins) == 3  # the others: wait_port's probes, which connect and close
    good, bad, unrouted = logins
    events = [r["event"] for r in good if "event" in r]
    assert events == ["connect", "login", "select", "retr", "deleted", "quit", "closed"]
    login = next(r for r in good if r.get("event") == "login")
    assert login["user"] == "carol" and login["backend"] == "local" and login["peer"].startswith("127.0.0.1:")
    retr = next(r for r in good if r.get("event") == "retr")
    assert (retr["n"], retr["octets"], retr["folder"]) == (1, len(b"Subject: one\r\n\r\nbody\r\n"), "INBOX")
    assert next(r for r in good if r.get("event") == "deleted")["count"] == 1
    failed = next(r for r in bad if r.get("event") == "login_failed")
    assert failed["user"] == "carol" and failed["backend"] == "local" and failed["level"] == "warning"
    failed = next(r for r in unrouted if r.get("event") == "login_failed")
    assert failed["user"] == "nowhere:carol" and "backend" not in failed
    assert all(r["session"] == good[0]["session"] for r in good)


def test_imap_sessions_at_debug_never_a_password(env, dovecot):
    from dovecot import HOST, USERS

    dovecot.clear("alice")
    dovecot.append("alice", b"Subject: imap\r\n\r\nbody\r\n")
    imap = {"name": "dc", "type": "imap", "url": f"imap://{HOST}:{dovecot.port}", "tls": "none"}
    for fmt in ("json", "text"):
        proc, port = start(env, f'format = "{fmt}"\nlevel = "debug"\n', backends=[imap])
        try:
            with Client.connect("127.0.0.1", port, timeout=30) as c:
                assert c.helo("alice", USERS["alice"]) == 1
                c.read()
                assert c.retr() == b"Subject: imap\r\n\r\nbody\r\n"
                c.acks()
                c.quit()
            with Client.connect("127.0.0.1", port, timeout=30) as c, pytest.raises(ProtocolError):
                c.helo("alice", PASSWORD)
        finally:
            err = stop(proc)
        assert MARKER not in err and USERS["alice"] not in err
        assert "backend=dc" in err or '"backend": "dc"' in err
        assert "login refused for 'alice'" in err  # the IMAP store's own line
        if fmt == "json":  # ... carries the session id of the session it served
            records = [json.loads(line) for line in err.splitlines()]
            refused = next(r for r in records if "login refused" in r["message"])
            failed = next(r for r in records if r.get("event") == "login_failed")
            assert refused["logger"] == "pop2gate.imap" and refused["session"] == failed["session"]


def test_text_lines_at_debug_never_a_password_and_carry_the_session(env):
    proc, port = start(env, 'level = "warning"\n', "--log-level", "debug")  # the option wins
    try:
        sessions(port, env)
    finally:
        err = stop(proc)
    assert MARKER not in err
    lines = err.splitlines()
    assert any(" DEBUG pop2gate.session: " in line for line in lines)
    session_lines = [line for line in lines if "peer=127.0.0.1:" in line and "listening" not in line]
    assert session_lines and all(re.search(r"pop2gate\.session: session=[0-9a-f]{12} ", line)
                                 for line in session_lines)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", lines[0])  # timestamps: not journald
    assert any(re.search(r"login peer=127\.0\.0\.1:\d+ user='carol' backend=local", line) for line in lines)
    assert any(re.search(r"bad login peer=127\.0\.0\.1:\d+ user='carol' backend=local delay=", line)
               for line in lines)


@pytest.mark.parametrize("matches", [True, False])
def test_no_timestamps_when_stderr_is_the_journal(env, matches):
    r, w = os.pipe()  # stands for journald's stream: what JOURNAL_STREAM names is stderr's device:inode
    st = os.fstat(w)
    stream = f"{st.st_dev}:{st.st_ino}" if matches else f"{st.st_dev}:{st.st_ino + 1}"
    port = free_port()
    cfg = env.write_config(f"127.0.0.1:{port}")
    proc = subprocess.Popen([POP2GATE, "serve", "-c", str(cfg)], stderr=w, env={**os.environ,
                                                                                "JOURNAL_STREAM": stream})
    os.close(w)
    try:
        wait_port(port, proc)
        with Client.connect("127.0.0.1", port, timeout=10) as c:
            c.helo("alice", "secret pass")
            c.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    with os.fdopen(r) as f:
        lines = f.read().splitlines()
    assert any(" login " in line for line in lines)
    stamped = [bool(re.match(r"\d{4}-\d\d-\d\d ", line)) for line in lines]
    assert all(stamped) if not matches else not any(stamped)


@pytest.mark.parametrize("kind", ["unix", "udp"])
def test_syslog_lines(env, tmp_path: Path, kind):
    if kind == "unix":
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(str(tmp_path / "log.sock"))
        path = str(tmp_path / "log.sock")
    else:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        path = f"127.0.0.1:{sink.getsockname()[1]}"
    sink.settimeout(10)
    try:
        proc, port = start(env, f'destination = "syslog"\nsyslog_address = "{path}"\nsyslog_facility = "local3"\n')
        try:
            with Client.connect("127.0.0.1", port, timeout=10) as c:
                c.helo("alice", ALICE_PASSWORD)
                c.quit()
        finally:
            err = stop(proc)
        assert err == ""  # nothing on stderr: it all went to syslog
        got = []
        sink.setblocking(False)  # the server has exited: every line it sent is queued here
        while True:
            try:
                got.append(sink.recv(65536).decode())
            except BlockingIOError:
                break
    finally:
        sink.close()
    login = [g for g in got if " login peer=" in g]
    # <PRI> = local3 (19) * 8 + info (6); the program's tag; no timestamp of our own
    assert login and re.match(rf"<158>pop2gate\[{proc.pid}\]: INFO pop2gate\.session: session=[0-9a-f]{{12}} login ",
                              login[0]), login


def test_inetd_with_stderr_on_the_socket_logs_to_syslog(env, tmp_path: Path):
    """inetd and xinetd give the server the client's socket as stdin, stdout and stderr: no log
    line may reach the client; they go to syslog."""
    env.deliver("alice", b"x\n")
    path = tmp_path / "log.sock"
    cfg = env.write_config()
    cfg.write_text(cfg.read_text() + f'[log]\nsyslog_address = "{path}"\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(path))
        sink.settimeout(10)
        ours, theirs = socket.socketpair()
        with ours:
            proc = subprocess.Popen([POP2GATE, "serve", "--inetd", "-c", str(cfg)],
                                    stdin=theirs, stdout=theirs, stderr=theirs)
            theirs.close()
            ours.settimeout(20)
            ours.sendall(f"HELO alice {ALICE_PASSWORD}\r\nQUIT\r\n".encode())
            data = b""
            while chunk := ours.recv(4096):
                data += chunk
            proc.wait(10)
        assert data == b"+ POP2 test.invalid pop2gate server ready\r\n#1 message in INBOX\r\n+ OK\r\n"
        got = [sink.recv(65536).decode() for _ in range(3)]
    assert any(" login peer=" in g for g in got) and not any(ALICE_PASSWORD in g for g in got)


def test_log_settings_are_checked(tmp_path, env):
    cfg = env.write_config()
    cfg.write_text(cfg.read_text() + '[log]\nformat = "xml"\nsyslog_facility = "kern"\nsyslog_address = "h"\n')
    result = subprocess.run([POP2GATE, "config", "check", "-c", str(cfg)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "log.format: Input should be 'text' or 'json'" in result.stderr
    assert "log.syslog_facility:" in result.stderr and "log.syslog_address: 'h' is not HOST:PORT" in result.stderr


def _log_formats():
    """(file, line, format) of every `log.<level>("...")` call in the package."""
    src = Path(__file__).resolve().parent.parent / "src" / "pop2gate"
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"
                    and node.func.attr in ("debug", "info", "warning", "error", "exception")):
                arg = node.args[0]
                yield path.name, node.lineno, arg.value if isinstance(arg, ast.Constant) else None


def test_every_log_line_is_in_troubleshooting():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md").read_text()
    formats = list(_log_formats())
    assert len(formats) > 40
    for name, line, fmt in formats:
        assert isinstance(fmt, str), f"{name}:{line}: a log format that is not one literal string"
        pieces = [p.strip(" :=;,()") for p in re.split(r"%[-#0 +]?\d*(?:\.\d+)?[sdrgf]", fmt)]
        words = max(pieces, key=len)  # the line's longest fixed text: what an operator searches for
        assert words in doc, f"{name}:{line}: {fmt!r} is not in docs/troubleshooting.md"


def test_a_reload_puts_new_log_settings_in_force(env, tmp_path: Path):
    """SIGHUP: text lines become JSON ones and the level changes; --log-level still wins over it."""
    log = tmp_path / "serve.log"
    port = free_port()
    cfg = env.write_config(f"127.0.0.1:{port}")
    base = cfg.read_text()
    cfg.write_text(base + '[log]\nlevel = "info"\n')
    with open(log, "wb") as err:
        proc = subprocess.Popen([POP2GATE, "serve", "-c", str(cfg)], stderr=err)
    try:
        wait_port(port, proc)
        cfg.write_text(base + '[log]\nformat = "json"\nlevel = "debug"\n')
        proc.send_signal(signal.SIGHUP)
        assert "reload: done" in log_with(log, "reload: done")
        with Client.connect("127.0.0.1", port, timeout=10) as c:
            c.helo("alice", ALICE_PASSWORD)
            c.quit()
        text = log_with(log, '"event": "closed"')
    finally:
        assert stop_process(proc) == 0
    before, _, after = text.partition("reload: done")
    assert " INFO pop2gate.server: reload: reading the configuration" in before
    records = [json.loads(line) for line in after.splitlines()[1:]]  # JSON from the next line on
    assert any(r.get("event") == "login" for r in records)
    assert any(r["level"] == "debug" and r["message"].startswith("command Helo") for r in records)
