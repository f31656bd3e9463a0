"""What the server needs from the system (pop2gate.gateway.resources)."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import subprocess
import sys

from pop2gate.config import Limits
from pop2gate.gateway.resources import AcceptErrors, ensure_open_files, files_needed


def in_child(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter whose open-file limit is 100 (soft) / 300 (hard)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 300))

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=limit)


def test_soft_limit_is_raised_to_what_max_connections_needs():
    out = in_child("import resource\nfrom pop2gate.config import Limits\n"
                   "from pop2gate.gateway.resources import ensure_open_files\n"
                   "ensure_open_files(Limits(max_connections=100))\n"
                   "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == files_needed(Limits(max_connections=100)) == 264


def test_too_few_open_files_refuses_naming_the_key():
    out = in_child("from pop2gate.config import Limits, ConfigError\n"
                   "from pop2gate.gateway.resources import ensure_open_files\n"
                   "try:\n    ensure_open_files(Limits(max_connections=1000))\n"
                   "except ConfigError as e:\n    print('refused:', e)\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: limits.max_connections: 1000 sessions need about 2064 open files")


def test_enough_files_changes_nothing():
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    ensure_open_files(Limits(max_connections=1))
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before


async def test_accept_errors_are_one_line_a_second(caplog):
    caplog.set_level(logging.WARNING, logger="pop2gate")
    handler = AcceptErrors()
    loop = asyncio.get_running_loop()
    for _ in range(1000):
        handler(loop, {"message": "socket.accept() out of system resource",
                       "exception": OSError(errno.EMFILE, "Too many open files")})
    lines = [r for r in caplog.records if "accepting a connection failed" in r.getMessage()]
    assert len(lines) == 1 and not lines[0].exc_info


def test_other_errors_go_to_the_default_handler():
    seen = []

    class Loop:
        def time(self) -> float:
            return 0.0

        def default_exception_handler(self, context):
            seen.append(context)

    AcceptErrors()(Loop(), {"message": "boom", "exception": ValueError("x")})  # type: ignore[arg-type]
    assert len(seen) == 1


