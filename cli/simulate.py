"""capctl simulate: what a plan would do with a usage scenario, touching no live data."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import click

from rlm_cap import simulate as simulation, store
from rlm_cap.settings import resolve

from .common import MONEY, SIZE, echo_json, now, plan_row, transact

INTERVALS = {"m": 60, "h": 3600, "d": 86400}


def _interval(text: str) -> timedelta:
    unit = text[-1:].lower()
    number = text[:-1]
    if unit not in INTERVALS or not (number.isascii() and number.isdigit()) or not number.strip("0"):
        raise click.BadParameter(f"{text[:40]!r}: write it like 30m, 1h or 1d", param_hint="--interval")
    if len(number.lstrip("0")) > 7 or int(number) * INTERVALS[unit] > 366 * 86400:
        raise click.BadParameter(f"{text[:40]!r}: at most a year between steps", param_hint="--interval")
    return timedelta(seconds=int(number) * INTERVALS[unit])


@click.command("simulate")
@click.option("--plan", "plan_name", required=True, help="plan to simulate")
@click.option("--use", "uses", type=SIZE, multiple=True, help="downloaded in one step (repeat for more steps)")
@click.option("--after-cap", type=SIZE, help="use the whole monthly limit, then this much more")
@click.option("--file", "scenario", type=click.File("r"),
              help="scenario lines: '2026-11-03T10:00 1.5GB [upload]' (time in the plan's zone)")
@click.option("--start", help="time of the first step, e.g. 2026-11-03T10:00 (default: now)")
@click.option("--interval", default="1h", show_default=True, help="time between --use steps: 30m, 1h, 1d")
@click.option("--balance", type=MONEY, default="0", show_default=True, help="the subscriber's balance")
@click.option("--auto-topup/--no-auto-topup", default=True, show_default=True,
              help="the subscriber's own auto top-up switch")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def simulate(plan_name, uses, after_cap, scenario, start, interval, balance, auto_topup, as_json) -> None:
    """Show the timeline of states, CAP actions, top-ups and notifications for a scenario.

    Example (the Splynx one): what happens if a subscriber downloads 100 MB after the CAP is used?

        capctl simulate --plan "Home 10GB" --after-cap 100MB
    """
    step_gap = _interval(interval)

    def work(conn):
        plan = plan_row(conn, plan_name)
        settings = resolve(store.setting_layers(conn, [("global", 0), ("plan", plan["id"])]))
        tz = settings.tz
        try:
            first = datetime.fromisoformat(start) if start else now()
        except ValueError:
            raise click.BadParameter(f"{start!r} is not a time like 2026-11-03T10:00",
                                     param_hint="--start") from None
        if not 1970 <= first.year <= 9000:  # the run goes on for months: keep it inside datetime's range
            raise click.BadParameter(f"{start!r}: the year must be 1970-9000", param_hint="--start")
        if first.tzinfo is None:
            first = first.replace(tzinfo=tz)
        if scenario is not None:
            steps = [simulation.parse_step(line, tz) for line in scenario
                     if line.strip() and not line.lstrip().startswith("#")]
        else:
            sizes = list(uses)
            if after_cap is not None:
                if plan["monthly_limit"] is None:
                    raise click.ClickException(f"plan {plan_name!r} has no CAP: --after-cap does not apply")
                sizes = [plan["monthly_limit"], after_cap]
            if not sizes:
                raise click.ClickException("give a scenario: --use SIZE (repeatable), --after-cap SIZE or --file F")
            if not start:  # keep the default run away from the bonus time frames at night
                first = datetime.combine(first.astimezone(tz).date(), time(12), tzinfo=tz)
            steps = [simulation.Step(first + i * step_gap, size) for i, size in enumerate(sizes)]
        return simulation.run(conn, plan["id"], steps, balance, auto_topup)
    lines = transact(work)
    if as_json:
        echo_json([line.__dict__ for line in lines])
        return
    click.echo(f"simulation of plan {plan_name!r} (no live data touched)")
    for line in lines:
        click.echo(simulation.format_line(line))


COMMANDS = (simulate,)
