"""What `pop2gate fetch` asks and shows: the password, the progress bar, Ctrl-C."""

from __future__ import annotations

import getpass
import os
import signal
import sys
from pathlib import Path
from types import FrameType, TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .files import check_secret

PASSWORD_ENV = "POP2_PASSWORD"  # noqa: S105 - the name of the variable, not a password


class PasswordError(ValueError):
    """No usable password source; the text says why."""


def read_password(password_file: Path | None, prompt: str) -> str:
    """The password from `password_file` (its first line; refused when group or others may
    read it), else $POP2_PASSWORD, else a prompt without echo on a terminal, else stdin's
    first line. Never from the command line."""
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as f:
                try:
                    check_secret(password_file, os.fstat(f.fileno()))  # the file read, not its name again
                except ValueError as err:
                    raise PasswordError(str(err)) from None
                line = f.readline()
        except (OSError, UnicodeDecodeError) as err:
            raise PasswordError(f"cannot read {password_file}: {getattr(err, 'strerror', None) or err}") from err
        return line.rstrip("\r\n")
    if PASSWORD_ENV in os.environ:
        return os.environ[PASSWORD_ENV]
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    if not line:
        raise PasswordError("no password: stdin is empty (or use --password-file or $POP2_PASSWORD)")
    return line.rstrip("\r\n")


class Bar:
    """A rich progress bar on stderr: messages and octets, rate, time left."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[done]}/{task.fields[count]} messages"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._task: TaskID | None = None

    def start(self, messages: int, octets: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("fetching", total=octets, done=0, count=messages)

    def advance(self, octets: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, octets)

    def done(self) -> None:
        if self._task is not None:
            done = self._progress.tasks[0].fields["done"] + 1
            self._progress.update(self._task, done=done)

    def say(self, text: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, description=text)

    def stop(self) -> None:
        self._progress.stop()


class CtrlC:
    """While active, the first SIGINT asks to stop after the current message (`requested`),
    the second raises KeyboardInterrupt at once."""

    def __init__(self, bar: Bar | None) -> None:
        self.requested = False
        self._bar = bar
        self._old: object = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        notice = "Ctrl-C: stopping after this message, then QUIT (Ctrl-C again: abort, nothing deleted)"
        if self._bar is not None:
            self._bar.say("stopping")
        os.write(2, f"\n{notice}\n".encode())

    def __enter__(self) -> CtrlC:
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        signal.signal(signal.SIGINT, self._old)  # type: ignore[arg-type]
