"""`make bench`: scenarios S1-S5, pop2gate against reading its backend directly, in one run.

Starts its own private Dovecot (tests/dovecot.py, with POP3 added), loads deterministic
corpora, runs each scenario with the gateway and the direct client interleaved, checks
every message's sha256 on both sides before any figure is kept, and writes the report
(docs/benchmarks.md by default): machine, command, date, the figures against the targets,
then bench/notes.md (what limits each figure, what was tried). Stops by itself; progress
goes to stderr. `--smoke` runs the same code on tiny corpora in seconds (the test suite
does, so the harness never rots). With `UW_IPOP2D=/path/to/ipop2d` in the environment (run
as root: its Dovecot then also listens on port 143), UW ipop2d joins S1 and S4 for
information, inetd-style and relayed with TCP_NODELAY.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    PASSWORD,
    BenchDovecot,
    Corpus,
    Gateway,
    Job,
    Load,
    UwIpop2d,
    digests,
    free_imap_address,
    maildir_gateway,
    run_load,
)

HERE = Path(__file__).resolve().parent
KB, MB = 1000, 1000 * 1000


@dataclass(frozen=True)
class Sizes:
    """Every corpus and count of one run (full, or --smoke)."""

    reps: int
    s1_small: Corpus
    s1_big: Corpus
    s2_counts: tuple[int, ...]
    s2_corpus: Corpus
    s3_corpus: Corpus
    s4_clients: int
    s4_cycles: int
    s5_one: Corpus
    s5_sessions: int
    s5_corpus: Corpus
    servers_corpus: Corpus


FULL = Sizes(
    reps=5,
    s1_small=Corpus(((200, 10 * KB),)), s1_big=Corpus(((20, MB),)),
    s2_counts=(200, 500, 1000), s2_corpus=Corpus(((20, 10 * KB),)),
    s3_corpus=Corpus(((1, 100 * MB),)),
    s4_clients=50, s4_cycles=20,
    s5_one=Corpus(((500, 50 * KB),)), s5_sessions=50, s5_corpus=Corpus(((20, 50 * KB),)),
    servers_corpus=Corpus(((100, 10 * KB), (5, MB))),
)
SMOKE = Sizes(
    reps=1,
    s1_small=Corpus(((4, 10 * KB),)), s1_big=Corpus(((1, 300 * KB),)),
    s2_counts=(4,), s2_corpus=Corpus(((2, 10 * KB),)),
    s3_corpus=Corpus(((1, 2 * MB),)),
    s4_clients=3, s4_cycles=2,
    s5_one=Corpus(((5, 50 * KB),)), s5_sessions=3, s5_corpus=Corpus(((2, 50 * KB),)),
    servers_corpus=Corpus(((3, 10 * KB), (1, 300 * KB))),
)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Mismatch(SystemExit):
    pass


def checked(load: Load, expected: Sequence[list[str]], what: str) -> float:
    """The load's seconds, once every session got exactly the expected messages."""
    if load.failures:
        raise Mismatch(f"{what}: {len(load.failures)} sessions failed, first: {load.failures[0]}")
    for got, want in zip(load.results, expected, strict=True):
        if got != want:
            raise Mismatch(f"{what}: the messages received differ from the corpus (sha256)")
    return load.seconds


def interleaved(reps: int, *sides: Callable[[], float]) -> list[float]:
    """Medians of `reps` runs of each side, the order turning by one each time (with two
    sides: alternating which goes first)."""
    times: list[list[float]] = [[] for _ in sides]
    for rep in range(reps):
        for i in range(len(sides)):
            k = (i + rep) % len(sides)
            times[k].append(sides[k]())
    return [statistics.median(t) for t in times]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def ratio(r: float) -> str:
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


def mb(octets: float) -> str:
    return f"{octets / (1 << 20):.0f} MB"


