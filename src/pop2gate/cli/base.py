"""What every `pop2gate` command shares: the main group, loading the config, logging, a backend."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from .. import __version__, logs
from ..config import Config, ConfigError, load_config
from ..logs import LEVELS
from ..stores.imap import ImapBackend
from ..stores.maildir import MaildirBackend

CONFIG_HELP = "TOML configuration file (see docs/configuration.md)."


def config_errors(err: ConfigError) -> NoReturn:
    """Print every issue, one a line (`FILE:LINE: key: what`), and exit 2."""
    for issue in err.issues:
        click.echo(f"pop2gate: config error: {issue}", err=True)
    sys.exit(2)


def load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        config_errors(err)


log_option = click.option(
    "--log-level", type=click.Choice(LEVELS), default=None,
    help="Log detail; overrides [log] level (default info).",
)


B = TypeVar("B", MaildirBackend, ImapBackend)


def one_backend(config: Config, kind: type[B], name: str | None, what: str,
                 fits: Callable[[B], bool] = lambda _: True) -> B:
    """The config's one backend of `kind` that `fits`, or the one of them `name`d (--backend)."""
    found = [b for b in config.backend if isinstance(b, kind) and fits(b)]
    if name is not None:
        found = [b for b in found if b.name == name]
    if len(found) != 1:
        raise click.UsageError(f"the config must have exactly one {what}, or name one with --backend")
    return found[0]


def setup_logging(config: Config | None, level: str | None) -> None:
    try:
        logs.setup_logging(config.log if config is not None else None, level)
    except OSError as err:
        click.echo(f"pop2gate: cannot log to syslog at {config.log.syslog_address if config else ''}: {err}",
                   err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pop2gate")
def main() -> None:
    """pop2gate: a secure IMAP-to-POP2 (RFC 937) conversion server and toolkit."""
