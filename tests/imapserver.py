"""What the private IMAP servers of the tests (dovecot.py, cyrus.py, courier.py) share:
waiting until one answers, and stopping one that runs in its own process group."""

from __future__ import annotations

import imaplib
import os
import signal
import subprocess
import time
from collections.abc import Callable


def wait_for_imap(proc: subprocess.Popen[bytes], host: str, port: int, exited: Callable[[], str],
                  stop: Callable[[], None], error: type[Exception], timeout: float = 20) -> None:
    """Return once IMAP answers on host:port; raise `error` with `exited()` if the process
    ends first, or stop it and raise when nothing answers in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(exited())
        try:
            with imaplib.IMAP4(host, port, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    stop()
    raise error(f"nothing answered IMAP on {host}:{port}")


def stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    """End a server started with start_new_session=True and every process of its group."""
    if proc is None:
        return
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # children that outlive the leader (Courier's authdaemond, sessions)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