class Bench:
    def __init__(self, sizes: Sizes, root: Path, servers: Sequence[str], only: Sequence[str],
                 uw: str | None = None) -> None:
        self.only = only
        self.uw = uw  # UW ipop2d to measure for information (UW_IPOP2D), or None
        self.uw_host = free_imap_address() if uw else ""
        self.uw_rows: list[tuple[str, ...]] = []
        self.uw_greeting = ""
        self.z = sizes
        self.root = root
        self.servers = servers
        self.rows: list[tuple[str, ...]] = []  # scenario, gateway, direct, ratio, target, met
        self.server_rows: list[tuple[str, ...]] = []
        self.details: list[str] = []

    def row(self, name: str, gw: str, direct: str, ratio: str, target: str, met: bool | None) -> None:
        verdict = "-" if met is None else ("met" if met else "**not met**")
        self.rows.append((name, gw, direct, ratio, target, verdict))
        progress(f"{name}: gateway {gw}, direct {direct}, {ratio} ({verdict})")

    def run(self) -> None:
        z = self.z
        dc = BenchDovecot(self.uw_host or None)
        corpora = {"s1-mix": Corpus(z.s1_small.groups + z.s1_big.groups), "s1-small": z.s1_small,
                   "s1-big": z.s1_big, "s3": z.s3_corpus, "s5-one": z.s5_one, "srv": z.servers_corpus}
        corpora |= {f"s2-{i:04d}": z.s2_corpus for i in range(max(z.s2_counts))}
        corpora |= {f"s4-{i:02d}": Corpus(((1, 10 * KB),)) for i in range(z.s4_clients)}
        corpora |= {f"s5-{i:02d}": z.s5_corpus for i in range(z.s5_sessions)}
        progress(f"private Dovecot, {len(corpora)} users")
        # S5 logins cost Dovecot what they cost the gateway: the same argon2id hash.
        dc.start_with(corpora, hashed=[u for u in corpora if u.startswith("s5-")])
        self.expected = {user: digests(c.messages()) for user, c in corpora.items()}
        try:
            progress("warming Dovecot's indexes")
            run_load([Job("imap-select", dc.port, u) for u in corpora], procs=2)
            for name in ("S1", "S3", "S4", "S2", "S5", "servers"):
                if name in self.only:
                    getattr(self, name.lower().replace("servers", "per_server"))(dc)
        finally:
            dc.stop()

    # S1: drain, one session
    def s1(self, dc: BenchDovecot) -> None:
        gw = Gateway.imap(self.root, "s1", dc.port)
        uws = self.start_uw()
        try:
            for user, label in (("s1-mix", "mix"), ("s1-small", "small only"), ("s1-big", "big only")):
                jobs = [Job("imap", dc.port, user), Job("pop2", gw.port, user),
                        *(Job("pop2-uw", uw.port, f"{self.uw_host}:{user}") for uw in uws)]
                d, g, *u = self.drain(user, self.z.reps, jobs)
                target = {"mix": 0.8, "small only": 0.7, "big only": 0.8}[label]
                count = len(self.expected[user])
                name = f"S1 drain, {label} ({count} messages)"
                self.row(name, fmt_s(g), fmt_s(d), f"{d / g:.2f}", f">= {target}", d / g >= target)
                if u:
                    self.uw_row(name, u, g, d, fmt_s)
        finally:
            gw.stop()
            for uw in uws:
                uw.stop()

    def start_uw(self) -> list[UwIpop2d]:
        """UW ipop2d inetd-style and relayed with TCP_NODELAY; none without UW_IPOP2D."""
        out: list[UwIpop2d] = []
        if self.uw:
            try:
                for mode in UwIpop2d.MODES:
                    out.append(UwIpop2d(self.uw, mode, self.uw_host))
                self.uw_greeting = out[0].greeting()
            except BaseException:
                for uw in out:
                    uw.stop()
                raise
        return out

    def uw_row(self, name: str, uw: Sequence[float], g: float, d: float, show: Callable[[float], str]) -> None:
        """UW's two figures (times) against pop2gate's and the direct one: `show` writes a time."""
        best = min(uw)
        verdict = f"pop2gate {best / g:.2f}x faster" if g < best else f"**UW {g / best:.2f}x faster**"
        self.uw_rows.append((name, *(f"{show(t)} ({ratio(d / t)})" for t in uw), f"{show(g)} ({ratio(d / g)})",
                             show(d), verdict))
        progress(f"{name}: UW inetd-style {show(uw[0])}, relayed {show(uw[1])}; {verdict}")

    def drain_pair(self, direct_port: int, gw_port: int, user: str, reps: int,
                   direct_kind: str = "imap", password: str = PASSWORD) -> tuple[float, float]:
        """Median seconds of one session draining `user` directly, and through the gateway."""
        d, g = self.drain(user, reps, [Job(direct_kind, direct_port, user, password),
                                       Job("pop2", gw_port, user, password)])
        return d, g

    def drain(self, user: str, reps: int, jobs: Sequence[Job]) -> list[float]:
        """Median seconds of each job (one session draining `user`'s corpus), interleaved."""
        want = [self.expected[user]]

        def one(job: Job) -> float:
            return checked(run_load([job]), want, f"{user}: {job.kind} to port {job.port}")

        return interleaved(reps, *(partial(one, j) for j in jobs))

    # S2: many sessions at once
    def s2(self, dc: BenchDovecot) -> None:
        per = self.z.s2_corpus.count
        for n in self.z.s2_counts:
            users = [f"s2-{i:04d}" for i in range(n)]
            want = [self.expected[u] for u in users]
            progress(f"S2 {n} sessions: direct")
            direct = checked(run_load([Job("imap", dc.port, u) for u in users]), want, f"S2 {n} direct")
            gw = Gateway.imap(self.root, f"s2-{n}", dc.port)
            try:
                rss0, cpu0 = gw.rss(), gw.cpu()
                gw.reset_peak()
                progress(f"S2 {n} sessions: gateway")
                load = run_load([Job("pop2", gw.port, u) for u in users])
                peak, cpu = gw.peak(), gw.cpu() - cpu0
            finally:
                gw.stop()
            errors = len(load.failures)
            if errors == 0:
                checked(load, want, f"S2 {n} gateway")
            ms_per_msg = cpu * 1000 / (n * per)
            ratio = load.seconds / direct
            met = None
            if n == max(self.z.s2_counts):
                met = errors == 0 and ratio <= 1.5 and peak <= 300 * (1 << 20) and ms_per_msg <= 0.3
            self.row(f"S2 {n} sessions x {per} x 10 KB", f"{fmt_s(load.seconds)}, {errors} errors, "
                     f"peak RSS {mb(peak)} (idle {mb(rss0)}), CPU {cpu:.1f} s = {ms_per_msg:.2f} ms/message",
                     fmt_s(direct), f"time {ratio:.2f}x",
                     "0 errors, time <= 1.5x, RSS <= 300 MB, CPU <= 0.3 ms/msg" if met is not None else "-", met)
            if load.failures:
                self.details.append(f"S2 {n}: first failure: {load.failures[0]}")

    # S3: one large message
    def s3(self, dc: BenchDovecot) -> None:
        gw = Gateway.imap(self.root, "s3", dc.port)
        try:
            rss0 = gw.rss()
            gw.reset_peak()
            d, g = self.drain_pair(dc.port, gw.port, "s3", max(1, self.z.reps // 2))
            growth = gw.peak() - rss0
        finally:
            gw.stop()
        octets = self.z.s3_corpus.octets
        self.row(f"S3 one {octets // MB} MB message", f"{octets / MB / g:.0f} MB/s, RSS +{mb(growth)}",
                 f"{octets / MB / d:.0f} MB/s", f"{d / g:.2f}", ">= 0.8, RSS growth <= 32 MB",
                 d / g >= 0.8 and growth <= 32 * (1 << 20))

    # S4: login storm
    def s4(self, dc: BenchDovecot) -> None:
        z = self.z
        users = [f"s4-{i:02d}" for i in range(z.s4_clients)]
        cycles = z.s4_clients * z.s4_cycles
        want: list[list[str]] = [[] for _ in users]
        gw = Gateway.imap(self.root, "s4", dc.port)
        uws = self.start_uw()

        def storm(kind: str, port: int, prefix: str = "") -> Callable[[], float]:
            jobs = [Job(kind, port, prefix + u, cycles=z.s4_cycles) for u in users]
            return lambda: checked(run_load(jobs), want, f"S4 {kind} to port {port}")

        try:
            d, g, *u = interleaved(max(1, z.reps // 2), storm("imap-login", dc.port), storm("pop2-login", gw.port),
                                   *(storm("pop2-login", uw.port, f"{self.uw_host}:") for uw in uws))
        finally:
            gw.stop()
            for uw in uws:
                uw.stop()
        name = f"S4 login storm, {z.s4_clients} clients"
        self.row(name, f"{cycles / g:.0f} HELO+QUIT/s", f"{cycles / d:.0f} LOGIN+LOGOUT/s", f"{d / g:.2f}",
                 ">= 0.9", d / g >= 0.9)
        if u:
            self.uw_row(name, u, g, d, lambda t: f"{cycles / t:.0f}/s")

    # S5: the Maildir store against Dovecot's POP3 server, same files
    def s5(self, dc: BenchDovecot) -> None:
        z = self.z
        many = [f"s5-{i:02d}" for i in range(z.s5_sessions)]
        gw = maildir_gateway(self.root, dc, ["s5-one", *many])
        try:
            d, g = self.drain_pair(dc.pop3_port, gw.port, "s5-one", max(1, z.reps // 2), "pop3")
            self.row(f"S5 Maildir, {z.s5_one.count} x 50 KB, one session", fmt_s(g), fmt_s(d) + " (Dovecot POP3)",
                     f"{d / g:.2f}", ">= 0.8", d / g >= 0.8)
            want = [self.expected[u] for u in many]
            d, g = interleaved(
                max(1, z.reps // 2),
                lambda: checked(run_load([Job("pop3", dc.pop3_port, u) for u in many]), want, "S5 direct"),
                lambda: checked(run_load([Job("pop2", gw.port, u) for u in many]), want, "S5 gateway"))
            self.row(f"S5 Maildir, {z.s5_sessions} sessions x {z.s5_corpus.count} x 50 KB", fmt_s(g),
                     fmt_s(d) + " (Dovecot POP3)", f"{d / g:.2f}", ">= 0.8", d / g >= 0.8)
        finally:
            gw.stop()

    # S1 mix on every IMAP server the tests have
    def per_server(self, dc: BenchDovecot) -> None:
        reps = max(1, self.z.reps // 2 + 1)
        gw = Gateway.imap(self.root, "srv-dovecot", dc.port)
        try:
            d, g = self.drain_pair(dc.port, gw.port, "srv", reps)
        finally:
            gw.stop()
        self.server_rows.append(("Dovecot 2.3", fmt_s(g), fmt_s(d), f"{d / g:.2f}"))
        for name in self.servers:
            server, user = start_server(name)
            try:
                fill(server, user, self.z.servers_corpus)
                self.expected[user] = self.expected["srv"]
                gw = Gateway.imap(self.root, f"srv-{name}", server.port)
                try:
                    d, g = self.drain_pair(server.port, gw.port, user, reps, password=password(name))
                finally:
                    gw.stop()
            finally:
                server.stop()
            self.server_rows.append((SERVER_NAMES[name], fmt_s(g), fmt_s(d), f"{d / g:.2f}"))
            progress(f"S1 on {name}: {d / g:.2f}")


SERVER_NAMES = {"cyrus-unix": "Cyrus 3.6, '/' layout", "cyrus-debian": "Cyrus 3.6, '.' layout",
                "courier": "Courier-IMAP 5"}


def start_server(name: str):  # type: ignore[no-untyped-def]
    if name == "courier":
        from courier import Courier
        return Courier().start(), "alice"
    from cyrus import Cyrus
    return Cyrus(name.split("-")[1]).start(), "alice"


def password(name: str) -> str:
    if name == "courier":
        from dovecot import USERS
        return USERS["alice"]
    from cyrus import USERS as CYRUS_USERS
    return CYRUS_USERS["alice"]


def fill(server, user: str, corpus: Corpus) -> None:  # type: ignore[no-untyped-def]
    c = server.imap(user)
    try:
        for data in corpus.messages():
            c.literal = data
            typ, dat = c._simple_command("APPEND", "INBOX", "()")
            assert typ == "OK", dat
    finally:
        c.logout()


def machine(load: float) -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    dovecot = subprocess.run(["/usr/sbin/dovecot", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem // 1024} GB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, Dovecot {dovecot}; load average at the start "
            f"{load:.2f}, at the end {os.getloadavg()[0]:.2f}")


def report(bench: Bench, command: str, started: str, elapsed: float, load: float) -> str:
    out = ["# Benchmarks", "",
           "Generated by `make bench` (bench/run.py); do not edit by hand: the text after the tables",
           "comes from bench/notes.md.", "",
           f"- Date: {started} UTC, {elapsed / 60:.1f} minutes",
           f"- Command: `{command}`",
           f"- Machine: {machine(load)}",
           "- Everything on loopback. Ratios are throughput ratios (direct time / gateway time, so",
           "  1.0 is as fast as reading the backend directly) from medians of runs interleaved with",
           "  the direct ones in this one invocation; absolute figures vary between runs and machines.",
           "- Every figure counts only after each session received exactly the corpus (sha256 of",
           "  every message, gateway and direct alike).", "",
           "## Against the targets", "",
           "| scenario | pop2gate | direct | ratio | target | |", "|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in sorted(bench.rows, key=lambda r: r[0][:2])]
    out += ["", "## S1 drain per IMAP server", "",
            f"Corpus: {bench.z.servers_corpus.count} messages "
            f"({' + '.join(f'{c} x {s // KB} KB' for c, s in bench.z.servers_corpus.groups)}), "
            "one session each side, medians.", "",
            "| server | pop2gate | direct imaplib | throughput ratio |", "|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in bench.server_rows]
    out += ["", "## UW ipop2d, for information", "", *uw_section(bench)]
    if bench.details:
        out += ["", *bench.details]
    out += ["", (HERE / "notes.md").read_text().rstrip(), ""]
    return "\n".join(out)


def uw_section(bench: Bench) -> list[str]:
    if not bench.uw:
        return ["Not measured in this run: `UW_IPOP2D` was not set. No Debian package ships UW ipop2d;",
                "with a build of it, `UW_IPOP2D=/path/to/ipop2d make bench` (as root: see below) adds",
                "it to S1 and S4 here."]
    if not bench.uw_rows:
        return [f"`UW_IPOP2D={bench.uw}` was set, but neither S1 nor S4 ran (`--only`)."]
    return [f"`UW_IPOP2D={bench.uw}` ({bench.uw_greeting!r}), in proxy mode: `HELO {bench.uw_host}:user",
            "password` to the same Dovecot (on that address's port 143), one process per connection",
            "started by socat: inetd-style (the accepted socket as its stdin and stdout, no TCP_NODELAY,",
            "as inetd gives it) and relayed with TCP_NODELAY on the client's socket. Medians of runs",
            "interleaved with pop2gate's and the direct ones in this invocation, each checked by sha256;",
            "in brackets the throughput ratio to the direct client.", "",
            "| scenario | UW inetd-style | UW relayed, TCP_NODELAY | pop2gate | direct "
            "| pop2gate against the faster UW |",
            "|---|---|---|---|---|---|",
            *("| " + " | ".join(r) + " |" for r in bench.uw_rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="UW_IPOP2D=/path/to/ipop2d in the environment (as root) adds UW ipop2d "
                                        "to S1 and S4, for information.")
    ap.add_argument("--smoke", action="store_true", help="tiny corpora, one repetition: seconds, for the tests")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks.md", help="report file")
    ap.add_argument("--servers", default="cyrus-unix,cyrus-debian,courier",
                    help="other IMAP servers for the per-server S1 (comma-separated; empty for none)")
    ap.add_argument("--only", default="S1,S2,S3,S4,S5,servers",
                    help="scenarios to run (comma-separated), for work on one of them")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    t0, load = time.monotonic(), os.getloadavg()[0]
    uw = os.environ.get("UW_IPOP2D") or None
    if uw and not os.access(uw, os.X_OK):
        ap.error(f"UW_IPOP2D={uw}: not an executable file")
    if uw and os.geteuid() != 0:
        ap.error("UW_IPOP2D needs root: its IMAP host is reached at port 143, which the private Dovecot must bind")
    with tempfile.TemporaryDirectory(prefix="pop2gate-bench-") as tmp:
        bench = Bench(SMOKE if args.smoke else FULL, Path(tmp),
                      [s for s in args.servers.split(",") if s], args.only.split(","), uw)
        bench.run()
    command = " ".join([f"UW_IPOP2D={uw}"] * bool(uw) + ["bench/run.py", *sys.argv[1:]])
    args.out.write_text(report(bench, command, started, time.monotonic() - t0, load))
    progress(f"wrote {args.out}")


if __name__ == "__main__":
    main()
