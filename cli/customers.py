"""capctl customer / balance: who pays, and their money."""

from __future__ import annotations

import click

from rlm_cap import ledger, store
from rlm_cap.settings import LIMITATION_TYPES, parse_setting

from .common import MONEY, actor, customer_row, echo_json, is_named, now, text, transact


@click.group("customer")
def customer() -> None:
    """Customers: balance, partner and top-up settings."""


def _customer_settings(conn, customer_id: int, options: dict) -> None:
    for name in ("max_topups_per_month", "limitation_type", "timezone"):
        if options.get(name) is not None:
            value = str(options[name])
            parse_setting(name, value)
            store.set_setting(conn, "customer", customer_id, name, value)


@customer.command("add")
@click.argument("name", type=text(200))
@click.option("--email", type=text(254, empty=True))
@click.option("--phone", type=text(32, empty=True))
@click.option("--partner", type=text(100), help="partner (reseller, branch); created if new")
@click.option("--balance", type=MONEY, default="0", show_default=True, help="opening balance")
@click.option("--auto-topup/--no-auto-topup", default=False, show_default=True,
              help="the customer's own auto top-up switch")
@click.option("--max-topups", "max_topups_per_month", type=click.IntRange(0, 1000),
              help="top-ups per month per service (0 = no limit)")
@click.option("--limitation-type", type=click.Choice(LIMITATION_TYPES), help="which top-ups that limit counts")
@click.option("--billing-day", type=click.IntRange(1, 31), help="period starts on this day (default: calendar month)")
@click.option("--timezone", help="time zone of periods and time frames, e.g. Europe/Berlin")
def customer_add(name, email, phone, partner, balance, auto_topup, billing_day, **options) -> None:
    """Add a customer.

    Example: capctl customer add alice --email alice@example.net --balance 50 --auto-topup --max-topups 3
    """
    def work(conn):
        if is_named(store.find_customer(conn, name), name):
            raise click.ClickException(f"customer {name!r} exists already")
        partner_id = store.ensure_partner(conn, partner) if partner else None
        customer_id = store.add_customer(conn, name, now(), email=email, phone=phone, partner_id=partner_id,
                                         balance=balance, auto_topup=auto_topup, billing_day=billing_day)
        _customer_settings(conn, customer_id, options)
        return customer_id
    click.echo(f"customer {name!r} added (id {transact(work)})")


@customer.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def customer_show(name: str, as_json: bool) -> None:
    """Show a customer's balance, settings, services and recent money.

    Example: capctl customer show alice
    """
    def work(conn):
        row = customer_row(conn, name)
        return {**row, "partner": store.partner_name(conn, row["partner_id"]),
                "settings": store.setting_layers(conn, [("customer", row["id"])])[0],
                "services": store.services_of_customer(conn, row["id"]),
                "transactions": store.list_transactions(conn, row["id"])[-10:],
                "invoice_items": store.list_invoice_items(conn, row["id"])[-10:]}
    details = transact(work)
    if as_json:
        echo_json(details)
        return
    lines = [f"customer {details['name']} (id {details['id']})",
             f"  balance       {details['balance']}",
             f"  partner       {details['partner'] or '-'}",
             f"  auto top-up   {'on' if details['auto_topup'] else 'off'}",
             f"  billing day   {details['billing_day'] or 'calendar month'}"]
    lines += [f"  {key:<13} {value}" for key, value in sorted(details["settings"].items())]
    lines += [f"  service       {s['username']} ({s['description'] or '-'}), {s['cap_state']}"
              for s in details["services"]]
    lines += [f"  transaction   {t['at']:%Y-%m-%d %H:%M} {t['amount']:>9} {t['description']}"
              for t in details["transactions"]]
    lines += [f"  invoice item  {i['at']:%Y-%m-%d %H:%M} {i['amount']:>9} {i['description']}"
              for i in details["invoice_items"]]
    click.echo("\n".join(lines))


@click.group("balance")
def balance() -> None:
    """Money on a customer's account."""


@balance.command("add")
@click.argument("name")
@click.argument("amount", type=MONEY)
@click.option("--description", type=text(500), default="Payment", show_default=True)
def balance_add(name: str, amount, description: str) -> None:
    """Record a payment.

    Example: capctl balance add alice 20
    """
    if amount <= 0:
        raise click.ClickException("a payment must be above zero (e.g. capctl balance add alice 20)")
    new_balance = transact(lambda conn: ledger.record_payment(
        conn, customer_row(conn, name, for_update=True), amount, actor(), now(), description))
    click.echo(f"payment of {amount} recorded; balance of {name!r} is {new_balance}")


COMMANDS = (customer, balance)
