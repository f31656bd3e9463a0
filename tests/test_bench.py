"""`make bench` in miniature: the harness runs every scenario on tiny corpora, so it never
rots. Only that it runs and checks the bytes is tested here; timings are not (docs/benchmarks.md)."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POP2GATE = Path(sys.executable).parent / "pop2gate"


def run_bench(out: Path, *args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "UW_IPOP2D"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=240, env={**clean, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text()


def test_bench_smoke_runs_every_scenario(tmp_path: Path) -> None:
    report = run_bench(tmp_path / "benchmarks.md")
    for scenario in ("S1 drain, mix", "S1 drain, small only", "S1 drain, big only", "S2 4 sessions",
                     "S3 one 2 MB message", "S4 login storm", "S5 Maildir, 5 x 50 KB, one session",
                     "S5 Maildir, 3 sessions"):
        assert f"| {scenario}" in report, scenario
    assert "S2 4 sessions x 2 x 10 KB | " in report and ", 0 errors," in report
    for server in ("Dovecot 2.3", "Cyrus 3.6, '/' layout", "Cyrus 3.6, '.' layout", "Courier-IMAP 5"):
        assert f"| {server} |" in report, server
    assert "Not measured in this run: `UW_IPOP2D` was not set." in report
    assert "## What limits each figure" in report  # bench/notes.md follows the tables


def uw_stand_in(tmp: Path) -> Path:
    """A program in UW ipop2d's place: `pop2gate serve --inetd`, whose config has a selectable
    backend named as the host the bench's clients name (`HELO host:user`, host in BENCH_UW_HOST)
    reaching the bench's Dovecot at that host's port 143, and a Maildir store as the default."""
    (tmp / "maildirs").mkdir()
    users = tmp / "users"
    users.touch(mode=0o600)
    config = f"""\
[server]
hostname = "uw-stand-in"
user = "{pwd.getpwuid(os.getuid()).pw_name}"
[[backend]]
name = "local"
type = "maildir"
path = "{tmp / 'maildirs'}"
users_file = "{users}"
[[backend]]
name = "$BENCH_UW_HOST"
type = "imap"
url = "imap://$BENCH_UW_HOST:143"
tls = "none"
selectable = true
[routing]
default = "local"
"""
    program = tmp / "ipop2d"
    program.write_text(f"""#!/bin/sh
set -e
cfg="{tmp}/stand-in-$BENCH_UW_HOST.toml"
if [ ! -f "$cfg" ]; then
  cat > "$cfg.$$" <<EOF
{config}EOF
  mv "$cfg.$$" "$cfg"
fi
exec {POP2GATE} serve --inetd -c "$cfg" --log-level error
""")
    program.chmod(0o755)
    return program


def test_bench_smoke_measures_a_uw_ipop2d_both_ways(tmp_path: Path) -> None:
    """UW_IPOP2D's program runs under socat inetd-style and relayed with TCP_NODELAY, its
    clients naming the IMAP host (`HELO host:user`); S1 and S4 get its figures, every message
    checked by sha256 (a stand-in plays UW here)."""
    report = run_bench(tmp_path / "benchmarks.md", "--only", "S1,S4", "--servers", "",
                       UW_IPOP2D=str(uw_stand_in(tmp_path)))
    section = report.split("## UW ipop2d, for information", 1)[1].split("\n## ", 1)[0]
    assert "POP2 uw-stand-in" in section  # the program's own greeting: it did answer
    assert re.search(r"`HELO 127\.0\.0\.\d+:user", section)
    ratio = r"\(\d+\.\d\d\d?\)"  # throughput against direct
    took = r"(\d+ ms|\d+\.\d s)"
    for scenario in ("S1 drain, mix (5 messages)", "S1 drain, small only (4 messages)",
                     "S1 drain, big only (1 messages)"):
        row = rf"\| {re.escape(scenario)} \| {took} {ratio} \| {took} {ratio} \| {took} {ratio} \| {took} \| "
        assert re.search(row + r"(pop2gate|\*\*UW) \d+\.\d\dx faster", section), scenario
    assert re.search(rf"\| S4 login storm, 3 clients \| \d+/s {ratio} \| \d+/s {ratio} \|", section)
