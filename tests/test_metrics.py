"""[metrics]: Prometheus text over HTTP, scraped from a running `pop2gate serve` during and after
real sessions; the values move as the sessions do."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import tomllib
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import BIN, PASSWORD, free_port, start_serve, stop_process, wait_port
from pop2gate.pop2.client import Client, ProtocolError

POP2GATE = str(BIN / "pop2gate")
MESSAGE = b"Subject: m\n\n" + b"x" * 1000 + b"\n"
WIRE = len(MESSAGE.replace(b"\n", b"\r\n"))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def settled(mport: int) -> dict:
    """A scrape once no session is open (wait_port's probes end after close_linger)."""
    deadline = time.monotonic() + 15
    while (samples := scrape(mport)) and value(samples, "pop2gate_sessions_active") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(samples, "pop2gate_sessions_active") == 0
    return samples


def serve(env, limits: str = "", backends: list[dict] | None = None) -> tuple[subprocess.Popen, int, int]:
    """`pop2gate serve` with [metrics] on; once no probe session is open."""
    metrics_port = free_port()
    env.limits.update(tomllib.loads(limits))
    proc, port = start_serve(env, f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n', backends=backends)
    wait_port(metrics_port, proc)
    settled(metrics_port)
    return proc, port, metrics_port


def bad_login(port: int) -> None:
    with Client.connect("127.0.0.1", port, timeout=10) as c, pytest.raises(ProtocolError):
        c.helo("alice", "wrong")


def test_metrics_move_with_a_real_session(env):
    env.deliver("alice", MESSAGE)
    env.deliver("alice", MESSAGE)
    proc, port, mport = serve(env)
    try:
        before = settled(mport)
        with Client.connect("127.0.0.1", port, timeout=10) as c:
            assert c.helo("alice", PASSWORD) == 2
            during = scrape(mport)  # logged in, nothing read yet
            assert value(during, "pop2gate_sessions_active") == 1
            assert value(during, "pop2gate_sessions_total") == value(before, "pop2gate_sessions_total") + 1
            assert value(during, "pop2gate_logins_total", result="ok", backend="local") == 1
            assert value(during, "pop2gate_backend_command_seconds_count", backend="local", command="login") == 1
            assert value(during, "pop2gate_backend_command_seconds_count", backend="local", command="select") == 1
            assert value(during, "pop2gate_messages_retrieved_total", backend="local") == 0
            c.read()
            assert len(c.retr()) == WIRE
            assert c.ackd() == WIRE
            assert len(c.retr()) == WIRE
            assert c.ackd() == 0
            mid = scrape(mport)  # both sent, deletions not applied until QUIT
            assert value(mid, "pop2gate_messages_retrieved_total", backend="local") == 2
            assert value(mid, "pop2gate_retrieved_octets_total", backend="local") == 2 * WIRE
            assert value(mid, "pop2gate_deletions_total", backend="local") == 0
            c.quit()
        bad_login(port)
        after = settled(mport)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert env.files("alice") == []
    assert value(after, "pop2gate_sessions_active") == 0
    assert value(after, "pop2gate_deletions_total", backend="local") == 2
    assert value(after, "pop2gate_logins_total", result="failed", backend="local") == 1
    assert value(after, "pop2gate_backend_command_seconds_count", backend="local", command="release") == 1
    assert value(after, "pop2gate_errors_total", kind="protocol") == 0  # present, at 0


def test_imap_backend_calls_are_timed_and_counted(env, dovecot):
    from dovecot import HOST, USERS

    dovecot.clear("carol")
    uid = dovecot.append("carol", b"Subject: imap\r\n\r\nbody\r\n")
    imap = {"name": "dc", "type": "imap", "url": f"imap://{HOST}:{dovecot.port}", "tls": "none"}
    proc, port, mport = serve(env, backends=[imap])
    try:
        with Client.connect("127.0.0.1", port, timeout=30) as c:
            assert c.helo("carol", USERS["carol"]) == 1
            c.read()
            c.retr()
            c.ackd()
            during = scrape(mport)
            assert value(during, "pop2gate_sessions_active") == 1
            c.quit()
        after = settled(mport)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert uid not in dovecot.uids("carol")
    assert value(during, "pop2gate_logins_total", result="ok", backend="dc") == 1
    assert value(during, "pop2gate_backend_command_seconds_count", backend="dc", command="login") == 1
    assert value(during, "pop2gate_backend_command_seconds_sum", backend="dc", command="login") > 0
    assert value(during, "pop2gate_messages_retrieved_total", backend="dc") == 1
    assert value(during, "pop2gate_deletions_total", backend="dc") == 0
    assert value(after, "pop2gate_deletions_total", backend="dc") == 1
    assert value(after, "pop2gate_backend_command_seconds_count", backend="dc", command="release") == 1


def test_refusals_throttling_and_errors_are_counted(env):
    proc, port, mport = serve(env, "max_connections_per_address = 1\nbad_login_max_delay = 1\n")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            assert held.makefile("rb").readline().startswith(b"+ POP2")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
                assert second.makefile("rb").readline().startswith(b"- Too many")
            held.sendall(b"BOGUS\r\n")
            assert held.makefile("rb").readline().startswith(b"-")
        for _ in range(2):  # the second failure from this address waits twice bad_login_delay: throttled
            settled(mport)  # one connection at a time from this address
            bad_login(port)
        samples = scrape(mport)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert value(samples, "pop2gate_connections_refused_total", reason="max_connections_per_address") >= 1
    assert value(samples, "pop2gate_errors_total", kind="protocol") == 1
    assert value(samples, "pop2gate_logins_total", result="failed", backend="local") == 2
    assert value(samples, "pop2gate_logins_throttled_total") == 1


def test_metrics_are_off_by_default(env):
    result = subprocess.run([POP2GATE, "config", "check", "-c", str(env.write_config())], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and "[metrics]\n# listen is unset: off\n" in result.stdout


def test_metrics_are_served_under_socket_activation(env, tmp_path):
    """Started by a systemd socket unit (the sockets handed over), [metrics] listen is still served."""
    from test_activation import _listening, _start

    metrics_port = free_port()
    cfg = env.write_config(f"127.0.0.1:{free_port()}")
    cfg.write_text(cfg.read_text() + f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    plain, spare = _listening(), _listening()
    proc = _start([str(BIN / "pop2gate"), "serve", "-c", str(cfg)], plain, spare, {"LISTEN_FDS": "2"},
                  tmp_path / "serve.log")
    port = plain.getsockname()[1]
    plain.close()
    spare.close()
    try:
        wait_port(metrics_port, proc)
        settled(metrics_port)
        with Client.connect("127.0.0.1", port, timeout=10) as c:
            assert c.helo("alice", PASSWORD) == 0
            assert value(scrape(metrics_port), "pop2gate_logins_total", result="ok", backend="local") == 1
            c.quit()
    finally:
        assert stop_process(proc) == 0
