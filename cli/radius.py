"""capctl radius run: FreeRADIUS with rlm_cap on chosen ports, in the foreground."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from rlm_cap import config, raddb

from .common import engine


@click.group("radius")
def radius() -> None:
    """FreeRADIUS with rlm_cap, for trying the module before installing it."""


@radius.command("run")
@click.option("--auth-port", type=click.IntRange(1, 65535), default=1812, show_default=True)
@click.option("--acct-port", type=click.IntRange(1, 65535), default=1813, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True, help="address to listen on and accept NAS from")
@click.option("--secret", default="testing123", show_default=True, help="RADIUS shared secret of the NAS")
@click.option("--mode", type=click.Choice(["journal", "sync"]), default="journal", show_default=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="raddb directory to render (default: a new temporary one)")
@click.option("--journal-dir", type=click.Path(file_okay=False), help="default: DIR/journal")
@click.option("--node", default="try-out", show_default=True, help="node name for the journal position")
@click.option("--set", "extra", multiple=True, metavar="KEY=VALUE", help="another rlm_cap config option, e.g. keep_unknown=yes")
@click.option("--debug", is_flag=True, help="FreeRADIUS debug output (-xx)")
@click.pass_context
def radius_run(ctx, auth_port, acct_port, address, secret, mode, directory, journal_dir, node, extra, debug) -> None:
    """Render freeradius-conf/ into a private raddb and exec FreeRADIUS on it (foreground, multi-threaded).

    The try-out site accepts any password: keep it on loopback.

    Example: capctl --db sqlite:///tmp/cap.sqlite3 radius run --auth-port 18120 --acct-port 18130
    """
    db_url = config.database_url(ctx.find_root().obj.get("db"))
    engine(ctx)  # fail here, with a clear message, on a malformed URL
    pairs = []
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.ClickException(f"--set takes KEY=VALUE, not {item!r}")
        pairs.append((key.strip(), value.strip()))
    target = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="rlm_cap-raddb-"))
    try:
        raddb.render(raddb.Options(target, db_url, auth_port, acct_port, address, secret, mode,
                                   Path(journal_dir) if journal_dir else None, node, tuple(pairs)))
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot render the FreeRADIUS configuration: {error}") from None
    argv = raddb.command(target, debug)
    click.echo(f"FreeRADIUS with rlm_cap ({mode} mode): auth {address}:{auth_port}, acct {address}:{acct_port}, "
               f"config {target}", err=True)
    os.execvpe(argv[0], argv, raddb.environment(dict(os.environ)))


COMMANDS = (radius,)
