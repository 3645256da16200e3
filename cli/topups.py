"""capctl topup / bonus: data added to a service by an operator."""

from __future__ import annotations

import click

from rlm_cap import ledger, store
from rlm_cap.units import format_size

from .common import MONEY, SIZE, actor, need, now, service_row, transact


@click.group("topup")
def topup() -> None:
    """Top-ups: extra data for a service, paid or free."""


@topup.command("add")
@click.argument("username", metavar="SERVICE")
@click.option("--plan", "topup_plan", help="a top-up plan of the service's plan, e.g. 5GB")
@click.option("--size", type=SIZE, help="custom size, e.g. 200MB (with --price)")
@click.option("--price", type=MONEY, help="custom price (0 = a gift)")
@click.option("--valid-months", type=click.IntRange(1, 120), help="custom validity (default: no expiry)")
def topup_add(username: str, topup_plan, size, price, valid_months) -> None:
    """Add a top-up to a service, by top-up plan or custom size and price.

    Example: capctl topup add alice@isp --plan 5GB
    Example: capctl topup add alice@isp --size 200MB --price 10 --valid-months 1
    """
    if (topup_plan is None) == (size is None):
        raise click.ClickException("give either --plan NAME or --size SIZE --price AMOUNT")
    if size is not None and price is None:
        raise click.ClickException("a custom top-up needs --price too (0 for a gift)")
    if topup_plan is not None and (price is not None or valid_months is not None):
        raise click.ClickException("--price and --valid-months go with --size, not with --plan")

    def work(conn):
        ctx = ledger.load_context(conn, service_row(conn, username))
        chosen = None
        if topup_plan is not None:
            chosen = need(store.find_topup_plan(conn, ctx.plan.id, topup_plan),
                          f"top-up plan {topup_plan!r} in plan {ctx.plan.name!r}",
                          f"see: capctl topup-plan list {ctx.plan.name!r}")
        bucket_id = ledger.apply_topup(conn, ctx, "admin", actor(), now(), chosen, size, price, valid_months)
        return store.find_bucket(conn, bucket_id)
    bucket = transact(work)
    click.echo(f"top-up of {format_size(bucket['size'])} added to {username!r} (bucket {bucket['id']})")


@topup.command("remove")
@click.argument("username", metavar="SERVICE")
@click.argument("bucket_id", type=int, metavar="BUCKET")
@click.option("--size", type=SIZE, help="remove only this much (default: all unused data)")
def topup_remove(username: str, bucket_id: int, size) -> None:
    """Remove unused data from a top-up or bonus bucket (ids: capctl usage SERVICE).

    Example: capctl topup remove alice@isp 7 --size 1GB
    """
    removed = transact(lambda conn: ledger.remove_topup(
        conn, ledger.load_context(conn, service_row(conn, username)), bucket_id, size, actor(), now()))
    click.echo(f"{format_size(removed)} removed from bucket {bucket_id} of {username!r}")


@click.group("bonus")
def bonus() -> None:
    """Bonus data: usable only inside the plan's time frames."""


@bonus.command("add")
@click.argument("username", metavar="SERVICE")
@click.option("--size", type=SIZE, required=True, help="e.g. 2GB")
@click.option("--valid-months", type=click.IntRange(1, 120), help="default: no expiry")
def bonus_add(username: str, size: int, valid_months) -> None:
    """Give bonus data to a service.

    Example: capctl bonus add alice@isp --size 2GB --valid-months 1
    """
    bucket_id = transact(lambda conn: ledger.add_bonus(
        conn, ledger.load_context(conn, service_row(conn, username)), size, valid_months, actor(), now()))
    click.echo(f"bonus of {format_size(size)} added to {username!r} (bucket {bucket_id})")


COMMANDS = (topup, bonus)
