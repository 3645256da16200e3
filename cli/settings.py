"""capctl settings: CAP settings at global, partner, plan, customer or service scope."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import click

from rlm_cap import store, templates
from rlm_cap.settings import DESCRIPTIONS, Settings, parse_setting, resolve

from .common import customer_row, echo_json, need, now, plan_row, service_row, transact


def scope_options(function):
    for option in reversed([
        click.option("--partner", help="partner name"),
        click.option("--plan", "plan_name", help="plan name"),
        click.option("--customer", "customer_name", help="customer name"),
        click.option("--service", "username", help="service User-Name"),
    ]):
        function = option(function)
    return function


def _chain(conn, partner, plan_name, customer_name, username, create_partner=False) -> list[tuple[str, int]]:
    """The scopes from global to the one asked for, as (scope, id)."""
    given = [x for x in (partner, plan_name, customer_name, username) if x]
    if len(given) > 1:
        raise click.ClickException("give at most one of --partner, --plan, --customer, --service")
    chain = [("global", 0)]
    if partner:
        found = store.ensure_partner(conn, partner) if create_partner else store.find_partner(conn, partner)
        chain.append(("partner", need(found, f"partner {partner!r}",
                                      "set a setting for it first: capctl settings set NAME VALUE --partner P")))
    elif plan_name:
        chain.append(("plan", plan_row(conn, plan_name)["id"]))
    elif customer_name:
        customer = customer_row(conn, customer_name)
        chain += [("partner", customer["partner_id"]), ("customer", customer["id"])]
    elif username:
        service = service_row(conn, username)
        customer = store.find_customer(conn, service["customer_id"])
        chain += [("partner", customer["partner_id"]), ("plan", service["plan_id"]),
                  ("customer", customer["id"]), ("service", service["id"])]
    return [(scope, scope_id) for scope, scope_id in chain if scope_id is not None]


@click.group("settings")
def settings() -> None:
    """CAP settings: global, overridden per partner, plan, customer, service."""


@settings.command("get")
@click.argument("name", required=False)
@scope_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def settings_get(name, partner, plan_name, customer_name, username, as_json) -> None:
    """Show effective settings at a scope, and where each value comes from.

    Example: capctl settings get --service alice@isp
    """
    if name is not None and name not in DESCRIPTIONS:
        raise click.ClickException(f"unknown setting {name!r}; known: {', '.join(sorted(DESCRIPTIONS))}")

    def work(conn):
        chain = _chain(conn, partner, plan_name, customer_name, username)
        layers = store.setting_layers(conn, chain)
        effective = resolve(layers)
        origin = {}
        for (scope, _), layer in zip(chain, layers):
            origin.update({key: scope for key in layer})
        return effective, origin
    effective, origin = transact(work)
    names = [name] if name else sorted(DESCRIPTIONS)
    values = {n: getattr(effective, n) for n in names}
    if as_json:
        echo_json({n: {"value": values[n], "from": origin.get(n, "default")} for n in names})
        return
    for n in names:
        click.echo(f"{n:<30} {str(values[n]):<50} ({origin.get(n, 'default')})")


def _sample(table) -> dict:
    """A row of ``table`` with a plausible value per column, to try a template on."""
    values = {int: 1, bool: True, str: "x", Decimal: Decimal("1.00"), datetime: now()}
    row = {}
    for column in table.columns:
        try:
            kind = column.type.python_type
        except NotImplementedError:
            kind = str
        row[column.name] = values.get(kind, "x")
    return row


def _check_description(name: str, value: str) -> None:
    """A top-up description template must render: a broken one would make every such
    top-up fail, auto top-ups inside accounting included."""
    try:
        templates.render(value, size="1 GB", service=_sample(store.services),
                         customer=_sample(store.customers))
    except Exception as error:  # noqa: BLE001 - whatever the template does wrong, refuse it
        raise click.ClickException(f"{name}: {error}") from None


# Numbers the engine must be able to use: a rollover of 10**20 months would make every
# accounting record that opens a period fail (no date is that far away).
_BOUNDS = {"rollover_months": (1, 120), "max_topups_per_month": (0, 1000)}
_MAX_VALUE = 1000  # the settings table's column


@settings.command("set")
@click.argument("name")
@click.argument("value")
@scope_options
def settings_set(name, value, partner, plan_name, customer_name, username) -> None:
    """Set a setting at a scope (default: global). VALUE '-' removes it there.

    A new --partner name is created; customers join it with customer add --partner.

    Example: capctl settings set check_balance yes
    Example: capctl settings set max_topups_per_month 3 --partner north
    """
    if value != "-":
        try:
            parsed = parse_setting(name, value)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
        if name in _BOUNDS and not _BOUNDS[name][0] <= parsed <= _BOUNDS[name][1]:
            low, high = _BOUNDS[name]
            raise click.ClickException(f"{name}: must be {low}-{high}, not {value!r}")
        if len(value) > _MAX_VALUE:
            raise click.ClickException(f"{name}: at most {_MAX_VALUE} characters, not {len(value)}")
        if name.endswith("_description"):
            _check_description(name, value)
    elif name not in DESCRIPTIONS:
        raise click.ClickException(f"unknown setting {name!r}; known: {', '.join(sorted(DESCRIPTIONS))}")

    def work(conn):
        scope, scope_id = _chain(conn, partner, plan_name, customer_name, username, create_partner=True)[-1]
        store.set_setting(conn, scope, scope_id, name, None if value == "-" else value)
        return scope
    scope = transact(work)
    click.echo(f"{name} {'removed' if value == '-' else '= ' + value} at {scope} scope")


COMMANDS = (settings,)

assert set(DESCRIPTIONS) == set(Settings.__dataclass_fields__)
