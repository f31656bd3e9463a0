"""Prometheus metrics: what sessions count, and the `[metrics] listen` HTTP endpoint.

Each Gateway has a Metrics of its own, in a registry of its own (never the library's
global one), so in-process gateways and tests do not add up into each other. Values are
per process: with several instances behind a balancer, scrape each.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("pop2gate.metrics")

# Backend calls: a Maildir call takes microseconds, an IMAP one up to `imap_command_timeout`.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

ERROR_KINDS = ("protocol", "timeout", "send_timeout", "backend", "retr", "internal")
REFUSED_REASONS = ("max_connections", "max_connections_per_address", "max_sessions_per_user", "shed")


class Metrics:
    """Every metric pop2gate exports, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions_active = Gauge("pop2gate_sessions_active", "Sessions being served now.", registry=r)
        self.sessions = Counter("pop2gate_sessions", "Sessions started (connections given a greeting).",
                                registry=r)
        self.logins = Counter("pop2gate_logins", "Logins by result (ok, failed) and backend ('' when the "
                              "name routes to none).", ["result", "backend"], registry=r)
        self.messages = Counter("pop2gate_messages_retrieved", "Messages sent in full by RETR.", ["backend"],
                                registry=r)
        self.octets = Counter("pop2gate_retrieved_octets", "Message octets sent by RETR.", ["backend"],
                              registry=r)
        self.deletions = Counter("pop2gate_deletions", "Messages deleted (ACKD, applied at QUIT or FOLD).",
                                 ["backend"], registry=r)
        self.backend_seconds = Histogram(
            "pop2gate_backend_command_seconds", "Time of each backend call a session makes, by backend and "
            "call (login, select, wire_size, mark_seen, release).", ["backend", "command"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("pop2gate_errors", "Sessions ended by an error, by kind: " + ", ".join(ERROR_KINDS)
                              + ".", ["kind"], registry=r)
        self.refused = Counter("pop2gate_connections_refused", "Connections or logins turned away by a limit, "
                               "by reason: " + ", ".join(REFUSED_REASONS) + ".", ["reason"], registry=r)
        self.throttled = Counter("pop2gate_logins_throttled", "Failed logins whose reply was delayed by the "
                                 "login throttle.", registry=r)
        for kind in ERROR_KINDS:  # present from the start, at 0, so rates and alerts need no special case
            self.errors.labels(kind)
        for reason in REFUSED_REASONS:
            self.refused.labels(reason)


class Exporter:
    """The HTTP endpoint Prometheus scrapes (`/metrics`), in a thread of its own."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        server: WSGIServer
        thread: threading.Thread
        server, thread = start_http_server(port, host, registry=metrics.registry)
        self._server, self._thread = server, thread
        self.address: tuple[str, int] = server.server_address[:2]  # type: ignore[assignment]
        log.info("metrics on http://%s:%d/metrics", *self.address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
