"""capctl: plans, top-ups, bonus data, usage, history and simulation for rlm_cap.

    capctl db init
    capctl plan add "Home 10GB" --limit 10GB --action reduce --reduce-percent 50 --rate 10M/20M
    capctl usage alice@isp
"""

from __future__ import annotations

import click

from rlm_cap import config, store

from . import common, customers, nas, notifications, plans, radius, services, settings, simulate, topups, usage


@click.group()
@click.option("--db", "db", metavar="URL", envvar="RLM_CAP_DB_URL",
              help="SQLAlchemy URL, e.g. mysql+pymysql://user:pass@host/rlm_cap "
                   "(default: RLM_CAP_DB_URL, then /etc/rlm_cap/rlm_cap.conf, then a local SQLite file)")
@click.pass_context
def capctl(ctx: click.Context, db: str | None) -> None:
    """Operate data caps: plans, services, top-ups, usage and history."""
    ctx.ensure_object(dict)
    ctx.obj["db"] = db


@capctl.group()
def db() -> None:
    """The rlm_cap database."""


@db.command("init")
@click.pass_context
def db_init(ctx: click.Context) -> None:
    """Create the rlm_cap tables (existing ones are left as they are).

    Example: capctl --db mysql+pymysql://rlm_cap:secret@127.0.0.1/rlm_cap db init
    """
    engine = common.engine(ctx)
    try:
        store.create_schema(engine)
    except Exception as error:  # noqa: BLE001 - the reason is printed, the URL's password is not
        raise click.ClickException(f"cannot create the tables: {common._reason(error)}") from None
    click.echo(f"database ready: {engine.url.render_as_string(hide_password=True)}")


for module in (plans, customers, services, topups, notifications, usage, simulate, settings, nas, radius):
    for command in module.COMMANDS:
        capctl.add_command(command)

__all__ = ["capctl", "config"]
