"""`pop2gate check`: banner identification, verdicts, and probing over real loopback sockets.

Every server here listens on 127.0.0.1 or ::1 only. Each one sends a greeting and
records every byte the checker sends, so the tests can assert that nothing but a
polite QUIT or LOGOUT ever arrives.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import ScriptConn, ScriptedServer
from pop2gate import check as ck
from pop2gate.cli import main
from pop2gate.pop2.wire import MAX_LINE

COMMENTS = "(Comments to postmaster@host.example)"
OLD_POP2 = f"+ localhost POP2 3.3(20) w/IMAP client {COMMENTS} at Mon, 1 Jan 1996 09:00:00 -0800 (PST)"
OLD_POP3 = f"+OK localhost POP3 3.3(18) w/IMAP client {COMMENTS} at Mon, 1 Jan 1996 09:00:00 -0800 (PST)"
OLD_IMAP = "* OK localhost IMAP2bis Service 7.8(100) at Mon, 1 Jan 1996 09:00:00 -0800 (PST)"

OVERFLOW = ["JPCERT-AT-2000-0001", "CVE-1999-0920", "BID 283"]
FOLD_FILES = ["BID 1484"]
CA9709 = ["CERT CA-97.09", "CVE-1999-0042"]
CA9809 = ["CERT CA-98.09", "CVE-1999-0005", "BID 130"]
KEYS = ["host", "port", "state", "banner", "software", "version", "verdict", "references", "advice"]


# --- loopback greeting servers that record what they receive -------------------

class Waiting:
    """How many connections wait for their greeting at once: never more than the checker's probes.

    A connection stops counting before its greeting is sent, so the checker cannot have read
    that greeting (and started its next probe) while the connection still counts. The
    server's own `max_active` also counts connections being closed, which races.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc_info: object) -> None:
        with self.lock:
            self.now -= 1


def greeter(greeting: bytes | None, *, delay: float = 0.0, trickle: float = 0.0, hang_up: bool = False,
            waiting: Waiting | None = None) -> Callable[[ScriptConn], None]:
    """A ScriptedServer script: wait `delay` s (counted in `waiting`), send `greeting` (one byte
    every `trickle` s if set), then, unless it hangs up, record every line the checker sends
    until it closes."""

    def script(conn: ScriptConn) -> None:
        with waiting or contextlib.nullcontext():
            time.sleep(delay)
        if greeting is not None and trickle:
            for i in range(len(greeting)):
                conn.send(greeting[i:i + 1])
                time.sleep(trickle)
        elif greeting is not None:
            conn.send(greeting)
        if not hang_up:
            conn.drain()

    return script


def received(server: ScriptedServer, connections: int = 1) -> list[bytes]:
    """Every line the checker sent, once `connections` connections have ended."""
    deadline = time.monotonic() + 10
    while (server.connections < connections or server.active) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (server.connections, server.active) == (connections, 0)
    return list(server.received)


