"""capctl service: a subscriber's CAP service, found by RADIUS User-Name."""

from __future__ import annotations

import click

from rlm_cap import ledger, store
from rlm_cap.policy import OK, UNLIMITED

from .common import actor, customer_row, echo_json, is_named, now, plan_row, service_row, text, transact, utf8


@click.group("service")
def service() -> None:
    """Services: a RADIUS User-Name on a plan."""


@service.command("add")
@click.argument("username")
@click.option("--customer", "customer_name", required=True, help="customer name or id")
@click.option("--plan", "plan_name", required=True, help="plan name or id")
@click.option("--description", type=text(200, empty=True), default="",
              help="shown in top-up descriptions, e.g. 'Home internet'")
def service_add(username: str, customer_name: str, plan_name: str, description: str) -> None:
    """Add a service; USERNAME is the RADIUS User-Name the NAS sends.

    Example: capctl service add alice@isp --customer alice --plan "Home 10GB" --description "Home internet"
    """
    if not username or len(username) > 253:
        raise click.ClickException("USERNAME must be 1-253 characters (the RADIUS User-Name)")
    if not utf8(username):
        raise click.ClickException(f"USERNAME is not valid UTF-8: {username!r}")

    def work(conn):
        if is_named(store.find_service(conn, username), username, "username"):
            raise click.ClickException(f"service {username!r} exists already")
        customer = customer_row(conn, customer_name)
        plan = plan_row(conn, plan_name)
        state = UNLIMITED if plan["monthly_limit"] is None else OK
        return store.add_service(conn, customer["id"], plan["id"], username, description, now(), state)
    click.echo(f"service {username!r} added (id {transact(work)})")


@service.command("show")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def service_show(username: str, as_json: bool) -> None:
    """Show a service: customer, plan, CAP state and open sessions.

    Example: capctl service show alice@isp
    """
    def work(conn):
        row = service_row(conn, username)
        return {**row, "customer": store.find_customer(conn, row["customer_id"])["name"],
                "plan": store.find_plan(conn, row["plan_id"])["name"],
                "open_sessions": store.open_sessions(conn, row["id"])}
    details = transact(work)
    if as_json:
        echo_json(details)
        return
    lines = [f"service {details['username']} (id {details['id']})",
             f"  customer     {details['customer']}",
             f"  plan         {details['plan']}",
             f"  description  {details['description'] or '-'}",
             f"  CAP state    {details['cap_state']} since {details['state_changed_at']:%Y-%m-%d %H:%M}"]
    lines += [f"  session      {s['acct_session_id']} on {s['nas']} since {s['started_at']:%Y-%m-%d %H:%M}"
              + (f", {s['framed_ip']}" if s["framed_ip"] else "") for s in details["open_sessions"]]
    click.echo("\n".join(lines))


@service.command("change-plan")
@click.argument("username")
@click.argument("plan_name", metavar="PLAN")
def service_change_plan(username: str, plan_name: str) -> None:
    """Move a service to another plan from now on.

    Unused top-up data stays with the service when the transfer_usage setting
    is on, and is removed (with history) when it is off.

    Example: capctl service change-plan alice@isp "Home 50GB"
    """
    def work(conn):
        ctx = ledger.load_context(conn, service_row(conn, username))
        plan = plan_row(conn, plan_name)
        if plan["id"] == ctx.plan.id:
            raise click.ClickException(f"service {username!r} is on plan {plan_name!r} already")
        ledger.change_plan(conn, ctx, plan["id"], actor(), now())
    transact(work)
    click.echo(f"service {username!r} moved to plan {plan_name!r}")


COMMANDS = (service,)
