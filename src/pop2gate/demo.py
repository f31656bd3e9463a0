"""`pop2gate demo`: a ready-to-use Maildir with sample messages and the user demo/demo."""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

from .config import Config, parse_config
from .stores.maildir import make_maildir
from .stores.maildir.users import read_users, set_password

DEMO_ADDRESS = ("127.0.0.1", 1109)


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pop2gate" / "demo"


def _message(subject: str, body: str, extra: str = "") -> bytes:
    head = (
        "From: pop2gate demo <demo@localhost>\n"
        "To: demo@localhost\n"
        f"Subject: {subject}\n"
        "Date: Sun, 29 Nov 2026 04:00:00 +0000\n"
        "MIME-Version: 1.0\n"
        f"{extra}"
    )
    return (head + "\n" + body).encode("utf-8")


def sample_messages() -> list[tuple[str, bytes]]:
    big_line = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\n"
    big = big_line * (1024 * 1024 // len(big_line) + 1)
    return [
        ("Welcome", _message("Welcome to pop2gate", "This mailbox is served over POP2 (RFC 937).\n"
                             "READ, RETR, then ACKS to keep a message or ACKD to delete it.\n")),
        ("Dots", _message("Lines that start with a dot", ".\n.. two dots\n. a dot and a space\n"
                          "POP2 sends message data as is: no byte-stuffing, no terminator.\n")),
        ("8-bit", _message("8-bit text", "Grüße aus Köln, ça va? Ünïcödé ☃ — 8-bit octets on the wire.\n",
                           "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n")),
        ("Large", _message("About one megabyte", big)),
        ("NoFinalNewline", _message("Last line without a line end", "This line has no line end")),
    ]


def create_demo(directory: Path) -> Config:
    """Create the demo store in `directory` if missing; return its config."""
    mail = directory / "mail"
    users = directory / "users"
    if "demo" not in read_users(users):
        set_password(users, "demo", "demo")
    home = mail / "demo"
    if not (home / "new").exists():
        make_maildir(home)
        now = int(time.time())
        for i, (name, data) in enumerate(sample_messages()):
            (home / "new" / f"{now + i}.M{i}P{os.getpid()}.{name}.demo").write_bytes(data)
        archive = home / ".Archive"
        make_maildir(archive)
        (archive / "cur" / f"{now}.M0P{os.getpid()}.archived.demo:2,S").write_bytes(
            _message("An archived message", "Reach me with FOLD Archive.\n")
        )
    # The files are the demo user's own: serve as that user, also as root (never as nobody).
    owner = {"user": pwd.getpwuid(0).pw_name} if os.geteuid() == 0 else {}
    return parse_config(
        {
            "server": {"hostname": "localhost", "listen": [f"{DEMO_ADDRESS[0]}:{DEMO_ADDRESS[1]}"], **owner},
            "backend": [{"name": "demo", "type": "maildir", "path": str(mail), "users_file": str(users)}],
            "routing": {"default": "demo"},
        }
    )
