"""cap-enforcer: the daemon that acts on what rlm_cap decides.

    cap-enforcer run     # APScheduler, in the foreground, until SIGTERM/SIGINT
    cap-enforcer once    # every job once (cron, tests)
"""

from __future__ import annotations

import logging
import signal
import sys

import click
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy.exc import DBAPIError

from rlm_cap import config as rlm_config
from rlm_cap import store

from . import config as enforcer_config
from .jobs import Enforcer


def _logging(verbose: bool) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _enforcer(db: str | None) -> Enforcer:
    try:
        settings = enforcer_config.load()
        url = rlm_config.check_url(rlm_config.database_url(db))
    except ValueError as error:
        raise click.ClickException(f"configuration: {error}") from None
    try:
        return Enforcer(store.make_engine(url), settings)
    except Exception as error:  # noqa: BLE001 - an unknown driver, a bad port: one line, never the URL
        raise click.ClickException(f"cannot use the database URL: {type(error).__name__}") from None


@click.group()
@click.option("--db", metavar="URL", envvar="RLM_CAP_DB_URL", help="SQLAlchemy URL (as for capctl)")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def cli(ctx: click.Context, db: str | None, verbose: bool) -> None:
    """Send CoA/Disconnect and notifications, close periods: acts on rlm_cap's outbox."""
    ctx.ensure_object(dict)
    ctx.obj["db"] = db
    _logging(verbose)


@cli.command()
@click.pass_context
def once(ctx: click.Context) -> None:
    """Run every job once and print what each did.

    Example: cap-enforcer --db mysql+pymysql://rlm_cap:SECRET@localhost/rlm_cap once
    """
    try:
        done = _enforcer(ctx.obj["db"]).run_once()
    except DBAPIError as error:
        reason = str(getattr(error.orig, "args", [error.orig])[-1]).splitlines()[0]
        raise click.ClickException(f"database error: {reason}") from None
    for job, count in done.items():
        click.echo(f"{job}: {count}")


@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the jobs on their intervals until SIGTERM or SIGINT.

    Example: cap-enforcer run   (systemd: enforcer/cap-enforcer.service)
    """
    enforcer = _enforcer(ctx.obj["db"])
    settings = enforcer.config
    scheduler = BlockingScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    for job, seconds in ((enforcer.send_actions, settings.coa_interval),
                         (enforcer.send_notifications, settings.notify_interval),
                         (enforcer.close_periods, settings.period_interval),
                         (enforcer.housekeeping, settings.housekeeping_interval)):
        scheduler.add_job(job, "interval", seconds=seconds, id=job.__name__, name=job.__name__)

    def stop(signum, _frame):
        logging.getLogger("enforcer").info("signal=%s stopping", signal.Signals(signum).name)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("enforcer").info("node=%s started", settings.node)
    scheduler.start()
    logging.getLogger("enforcer").info("node=%s stopped", settings.node)


if __name__ == "__main__":
    cli()
