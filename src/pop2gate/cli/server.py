"""`pop2gate serve`, `config check`, `config reference` and `demo`: running the server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from ..config import ConfigError, load_config
from .base import CONFIG_HELP, config_errors, load, log_option, main, setup_logging


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), required=True, help=CONFIG_HELP)
@click.option("--inetd", is_flag=True, help="Serve one session on stdin/stdout (inetd, xinetd, socat).")
@log_option
def serve(config_path: Path, inetd: bool, log_level: str | None) -> None:
    """Run the POP2 server.

    Listens on the addresses of [server], or on the sockets systemd hands over (socket
    activation). SIGHUP re-reads the configuration for new sessions; SIGTERM stops.
    """
    from ..gateway.listeners import serve_forever, serve_stdio

    config = load(config_path)
    setup_logging(config, log_level)
    from ..gateway.privileges import PrivilegeError

    try:
        asyncio.run(serve_stdio(config) if inetd else serve_forever(config, reload=lambda: load_config(config_path)))
    except PrivilegeError as err:
        click.echo(f"pop2gate: {err}", err=True)
        sys.exit(2)
    except ConfigError as err:  # a store's path the serving user cannot use (gateway.privileges)
        config_errors(err)
    except OSError as err:
        click.echo(f"pop2gate: cannot listen: {err}", err=True)
        sys.exit(1)


@main.group("config")
def config_group() -> None:
    """Check a configuration file, or print its reference."""


@config_group.command("check")
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), required=True, help=CONFIG_HELP)
def config_check(config_path: Path) -> None:
    """Validate FILE as `serve` does at start.

    Valid: prints the effective configuration (every default filled in, secrets masked)
    as TOML on stdout and exits 0. Invalid: prints every error, each with its key and its
    line in the file (`FILE:LINE: key: what`), on stderr and exits 2. Whether the serving
    user can use each store's files is checked by `serve`, once it is that user.
    """
    from ..config_show import effective_toml

    config = load(config_path)
    click.echo(effective_toml(config), nl=False)
    click.echo(f"pop2gate: {config_path}: configuration valid", err=True)


@config_group.command("reference")
def config_reference() -> None:
    """Print the configuration reference (docs/configuration.md): every key, its type, default and meaning."""
    from ..config_doc import reference

    click.echo(reference(), nl=False)


@main.command()
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path), default=None,
    help="Where the demo store lives (default: pop2gate/demo under the XDG data home).",
)
@log_option
def demo(directory: Path | None, log_level: str | None) -> None:
    """Serve a demo mailbox (user demo, password demo) on 127.0.0.1:1109."""
    from ..demo import DEMO_ADDRESS, create_demo, default_dir
    from ..gateway.listeners import serve_forever

    directory = directory or default_dir()
    config = create_demo(directory)
    host, port = DEMO_ADDRESS
    setup_logging(None, log_level)

    prog = sys.argv[0] if Path(sys.argv[0]).name == "pop2gate" else "pop2gate"

    def ready(_servers: list[asyncio.Server]) -> None:
        click.echo(
            f"pop2gate demo: serving {directory / 'mail'} on {host}:{port} (user demo, password demo)\n"
            f"Connect by hand:     telnet {host} {port}\n"
            f"  then type:         HELO demo demo, READ, RETR, ACKS (keep) or ACKD (delete), QUIT\n"
            f"Or with the client:  {prog} fetch {host}:{port} --user demo --list     (password: demo)\n"
            f"  or into an mbox:   {prog} fetch {host}:{port} --user demo --mbox demo.mbox\n"
            f"Stop with Ctrl-C.",
        )

    try:
        asyncio.run(serve_forever(config, ready=ready))
    except OSError as err:
        click.echo(f"pop2gate demo: cannot listen on {host}:{port}: {err.strerror}", err=True)
        sys.exit(1)
