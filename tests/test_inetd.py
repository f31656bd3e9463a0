"""`serve --inetd` started the way inetd, xinetd and socat start it: stdin and stdout are the
accepted TCP socket, and the client waits for each reply before it sends the next command."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import BIN, PASSWORD, MailEnv, free_port, log_with, need_program, stop_process, wait_port
from pop2gate.pop2.client import Client, Pop2Error

POP2GATE = str(BIN / "pop2gate")


@pytest.fixture
def socat(env: MailEnv, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """socat accepting on a loopback port, each connection exec'ed as `pop2gate serve --inetd`."""
    port = free_port()
    cfg = env.write_config()
    log = tmp_path / "inetd.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [need_program("socat"), f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
             f"EXEC:{POP2GATE} serve --inetd -c {cfg},nofork"], stderr=err)
    try:
        wait_port(port, proc)
        yield port, log
    finally:
        stop_process(proc)


@pytest.fixture
def xinetd(env: MailEnv, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A private xinetd (foreground, its own config) serving `pop2gate serve --inetd` on loopback."""
    port = free_port()
    cfg = env.write_config()
    log = tmp_path / "inetd.log"
    wrapper = tmp_path / "pop2gate-inetd"  # xinetd gives the server no stderr: the wrapper keeps its log
    wrapper.write_text(f"#!/bin/sh\nexec {POP2GATE} serve --inetd -c {cfg} 2>>{log}\n")
    wrapper.chmod(0o755)
    log.touch()
    conf = tmp_path / "xinetd.conf"
    conf.write_text(
        "service pop2gate-test\n{\n"
        "    type        = UNLISTED\n"
        "    socket_type = stream\n"
        "    protocol    = tcp\n"
        "    wait        = no\n"
        f"    user        = {os.environ.get('USER') or 'root'}\n"
        f"    bind        = 127.0.0.1\n"
        f"    port        = {port}\n"
        f"    server      = {wrapper}\n"
        "}\n")
    proc = subprocess.Popen([need_program("xinetd"), "-dontfork", "-f", str(conf), "-pidfile", str(tmp_path / "x.pid")],
                            stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        yield port, log
    finally:
        stop_process(proc)


@pytest.fixture(params=["socat", "xinetd"])
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
