"""Scale-out: Debian's haproxy (contrib/haproxy/haproxy.cfg) in front of two `pop2gate serve`
instances on loopback, PROXY protocol v2 to both. Several clients, each from its own loopback
address, drain Dovecot mailboxes through it; sessions land on both instances, each instance logs
the clients' real addresses, and Dovecot is told them too."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dovecot import HOST, USERS, Dovecot
from helpers import BIN, free_port, log_with, need_program, stop_process, wait_port
from pop2gate.pop2.client import Client

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
# One client per user (two for alice, who has the most mail), each from its own address.
CLIENTS = [("alice", "127.0.0.21"), ("bob", "127.0.0.22"), ("carol", "127.0.0.23"), ("alice", "127.0.0.24")]


def _instance_config(path: Path, port: int, dovecot: Dovecot) -> Path:
    path.write_text(
        '[server]\nhostname = "test.invalid"\nlisten = []\n'
        f'proxy_listen = ["127.0.0.1:{port}"]\nproxy_trusted = ["127.0.0.1/32"]\n'
        "[limits]\nbad_login_delay = 0.05\n"
        f'[[backend]]\nname = "dc"\ntype = "imap"\nurl = "imap://{HOST}:{dovecot.port}"\ntls = "none"\n'
        '[routing]\ndefault = "dc"\n')
    return path


def _haproxy_config(path: Path, front: int, ports: list[int]) -> Path:
    """contrib's haproxy.cfg on loopback ports, with health checks every 200 ms so that they run."""
    text = (CONTRIB / "haproxy" / "haproxy.cfg").read_text()
    for old, new in [("bind :109", f"bind 127.0.0.1:{front}"), ("10.0.0.11:1109", f"127.0.0.1:{ports[0]}"),
                     ("10.0.0.12:1109", f"127.0.0.1:{ports[1]}"), ("inter 10s", "inter 200ms")]:
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture
def farm(dovecot: Dovecot, tmp_path: Path) -> Iterator[tuple[int, list[Path], Path]]:
    """haproxy's port, the two instances' logs, haproxy's log."""
    ports = [free_port(), free_port()]
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"instance{i}.log" for i in (1, 2)]
    try:
        for i, (port, log) in enumerate(zip(ports, logs, strict=True)):
            cfg = _instance_config(tmp_path / f"instance{i}.toml", port, dovecot)
            with open(log, "wb") as err:
                procs.append(subprocess.Popen([str(BIN / "pop2gate"), "serve", "-c", str(cfg)], stderr=err))
            wait_port(port, procs[-1])
        front = free_port()
        haproxy_log = tmp_path / "haproxy.log"
        with open(haproxy_log, "wb") as out:
            procs.append(subprocess.Popen(
                [need_program("haproxy"), "-db", "-f", str(_haproxy_config(tmp_path / "haproxy.cfg", front, ports))],
                stdout=out, stderr=subprocess.STDOUT))
        wait_port(front, procs[-1])
        yield front, logs, haproxy_log
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def _drain(front: int, user: str, source: str, ready: threading.Barrier, got: dict[str, list[bytes]],
           read: threading.Barrier) -> None:
    sock = socket.create_connection(("127.0.0.1", front), timeout=30, source_address=(source, 0))
    with Client.from_socket(sock, timeout=30) as c:
        count = c.helo(user, USERS[user])
        ready.wait(30)  # every client holds a session before any drains: the balancer sees them all
        bodies = []
        for n in range(1, count + 1):
            if c.read(n):
                bodies.append(c.retr())
                c.ackd()
        # No QUIT (which removes what was ACKD) before every client has read: otherwise one alice
        # session could remove a message the other has announced, and its RETR closes short.
        read.wait(30)
        assert c.quit() == "OK"
    got[source] = bodies


def test_clients_drain_through_haproxy_over_two_instances(dovecot, farm):
    front, logs, haproxy_log = farm
    stored: dict[str, set[bytes]] = {}
    for user, count in (("alice", 6), ("bob", 3), ("carol", 3)):
        dovecot.clear(user)
        stored[user] = {f"Subject: {user} {n}\r\n\r\nbody {n} of {user}\r\n".encode() for n in range(count)}
        for body in stored[user]:
            dovecot.append(user, body)

    got: dict[str, list[bytes]] = {}
    ready, read = threading.Barrier(len(CLIENTS)), threading.Barrier(len(CLIENTS))
    threads = [threading.Thread(target=_drain, args=(front, user, source, ready, got, read))
               for user, source in CLIENTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == sorted(source for _, source in CLIENTS)  # every client finished

    # Every message reached a client whole; the two alice sessions may both have read one.
    for user in stored:
        read = {b for (u, source) in CLIENTS if u == user for b in got[source]}
        assert read == stored[user]
        assert dovecot.bodies(user) == {}  # drained: each message deleted after ACKD and QUIT

    texts = [log.read_text() for log in logs]
    for text in texts:  # sessions on both instances, each with its clients' real addresses
        clients = {source for _, source in CLIENTS if f"proxied peer={source}:" in text}
        assert clients, text
        assert all(f"login peer={source}:" in text for source in clients)
        assert "Traceback" not in text
    assert set().union(*({s for _, s in CLIENTS if f"proxied peer={s}:" in t} for t in texts)) == \
        {s for _, s in CLIENTS}
    for source in {s for _, s in CLIENTS}:  # Dovecot was told the client's address, not haproxy's
        assert f"rip={source}," in dovecot.log()

    # The health checks (PROXY v2 LOCAL, greeting, QUIT) pass: haproxy marked nothing down.
    for log in logs:
        assert "quit peer=127.0.0.1:" in log_with(log, "quit peer=127.0.0.1:")
    assert "DOWN" not in haproxy_log.read_text()
