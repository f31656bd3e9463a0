"""SIGHUP on a real `pop2gate serve`: the config file (stores, settings, TLS certificate) is read
again for new sessions, open sessions go on with theirs, and a bad file keeps the running one."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dovecot import make_ca
from helpers import BIN, PASSWORD, MailEnv, expect_closed, free_port, log_with, read_line, stop_process, wait_port
from pop2gate.pop2.client import Client

POP2GATE = str(BIN / "pop2gate")


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int, cfg: Path):
        self.proc, self.log, self.port, self.cfg = proc, log, port, cfg

    def reload(self, text: str, outcome: str) -> str:
        """Write `text` as the config, SIGHUP, wait for the `outcome` line; returns the log."""
        self.cfg.write_text(text)
        before = self.log.read_text().count(outcome)
        self.proc.send_signal(signal.SIGHUP)
        log = log_with(self.log, outcome, count=before + 1)
        assert log.count(outcome) == before + 1, log
        assert self.proc.poll() is None, log
        return log


@pytest.fixture
def served(env: MailEnv, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env.server["hostname"] = "before.invalid"
    cfg = env.write_config(f"127.0.0.1:{port}")
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([POP2GATE, "serve", "-c", str(cfg)], stderr=err)
    try:
        wait_port(port, proc)
        yield Served(proc, log, port, cfg)
    finally:
        assert stop_process(proc) == 0


def test_reload_serves_new_sessions_with_the_new_config(served, env, tmp_path):
    env.deliver("alice", b"old one\n")
    env.deliver("alice", b"old two\n")
    other = MailEnv(tmp_path / "other")  # the new config: another store, another name, another port
    other.add_user("alice")
    for n in range(3):
        other.deliver("alice", f"new {n}\n".encode())
    other.server["hostname"] = "after.invalid"
    moved = free_port()
    new_config = other.write_config(f"127.0.0.1:{moved}").read_text()

    with Client.connect("127.0.0.1", served.port, timeout=20) as open_session:
        assert open_session.greeting.text.startswith("POP2 before.invalid")
        assert open_session.helo("alice", PASSWORD) == 2
        log = served.reload(new_config, "reload: done")
        assert "server.listen changed; it takes effect at the next restart" in log

        with Client.connect("127.0.0.1", served.port, timeout=20) as c:  # still the old port
            assert c.greeting.text.startswith("POP2 after.invalid")
            assert c.helo("alice", PASSWORD) == 3  # the new store
            assert c.quit() == "OK"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", moved), timeout=5).close()

        assert open_session.read() == len(b"old one\r\n")  # not dropped, on its old store
        assert open_session.retr() == b"old one\r\n"
        assert open_session.ackd() == len(b"old two\r\n")
        assert open_session.quit() == "OK"
    assert len(env.files("alice")) == 1
    assert len(other.files("alice")) == 3
    assert "Traceback" not in served.log.read_text()


@pytest.mark.parametrize("old,new,why", [
    ("bad_login_delay = 0.05", "bad_login_delay = -1", "limits.bad_login_delay"),
    ("[routing]", "[routing", "line"),
])
def test_a_bad_new_config_keeps_the_running_one(served, env, old, new, why):
    env.deliver("alice", b"x\n")
    good = served.cfg.read_text()
    assert old in good
    log = served.reload(good.replace("before.invalid", "after.invalid").replace(old, new), "reload failed")
    line = next(ln for ln in log.splitlines() if "reload failed" in ln)
    assert "the running configuration stays" in line and why in line
    with Client.connect("127.0.0.1", served.port, timeout=20) as c:
        assert c.greeting.text.startswith("POP2 before.invalid")
        assert c.helo("alice", PASSWORD) == 1
        assert c.quit() == "OK"
    served.reload(good.replace("before.invalid", "fixed.invalid"), "reload: done")
    with Client.connect("127.0.0.1", served.port, timeout=20) as c:
        assert c.greeting.text.startswith("POP2 fixed.invalid")


def test_reload_reads_the_tls_certificate_again(env, tmp_path):
    first, second = tmp_path / "ca1", tmp_path / "ca2"
    for d in (first, second):
        d.mkdir()
        make_ca(d)
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server.key"):
        shutil.copy(first / name, live / name)
    port = free_port()
    env.server.update(tls_listen=[f"127.0.0.1:{port}"], tls_cert=str(live / "server.pem"),
                      tls_key=str(live / "server.key"))
    cfg = env.write_config(f"127.0.0.1:{free_port()}")
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([POP2GATE, "serve", "-c", str(cfg)], stderr=err)
    served = Served(proc, log, port, cfg)
    try:
        wait_port(port, proc)

        def greets(ca: Path) -> bool:
            context = ssl.create_default_context(cafile=ca / "ca.pem")
            try:
                with Client.connect("127.0.0.1", port, timeout=20, ssl_context=context,
                                    server_hostname="localhost") as c:
                    return c.quit() == "OK"
            except ssl.SSLCertVerificationError:
                return False

        assert greets(first) and not greets(second)
        for name in ("server.pem", "server.key"):  # the renewed certificate, as certbot leaves it
            shutil.copy(second / name, live / name)
        served.reload(cfg.read_text(), "reload: done")
        assert greets(second) and not greets(first)
    finally:
        assert stop_process(proc) == 0


def test_every_key_a_reload_cannot_change_is_documented():
    from pop2gate.gateway.listeners import RESTART_KEYS

    docs = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    restart = docs.split("| a reload changes | needs a restart |")[1].split("\n\n")[0]
    column = "\n".join(line.rsplit(" | ", 1)[-1] for line in restart.splitlines())
    for section, keys in RESTART_KEYS.items():
        for key in keys:
            assert f"`{key}`" in column or f"`{section}.{key}`" in column, f"{section}.{key}"


def _count_closes(store: object, closed: list[object]) -> None:
    original = store.aclose  # type: ignore[attr-defined]

    async def aclose() -> None:
        closed.append(store)
        await original()

    store.aclose = aclose  # type: ignore[attr-defined]


async def test_retired_stores_close_when_their_last_session_ends(make_server, env):
    srv = await make_server()
    gateway = srv.gateway
    first = gateway.stores["local"]
    closed: list[object] = []
    _count_closes(first, closed)
    reader, writer = await srv.open()
    assert (await read_line(reader)).startswith(b"+ POP2")
    writer.write(f"HELO alice {PASSWORD}\r\n".encode())
    assert await read_line(reader) == b"#0 messages in INBOX\r\n"

    gateway.reload(env.config())
    second = gateway.stores["local"]
    assert second is not first
    _count_closes(second, closed)
    await asyncio.sleep(0.2)
    assert closed == []  # the open session still reads from the first

    writer.write(b"QUIT\r\n")
    assert await read_line(reader) == b"+ OK\r\n"
    assert await expect_closed(reader) == b""
    writer.close()
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.02)
    assert closed == [first]

    gateway.reload(env.config())  # no session uses the second: closed at once
    for _ in range(100):
        if len(closed) == 2:
            break
        await asyncio.sleep(0.02)
    assert closed == [first, second]
