"""Benchmarks: POP2 throughput and server memory, gateway against reading the store directly.

Run with `make bench` (or `.venv/bin/python bench/run.py --help`). Prints a Markdown
report; docs/benchmarks.md keeps one with the command that produced it. Everything runs
on loopback, in a temporary directory, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pop2gate.pop2.client import AsyncClient, Client
from pop2gate.stores.maildir import make_maildir
from pop2gate.stores.maildir.users import set_password
from pop2gate.stores.wireform import CrlfEncoder

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def message(size: int, n: int) -> bytes:
    line = b"0123456789 the quick brown fox jumps over the lazy dog %06d\n" % n
    head = b"From: bench@localhost\nSubject: message %d\n\n" % n
    return head + line * max(1, (size - len(head)) // len(line))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Serve:
    """`pop2gate serve` in a subprocess on a free loopback port; `backend` is TOML text."""

    def __init__(self, root: Path, backend: str, limits: str = ""):
        self.port = free_port()
        cfg = root / "bench.toml"
        cfg.write_text(
            f'[server]\nhostname = "bench"\nlisten = ["127.0.0.1:{self.port}"]\n'
            f'user = "{pwd.getpwuid(os.getuid()).pw_name}"\n'  # serve the bench's own files as their owner
            f"[limits]\nmax_connections = 1000\nmax_connections_per_address = 1000\nmax_prelogin_connections = 1000\n"
            f"max_sessions_per_user = 1000\nmax_logins_per_address = 64\n{limits}"
            f'{backend}[routing]\ndefault = "b"\n'
        )
        self.proc = subprocess.Popen([str(BIN / "pop2gate"), "serve", "-c", str(cfg), "--log-level", "warning"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise SystemExit("server did not start")

    def stop(self) -> float:
        """Stop it; return its peak RSS in MB."""
        rss = peak_rss_mb(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        return rss


class Server(Serve):
    """Over a Maildir store with `users` users (password "pw")."""

    def __init__(self, root: Path, users: list[str], chunk: int):
        self.mail, users_file = root / "mail", root / "users"
        root.mkdir(parents=True, exist_ok=True)
        for u in users:
            set_password(users_file, u, "pw")
        backend = f'[[backend]]\nname = "b"\ntype = "maildir"\npath = "{self.mail}"\nusers_file = "{users_file}"\n'
        super().__init__(root, backend, f"retr_chunk_size = {chunk}\n")


def fill(home: Path, count: int, size: int) -> int:
    make_maildir(home)
    total = 0
    for n in range(count):
        data = message(size, n)
        (home / "new" / f"{1700000000 + n}.M{n}.bench").write_bytes(data)
        total += len(data)
    return total


def direct_read(home: Path) -> int:
    """The baseline: read and CRLF-convert every file in this process."""
    total = 0
    for f in sorted(p for sub in ("new", "cur") for p in (home / sub).iterdir()):
        enc = CrlfEncoder()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(enc.feed(chunk))
        total += len(enc.finish())
    return total


def drain(port: int, user: str, sink) -> int:
    with Client.connect("127.0.0.1", port, timeout=120) as c:
        count = c.helo(user, "pw")
        total = 0
        for n in range(1, count + 1):
            c.read(n)
            total += c.retr_to(sink)
            c.acks()
        c.quit()
    return total


class Null:
    def write(self, b: bytes) -> int:
        return len(b)


async def drain_async(port: int, user: str) -> int:
    c = await AsyncClient.connect("127.0.0.1", port, timeout=300)
    count = await c.helo(user, "pw")
    total = 0
    for n in range(1, count + 1):
        await c.read(n)
        total += await c.retr_to(Null())
        await c.acks()
    await c.quit()
    return total


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=500, help="messages in the many-messages mailbox")
    ap.add_argument("--size", type=int, default=50_000, help="octets per message there")
    ap.add_argument("--big-mb", type=int, default=100, help="size of the one large message, MB")
    ap.add_argument("--sessions", type=int, default=50, help="concurrent sessions")
    ap.add_argument("--per-session", type=int, default=20, help="messages per concurrent session")
    ap.add_argument("--chunk", type=int, default=65536, help="server retr_chunk_size")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pop2gate-bench-") as tmp:
        root = Path(tmp)

        # 1. many messages, one client: gateway vs direct read of the same files
        srv = Server(root / "a", ["many"], args.chunk)
        home = srv.mail / "many"
        fill(home, args.messages, args.size)
        direct_read(home)  # warm the page cache for both
        direct, t_direct = timed(direct_read, home)
        got, t_gw = timed(drain, srv.port, "many", Null())
        assert got == direct, (got, direct)
        rss = srv.stop()
        mb = got / 1e6
        rows.append((f"{args.messages} x {args.size // 1000} kB, one session", f"{mb / t_gw:.0f} MB/s",
                     f"{mb / t_direct:.0f} MB/s", f"{t_gw / t_direct:.1f}x", f"{rss:.0f} MB",
                     f"{args.messages / t_gw:.0f} msg/s"))

        # 2. one large message: memory must not grow with message size
        srv = Server(root / "b", ["big"], args.chunk)
        home = srv.mail / "big"
        idle = peak_rss_mb(srv.proc.pid)
        fill(home, 1, args.big_mb * 1_000_000)
        direct, t_direct = timed(direct_read, home)
        got, t_gw = timed(drain, srv.port, "big", Null())
        assert got == direct
        rss = srv.stop()
        rows.append((f"one {args.big_mb} MB message", f"{got / 1e6 / t_gw:.0f} MB/s",
                     f"{direct / 1e6 / t_direct:.0f} MB/s", f"{t_gw / t_direct:.1f}x",
                     f"{rss:.0f} MB (idle {idle:.0f} MB)", "-"))

        # 3. concurrent sessions, one user each
        users = [f"u{i}" for i in range(args.sessions)]
        srv = Server(root / "c", users, args.chunk)
        for u in users:
            fill(srv.mail / u, args.per_session, args.size)

        async def all_sessions():
            return sum(await asyncio.gather(*(drain_async(srv.port, u) for u in users)))

        got, t_gw = timed(asyncio.run, all_sessions())
        direct, t_direct = timed(lambda: sum(direct_read(srv.mail / u) for u in users))
        assert got == direct
        rss = srv.stop()
        rows.append((f"{args.sessions} concurrent sessions x {args.per_session} x {args.size // 1000} kB",
                     f"{got / 1e6 / t_gw:.0f} MB/s", f"{direct / 1e6 / t_direct:.0f} MB/s",
                     f"{t_gw / t_direct:.1f}x", f"{rss:.0f} MB",
                     f"{args.sessions * args.per_session / t_gw:.0f} msg/s"))

    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"command: `{' '.join(['bench/run.py'] + sys.argv[1:])}`\n")
    print("| scenario | through pop2gate | direct file read | gateway time / direct time "
          "| server peak RSS | messages |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
