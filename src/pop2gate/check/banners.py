"""Which software and version a greeting line shows (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

IPOP2D, IPOP3D, IMAPD = "uw-ipop2d", "uw-ipop3d", "uw-imapd"
POP2GATE, POP2_OTHER, UNKNOWN = "pop2gate", "pop2", "unknown"


@dataclass(frozen=True)
class Banner:
    """What a greeting says: software, version text, version numbers, form."""

    software: str
    version: str | None = None
    numbers: tuple[int, ...] = ()
    form: str = ""  # "4x", "year", "1990s" for UW programs


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


def _year(software: str, m: re.Match[str]) -> Banner:
    year, letter, edit = m.group(1), m.group(2), m.group(3)
    text = year + letter + (f".{edit}" if edit else "")
    return Banner(software, text, year_numbers(year, letter, edit), "year")


def _old(software: str, m: re.Match[str]) -> Banner:
    a, b, c = m.group(1), m.group(2), m.group(3)
    return Banner(software, f"{a}.{b}({c})", (int(a), int(b), int(c)), "1990s")


def _4x(software: str, m: re.Match[str]) -> Banner:
    a, b = m.group(1), m.group(2)
    return Banner(software, f"{a}.{b}", (int(a), int(b)), "4x")


_UW: tuple[tuple[re.Pattern[str], str, Callable[[str, re.Match[str]], Banner]], ...] = (
    (_POP2_OLD, IPOP2D, _old), (_POP2_YEAR, IPOP2D, _year), (_POP2_4X, IPOP2D, _4x),
    (_POP3_OLD, IPOP3D, _old), (_POP3_YEAR, IPOP3D, _year), (_POP3_4X, IPOP3D, _4x),
    (_IMAP_OLD, IMAPD, _old), (_IMAP_YEAR, IMAPD, _year), (_IMAP_4X, IMAPD, _4x),
)


def identify(banner: str) -> Banner:
    """Name the software and version a greeting line shows (no I/O)."""
    line = banner.strip()
    if m := _POP2GATE.match(line):
        return Banner(POP2GATE, m.group(1))
    for pattern, software, make in _UW:
        if m := pattern.match(line):
            return make(software, m)
    if _POP2_ANY.match(line):
        return Banner(POP2_OTHER)
    return Banner(UNKNOWN)
