"""Rows as a report: JSON, a plain fixed-width table, or a rich table for a terminal."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from .verdicts import NONE, OK, VERDICTS, VULNERABLE, WARNING, Row

if TYPE_CHECKING:
    from rich.table import Table


def to_json(rows: list[Row]) -> str:
    """A JSON array of row objects, in the rows' order."""
    return json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False)


def _cells(r: Row) -> list[str]:
    return [r.verdict, _where(r.host, r.port), r.state, r.software or "-", r.version or "-",
            ", ".join(r.references) or "-"]


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def summary(rows: list[Row]) -> str:
    """`N checked: ... vulnerable, ... warning, ... ok, ... no service`."""
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    return (f"{len(rows)} checked: {counts[VULNERABLE]} vulnerable, {counts[WARNING]} warning, "
            f"{counts[OK]} ok, {counts[NONE]} no service")


def plain_table(rows: list[Row]) -> str:
    """Fixed-width text table; banner and advice on indented lines under each row."""
    head = ["VERDICT", "TARGET", "STATE", "SOFTWARE", "VERSION", "REFERENCES"]
    cells = [_cells(r) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]

    def fmt(xs: list[str]) -> str:
        return "  ".join(x.ljust(w) for x, w in zip(xs, widths, strict=True)).rstrip()

    out = [fmt(head)]
    for r, c in zip(rows, cells, strict=True):
        out.append(fmt(c))
        if r.banner:
            out.append(f"    banner: {r.banner}")
        out.append(f"    advice: {r.advice}")
    out.append(summary(rows))
    return "\n".join(out) + "\n"


def rich_table(rows: list[Row]) -> Table:
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
