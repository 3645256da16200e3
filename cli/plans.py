"""capctl plan / topup-plan: tariff plans with a CAP, and the top-ups they sell."""

from __future__ import annotations

import click

from rlm_cap import store
from rlm_cap.policy import ACTIONS, DIRECTIONS, parse_rate
from rlm_cap.settings import parse_setting
from rlm_cap.units import format_size

from .common import MONEY, RATE, SIZE, TIME_FRAME, echo_json, is_named, need, plan_row, text, transact


def plan_options(editing: bool):
    """The options of ``plan add`` and ``plan edit`` (on edit, none has a default)."""
    def default(value):
        return None if editing else value

    options = [
        click.option("--limit", type=SIZE, help="monthly data limit, e.g. 10GB"),
        click.option("--unlimited", is_flag=True, help="no CAP: usage is only recorded"),
        click.option("--direction", type=click.Choice(DIRECTIONS), default=default("up+down"),
                     help="which traffic counts"),
        click.option("--action", type=click.Choice(ACTIONS), default=default("block"),
                     help="what happens at the CAP"),
        click.option("--fixed-rate", type=RATE, help="Mikrotik-Rate-Limit when capped (action fixed), e.g. 1M/1M"),
        click.option("--reduce-percent", type=click.IntRange(1, 99),
                     help="speed cut in percent, 1-99 (action reduce; 100 % is the action block)"),
        click.option("--rate", type=RATE, help="the plan's normal speed rx/tx, e.g. 10M/20M"),
        click.option("--bonus", "bonus_limit", type=SIZE, help="bonus data usable inside the time frames"),
        click.option("--bonus-unlimited/--no-bonus-unlimited", default=None,
                     help="traffic inside the time frames does not count at all"),
        click.option("--bonus-after-cap/--no-bonus-after-cap", default=None,
                     help="bonus traffic is still allowed once the CAP is reached"),
        click.option("--time-frame", "time_frames", type=TIME_FRAME, multiple=True,
                     help="bonus time frame, e.g. 00:00-04:00 or '22:00-06:00 sat,sun' (repeat for more)"),
        click.option("--no-time-frames", is_flag=True, help="remove all time frames"),
        click.option("--rollover/--no-rollover", default=None, help="roll unused monthly data over"),
        click.option("--auto-topup-plan", help="top-up plan applied automatically at the CAP"),
        click.option("--trigger", "auto_topup_trigger_percent", type=click.IntRange(0, 100),
                     help="auto top-up trigger value: % of the top-up used past the CAP"),
        click.option("--compensate/--no-compensate", default=None,
                     help="charge over-use measured past the CAP as a top-up"),
        click.option("--overuse-price", "overuse_price_per_gb", type=MONEY, help="price per GB of over-use"),
        click.option("--use-topup-first/--no-use-topup-first", default=None,
                     help="consume top-ups before the monthly limit (plan setting)"),
    ]

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function
    return decorate


def _plan_values(conn, plan: dict | None, options: dict) -> dict:
    values = {k: options[k] for k in ("direction", "action", "fixed_rate", "reduce_percent", "bonus_limit",
                                      "bonus_unlimited", "bonus_after_cap", "rollover",
                                      "auto_topup_trigger_percent", "compensate", "overuse_price_per_gb")
              if options.get(k) is not None}
    if options.get("rate"):
        values["normal_rate"] = options["rate"]
    if options.get("unlimited") and options.get("limit") is not None:
        raise click.ClickException("give either --limit or --unlimited, not both")
    if options.get("unlimited"):
        values["monthly_limit"] = None
    elif options.get("limit") is not None:
        values["monthly_limit"] = options["limit"]
    elif plan is None:
        raise click.ClickException("a plan needs --limit SIZE (e.g. --limit 10GB) or --unlimited")
    if options.get("auto_topup_plan"):
        if plan is None:
            raise click.ClickException("add the plan first, then its top-up plans, then "
                                       "`capctl plan edit PLAN --auto-topup-plan NAME`")
        topup = need(store.find_topup_plan(conn, plan["id"], options["auto_topup_plan"]),
                     f"top-up plan {options['auto_topup_plan']!r} in plan {plan['name']!r}",
                     f"see: capctl topup-plan list {plan['name']!r}")
        values["auto_topup_plan_id"] = topup.id
    if options.get("overuse_price_per_gb") is not None and options["overuse_price_per_gb"] < 0:
        raise click.ClickException("--overuse-price must not be negative")
    if options.get("fixed_rate") and 0 in parse_rate(options["fixed_rate"]):
        raise click.ClickException(f"--fixed-rate {options['fixed_rate']!r}: a rate of 0 means no limit to "
                                   "RouterOS; give a rate above zero (or --action block)")
    merged = {**(plan or {}), **values}
    if merged.get("action") == "fixed" and not merged.get("fixed_rate"):
        raise click.ClickException("action fixed needs --fixed-rate (e.g. --fixed-rate 1M/1M)")
    if merged.get("action") == "reduce" and not (merged.get("normal_rate") and merged.get("reduce_percent")):
        raise click.ClickException("action reduce needs --rate (the normal speed, e.g. 10M/20M) "
                                   "and --reduce-percent (e.g. 50)")
    return values


