"""The `pop2gate` command line."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pop2gate")
def main() -> None:
    """pop2gate: a secure IMAP-to-POP2 (RFC 937) conversion server and toolkit."""


@main.command()
@click.argument("targets", nargs=-1)
@click.option("--targets-file", "targets_file", type=click.Path(dir_okay=False),
              help="File of targets, one a line (# starts a comment).")
@click.option("--ports", default="109", show_default=True,
              help="Ports to check on targets without one, e.g. 109,110,143.")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=5.0, show_default=True,
              help="Seconds allowed for each connection and its greeting.")
@click.option("--concurrency", type=click.IntRange(min=1), default=32, show_default=True,
              help="Connections open at once, at most.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per target and port.")
def check(targets: tuple[str, ...], targets_file: str | None, ports: str, timeout: float,
          concurrency: int, as_json: bool) -> None:
    """Find POP2 services and say which known advisories apply.

    TARGETS are host names, IPv4 or IPv6 addresses, host:port or [v6]:port;
    the default is localhost. Only the greeting is read, then QUIT (or LOGOUT)
    is sent; no login, no password, nothing else. Exit status: 0 nothing
    vulnerable, 1 something vulnerable, 2 usage error.
    """
    import sys

    from . import check as checker

    try:
        port_list = checker.parse_ports(ports)
    except checker.TargetError as e:
        raise click.BadParameter(str(e), param_hint="--ports") from None
    names = list(targets)
    if targets_file is not None:
        try:
            names += checker.read_targets_file(targets_file)
        except (OSError, UnicodeDecodeError) as e:
            raise click.BadParameter(f"cannot read {targets_file}: {e}",
                                     param_hint="--targets-file") from None
    if not names and targets_file is None:
        names = ["localhost"]
    if not names:
        raise click.UsageError("no targets in the targets file")
    try:
        rows = checker.check(names, port_list, timeout=timeout, concurrency=concurrency)
    except checker.TargetError as e:
        raise click.BadParameter(str(e), param_hint="TARGETS") from None
    if as_json:
        click.echo(checker.to_json(rows))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console().print(checker.rich_table(rows))
    else:
        click.echo(checker.plain_table(rows), nl=False)
    sys.exit(checker.exit_status(rows))
