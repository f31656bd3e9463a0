"""Socket activation: `pop2gate serve` on listening sockets it inherits the way systemd passes them
(descriptors from 3, LISTEN_FDS, LISTEN_PID naming the server's own pid, LISTEN_FDNAMES)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import BIN, PASSWORD, MailEnv, free_port, log_with, need_program, stop_process, wait_port
from pop2gate.gateway.activation import ActivationError, inherited_sockets
from pop2gate.pop2.client import Client

POP2GATE = str(BIN / "pop2gate")

# The exec wrapper playing systemd: the sockets (stdin and the descriptor in $SECOND) moved to
# descriptors 3 and 4, LISTEN_PID set to the pid that then becomes pop2gate's (exec keeps it).
WRAPPER = """
import fcntl, os, sys
second = fcntl.fcntl(int(os.environ.pop("SECOND")), fcntl.F_DUPFD, 10)  # above 3 and 4
os.dup2(0, 3)
os.dup2(second, 4)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"""


def _listening() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    return sock


def _start(args: list[str], first: socket.socket, second: socket.socket, env: dict[str, str],
           log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", WRAPPER, *args], stdin=first, pass_fds=(second.fileno(),), stderr=err,
            env={**os.environ, "SECOND": str(second.fileno()), **env})


def _login_via_proxy(port: int, addresses: str, messages: int) -> None:
    """Log in as alice through a PROXY v1 header giving `addresses` (source, destination, ports)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"PROXY TCP4 {addresses}\r\n".encode())
    with Client.from_socket(sock, timeout=20) as c:
        assert c.helo("alice", PASSWORD) == messages
        assert c.quit() == "OK"


@pytest.fixture
def activated(env: MailEnv, tmp_path: Path) -> Iterator[tuple[int, int, int, Path]]:
    """pop2gate with a plain socket (named as systemd names it by default) and a PROXY one handed
    over; its config names another port, which must stay unbound. Yields both ports, that one, the log."""
    configured = free_port()
    env.server["proxy_trusted"] = ["127.0.0.1/32"]
    cfg = env.write_config(f"127.0.0.1:{configured}")
    plain, proxy = _listening(), _listening()
    log = tmp_path / "serve.log"
    proc = _start([POP2GATE, "serve", "-c", str(cfg)], plain, proxy,
                  {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "pop2gate.socket:proxy"}, log)
    ports = plain.getsockname()[1], proxy.getsockname()[1]
    plain.close()
    proxy.close()
    try:
        assert "handed over" in log_with(log, "(proxy_listen, handed over)"), log.read_text()
        yield ports[0], ports[1], configured, log
    finally:
        assert stop_process(proc) == 0


def test_serves_the_handed_over_sockets(activated, env):
    plain, proxy, configured, log = activated
    env.deliver("alice", b"one\n")
    env.deliver("alice", b"two\n")
    with Client.connect("127.0.0.1", plain, timeout=20) as c:
        assert c.helo("alice", PASSWORD) == 2
        assert c.read() == 5
        assert c.retr() == b"one\r\n"
        assert c.ackd() == 5
        assert c.quit() == "OK"
    assert len(env.files("alice")) == 1

    _login_via_proxy(proxy, "192.0.2.7 127.0.0.1 40001 109", 1)
    text = log_with(log, "proxied peer=192.0.2.7:40001")
    assert "proxied peer=192.0.2.7:40001" in text
    assert "socket activation: 2 socket(s) handed over" in text

    with pytest.raises(ConnectionRefusedError):  # the configured address is not bound
        socket.create_connection(("127.0.0.1", configured), timeout=5).close()


def test_sockets_for_another_pid_are_ignored(env, tmp_path):
    """LISTEN_PID of another process (a parent's, inherited by mistake): bind the configured address."""
    port = free_port()
    cfg = env.write_config(f"127.0.0.1:{port}")
    plain, other = _listening(), _listening()
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            ["sh", "-c", 'exec 3<&0 0</dev/null; exec "$@"', "wrapped", POP2GATE, "serve", "-c", str(cfg)],
            stdin=plain, stderr=err, env={**os.environ, "LISTEN_PID": "1", "LISTEN_FDS": "1"})
    plain.close()
    other.close()
    try:
        assert f"listening on ('127.0.0.1', {port}) (listen)" in log_with(log, f"{port}) (listen)")
        with Client.connect("127.0.0.1", port, timeout=20) as c:
            assert c.quit() == "OK"
    finally:
        assert stop_process(proc) == 0


