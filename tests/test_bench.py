"""`make bench` in miniature: the harness runs every scenario on tiny corpora, so it never
rots. Only that it runs and checks the bytes is tested here; timings are not (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    for scenario in ("S1 drain, mix", "S1 drain, small only", "S1 drain, big only", "S2 4 sessions",
                     "S3 one 2 MB message", "S4 login storm", "S5 Maildir, 5 x 50 KB, one session",
                     "S5 Maildir, 3 sessions"):
        assert f"| {scenario}" in report, scenario
    assert "S2 4 sessions x 2 x 10 KB | " in report and ", 0 errors," in report
    for server in ("Dovecot 2.3", "Cyrus 3.6, '/' layout", "Cyrus 3.6, '.' layout", "Courier-IMAP 5"):
        assert f"| {server} |" in report, server
    assert "## What limits each figure" in report  # bench/notes.md follows the tables