def _save_extras(conn, plan_id: int, options: dict) -> None:
    if options.get("no_time_frames"):
        store.set_time_frames(conn, plan_id, [])
    if options.get("time_frames"):
        store.set_time_frames(conn, plan_id, list(options["time_frames"]))
    if options.get("use_topup_first") is not None:
        value = "yes" if options["use_topup_first"] else "no"
        parse_setting("use_topup_first", value)
        store.set_setting(conn, "plan", plan_id, "use_topup_first", value)


@click.group("plan")
def plan() -> None:
    """Tariff plans with a monthly data limit (CAP)."""


@plan.command("add")
@click.argument("name", type=text(100))
@plan_options(editing=False)
def plan_add(name: str, **options) -> None:
    """Add a plan.

    Example: capctl plan add "Home 10GB" --limit 10GB --action reduce --reduce-percent 50
    --rate 10M/20M --bonus 5GB --time-frame 00:00-04:00 --rollover
    """
    def work(conn):
        if is_named(store.find_plan(conn, name), name):
            raise click.ClickException(f"plan {name!r} exists already; change it with: capctl plan edit {name!r}")
        plan_id = store.add_plan(conn, name=name, **_plan_values(conn, None, options))
        _save_extras(conn, plan_id, options)
        return plan_id
    click.echo(f"plan {name!r} added (id {transact(work)})")


@plan.command("edit")
@click.argument("name")
@click.option("--name", "new_name", type=text(100), help="rename the plan")
@plan_options(editing=True)
def plan_edit(name: str, new_name: str | None, **options) -> None:
    """Change a plan; options not given stay as they are.

    Example: capctl plan edit "Home 10GB" --auto-topup-plan 5GB --trigger 10
    """
    def work(conn):
        row = plan_row(conn, name)
        values = _plan_values(conn, row, options)
        if new_name:
            values["name"] = new_name
        store.update_plan(conn, row["id"], **values)
        _save_extras(conn, row["id"], options)
    transact(work)
    click.echo(f"plan {new_name or name!r} updated")


def plan_details(conn, row: dict) -> dict:
    frames = store.time_frames(conn, row["id"])
    settings = store.setting_layers(conn, [("plan", row["id"])])[0]
    auto = None
    if row["auto_topup_plan_id"]:
        auto = next((t["name"] for t in store.list_topup_plans(conn, row["id"])
                     if t["id"] == row["auto_topup_plan_id"]), None)
    return {**row, "auto_topup_plan": auto, "time_frames": [f.describe() for f in frames],
            "settings": settings, "topup_plans": store.list_topup_plans(conn, row["id"]),
            "notifications": store.list_notification_rules(conn, row["id"])}


@plan.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def plan_show(name: str, as_json: bool) -> None:
    """Show a plan with its time frames, top-up plans and notifications.

    Example: capctl plan show "Home 10GB"
    """
    details = transact(lambda conn: plan_details(conn, plan_row(conn, name)))
    if as_json:
        echo_json(details)
        return
    limit = "unlimited" if details["monthly_limit"] is None else format_size(details["monthly_limit"])
    action = details["action"]
    if action == "fixed":
        action += f" {details['fixed_rate']}"
    elif action == "reduce":
        action += f" {details['reduce_percent']}% of {details['normal_rate']}"
    lines = [f"plan {details['name']} (id {details['id']})",
             f"  monthly limit   {limit} ({details['direction']})",
             f"  at the CAP      {action}",
             f"  normal rate     {details['normal_rate'] or '-'}",
             "  bonus           " + ("unlimited" if details["bonus_unlimited"]
                                      else format_size(details["bonus_limit"]))
             + (" in " + ", ".join(details["time_frames"]) if details["time_frames"] else " (no time frames)")
             + (", also after the CAP" if details["bonus_after_cap"] else ""),
             f"  rollover        {'yes' if details['rollover'] else 'no'}",
             f"  auto top-up     {details['auto_topup_plan'] or '-'}"
             + (f" (trigger {details['auto_topup_trigger_percent']}%)" if details["auto_topup_plan"] else ""),
             "  compensate      " + (f"yes, {details['overuse_price_per_gb']} per GB"
                                      if details["compensate"] else "no")]
    for key, value in sorted(details["settings"].items()):
        lines.append(f"  {key:<15} {value}")
    for topup in details["topup_plans"]:
        lines.append(f"  top-up plan     {topup['name']}: {format_size(topup['size'])} for {topup['price']}"
                     + (f", valid {topup['valid_months']} months" if topup["valid_months"] else "")
                     + (", on invoice" if topup["add_to_invoice"] else ""))
    for rule in details["notifications"]:
        lines.append(f"  notification    #{rule['id']} {rule['source']} {rule['threshold_percent']}% "
                     f"by {rule['channel']}: {rule['subject']}")
    click.echo("\n".join(lines))