@pytest.mark.parametrize("setup,fds,message", [
    ("exec 3</dev/null", "1", "descriptor 3 (unnamed) is not a socket"),
    ("exec 3<&0", "x", "LISTEN_FDS='x' is not a number"),
])
def test_unusable_handed_over_descriptors_stop_the_start(env, tmp_path, setup, fds, message):
    cfg = env.write_config()
    plain = _listening()
    result = subprocess.run(
        ["sh", "-c", f'{setup}; export LISTEN_PID=$$; exec "$@"', "wrapped", POP2GATE, "serve", "-c", str(cfg)],
        stdin=plain, capture_output=True, text=True, timeout=30, env={**os.environ, "LISTEN_FDS": fds})
    plain.close()
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_connected_socket_is_not_a_listener(env, tmp_path):
    cfg = env.write_config()
    left, right = socket.socketpair()
    result = subprocess.run(
        ["sh", "-c", 'exec 3<&0 0</dev/null; export LISTEN_PID=$$; exec "$@"', "wrapped",
         POP2GATE, "serve", "-c", str(cfg)],
        stdin=left, capture_output=True, text=True, timeout=30, env={**os.environ, "LISTEN_FDS": "1"})
    left.close()
    right.close()
    assert result.returncode == 1
    assert "descriptor 3 (unnamed) is not a listening stream socket" in result.stderr


def test_tls_socket_without_certificate_stops_the_start(env, tmp_path):
    cfg = env.write_config()
    first, second = _listening(), _listening()
    log = tmp_path / "serve.log"
    proc = _start([POP2GATE, "serve", "-c", str(cfg)], first, second,
                  {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "plain:tls"}, log)
    first.close()
    second.close()
    assert proc.wait(30) == 1
    assert "a socket named tls was handed over, but server.tls_cert" in log.read_text()


def test_variables_for_another_process_are_left_alone():
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert inherited_sockets(environ, pid=2) == []
    assert environ == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}


def test_variables_are_removed_once_read():
    environ = {"LISTEN_PID": "7", "LISTEN_FDS": "0", "LISTEN_FDNAMES": ""}
    with pytest.raises(ActivationError, match="LISTEN_FDS='0'"):
        inherited_sockets(environ, pid=7)
    assert environ == {}


def test_systemd_socket_activate_hands_over_both_sockets(env, tmp_path):
    """systemd's own launcher (systemd-socket-activate, Accept=no): pop2gate starts on the first
    connection with both listening sockets, named as in a socket unit's FileDescriptorName=."""
    plain, proxy = free_port(), free_port()
    env.server["proxy_trusted"] = ["127.0.0.1/32"]
    cfg = env.write_config(f"127.0.0.1:{free_port()}")
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([need_program("systemd-socket-activate"), "-l", f"127.0.0.1:{plain}",
                                 "-l", f"127.0.0.1:{proxy}", "--fdname=pop2gate.socket:proxy",
                                 POP2GATE, "serve", "-c", str(cfg)], stderr=err)
    try:
        wait_port(plain, proc)  # systemd-socket-activate listens; pop2gate starts on this connection
        env.deliver("alice", b"hello\n")
        with Client.connect("127.0.0.1", plain, timeout=20) as c:
            assert c.helo("alice", PASSWORD) == 1
            assert c.quit() == "OK"
        _login_via_proxy(proxy, "198.51.100.9 127.0.0.1 40002 109", 1)
        text = log_with(log, "proxied peer=198.51.100.9:40002")
        assert "proxied peer=198.51.100.9:40002" in text and "socket activation: 2 socket(s)" in text
    finally:
        stop_process(proc)


def test_a_socket_named_tls_is_served_with_tls(env, tmp_path):
    from dovecot import make_ca

    make_ca(tmp_path)
    env.server.update(tls_cert=str(tmp_path / "server.pem"), tls_key=str(tmp_path / "server.key"))
    cfg = env.write_config(f"127.0.0.1:{free_port()}")
    plain, tls = _listening(), _listening()
    log = tmp_path / "serve.log"
    proc = _start([POP2GATE, "serve", "-c", str(cfg)], plain, tls,
                  {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "pop2gate.socket:tls"}, log)
    port = tls.getsockname()[1]
    plain.close()
    tls.close()
    try:
        assert "(tls_listen, handed over)" in log_with(log, "(tls_listen, handed over)")
        context = ssl.create_default_context(cafile=tmp_path / "ca.pem")
        with Client.connect("127.0.0.1", port, timeout=20, ssl_context=context, server_hostname="localhost") as c:
            assert c.helo("alice", PASSWORD) == 0
            assert c.quit() == "OK"
    finally:
        assert stop_process(proc) == 0
