"""IMAP benchmark: POP2 through pop2gate against the same messages read directly over IMAP.

Starts the tests' private Dovecot (tests/dovecot.py) and a `pop2gate serve` with an IMAP
backend, both on loopback. Prints a Markdown report. Run: `make bench`, or
`.venv/bin/python bench/imap.py --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import platform
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dovecot import HOST, USERS, Dovecot  # noqa: E402
from pop2gate.pop2.client import Client  # noqa: E402
from run import Null, Serve, message, timed  # noqa: E402


def fill(dc: Dovecot, user: str, count: int, size: int) -> int:
    c = dc.imap(user)
    total = 0
    try:
        for n in range(count):
            data = message(size, n).replace(b"\n", b"\r\n")
            c.literal = data
            typ, _ = c._simple_command("APPEND", "INBOX", "()")
            assert typ == "OK"
            total += len(data)
    finally:
        c.logout()
    return total


def direct_imap(user: str, dc: Dovecot, tls: bool) -> int:
    """What a client does straight to IMAP: one snapshot, then BODY.PEEK[] per UID."""
    if tls:
        ctx = ssl.create_default_context(cafile=str(dc.ca_file))
        c = imaplib.IMAP4_SSL(HOST, dc.tls_port, ssl_context=ctx, timeout=120)
    else:
        c = imaplib.IMAP4(HOST, dc.port, timeout=120)
    c.login(user, USERS[user])
    c.select("INBOX")
    typ, data = c.uid("FETCH", "1:*", "(UID RFC822.SIZE)")
    uids = [int(d.split(b"UID ")[1].split()[0].rstrip(b")")) for d in data if isinstance(d, bytes) and b"UID " in d]
    total = 0
    for uid in uids:
        typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
        total += sum(len(d[1]) for d in data if isinstance(d, tuple))
    c.logout()
    return total


class Gateway(Serve):
    """Over an IMAP backend: the private Dovecot on loopback, plain IMAP or implicit TLS."""

    def __init__(self, root: Path, dc: Dovecot, tls: bool):
        if tls:
            backend = f'url = "imaps://{HOST}:{dc.tls_port}"\nca_file = "{dc.ca_file}"\n'
        else:
            backend = f'url = "imap://{HOST}:{dc.port}"\ntls = "none"\n'
        super().__init__(root, f'[[backend]]\nname = "b"\ntype = "imap"\n{backend}')


def drain(port: int, user: str) -> int:
    with Client.connect("127.0.0.1", port, timeout=300) as c:
        count = c.helo(user, USERS[user])
        total = 0
        for n in range(1, count + 1):
            c.read(n)
            total += c.retr_to(Null())
            c.nack()  # keep flags unchanged, like the direct reader
        c.quit()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--size", type=int, default=50_000)
    ap.add_argument("--big-mb", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=100, help="concurrent POP2 sessions (one Dovecot user)")
    ap.add_argument("--tls", action="store_true", help="implicit TLS to Dovecot (gateway and direct alike)")
    args = ap.parse_args()
    rows = []
    dc = Dovecot().start()
    try:
        gw = Gateway(dc.root, dc, args.tls)
        fill(dc, "alice", args.messages, args.size)
        direct_imap("alice", dc, args.tls)  # warm caches for both
        direct, t_direct = timed(direct_imap, "alice", dc, args.tls)
        got, t_gw = timed(drain, gw.port, "alice")
        assert got == direct, (got, direct)
        rows.append((f"{args.messages} x {args.size // 1000} kB, one session", got, t_gw, direct, t_direct, "-"))

        async def many():
            async def one():
                return await drain_async_nack(gw.port, "alice", 5)
            return sum(await asyncio.gather(*(one() for _ in range(args.sessions))))

        got, t_many = timed(asyncio.run, many())
        rows.append((f"{args.sessions} concurrent sessions x 5 messages", got, t_many, None, None, "-"))

        dc.clear("alice")
        fill(dc, "carol", 1, args.big_mb * 1_000_000)
        direct, t_direct = timed(direct_imap, "carol", dc, args.tls)
        got, t_gw = timed(drain, gw.port, "carol")
        assert got == direct
        rss = gw.stop()
        rows.append((f"one {args.big_mb} MB message", got, t_gw, direct, t_direct, f"{rss:.0f} MB"))
    finally:
        dc.stop()

    command = " ".join(["bench/imap.py", *sys.argv[1:]])
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"Dovecot on loopback ({'implicit TLS' if args.tls else 'plain IMAP'}); command: `{command}`\n")
    print("| scenario | through pop2gate | direct imaplib | gateway time / direct time "
          "| gateway peak RSS (whole run) |")
    print("|---|---|---|---|---|")
    for name, got, t_gw, direct, t_direct, rss in rows:
        gw = f"{got / 1e6 / t_gw:.0f} MB/s ({t_gw:.2f} s)"
        d = f"{direct / 1e6 / t_direct:.0f} MB/s ({t_direct:.2f} s)" if direct else "-"
        ratio = f"{t_gw / t_direct:.1f}x" if direct else "-"
        print(f"| {name} | {gw} | {d} | {ratio} | {rss} |")


async def drain_async_nack(port: int, user: str, limit: int) -> int:
    from pop2gate.pop2.client import AsyncClient

    c = await AsyncClient.connect("127.0.0.1", port, timeout=300)
    count = await c.helo(user, USERS[user])
    total = 0
    for n in range(1, min(count, limit) + 1):
        await c.read(n)
        total += await c.retr_to(Null())
        await c.nack()
    await c.quit()
    return total


if __name__ == "__main__":
    main()
