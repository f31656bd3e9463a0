"""`pop2gate check`: find POP2 services and say which known advisories apply.

One job a module. `targets` parses what to probe, `banners` names the software a greeting
shows, `verdicts` says what applies to it, `output` writes the report: all pure. `probe`
is the only I/O: it connects, reads one greeting line and, politely, says QUIT or LOGOUT.
It never sends a login, a password or anything else.
"""

from __future__ import annotations

from .banners import Banner, identify, year_numbers
from .output import plain_table, rich_table, to_json
from .probe import check, probe, run_checks
from .targets import TargetError, expand, parse_ports, parse_target, read_targets_file
from .verdicts import Row, exit_status, judge, polite_close, show, sort_rows

__all__ = [
    "Banner", "Row", "TargetError",
    "check", "exit_status", "expand", "identify", "judge", "parse_ports", "parse_target",
    "plain_table", "polite_close", "probe", "read_targets_file", "rich_table", "run_checks",
    "show", "sort_rows", "to_json", "year_numbers",
]
