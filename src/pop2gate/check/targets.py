"""What to probe: target and port lists parsed, a targets file read, (host, port) pairs expanded."""

from __future__ import annotations


class TargetError(ValueError):
    """A target or port list that cannot be used."""


def parse_ports(text: str) -> list[int]:
    """`109,110,143` -> [109, 110, 143]; raise TargetError on anything else."""
    ports: list[int] = []
    for part in text.split(","):
        port = _port(part.strip())
        if port not in ports:
            ports.append(port)
    if not ports:
        raise TargetError("no ports given")
    return ports


def parse_target(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `a.b.c.d:port`, `::1`, `[::1]`, `[::1]:port` -> (host, port)."""
    text = text.strip()
    if not text:
        raise TargetError("empty target")
    if text.startswith("["):
        end = text.find("]")
        if end < 2:
            raise TargetError(f"bad IPv6 target: {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise TargetError(f"bad IPv6 target: {text!r}")
        return host, _port(rest[1:])
    if text.count(":") == 1:
        host, port = text.split(":")
        if not host:
            raise TargetError(f"no host in {text!r}")
        return host, _port(port)
    if any(c.isspace() for c in text) or "/" in text:
        raise TargetError(f"not a host: {text!r}")
    return text, None  # a name, an IPv4 address or a bare IPv6 address


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise TargetError(f"not a port: {text!r}")
    return int(text)


def read_targets_file(path: str) -> list[str]:
    """One target a line; blank lines and `#` comments skipped. OSError passes up."""
    with open(path, encoding="utf-8", errors="strict") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line]


def expand(targets: list[str], ports: list[int]) -> list[tuple[str, int]]:
    """Every (host, port) to probe, in order, without duplicates."""
    pairs: list[tuple[str, int]] = []
    for text in targets:
        host, port = parse_target(text)
        for p in [port] if port is not None else ports:
            if (host, p) not in pairs:
                pairs.append((host, p))
    return pairs
