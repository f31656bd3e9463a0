"""What applies to a greeting: verdict, references and advice, one Row per target (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..pop2.wire import MAX_LINE
from .banners import IMAPD, IPOP2D, IPOP3D, POP2_OTHER, POP2GATE, UNKNOWN, Banner, identify

VULNERABLE, WARNING, OK, NONE = "VULNERABLE", "WARNING", "OK", "NONE"
VERDICTS = (VULNERABLE, WARNING, OK, NONE)  # worst first: the order of every report
_RANK = {v: i for i, v in enumerate(VERDICTS)}

STOP = ("stop the service: comment out its line in /etc/inetd.conf (or disable the unit) "
        "and reload inetd")
TLS = "if a mail service must stay, put TLS in front of it"
CLEAR = "logins cross the network in clear unless TLS is put in front of it"

REFS_FOLD_OVERFLOW = ["JPCERT-AT-2000-0001", "CVE-1999-0920", "BID 283"]
REFS_FOLD_FILES = ["BID 1484"]
REFS_CA_97_09 = ["CERT CA-97.09", "CVE-1999-0042"]
REFS_CA_98_09 = ["CERT CA-98.09", "CVE-1999-0005", "BID 130"]


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
        advice = f"greeting longer than {MAX_LINE} octets (truncated); {advice}"
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
    """1 if any row is VULNERABLE, else 0 (the command's exit status)."""
    return 1 if any(r.verdict == VULNERABLE for r in rows) else 0
