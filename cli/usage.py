"""capctl usage / history: what a service used and what happened to its data."""

from __future__ import annotations

import calendar
from datetime import datetime

import click

from rlm_cap import ledger, store
from rlm_cap.policy import BONUS
from rlm_cap.units import format_size

from .common import bar, echo_json, now, service_row, transact


@click.command("usage")
@click.argument("username", metavar="SERVICE")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def usage(username: str, as_json: bool) -> None:
    """Usage of the current period, per bucket.

    Example: capctl usage alice@isp
    """
    def work(conn):
        ctx = ledger.load_context(conn, service_row(conn, username))
        return ctx, ledger.usage(conn, ctx, now())
    ctx, report = transact(work)
    period = report.period
    if as_json:
        echo_json({"service": username, "plan": report.plan.name, "state": report.state,
                   "period_start": period["period_start"], "period_end": period["period_end"],
                   "upload_bytes": period["upload_bytes"], "download_bytes": period["download_bytes"],
                   "counted_bytes": period["counted_bytes"], "bonus_bytes": period["bonus_bytes"],
                   "free_bytes": period["free_bytes"], "overuse_bytes": period["overuse_bytes"],
                   "available_bytes": (None if report.plan.monthly_limit is None
                                       else report.evaluation.normal_remaining),
                   "buckets": [{k: b[k] for k in ("id", "kind", "size", "used", "remaining", "valid_from",
                                                   "valid_until", "origin")} for b in report.buckets]})
        return
    tz = ctx.tz
    lines = [f"{username}  plan {report.plan.name}  period {period['period_start'].astimezone(tz):%Y-%m-%d}"
             f" - {period['period_end'].astimezone(tz):%Y-%m-%d}  state {report.state}",
             f"  traffic: down {format_size(period['download_bytes'])}, up {format_size(period['upload_bytes'])},"
             f" counted {format_size(period['counted_bytes'])} ({report.plan.direction})"]
    for b in report.buckets:
        until = f"until {b['valid_until'].astimezone(tz):%Y-%m-%d}" if b["valid_until"] else "no expiry"
        note = " (time frames only)" if b["kind"] == BONUS else ""
        lines.append(f"  {b['kind']:<12} #{b['id']:<5} {bar(b['used'], b['size'])} "
                     f"{format_size(b['used']):>9} of {format_size(b['size']):<9} "
                     f"{format_size(b['remaining']):>9} left  {until}{note}")
    available = ("unlimited" if report.plan.monthly_limit is None
                 else format_size(report.evaluation.normal_remaining))
    lines.append(f"  available {available}"
                 + (f", over-use {format_size(period['overuse_bytes'])}" if period["overuse_bytes"] else "")
                 + (f", free (unlimited frames) {format_size(period['free_bytes'])}"
                    if period["free_bytes"] and report.plan.monthly_limit is not None else ""))
    click.echo("\n".join(lines))


def _month(text: str | None):
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a month; write it like 2026-11", param_hint="--period") from None


@click.command("history")
@click.argument("username", metavar="SERVICE")
@click.option("--period", "month", help="the period that starts in this month, YYYY-MM (default: current)")
@click.option("--all", "everything", is_flag=True, help="every period")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def history(username: str, month: str | None, everything: bool, as_json: bool) -> None:
    """Top-ups, bonus, rollover, removals, expiry and CAP actions of a service.

    Example: capctl history alice@isp --period 2026-11
    """
    chosen = _month(month)

    def work(conn):
        ctx = ledger.load_context(conn, service_row(conn, username))
        if everything:
            return ctx, None, store.list_history(conn, ctx.service["id"])
        # The period's first day in that month: billing days 29-31 fall on a short month's last day.
        moment = now() if chosen is None else chosen.replace(
            day=min(ctx.customer["billing_day"] or 1, calendar.monthrange(chosen.year, chosen.month)[1]),
            hour=12, tzinfo=ctx.tz)
        period = ctx.period(moment)
        return ctx, period, store.list_history(conn, ctx.service["id"], period.start, period.end)
    ctx, period, rows = transact(work)
    if as_json:
        echo_json(rows)
        return
    if period is not None:
        click.echo(f"{username}  period {period.start:%Y-%m-%d} - {period.end:%Y-%m-%d}")
    for row in rows:
        size = f"{'+' if row['size'] > 0 else ''}{format_size(row['size'])}" if row["size"] is not None else ""
        amount = f" {row['amount']}" if row["amount"] is not None else ""
        click.echo(f"  {row['at'].astimezone(ctx.tz):%Y-%m-%d %H:%M}  {row['kind']:<12} {size:>10}{amount:>9}"
                   f"  {row['actor']:<10} {row['detail']}")
    if not rows:
        click.echo("  (nothing in this period)")


COMMANDS = (usage, history)