@plan.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def plan_list(as_json: bool) -> None:
    """List plans.

    Example: capctl plan list
    """
    rows = transact(store.list_plans)
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        limit = "unlimited" if row["monthly_limit"] is None else format_size(row["monthly_limit"])
        click.echo(f"{row['id']:>4}  {row['name']:<24} {limit:>10}  {row['action']}")


@plan.command("copy-topups")
@click.argument("source")
@click.argument("target")
def plan_copy_topups(source: str, target: str) -> None:
    """Copy top-up plans from one plan to another (names the target has are kept).

    Example: capctl plan copy-topups "Home 10GB" "Home 50GB"
    """
    count = transact(lambda conn: store.copy_topup_plans(
        conn, plan_row(conn, source)["id"], plan_row(conn, target)["id"]))
    click.echo(f"{count} top-up plan(s) copied to {target!r}")


@plan.command("copy-notifications")
@click.argument("source")
@click.argument("target")
def plan_copy_notifications(source: str, target: str) -> None:
    """Copy notification rules from one plan to another.

    Example: capctl plan copy-notifications "Home 10GB" "Home 50GB"
    """
    count = transact(lambda conn: store.copy_notification_rules(
        conn, plan_row(conn, source)["id"], plan_row(conn, target)["id"]))
    click.echo(f"{count} notification rule(s) copied to {target!r}")


@click.group("topup-plan")
def topup_plan() -> None:
    """Top-up plans: data packs a plan sells."""


@topup_plan.command("add")
@click.argument("plan_name", metavar="PLAN")
@click.argument("name", type=text(100))
@click.option("--size", type=SIZE, required=True, help="data, e.g. 5GB")
@click.option("--price", type=MONEY, required=True, help="price, e.g. 10")
@click.option("--valid-months", type=click.IntRange(1, 120), help="months it stays valid (default: no expiry)")
@click.option("--category", type=text(64), default="Top-up", show_default=True, help="transaction category")
@click.option("--add-to-invoice", is_flag=True, help="bill on the next invoice instead of a transaction")
def topup_plan_add(plan_name: str, name: str, size: int, price, valid_months, category, add_to_invoice) -> None:
    """Add a top-up plan to a plan.

    Example: capctl topup-plan add "Home 10GB" 5GB --size 5GB --price 10
    """
    if size <= 0:
        raise click.ClickException("--size must be above zero")
    if price < 0:
        raise click.ClickException("--price must not be negative")

    def work(conn):
        row = plan_row(conn, plan_name)
        if is_named(store.find_topup_plan(conn, row["id"], name), name):
            raise click.ClickException(f"plan {plan_name!r} has a top-up plan {name!r} already")
        return store.add_topup_plan(conn, row["id"], name, size, price, valid_months, category, add_to_invoice)
    click.echo(f"top-up plan {name!r} added to {plan_name!r} (id {transact(work)})")


@topup_plan.command("list")
@click.argument("plan_name", metavar="PLAN")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def topup_plan_list(plan_name: str, as_json: bool) -> None:
    """List a plan's top-up plans.

    Example: capctl topup-plan list "Home 10GB"
    """
    rows = transact(lambda conn: store.list_topup_plans(conn, plan_row(conn, plan_name)["id"]))
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        validity = f"{row['valid_months']} months" if row["valid_months"] else "no expiry"
        click.echo(f"{row['id']:>4}  {row['name']:<12} {format_size(row['size']):>10}  {row['price']:>8}  "
                   f"{validity}{'  on invoice' if row['add_to_invoice'] else ''}")


COMMANDS = (plan, topup_plan)
