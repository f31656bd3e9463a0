"""`pop2gate check`: find POP2 services and say which known advisories apply.

Two layers. The pure layer (`parse_target`, `identify`, `judge`, `sort_rows`,
`to_json`, `plain_table`) does no I/O. The network layer (`probe`, `run_checks`)
connects, reads one greeting line and, politely, says QUIT or LOGOUT. It never
sends a login, a password or anything else.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass, field

MAX_GREETING = 512  # octets, line end included

VULNERABLE, WARNING, OK, NONE = "VULNERABLE", "WARNING", "OK", "NONE"
_RANK = {VULNERABLE: 0, WARNING: 1, OK: 2, NONE: 3}

IPOP2D, IPOP3D, IMAPD = "uw-ipop2d", "uw-ipop3d", "uw-imapd"
POP2GATE, POP2_OTHER, UNKNOWN = "pop2gate", "pop2", "unknown"

STOP = ("stop the service: comment out its line in /etc/inetd.conf (or disable the unit) "
        "and reload inetd")
TLS = "if a mail service must stay, put TLS in front of it"
CLEAR = "logins cross the network in clear unless TLS is put in front of it"

REFS_FOLD_OVERFLOW = ["JPCERT-AT-2000-0001", "CVE-1999-0920", "BID 283"]
REFS_FOLD_FILES = ["BID 1484"]
REFS_CA_97_09 = ["CERT CA-97.09", "CVE-1999-0042"]
REFS_CA_98_09 = ["CERT CA-98.09", "CVE-1999-0005", "BID 130"]


class TargetError(ValueError):
    """A target or port list that cannot be used."""


@dataclass(frozen=True)
class Banner:
    """What a greeting says: software, version text, version numbers, form."""

    software: str
    version: str | None = None
    numbers: tuple[int, ...] = ()
    form: str = ""  # "4x", "year", "1990s" for UW programs


@dataclass
class Row:
    """One target and port: the JSON object of CHECK.md, field for field."""

    host: str
    port: int
    state: str
    banner: str | None = None
    software: str | None = None
    version: str | None = None
    verdict: str = NONE
    references: list[str] = field(default_factory=list)
    advice: str = ""


# --- targets -----------------------------------------------------------------

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


# --- identification ------------------------------------------------------------

_VER = r"v?(\d+)\.(\d+)"
_YEAR = r"v?((?:19|20)\d\d)([a-z]?)(?:\.(\d+))?"
_OLD = r"(\d+)\.(\d+)\((\d+)\)"

_POP2GATE = re.compile(r"^\+\s*POP2\s+\S+\s+pop2gate(?:\s+v?(\d+(?:\.\d+)*\S*))?\s+server\s+ready", re.I)
_POP2_YEAR = re.compile(rf"^\+\s*POP2\s+\S+\s+{_YEAR}\s+server\s+ready")
_POP2_4X = re.compile(rf"^\+\s*POP2\s+\S+\s+{_VER}\s+server\s+ready")
_POP2_OLD = re.compile(rf"^\+\s*\S+\s+POP2\s+{_OLD}\s+w/IMAP\s+client")
_POP3_OLD = re.compile(rf"^\+OK\s+\S+\s+POP3\s+{_OLD}\s+w/IMAP\s+client")
_POP3_YEAR = re.compile(rf"^\+OK\s.*\bPOP3\s+(?:\S+\s+)?{_YEAR}\s+server\s+ready")
_POP3_4X = re.compile(rf"^\+OK\s.*\bPOP3\s+(?:\S+\s+)?{_VER}\s+server\s+ready")
_IMAP_OLD = re.compile(rf"^\*\s+OK\s.*\bIMAP(?:2bis|4|4rev1)?\s+Service\s+{_OLD}")
_IMAP_YEAR = re.compile(rf"^\*\s+OK\s.*\bIMAP4rev1\s+{_YEAR}(?:\s|$)")
_IMAP_4X = re.compile(rf"^\*\s+OK\s.*\bIMAP4(?:rev1)?\s+{_VER}(?:\s|$)")
_POP2_ANY = re.compile(r"^\+\s*(?:\S+\s+)?POP2\b", re.I)


def year_numbers(year: str, letter: str, edit: str | None) -> tuple[int, int, int]:
    """`2007f.75` -> (2007, 6, 75): year, letter index (none = 0), edit."""
    return int(year), (ord(letter) - ord("a") + 1) if letter else 0, int(edit or 0)


def _year(software: str, m: re.Match) -> Banner:
    year, letter, edit = m.group(1), m.group(2), m.group(3)
    text = year + letter + (f".{edit}" if edit else "")
    return Banner(software, text, year_numbers(year, letter, edit), "year")


def _old(software: str, m: re.Match) -> Banner:
    a, b, c = m.group(1), m.group(2), m.group(3)
    return Banner(software, f"{a}.{b}({c})", (int(a), int(b), int(c)), "1990s")


def _4x(software: str, m: re.Match) -> Banner:
    a, b = m.group(1), m.group(2)
    return Banner(software, f"{a}.{b}", (int(a), int(b)), "4x")


def identify(banner: str) -> Banner:
    """Name the software and version a greeting line shows (no I/O)."""
    line = banner.strip()
    if m := _POP2GATE.match(line):
        return Banner(POP2GATE, m.group(1))
    for pattern, software, make in (
        (_POP2_OLD, IPOP2D, _old), (_POP2_YEAR, IPOP2D, _year), (_POP2_4X, IPOP2D, _4x),
        (_POP3_OLD, IPOP3D, _old), (_POP3_YEAR, IPOP3D, _year), (_POP3_4X, IPOP3D, _4x),
        (_IMAP_OLD, IMAPD, _old), (_IMAP_YEAR, IMAPD, _year), (_IMAP_4X, IMAPD, _4x),
    ):
        if m := pattern.match(line):
            return make(software, m)
    if _POP2_ANY.match(line):
        return Banner(POP2_OTHER)
    return Banner(UNKNOWN)


# --- verdicts ------------------------------------------------------------------

def judge(b: Banner) -> tuple[str, list[str], str]:
    """Verdict, references and advice for an identified banner (CHECK.md table)."""
    if b.software == IPOP2D:
        return _judge_ipop2d(b)
    if b.software in (IMAPD, IPOP3D):
        return _judge_imap_pop3(b)
    if b.software == POP2GATE:
        shown = f" {b.version}" if b.version else " (version not shown)"
        return OK, [], f"pop2gate{shown}: no advisory applies"
    if b.software == POP2_OTHER:
        return WARNING, [], ("cleartext POP2 exposed: POP2 sends passwords in clear; "
                             f"{STOP}, or replace it; {TLS}")
    return NONE, [], "not a POP2 service or UW server this checker knows; no advisory applies"


def _judge_ipop2d(b: Banner) -> tuple[str, list[str], str]:
    if b.form == "1990s" or (b.form == "4x" and b.numbers < (4, 51)):
        return VULNERABLE, list(REFS_FOLD_OVERFLOW), (
            "remote code execution as nobody through FOLD in proxy mode (JPCERT-AT-2000-0001); "
            f"{STOP}, or upgrade the UW IMAP package")
    if b.form == "4x" and b.numbers <= (4, 55):
        return VULNERABLE, list(REFS_FOLD_FILES), (
            "an authenticated user can read any file the server can, with FOLD (e.g. FOLD "
            f"/etc/passwd); {STOP}, or upgrade the UW IMAP package")
    if b.form == "4x":
        return WARNING, [], (f"no advisory known to us; POP2 sends passwords in clear; {STOP} "
                             f"if nobody needs it; {TLS}")
    return WARNING, [], ("no advisory known to us; POP2 sends passwords in clear; proxy mode "
                         f"(FOLD to another host) unless built without it; {STOP} if nobody "
                         f"needs it; {TLS}")


def _judge_imap_pop3(b: Banner) -> tuple[str, list[str], str]:
    name = "imapd" if b.software == IMAPD else "ipop3d"
    if b.form == "1990s":
        refs = REFS_CA_97_09 + (REFS_CA_98_09 if b.software == IMAPD else [])
        return VULNERABLE, refs, (f"UW {name} from before the CA-97.09 fix: remote root "
                                  f"through a buffer overflow; {STOP}, or upgrade")
    if b.software == IMAPD and b.form == "4x" and b.numbers <= (10, 234):
        return VULNERABLE, list(REFS_CA_98_09), (
            "UW imapd 10.234 or older: remote root through the AUTHENTICATE buffer overflow "
            f"(CA-98.09); {STOP}, or upgrade")
    return WARNING, [], (f"UW {name}: no advisory in this checker's table applies; later UW "
                         f"releases have their own records, keep it patched or replace it; {CLEAR}")


# --- greeting text -------------------------------------------------------------

def show(raw: bytes) -> str:
    """Greeting bytes as text: line end dropped, non-UTF-8 and controls escaped."""
    text = raw.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def row_for_greeting(host: str, port: int, raw: bytes, overlong: bool) -> Row:
    """Everything about an open port, from the greeting bytes read (no I/O)."""
    if not raw:
        return Row(host, port, "open", "", UNKNOWN, None, NONE, [],
                   "connection closed without a greeting; no advisory applies")
    text = show(raw)
    b = identify(text)
    verdict, refs, advice = judge(b)
    if overlong:
        advice = f"greeting longer than {MAX_GREETING} octets (truncated); {advice}"
    elif not raw.endswith(b"\n"):
        advice = f"greeting without a line end; {advice}"
    return Row(host, port, "open", text, b.software, b.version, verdict, refs, advice)


def polite_close(raw: bytes) -> bytes:
    """What to send after the greeting: QUIT for POP, LOGOUT for IMAP, else nothing."""
    if raw.startswith(b"+"):
        return b"QUIT\r\n"
    if raw.startswith(b"* OK") or raw.startswith(b"* PREAUTH"):
        return b"a LOGOUT\r\n"
    return b""


def sort_rows(rows: list[Row]) -> list[Row]:
    """Vulnerable first, then warnings, OK, none; input order kept within each."""
    return sorted(rows, key=lambda r: _RANK[r.verdict])


def exit_status(rows: list[Row]) -> int:
    return 1 if any(r.verdict == VULNERABLE for r in rows) else 0


def to_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False)


def _cells(r: Row) -> list[str]:
    return [r.verdict, _where(r.host, r.port), r.state, r.software or "-", r.version or "-",
            ", ".join(r.references) or "-"]


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def summary(rows: list[Row]) -> str:
    counts = {v: sum(r.verdict == v for r in rows) for v in _RANK}
    return (f"{len(rows)} checked: {counts[VULNERABLE]} vulnerable, {counts[WARNING]} warning, "
            f"{counts[OK]} ok, {counts[NONE]} no service")


def plain_table(rows: list[Row]) -> str:
    """Fixed-width text table; banner and advice on indented lines under each row."""
    head = ["VERDICT", "TARGET", "STATE", "SOFTWARE", "VERSION", "REFERENCES"]
    cells = [_cells(r) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *cells)]

    def fmt(xs: list[str]) -> str:
        return "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()

    out = [fmt(head)]
    for r, c in zip(rows, cells):
        out.append(fmt(c))
        if r.banner:
            out.append(f"    banner: {r.banner}")
        out.append(f"    advice: {r.advice}")
    out.append(summary(rows))
    return "\n".join(out) + "\n"


def rich_table(rows: list[Row]):
    """The same table for a terminal, with colour. Greeting text is never read as markup."""
    from rich.table import Table
    from rich.text import Text

    colour = {VULNERABLE: "bold red", WARNING: "yellow", OK: "green", NONE: "dim"}
    table = Table(title="pop2gate check", caption=summary(rows))
    table.add_column("Verdict", no_wrap=True)
    table.add_column("Target", overflow="fold")
    table.add_column("State", no_wrap=True)
    table.add_column("Software", overflow="fold")
    table.add_column("References, banner, advice", overflow="fold", ratio=1)
    for r in rows:
        software = " ".join(x for x in (r.software, r.version) if x) or "-"
        details = [", ".join(r.references), r.banner, r.advice]
        table.add_row(Text(r.verdict, style=colour[r.verdict]), Text(_where(r.host, r.port)),
                      Text(r.state), Text(software), Text("\n".join(x for x in details if x)))
    return table


# --- network -------------------------------------------------------------------

async def read_greeting(reader: asyncio.StreamReader, buf: bytearray) -> bool:
    """Read into `buf` up to one line, at most MAX_GREETING octets; True if it was longer.

    `buf` keeps what arrived even when the caller's timeout cuts the read short.
    """
    while len(buf) < MAX_GREETING:
        chunk = await reader.read(MAX_GREETING - len(buf))
        if not chunk:
            return False
        buf += chunk
        end = buf.find(b"\n")
        if end >= 0:
            del buf[end + 1:]
            return False
    return True


async def probe(host: str, port: int, timeout: float) -> Row:
    """Connect, read the greeting, say goodbye politely; all within `timeout` seconds."""
    writer = None
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except ConnectionRefusedError:
                return Row(host, port, "closed", advice="connection refused: no service")
            except TimeoutError:
                return Row(host, port, "timeout", advice="no answer (connect timed out): no service seen")
            except OSError as e:
                return Row(host, port, "closed", advice=f"cannot connect ({e.strerror or e}): no service")
            overlong = await read_greeting(reader, buf)
    except TimeoutError:
        if writer is None:
            return Row(host, port, "timeout", advice=f"no answer within {timeout:g} s: no service seen")
        await _close(writer)
        partial = f" (partial: {show(bytes(buf))})" if buf else ""
        return Row(host, port, "timeout",
                   advice=f"port open but no greeting within {timeout:g} s{partial}: no service seen")
    except OSError as e:
        if writer is not None:
            await _close(writer)
        row = row_for_greeting(host, port, bytes(buf), False)
        row.advice = f"connection failed while reading the greeting ({e.strerror or e}); {row.advice}"
        return row
    raw = bytes(buf)
    goodbye = polite_close(raw)
    if goodbye:
        try:
            writer.write(goodbye)
            await asyncio.wait_for(writer.drain(), timeout=1.0)
        except (OSError, TimeoutError):
            pass
    await _close(writer)
    return row_for_greeting(host, port, raw, overlong)


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
    except (OSError, TimeoutError):
        pass


async def run_checks(pairs: list[tuple[str, int]], timeout: float, concurrency: int) -> list[Row]:
    """Probe every (host, port), at most `concurrency` at once; rows in input order."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(host: str, port: int) -> Row:
        async with gate:
            return await probe(host, port, timeout)

    return list(await asyncio.gather(*(one(h, p) for h, p in pairs)))


def check(targets: list[str], ports: list[int], timeout: float = 5.0,
          concurrency: int = 32) -> list[Row]:
    """Probe and judge; rows sorted vulnerable first. Raises TargetError on bad targets."""
    pairs = expand(targets, ports)
    return sort_rows(asyncio.run(run_checks(pairs, timeout, concurrency)))
