"""`pop2gate fetch` as users run it: a real process against pop2gate on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import BIN, PASSWORD, Relay, ScriptConn, ScriptedServer, free_port

POP2GATE = str(BIN / "pop2gate")


def wire(data: bytes) -> bytes:
    """The wire form pop2gate sends for a stored message: CRLF line ends, the last line ended."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


MESSAGES = [
    b"Return-Path: <bob@example.org>\nFrom: Bob <bob@example.org>\nDate: Sun, 29 Nov 2026 04:00:00 +0100\n"
    b"Subject: one\n\nfirst\n",
    b"From: carol@example.org\nSubject: two\n\n.\n..\nFrom here on\n>From quoted\nFrom: not a header\n",
    b"Subject: three\n\n" + bytes(range(32, 256)) + b"\nno final line end",
]


def fetch(target: str | int, *args: str, stdin: str | None = PASSWORD + "\n", env: dict | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess:
    target = f"127.0.0.1:{target}" if isinstance(target, int) else target
    return subprocess.run([POP2GATE, "fetch", target, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def saved(maildir: Path) -> list[bytes]:
    """The messages of a Maildir's new/, in delivery order; tmp/ must be empty."""
    assert os.listdir(maildir / "tmp") == []
    names = sorted(os.listdir(maildir / "new"), key=lambda n: int(n.split("Q")[1].split(".")[0]))
    return [(maildir / "new" / n).read_bytes() for n in names]


def deliver_all(env) -> None:
    for m in MESSAGES:
        env.deliver("alice", m)


# --- output: Maildir, mbox, stdout ------------------------------------------------------


def test_maildir_keep_then_delete_byte_exact(served, env, tmp_path):
    deliver_all(env)
    out = tmp_path / "out" / "Mail"  # created, parents too
    result = fetch(served.port, "--user", "alice", "--maildir", str(out))
    assert result.returncode == 0, result.stderr
    assert saved(out) == [wire(m) for m in MESSAGES]
    assert len(env.files("alice")) == 3  # --keep is the default
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"pop2gate fetch: 3 message(s), {sum(len(wire(m)) for m in MESSAGES)} octets, from INBOX saved to "
        f"{out}, kept on the server"]

    again = tmp_path / "again"
    result = fetch(served.port, "--user", "alice", "--maildir", str(again), "--delete")
    assert result.returncode == 0, result.stderr
    assert saved(again) == [wire(m) for m in MESSAGES]
    assert "deleted on the server" in result.stderr
    assert env.files("alice") == []
    assert (again / "new").stat().st_mode & 0o777 == 0o700


def test_each_ack_announces_the_next_message_so_it_is_not_read_again(served, env, tmp_path):
    deliver_all(env)
    out = tmp_path / "m"
    with Relay(("127.0.0.1", served.port)) as relay:
        result = fetch(relay.port, "--user", "alice", "--maildir", str(out), "--delete")
    assert result.returncode == 0, result.stderr
    assert saved(out) == [wire(m) for m in MESSAGES]
    commands = [line.split()[0] for line in bytes(relay.from_client).split(b"\r\n") if line]
    # the sizes (READ 1..3), then message 1 made current again; ACKD's =c is message 2's READ
    assert commands == [b"HELO", b"READ", b"READ", b"READ", b"READ", b"RETR", b"ACKD", b"RETR", b"ACKD", b"RETR",
                        b"ACKD", b"QUIT"]
    assert env.files("alice") == []


def test_mbox_entries_from_line_and_append(served, env, tmp_path):
    deliver_all(env)
    mbox = tmp_path / "mbox"
    result = fetch(served.port, "--user", "alice", "--mbox", str(mbox), "--limit", "1")
    assert result.returncode == 0, result.stderr
    first = wire(MESSAGES[0])
    # envelope sender from Return-Path, date from Date in UTC; the message as sent; a blank line
    assert mbox.read_bytes() == b"From bob@example.org Sun Nov 29 03:00:00 2026\r\n" + first + b"\r\n"
    assert mbox.stat().st_mode & 0o777 == 0o600

    result = fetch(served.port, "--user", "alice", "--mbox", str(mbox), "--delete")
    assert result.returncode == 0, result.stderr
    data = mbox.read_bytes()
    entries = data.split(b"\r\n\r\nFrom ")
    assert len(entries) == 4  # the first run's, then all three appended
    second = entries[2]
    assert second.startswith(b"carol@example.org ")  # no Return-Path: the From address; no Date: now
    body = second.split(b"\r\n", 1)[1] + b"\r\n"  # the split took its last line end
    # byte-exact but for the >From quoting, which test_mbox_quoting checks on its own
    assert body == wire(MESSAGES[1]).replace(b"\r\nFrom here", b"\r\n>From here").replace(
        b"\r\n>From quoted", b"\r\n>>From quoted")
    assert entries[3].split(b"\r\n", 1)[1] == wire(MESSAGES[2]) + b"\r\n"
    assert env.files("alice") == []


def test_mbox_quoting():
    import io

    from pop2gate.mailfiles import from_line, mbox_entry, quote_from

    assert quote_from(b"From me\r\n") == b">From me\r\n"
    assert quote_from(b">>From me\n") == b">>>From me\n"
    for line in (b"From: header\r\n", b" From me\r\n", b"Fromage\r\n", b"from me\r\n", b">Fro\r\n"):
        assert quote_from(line) == line
    msg = io.BytesIO(b"Subject: x\nDate: bad date\n\nFrom the start\n>From a quote\nend")
    out = io.BytesIO()
    mbox_entry(msg, out)
    head, rest = out.getvalue().split(b"\n", 1)
    assert head.startswith(b"From MAILER-DAEMON ") and len(head.split()) == 7
    assert rest == b"Subject: x\nDate: bad date\n\n>From the start\n>>From a quote\nend\n\n"
    assert from_line(b"From: <>\r\n", now=0) == b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970"
    assert from_line(b"Return-Path: <a b@x>\r\nDate: Tue, 1 Dec 2026 23:30:00 -0100\r\n") == \
        b"From ab@x Wed Dec  2 00:30:00 2026"


def test_stdout_folder_and_list(served, env):
    deliver_all(env)
    env.deliver("alice", b"Subject: archived\n\nold\n", folder="Archive")
    result = fetch(served.port, "--user", "alice", "--list")
    assert result.returncode == 0, result.stderr
    sizes = [len(wire(m)) for m in MESSAGES]
    assert result.stdout == "".join(f"{n:6d} {s:10d}\n" for n, s in enumerate(sizes, 1))
    assert "3 message(s)" in result.stderr and "INBOX" in result.stderr
    assert fetch(served.port, "--user", "alice", "--dry-run", "--limit", "2").stdout.count("\n") == 2

    result = subprocess.run([POP2GATE, "fetch", f"127.0.0.1:{served.port}", "--user", "alice", "--stdout",
                             "--folder", "Archive"], input=PASSWORD.encode() + b"\n", capture_output=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Subject: archived\r\n\r\nold\r\n"
    assert len(env.files("alice")) == 3 and len(env.files("alice", "Archive")) == 1


def test_limit_with_delete(served, env, tmp_path):
    deliver_all(env)
    result = fetch(served.port, "--user", "alice", "--maildir", str(tmp_path / "m"), "--delete", "--limit", "2")
    assert result.returncode == 0, result.stderr
    assert saved(tmp_path / "m") == [wire(m) for m in MESSAGES[:2]]
    assert len(env.files("alice")) == 1


# --- failures: nothing written that is not whole, nothing deleted -------------------------


def start_behind_relay(port: int, out: Path, user: str = "alice", password: str = PASSWORD):
    """`fetch --maildir OUT --delete` through a Relay to `port` that holds at the octets MARK."""
    relay = Relay(("127.0.0.1", port), hold_at=b"MARK")
    proc = subprocess.Popen([POP2GATE, "fetch", f"127.0.0.1:{relay.port}", "--user", user, "--maildir",
                             str(out), "--delete"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdin.write(password + "\n")
    proc.stdin.close()
    assert relay.held.wait(30)
    return relay, proc


def test_server_killed_mid_retr(served, env, tmp_path):
    deliver_all(env)
    env.deliver("alice", b"Subject: four\n\n" + b"MARK" + b"x" * 300_000 + b"\n")
    out = tmp_path / "m"
    relay, proc = start_behind_relay(served.port, out)  # held just inside message 4's octets
    with relay:
        served.proc.kill()
        served.proc.wait(10)
        relay.cut()
        err = proc.stderr.read()
        assert proc.wait(30) == 1
    assert err.strip().splitlines() == [
        "pop2gate fetch: connection lost during message 4: nothing written for it, nothing deleted"]
    assert saved(out) == [wire(m) for m in MESSAGES]  # the first three are whole, the fourth is not there
    assert len(env.files("alice")) == 4  # ACKD sent for three, but no QUIT: none deleted


def test_server_killed_mid_retr_dovecot_backend(dovecot, tmp_path):
    """The same through `pop2gate serve` to Dovecot: every UID stays, none flagged \\Deleted."""
    import pwd

    from dovecot import HOST, USERS
    from helpers import wait_port

    dovecot.clear("carol")
    messages = [wire(m) for m in MESSAGES] + [b"Subject: four\r\n\r\nMARK" + b"x" * 300_000 + b"\r\n"]
    uids = [dovecot.append("carol", m) for m in messages]
    port = free_port()
    cfg = tmp_path / "imap.toml"
    cfg.write_text(f"""[server]
hostname = "test.invalid"
listen = ["127.0.0.1:{port}"]
user = "{pwd.getpwuid(os.geteuid()).pw_name}"
[[backend]]
name = "dc"
type = "imap"
url = "imap://{HOST}:{dovecot.port}"
tls = "none"
[routing]
default = "dc"
""")
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([POP2GATE, "serve", "-c", str(cfg)], stderr=log)
    try:
        wait_port(port, server)
        relay, proc = start_behind_relay(port, tmp_path / "m", "carol", USERS["carol"])
        with relay:
            server.kill()
            server.wait(10)
            relay.cut()
            err = proc.stderr.read()
            assert proc.wait(30) == 1
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    assert "connection lost during message 4: nothing written for it, nothing deleted" in err
    assert saved(tmp_path / "m") == messages[:3]
    left = dovecot.uids("carol")
    assert sorted(left) == uids and not any(r"\Deleted" in flags for flags in left.values())


def short_server(sent: bytes, then_close: bool):
    """A POP2 server that announces 100 octets for message 1 and sends `sent`."""

    def script(conn: ScriptConn) -> None:
        conn.send(b"+ POP2 scripted ready\r\n")
        conn.readline()  # HELO
        conn.send(b"#1 message\r\n")
        conn.readline()  # READ 1 (the sizes)
        conn.send(b"=100 characters\r\n")
        conn.readline()  # READ 1 (the message)
        conn.send(b"=100 characters\r\n")
        conn.readline()  # RETR
        conn.send(sent)
        if not then_close:
            conn.drain()

    return script


@pytest.mark.parametrize("sent,then_close,why", [
    (b"x" * 60, True, "connection lost during message 1"),
    (b"x" * 60, False, "no answer from the server during message 1 (read timeout)"),
    (b"x" * 120, False, "message 1: the server announced 100 octets and sent more"),
    (b"x" * 100 + b"=0 no more\r\n", False, "message 1: the server announced 100 octets and sent more"),
])
def test_short_or_long_message_leaves_nothing(tmp_path, sent, then_close, why):
    with ScriptedServer(short_server(sent, then_close)) as srv:
        result = fetch(srv.target, "--user", "alice", "--maildir", str(tmp_path / "m"), "--delete",
                       "--timeout", "1")
        srv.wait_done(10)
    assert result.returncode == 1
    assert why in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert saved(tmp_path / "m") == []
    assert [line.split()[0] for line in srv.received] == [b"HELO", b"READ", b"READ", b"RETR"]  # no ACK, no QUIT


def test_mbox_untouched_by_a_cut_message(tmp_path):
    mbox = tmp_path / "mbox"
    mbox.write_bytes(b"From a@b Thu Jan  1 00:00:00 1970\nSubject: old\n\nold\n\n")
    before = mbox.read_bytes()
    with ScriptedServer(short_server(b"x" * 60, True)) as srv:
        result = fetch(srv.target, "--user", "alice", "--mbox", str(mbox), "--delete")
    assert result.returncode == 1
    assert mbox.read_bytes() == before


@pytest.mark.parametrize("output", ["--maildir", "--mbox"])
def test_disk_error_leaves_the_message_on_the_server(served, env, tmp_path, output):
    """A write that fails (here: over the process's file size limit, EFBIG) writes nothing of the
    message, sends no ACK for it and no QUIT: the server deletes nothing."""
    import resource

    deliver_all(env)
    env.deliver("alice", b"Subject: big\n\n" + b"b" * 400_000 + b"\n")
    out = tmp_path / "out"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run([POP2GATE, "fetch", f"127.0.0.1:{served.port}", "--user", "alice", output, str(out),
                             "--delete"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
                            preexec_fn=small_files)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"pop2gate fetch: cannot write {out}: File too large: message 4 left on the server"]
    if output == "--maildir":
        assert saved(out) == [wire(m) for m in MESSAGES]
    else:
        assert out.read_bytes().count(b"\r\n\r\nFrom ") == 2 and b"bbbb" not in out.read_bytes()
    assert len(env.files("alice")) == 4


def test_wrong_password_and_closed_port(served, env, tmp_path):
    env.deliver("alice", b"x\n")
    result = fetch(served.port, "--user", "alice", "--maildir", str(tmp_path / "m"), stdin="wrong\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["pop2gate fetch: login refused: Bad login"]
    port = free_port()
    result = fetch(port, "--user", "alice", "--list")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"pop2gate fetch: cannot connect to 127.0.0.1:{port}: Connection refused"]
    assert len(env.files("alice")) == 1


@pytest.mark.parametrize("greeting,answers,why", [
    (b"220 smtp.example ESMTP\r\n", [], "is not a POP2 server"),
    (b"+ POP2 ready\r\n", [b"+OK 2 messages\r\n"], "protocol error at login"),
    (b"+ POP2 ready\r\n", [b"#2\r\n", b"=12 x\r\n", b"=zz\r\n"], "protocol error while reading the sizes"),
])
def test_protocol_errors_exit_1_with_one_line(tmp_path, greeting, answers, why):
    from helpers import replies

    with ScriptedServer(replies(answers, greeting, drain=True)) as srv:
        result = fetch(srv.target, "--user", "alice", "--maildir", str(tmp_path / "m"), "--delete")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and why in result.stderr and "Traceback" not in result.stderr
    assert saved(tmp_path / "m") == []
    assert not any(line.startswith((b"QUIT", b"ACK")) for line in srv.received)


def test_stdout_with_delete_takes_only_the_first(served, env):
    deliver_all(env)
    result = subprocess.run([POP2GATE, "fetch", f"127.0.0.1:{served.port}", "--user", "alice", "--stdout",
                             "--delete"], input=PASSWORD.encode() + b"\n", capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == wire(MESSAGES[0])
    assert len(env.files("alice")) == 2


def test_server_that_never_greets(tmp_path):
    with ScriptedServer(lambda conn: conn.drain()) as srv:
        result = fetch(srv.target, "--user", "alice", "--maildir", str(tmp_path / "m"), "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"pop2gate fetch: no answer from 127.0.0.1:{srv.port} (timed out connecting or waiting for the greeting)"]
    assert srv.received == []  # not even the password


def test_ipv6_target():
    script = [b"#0 messages\r\n", b"+ OK\r\n"]

    def session(conn: ScriptConn) -> None:
        conn.send(b"+ POP2 v6 ready\r\n")
        for answer in script:
            conn.readline()
            conn.send(answer)

    with ScriptedServer(session, host="::1") as srv:
        result = fetch(f"[::1]:{srv.port}", "--user", "alice", "--list")
        srv.wait_done()
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in srv.received] == [b"HELO", b"QUIT"]


@pytest.mark.parametrize("args,message", [
    (["--user", "a"], "give exactly one of --list"),
    (["--user", "a", "--list", "--mbox", "x"], "give exactly one of --list"),
    (["--user", "a", "--list", "--delete"], "--delete needs"),
    (["--user", "a", "--stdout", "--limit", "2"], "--stdout writes one message"),
    (["--user", "a", "--list", "--insecure"], "--insecure needs --tls"),
    (["--user", "a", "--list", "--password", "x"], "No such option: --password"),
])
def test_usage_errors_exit_2(args, message):
    result = fetch("127.0.0.1:9", *args)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize("target", ["", "host:0", "host:x", "[::1", "a b"])
def test_bad_target_exit_2(target):
    result = fetch(target, "--user", "a", "--list")
    assert result.returncode == 2 and "HOST[:PORT]" in result.stderr


# --- the password ---------------------------------------------------------------------


def test_password_sources(served, env, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    assert fetch(served.port, "--user", "alice", "--list", "--password-file", str(pw), stdin="").returncode == 0
    pw.chmod(0o640)
    result = fetch(served.port, "--user", "alice", "--list", "--password-file", str(pw), stdin="")
    assert result.returncode == 2 and "is open to group or others (mode 0640): chmod 600 it" in result.stderr
    result = fetch(served.port, "--user", "alice", "--list", stdin="", env={"POP2_PASSWORD": PASSWORD})
    assert result.returncode == 0, result.stderr
    result = fetch(served.port, "--user", "alice", "--list", stdin="")
    assert result.returncode == 2 and "stdin is empty" in result.stderr


def test_password_in_no_process_listing_and_no_log(served, env, tmp_path):
    """While the client logs in, `ps` shows no password; neither does any output or log."""
    listing: list[str] = []

    def session(conn: ScriptConn) -> None:
        conn.send(b"+ POP2 scripted ready\r\n")
        conn.readline()
        listing.append(subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout)
        conn.send(b"- wrong\r\n")

    with ScriptedServer(session) as srv:
        result = fetch(srv.target, "--user", "alice", "--list", env={"POP2_PASSWORD": PASSWORD}, stdin="")
        srv.wait_done()
    quoted = PASSWORD.replace(" ", "\\ ")
    assert srv.received == [f"HELO alice {quoted}\r\n".encode()]  # it was sent, and only there
    assert "pop2gate fetch" in listing[0] and PASSWORD not in listing[0] and quoted not in listing[0]
    env.deliver("alice", b"x\n")
    ok = fetch(served.port, "--user", "alice", "--maildir", str(tmp_path / "m"), "--delete")
    bad = fetch(served.port, "--user", "alice", "--list", stdin=PASSWORD + "x\n")
    assert ok.returncode == 0 and bad.returncode == 1
    log = served.log.read_text()
    assert "login" in log
    for text in (result.stdout, result.stderr, ok.stdout, ok.stderr, bad.stdout, bad.stderr, log):
        assert PASSWORD not in text and quoted not in text


# --- the terminal: prompt, progress bar, Ctrl-C ----------------------------------------------


def run_in_pty(argv: list[str], answer: bytes, until: bytes, env: dict) -> tuple[int, bytes]:
    """Run argv on a new terminal; type `answer` once `until` shows; return (exit status, all output)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env)
    seen, typed = b"", False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not typed and until in seen:
            os.write(fd, answer)
            typed = True
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen


def test_progress_bar_on_a_terminal_and_none_when_piped(served, env, tmp_path):
    deliver_all(env)
    env.deliver("alice", b"Subject: big\n\n" + b"y" * 3_000_000 + b"\n")
    terminal = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    terminal.pop("POP2_PASSWORD", None)
    status, screen = run_in_pty([POP2GATE, "fetch", f"127.0.0.1:{served.port}", "--user", "alice", "--maildir",
                                 str(tmp_path / "t")], PASSWORD.encode() + b"\n", b"Password", terminal)
    assert status == 0, screen
    assert f"Password for alice at 127.0.0.1:{served.port}: ".encode() in screen
    assert PASSWORD.encode() not in screen  # no echo
    assert "━".encode() in screen and b"4/4 messages" in screen and b"MB" in screen
    assert b"\x1b[" in screen  # drawn in place
    assert b"4 message(s)" in screen
    assert len(saved(tmp_path / "t")) == 4

    piped = fetch(served.port, "--user", "alice", "--maildir", str(tmp_path / "p"))
    assert piped.returncode == 0
    assert len(piped.stderr.splitlines()) == 1 and "\x1b" not in piped.stderr and "━" not in piped.stderr


def test_first_ctrl_c_finishes_the_message_and_quits(served, env, tmp_path):
    env.deliver("alice", MESSAGES[0])
    env.deliver("alice", b"Subject: two\n\nMARK here\n")
    env.deliver("alice", MESSAGES[2])
    relay, proc = start_behind_relay(served.port, tmp_path / "m")
    with relay:
        proc.send_signal(signal.SIGINT)
        assert "stopping after this message" in proc.stderr.readline() + proc.stderr.readline()
        relay.release()
        err = proc.stderr.read()
        assert proc.wait(30) == 1
    assert err.splitlines()[-1] == (
        f"pop2gate fetch: stopped by Ctrl-C, QUIT sent: 2 message(s), {len(wire(MESSAGES[0])) + 27} octets, "
        f"from INBOX saved to {tmp_path / 'm'}, deleted on the server")
    assert saved(tmp_path / "m") == [wire(MESSAGES[0]), b"Subject: two\r\n\r\nMARK here\r\n"]
    assert len(env.files("alice")) == 1  # QUIT: the two ACKD messages went, the third stays


def test_second_ctrl_c_aborts_without_quit(served, env, tmp_path):
    env.deliver("alice", MESSAGES[0])
    env.deliver("alice", b"Subject: two\n\nMARK here\n")
    relay, proc = start_behind_relay(served.port, tmp_path / "m")
    with relay:
        proc.send_signal(signal.SIGINT)
        assert "stopping after this message" in proc.stderr.readline() + proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(30) == 1
    assert "aborted by a second Ctrl-C: no QUIT sent" in err and "Traceback" not in err
    assert saved(tmp_path / "m") == [wire(MESSAGES[0])]
    assert len(env.files("alice")) == 2  # no QUIT: the ACKD of the first is not applied


# --- through pop2gate to a real Dovecot -----------------------------------------------------


async def test_dovecot_backend_mbox_keep_then_maildir_delete(dovecot, tmp_path):
    import asyncio

    from dovecot import HOST, USERS
    from helpers import Gateways
    from pop2gate.config import parse_config

    dovecot.clear("carol")
    messages = [wire(m) for m in MESSAGES] + [b"Subject: big\r\n\r\n" + b"z" * 2_000_000 + b"\r\n"]
    uids = [dovecot.append("carol", m) for m in messages]
    gateways = Gateways()
    host, port, _ = await gateways.start(parse_config({
        "server": {"hostname": "test.invalid", "listen": ["127.0.0.1:0"]},
        "limits": {"bad_login_delay": 0.05},
        "backend": [{"name": "dc", "type": "imap", "url": f"imap://{HOST}:{dovecot.port}", "tls": "none"}],
        "routing": {"default": "dc"},
    }))

    async def fetch_async(*args: str) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            POP2GATE, "fetch", f"{host}:{port}", "--user", "carol", *args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(USERS["carol"].encode() + b"\n"), 60)
        return proc.returncode, err

    try:
        status, err = await fetch_async("--mbox", str(tmp_path / "mbox"))
        assert status == 0, err
        entries = (tmp_path / "mbox").read_bytes().split(b"\r\n\r\nFrom ")
        assert entries[0] == b"From bob@example.org Sun Nov 29 03:00:00 2026\r\n" + messages[0][:-2]
        assert entries[3].split(b"\r\n", 1)[1] == messages[3] + b"\r\n"
        assert sorted(dovecot.uids("carol")) == uids  # kept

        status, err = await fetch_async("--maildir", str(tmp_path / "m"), "--delete", "--limit", "3")
        assert status == 0, err
        assert saved(tmp_path / "m") == messages[:3]
        assert sorted(dovecot.uids("carol")) == uids[3:]  # exactly the three ACKD'd went
    finally:
        await gateways.aclose()
