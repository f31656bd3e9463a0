"""The `pop2gate` command line."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pop2gate")
def main() -> None:
    """pop2gate: a secure IMAP-to-POP2 (RFC 937) conversion server and toolkit."""
