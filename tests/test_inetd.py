"""`serve --inetd` started the way inetd, xinetd and socat start it: stdin and stdout are the
accepted TCP socket, and the client waits for each reply before it sends the next command."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import BIN, PASSWORD, MailEnv, free_port, log_with, need_program, stop_process, wait_port
from pop2gate.pop2.client import Client, Pop2Error

POP2GATE = str(BIN / "pop2gate")


CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def inetd_argv(cfg: Path) -> list[str]:
    """The command of contrib/inetd/inetd.conf's line, for this venv's pop2gate and `cfg`."""
    line = next(ln for ln in (CONTRIB / "inetd" / "inetd.conf").read_text().splitlines()
                if ln and not ln.startswith("#"))
    fields = line.split()
    assert fields[1:4] == ["stream", "tcp", "nowait"] and fields[5] == "/usr/local/bin/pop2gate"
    args = fields[7:]
    assert args[:3] == ["serve", "--inetd", "-c"]
    return [POP2GATE, *args[:3], str(cfg)]


def _launcher(argv: list[str], port: int, log: Path) -> Iterator[tuple[int, Path]]:
    """Run a launcher that listens on `port` (its stderr, and its children's, into `log`)."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stderr=err)
    try:
        wait_port(port, proc)
        yield port, log
    finally:
        stop_process(proc)


@pytest.fixture
def socat(env: MailEnv, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """socat accepting on a loopback port, each connection exec'ed as contrib's inetd command."""
    port = free_port()
    yield from _launcher([need_program("socat"), f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                          "EXEC:" + " ".join(inetd_argv(env.write_config())) + ",nofork"], port, tmp_path / "inetd.log")


@pytest.fixture
def socket_activate(env: MailEnv, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """systemd's own launcher in inetd mode (Accept=yes): one process per connection, the socket as stdio."""
    port = free_port()
    yield from _launcher([need_program("systemd-socket-activate"), "--inetd", "-a", "-l", f"127.0.0.1:{port}",
                          *inetd_argv(env.write_config())], port, tmp_path / "inetd.log")


@pytest.fixture
def xinetd(env: MailEnv, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A private xinetd (foreground) running contrib/xinetd/pop2gate on a loopback port."""
    port = free_port()
    cfg = env.write_config()
    log = tmp_path / "inetd.log"
    wrapper = tmp_path / "pop2gate-inetd"  # xinetd gives the server no stderr: the wrapper keeps its log
    wrapper.write_text(f'#!/bin/sh\nexec {POP2GATE} "$@" 2>>{log}\n')
    wrapper.chmod(0o755)
    log.touch()
    service = (CONTRIB / "xinetd" / "pop2gate").read_text()
    for old, new in [("port        = 109", f"port        = {port}\n    bind        = 127.0.0.1"),
                     ("user        = pop2gate", f"user        = {pwd.getpwuid(os.geteuid()).pw_name}"),
                     ("/usr/local/bin/pop2gate", str(wrapper)),
                     ("/etc/pop2gate/pop2gate.toml", str(cfg))]:
        assert old in service
        service = service.replace(old, new)
    conf = tmp_path / "xinetd.conf"
    conf.write_text(service)
    proc = subprocess.Popen([need_program("xinetd"), "-dontfork", "-f", str(conf), "-pidfile", str(tmp_path / "x.pid")],
                            stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        yield port, log
    finally:
        stop_process(proc)


@pytest.fixture(params=["socat", "xinetd", "socket_activate"])
def inetd(request: pytest.FixtureRequest) -> tuple[int, Path]:
    port_and_log: tuple[int, Path] = request.getfixturevalue(request.param)
    return port_and_log


def test_full_drain_with_ackd_and_quit(inetd, env):
    port, log = inetd
    bodies = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n", b"Subject: three\n\nthird\n"]
    for body in bodies:
        env.deliver("alice", body)
    with Client.connect("127.0.0.1", port, timeout=20) as c:
        assert c.greeting.text.startswith("POP2 test.invalid")
        assert c.helo("alice", PASSWORD) == 3
        got = []
        size = c.read()
        while size:
            got.append(c.retr())
            assert len(got[-1]) == size
            size = c.ackd()
        assert c.quit() == "OK"
    assert got == [b.replace(b"\n", b"\r\n") for b in bodies]
    assert env.files("alice") == []
    text = log_with(log, "deleted")
    assert "peer=127.0.0.1:" in text  # the client's address, read from the socket
    assert "Traceback" not in text and PASSWORD not in text


def test_ackd_without_quit_keeps_the_mail(inetd, env):
    port, _ = inetd
    env.deliver("alice", b"keep me\n")
    env.deliver("alice", b"and me\n")
    with Client.connect("127.0.0.1", port, timeout=20) as c:
        assert c.helo("alice", PASSWORD) == 2
        c.read()
        c.retr()
        assert c.ackd() > 0  # then the client goes away without QUIT
    time.sleep(0.2)
    assert len(env.files("alice")) == 2


def test_bad_login(inetd, env):
    port, log = inetd
    env.deliver("alice", b"x\n")
    with Client.connect("127.0.0.1", port, timeout=20) as c, pytest.raises(Pop2Error, match="Bad login"):
        c.helo("alice", "wrong")
    assert len(env.files("alice")) == 1
    text = log_with(log, "bad login")
    assert "bad login" in text and "Traceback" not in text and "wrong" not in text