def closed_port(host: str = "127.0.0.1") -> int:
    """A loopback port nobody listens on: bind it, then let it go."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def probe_greeting(greeting: bytes | None, timeout: float = 3.0,
                         **kw: Any) -> tuple[ck.Row, list[bytes]]:
    with ScriptedServer(greeter(greeting, **kw)) as server:
        row = await ck.probe(server.host, server.port, timeout)
        return row, received(server)


def cli(*args: str):
    return CliRunner().invoke(main, ["check", *args])


# --- the verdict table, row by row (pure layer) --------------------------------

VERDICT_TABLE = [
    # banner, software, version, verdict, references
    ("+ POP2 mail.example.org v4.46 server ready", "uw-ipop2d", "4.46", "VULNERABLE", OVERFLOW),
    ("+ POP2 mail.example.org v4.50 server ready", "uw-ipop2d", "4.50", "VULNERABLE", OVERFLOW),
    ("+ POP2 [127.0.0.1] v4.51 server ready", "uw-ipop2d", "4.51", "VULNERABLE", FOLD_FILES),
    ("+ POP2 mail.example.org v4.55 server ready", "uw-ipop2d", "4.55", "VULNERABLE", FOLD_FILES),
    ("+ POP2 mail.example.org v4.56 server ready", "uw-ipop2d", "4.56", "WARNING", []),
    ("+ POP2 mail.example.org v4.9 server ready", "uw-ipop2d", "4.9", "VULNERABLE", OVERFLOW),
    ("+ POP2 mail.example.org v4.100 server ready", "uw-ipop2d", "4.100", "WARNING", []),
    ("+ POP2 mail.example.org v3.4 server ready", "uw-ipop2d", "3.4", "VULNERABLE", OVERFLOW),
    ("+ POP2 mail.example.org 2001a server ready", "uw-ipop2d", "2001a", "WARNING", []),
    ("+ POP2 mail.example.org 2001a.76 server ready", "uw-ipop2d", "2001a.76", "WARNING", []),
    ("+ POP2 mail.example.org 2007f.75 server ready", "uw-ipop2d", "2007f.75", "WARNING", []),
    (OLD_POP2, "uw-ipop2d", "3.3(20)", "VULNERABLE", OVERFLOW),
    (OLD_POP3, "uw-ipop3d", "3.3(18)", "VULNERABLE", CA9709),
    ("+OK POP3 mail.example.org v7.59 server ready", "uw-ipop3d", "7.59", "WARNING", []),
    ("+OK POP3 mail.example.org 2007f.104 server ready", "uw-ipop3d", "2007f.104", "WARNING", []),
    (OLD_IMAP, "uw-imapd", "7.8(100)", "VULNERABLE", CA9709 + CA9809),
    ("* OK mail.example.org IMAP4rev1 v10.190 server ready", "uw-imapd", "10.190", "VULNERABLE", CA9809),
    ("* OK mail.example.org IMAP4rev1 v10.234 server ready", "uw-imapd", "10.234", "VULNERABLE", CA9809),
    ("* OK mail.example.org IMAP4rev1 v12.264 server ready", "uw-imapd", "12.264", "WARNING", []),
    ("* OK [CAPABILITY IMAP4REV1 LITERAL+ SASL-IR] mail.example.org IMAP4rev1 2007f.404 at "
     "Mon, 1 Jan 2024 09:00:00 +0000 (UTC)", "uw-imapd", "2007f.404", "WARNING", []),
    ("+ POP2 localhost pop2gate server ready", "pop2gate", None, "OK", []),
    ("+ POP2 localhost pop2gate 0.1.0 server ready", "pop2gate", "0.1.0", "OK", []),
    ("+ POP2 localhost (KA9Q NOS) ready", "pop2", None, "WARNING", []),
    ("+ POP2 ready", "pop2", None, "WARNING", []),
    ("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS] Dovecot ready.", "unknown", None, "NONE", []),
    ("SSH-2.0-OpenSSH_9.6", "unknown", None, "NONE", []),
]


@pytest.mark.parametrize("banner,software,version,verdict,refs", VERDICT_TABLE)
def test_verdict_table(banner, software, version, verdict, refs):
    b = ck.identify(banner)
    assert (b.software, b.version) == (software, version)
    got_verdict, got_refs, advice = ck.judge(b)
    assert (got_verdict, got_refs) == (verdict, refs)
    assert advice


def test_advice_says_what_to_do():
    _, _, advice = ck.judge(ck.identify("+ POP2 localhost v4.46 server ready"))
    assert "inetd.conf" in advice and "upgrade" in advice and "nobody" in advice
    _, _, advice = ck.judge(ck.identify("+ POP2 localhost v4.55 server ready"))
    assert "FOLD /etc/passwd" in advice
    _, _, advice = ck.judge(ck.identify("+ POP2 localhost v4.56 server ready"))
    assert "in clear" in advice and "TLS" in advice
    _, _, advice = ck.judge(ck.identify("+ POP2 localhost 2007f.75 server ready"))
    assert "proxy mode" in advice
    _, _, advice = ck.judge(ck.identify("+ POP2 localhost pop2gate 0.1.0 server ready"))
    assert "0.1.0" in advice


def test_versions_are_numbers_not_strings():
    assert ck.identify("+ POP2 h v4.100 server ready").numbers == (4, 100)
    assert ck.identify("+ POP2 h v4.9 server ready").numbers < (4, 51)
    assert "4.100" < "4.56"  # what a string comparison would wrongly conclude
    assert ck.year_numbers("2007", "f", "75") == (2007, 6, 75)
    assert ck.year_numbers("2001", "a", None) < ck.year_numbers("2001", "b", "1")
    assert ck.year_numbers("2007", "e", "999") < ck.year_numbers("2007", "f", "75")
    assert ck.identify("+ POP2 h 2007f.75 server ready").numbers == (2007, 6, 75)
    assert ck.identify(OLD_POP2).numbers == (3, 3, 20)


def test_greeting_text_escapes_binary_and_controls():
    assert ck.show(b"+ POP2 \xff\xfe host\r\n") == "+ POP2 \\xff\\xfe host"
    assert ck.show(b"+ POP2 a\x00b\x1b[31m\n") == "+ POP2 a\\x00b\\x1b[31m"
    assert ck.show("+ POP2 caf\u00e9 ready\n".encode()) == "+ POP2 caf\u00e9 ready"


@pytest.mark.parametrize("text,want", [
    ("localhost", ("localhost", None)),
    ("127.0.0.1", ("127.0.0.1", None)),
    ("127.0.0.1:110", ("127.0.0.1", 110)),
    ("mail.example.org:109", ("mail.example.org", 109)),
    ("::1", ("::1", None)),
    ("[::1]", ("::1", None)),
    ("[::1]:109", ("::1", 109)),
])
def test_parse_target(text, want):
    assert ck.parse_target(text) == want


@pytest.mark.parametrize("text", ["", "host:", "host:0", "host:65536", "host:x", ":109",
                                  "[::1", "[::1]x", "[::1]:", "[]:109", "a b"])
def test_parse_target_rejects(text):
    with pytest.raises(ck.TargetError):
        ck.parse_target(text)


def test_parse_ports():
    assert ck.parse_ports("109") == [109]
    assert ck.parse_ports("109,110,143") == [109, 110, 143]
    assert ck.parse_ports(" 109 , 109 ") == [109]
    for bad in ["", "0", "70000", "pop", "109,,110", "-1"]:
        with pytest.raises(ck.TargetError):
            ck.parse_ports(bad)


def test_expand_gives_each_target_its_ports():
    assert ck.expand(["a", "b:1", "[::1]", "a"], [109, 143]) == [
        ("a", 109), ("a", 143), ("b", 1), ("::1", 109), ("::1", 143)]


def test_rows_sorted_vulnerable_first():
    rows = [ck.Row("a", 1, "closed"), ck.Row("b", 1, "open", verdict="OK"),
            ck.Row("c", 1, "open", verdict="WARNING"), ck.Row("d", 1, "open", verdict="VULNERABLE"),
            ck.Row("e", 1, "open", verdict="VULNERABLE")]
    assert [r.host for r in ck.sort_rows(rows)] == ["d", "e", "c", "b", "a"]


def test_polite_close_by_protocol():
    assert ck.polite_close(b"+ POP2 h v4.46 server ready\r\n") == b"QUIT\r\n"
    assert ck.polite_close(b"+OK POP3 h v7.59 server ready\r\n") == b"QUIT\r\n"
    assert ck.polite_close(b"* OK h IMAP4rev1 v12.264 server ready\r\n") == b"a LOGOUT\r\n"
    assert ck.polite_close(b"SSH-2.0-x\r\n") == b""
    assert ck.polite_close(b"220 smtp\r\n") == b""


# --- over the wire -------------------------------------------------------------

@pytest.mark.parametrize("banner,software,version,verdict,refs", VERDICT_TABLE)
async def test_each_greeting_over_loopback(banner, software, version, verdict, refs):
    row, sent = await probe_greeting(banner.encode() + b"\r\n")
    assert (row.state, row.banner, row.software, row.version) == ("open", banner, software, version)
    assert (row.verdict, row.references) == (verdict, refs)
    polite = {"+": [b"QUIT\r\n"], "*": [b"a LOGOUT\r\n"]}.get(banner[0], [])
    assert sent == polite


async def test_bare_lf_greeting():
    row, sent = await probe_greeting(b"+ POP2 localhost v4.56 server ready\n")
    assert (row.banner, row.verdict) == ("+ POP2 localhost v4.56 server ready", "WARNING")
    assert sent == [b"QUIT\r\n"]


async def test_only_the_first_line_is_the_greeting():
    row, _ = await probe_greeting(b"+ POP2 localhost v4.56 server ready\r\n+ POP2 h v4.46 server ready\r\n")
    assert row.version == "4.56"


async def test_overlong_greeting_is_truncated_and_said_so():
    row, sent = await probe_greeting(b"+ POP2 localhost v4.46 server ready " + b"x" * 2000 + b"\r\n")
    assert row.state == "open" and len(row.banner) == MAX_LINE
    assert "longer than 512 octets" in row.advice
    assert row.verdict == "VULNERABLE"
    assert sent == [b"QUIT\r\n"]


async def test_overlong_garbage():
    row, sent = await probe_greeting(b"A" * 5000)
    assert (row.state, row.software, row.verdict) == ("open", "unknown", "NONE")
    assert len(row.banner) == 512 and "longer than 512" in row.advice
    assert sent == []


async def test_binary_greeting_is_shown_escaped():
    row, sent = await probe_greeting(b"+ POP2 localhost \xff\xfe\x00\x07 ready\r\n")
    assert row.banner == "+ POP2 localhost \\xff\\xfe\\x00\\x07 ready"
    assert (row.software, row.verdict) == ("pop2", "WARNING")
    json.dumps(asdict(row))  # still serialisable
    assert sent == [b"QUIT\r\n"]


async def test_malformed_greeting_without_line_end():
    row, sent = await probe_greeting(b"garbage with no line end", hang_up=True)
    assert (row.state, row.banner, row.software, row.verdict) == (
        "open", "garbage with no line end", "unknown", "NONE")
    assert "without a line end" in row.advice
    assert sent == []


async def test_hang_up_without_greeting():
    row, sent = await probe_greeting(None, hang_up=True)
    assert (row.state, row.banner, row.verdict) == ("open", "", "NONE")
    assert sent == []


async def test_silent_server_times_out_and_gets_nothing():
    started = time.monotonic()
    row, sent = await probe_greeting(None, timeout=0.4)
    assert time.monotonic() - started < 3
    assert (row.state, row.banner, row.software, row.verdict) == ("timeout", None, None, "NONE")
    assert sent == []


async def test_slow_but_in_time():
    row, sent = await probe_greeting(b"+ POP2 localhost v4.46 server ready\r\n", delay=0.3, timeout=3)
    assert (row.state, row.verdict) == ("open", "VULNERABLE")
    assert sent == [b"QUIT\r\n"]


async def test_greeting_a_byte_at_a_time():
    row, sent = await probe_greeting(b"+ POP2 localhost v4.51 server ready\r\n", trickle=0.005, timeout=3)
    assert (row.state, row.version, row.verdict) == ("open", "4.51", "VULNERABLE")
    assert sent == [b"QUIT\r\n"]


async def test_trickle_past_the_deadline_is_a_timeout():
    row, sent = await probe_greeting(b"+ POP2 localhost v4.51 server ready\r\n", trickle=0.05, timeout=0.5)
    assert (row.state, row.verdict) == ("timeout", "NONE")
    assert "partial: + POP2" in row.advice
    assert sent == []


async def test_too_slow_is_a_timeout():
    row, sent = await probe_greeting(b"+ POP2 localhost v4.46 server ready\r\n", delay=1.5, timeout=0.3)
    assert (row.state, row.verdict) == ("timeout", "NONE")
    assert sent == []


async def test_closed_port():
    row = await ck.probe("127.0.0.1", closed_port(), 2)
    assert (row.state, row.banner, row.software, row.version, row.verdict, row.references) == (
        "closed", None, None, None, "NONE", [])


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
async def test_ipv6_loopback():
    with ScriptedServer(greeter(b"+ POP2 localhost v4.46 server ready\r\n"), host="::1") as g:
        pairs = ck.expand([g.target], [109])
        assert pairs == [("::1", g.port)]
        rows = await ck.run_checks(pairs, 3, 4)
        assert (rows[0].host, rows[0].verdict) == ("::1", "VULNERABLE")
        assert received(g) == [b"QUIT\r\n"]
    rows = await ck.run_checks([("::1", closed_port("::1"))], 2, 4)
    assert rows[0].state == "closed"


async def test_concurrency_is_bounded():
    waiting = Waiting()
    with ScriptedServer(greeter(b"+ POP2 localhost v4.56 server ready\r\n", delay=0.2, waiting=waiting)) as g:
        rows = await ck.run_checks([(g.host, g.port)] * 6, 5, 2)
        assert [r.verdict for r in rows] == ["WARNING"] * 6
        assert waiting.most <= 2
        assert received(g, 6) == [b"QUIT\r\n"] * 6
    waiting = Waiting()
    with ScriptedServer(greeter(b"+ POP2 localhost v4.56 server ready\r\n", delay=0.2, waiting=waiting)) as g:
        await ck.run_checks([(g.host, g.port)] * 6, 5, 6)
        received(g, 6)
        assert waiting.most > 2


# --- the command ---------------------------------------------------------------

def test_cli_json_schema_and_order():
    greetings = [b"+ POP2 localhost pop2gate 0.1.0 server ready\r\n",
                 b"+ POP2 localhost 2007f.75 server ready\r\n",
                 b"+ POP2 localhost v4.55 server ready\r\n"]
    with ScriptedServer(greeter(greetings[0])) as ok, ScriptedServer(greeter(greetings[1])) as warn, \
            ScriptedServer(greeter(greetings[2])) as vuln:
        shut = f"127.0.0.1:{closed_port()}"
        result = cli("--json", ok.target, shut, warn.target, vuln.target)
        assert result.exit_code == 1, result.output
        rows = json.loads(result.output)
        sent = received(ok) + received(warn) + received(vuln)
    assert sent == [b"QUIT\r\n"] * 3
    assert [r["verdict"] for r in rows] == ["VULNERABLE", "WARNING", "OK", "NONE"]
    for r in rows:
        assert list(r) == KEYS
        assert r["host"] == "127.0.0.1" and isinstance(r["port"], int)
        assert r["state"] in ("open", "closed", "timeout")
        assert r["verdict"] in ("VULNERABLE", "WARNING", "OK", "NONE")
        assert isinstance(r["references"], list) and isinstance(r["advice"], str) and r["advice"]
    assert rows[0] == {
        "host": "127.0.0.1", "port": vuln.port, "state": "open",
        "banner": "+ POP2 localhost v4.55 server ready", "software": "uw-ipop2d",
        "version": "4.55", "verdict": "VULNERABLE", "references": ["BID 1484"],
        "advice": rows[0]["advice"]}
    assert rows[2]["software"] == "pop2gate" and rows[2]["version"] == "0.1.0"
    assert rows[3] == {"host": "127.0.0.1", "port": int(shut.split(":")[1]), "state": "closed",
                       "banner": None, "software": None, "version": None, "verdict": "NONE",
                       "references": [], "advice": rows[3]["advice"]}


def test_cli_ports_option_covers_pop3_and_imap():
    with ScriptedServer(greeter(b"+OK POP3 localhost v7.59 server ready\r\n")) as pop3, \
            ScriptedServer(greeter(b"* OK localhost IMAP4rev1 v10.234 server ready\r\n")) as imap:
        result = cli("--json", "--ports", f"{pop3.port},{imap.port}", "127.0.0.1")
        assert result.exit_code == 1, result.output
        rows = json.loads(result.output)
        assert [(r["software"], r["verdict"]) for r in rows] == [
            ("uw-imapd", "VULNERABLE"), ("uw-ipop3d", "WARNING")]
        assert received(pop3) == [b"QUIT\r\n"] and received(imap) == [b"a LOGOUT\r\n"]


def test_cli_plain_table_puts_vulnerable_first():
    with ScriptedServer(greeter(b"+ POP2 localhost v4.56 server ready\r\n")) as warn, \
            ScriptedServer(greeter(b"+ POP2 localhost v4.46 server ready\r\n")) as vuln:
        result = cli(warn.target, vuln.target)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["VERDICT", "TARGET", "STATE"]
    assert lines[1].startswith("VULNERABLE") and vuln.target in lines[1]
    assert "JPCERT-AT-2000-0001" in lines[1]
    assert lines[-1] == "2 checked: 1 vulnerable, 1 warning, 0 ok, 0 no service"


def test_rich_table_renders():
    from rich.console import Console

    rows = [ck.Row("localhost", 109, "open", "+ POP2 localhost v4.46 server ready", "uw-ipop2d",
                   "4.46", "VULNERABLE", OVERFLOW, "stop it"), ck.Row("::1", 109, "closed"),
            ck.Row("localhost", 110, "open", "+ POP2 [bold]x[/] [/nope]", "pop2", None, "WARNING")]
    console = Console(record=True, width=200)
    console.print(ck.rich_table(rows))
    text = console.export_text()
    assert "VULNERABLE" in text and "[::1]:109" in text and "CVE-1999-0920" in text
    assert "[bold]x[/] [/nope]" in text  # greeting text shown as is, not taken as markup


def test_cli_exit_codes():
    with ScriptedServer(greeter(b"+ POP2 localhost v4.56 server ready\r\n")) as warn:
        assert cli(warn.target).exit_code == 0
    with ScriptedServer(greeter(b"+ POP2 localhost pop2gate server ready\r\n")) as ok:
        assert cli(ok.target).exit_code == 0
    assert cli(f"127.0.0.1:{closed_port()}").exit_code == 0
    with ScriptedServer(greeter(b"+ POP2 localhost v4.51 server ready\r\n")) as vuln:
        assert cli(vuln.target).exit_code == 1


@pytest.mark.parametrize("args", [
    ["--ports", "pop2"], ["--ports", "0"], ["--ports", ""], ["localhost:99999"], ["[::1"],
    ["--timeout", "0"], ["--concurrency", "0"], ["--no-such-option"],
    ["--targets-file", "/nonexistent/targets.txt"],
])
def test_cli_usage_errors_exit_2(args):
    assert cli(*args).exit_code == 2


def test_cli_targets_file(tmp_path):
    with ScriptedServer(greeter(b"+ POP2 localhost v4.46 server ready\r\n")) as vuln:
        shut = closed_port()
        f = tmp_path / "targets.txt"
        f.write_text(f"# hosts to check\n\n{vuln.target}   # the old one\n127.0.0.1:{shut}\n")
        result = cli("--json", "--targets-file", str(f))
        assert result.exit_code == 1, result.output
        rows = json.loads(result.output)
        assert [(r["port"], r["state"]) for r in rows] == [(vuln.port, "open"), (shut, "closed")]
    assert cli("--targets-file", str(tmp_path)).exit_code == 2  # a directory
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert cli("--targets-file", str(empty)).exit_code == 2
    bad = tmp_path / "bad.txt"
    bad.write_text("localhost:notaport\n")
    assert cli("--targets-file", str(bad)).exit_code == 2


def test_cli_as_a_real_process():
    exe = Path(sys.executable).parent / "pop2gate"
    with ScriptedServer(greeter(b"+ POP2 localhost v4.46 server ready\r\n")) as vuln:
        proc = subprocess.run([str(exe), "check", "--json", "--timeout", "3", vuln.target],
                              capture_output=True, text=True, timeout=30)
        assert received(vuln) == [b"QUIT\r\n"]
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)[0]["verdict"] == "VULNERABLE"
    proc = subprocess.run([str(exe), "check", "--ports", "nope"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "--ports" in proc.stderr
    proc = subprocess.run([str(exe), "check", f"127.0.0.1:{closed_port()}"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("VERDICT")


# --- pop2gate's own server -----------------------------------------------------

@pytest.mark.parametrize("show_version", [False, True])
def test_pop2gate_server_is_ok(tmp_path, show_version):
    exe = Path(sys.executable).parent / "pop2gate"
    port = closed_port()
    (tmp_path / "mail").mkdir()
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        "[server]\n"
        'hostname = "localhost"\n'
        f'listen = ["127.0.0.1:{port}"]\n'
        f"show_version = {'true' if show_version else 'false'}\n"
        'user = "root"\n'  # the files are root's (the tests run as root); else it would serve as nobody
        "[[backend]]\n"
        'name = "local"\n'
        'type = "maildir"\n'
        f'path = "{tmp_path / "mail"}"\n'
        f'users_file = "{tmp_path / "users"}"\n'
        "[routing]\n"
        'default = "local"\n')
    server = subprocess.Popen([str(exe), "serve", "-c", str(cfg)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        proc = subprocess.run([str(exe), "check", "--json", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=30)
    finally:
        server.terminate()
        server.wait(10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [row] = json.loads(proc.stdout)
    version = "0.1.0" if show_version else None
    assert (row["state"], row["software"], row["version"], row["verdict"], row["references"]) == (
        "open", "pop2gate", version, "OK", [])
    assert row["banner"].startswith("+ POP2 localhost pop2gate")
