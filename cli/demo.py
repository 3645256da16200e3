"""``make demo``: a month of one subscriber's data cap, on the embedded SQLite default.

The operator's steps are real ``capctl`` commands; the subscriber's traffic is
fed as Accounting-Requests through ``ledger.apply_record``, the code path of the
FreeRADIUS module. Everything lands in demo-data/demo.sqlite3, so you can go on
exploring with the commands printed at the end.

    python -m cli.demo [--db-file PATH]
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from rlm_cap import counters, ledger, store
from rlm_cap.periods import period_at
from rlm_cap.units import format_size

from .common import bar
from .main import capctl

USER, NAS = "alice@isp", "192.0.2.1"


def run_capctl(db_url: str, *args: str) -> None:
    click.secho("$ capctl " + " ".join(shlex.quote(a) for a in args), fg="cyan")
    try:
        capctl.main(["--db", db_url, *args], prog_name="capctl", standalone_mode=False)
    except click.ClickException as error:
        error.show()
        raise SystemExit(1) from None


class Subscriber:
    """A simulated MikroTik session of alice: Start, then Interim-Updates."""

    def __init__(self, engine, start: datetime):
        self.engine, self.start, self.down, self.up = engine, start, 0, 0
        self.send(counters.START, start)

    def send(self, status: str, at: datetime) -> ledger.Applied:
        record = counters.AccountingRecord(
            status, NAS, "81a00001", USER, at, session_time=int((at - self.start).total_seconds()),
            input_octets=self.up % 2**32, input_gigawords=self.up >> 32,
            output_octets=self.down % 2**32, output_gigawords=self.down >> 32)
        return store.run_in_transaction(self.engine, lambda conn: ledger.apply_record(conn, record))

    def use(self, begin: datetime, end: datetime, download: int, upload: int) -> ledger.Applied:
        """Traffic between ``begin`` and ``end``: an interim at each end, as a NAS's
        frequent interims would report it (the split by time frames uses the interval)."""
        self.send(counters.INTERIM, begin)
        self.down += download
        self.up += upload
        return self.send(counters.INTERIM, end)


def show_day(engine, at: datetime, what: str, seen_actions: set[int]) -> None:
    with engine.begin() as conn:
        service = store.find_service(conn, USER)
        ctx = ledger.load_context(conn, service)
        report = ledger.usage(conn, ctx, at)
        queued = [a for a in store.list_actions(conn, service["id"]) if a["id"] not in seen_actions]
    evaluation = report.evaluation
    click.echo(f"{at:%a %d %b %H:%M}  {what:<34} {bar(evaluation.normal_used, evaluation.normal_size)} "
               f"{format_size(evaluation.normal_used):>8} of {format_size(evaluation.normal_size):<6} "
               f"bonus {format_size(evaluation.bonus_used):>6}  {service['cap_state']}")
    for action in queued:
        seen_actions.add(action["id"])
        if action["kind"] == "notify":
            text = "notification queued: the 80% email"
        elif action["kind"] == "restore":
            text = f"CoA queued: restore Mikrotik-Rate-Limit {action['rate']}"
        else:
            text = f"CAP reached -> CoA queued: Mikrotik-Rate-Limit {action['rate']}"
        click.secho(f"{'':>14}-> {text}", fg="yellow")


@click.command()
@click.option("--db-file", default="demo-data/demo.sqlite3", show_default=True, type=click.Path())
def main(db_file: str) -> None:
    path = Path(db_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    db_url = f"sqlite:///{path}"
    click.secho("rlm_cap demo: one subscriber's month on a 10 GB plan (SQLite, no server needed)\n", bold=True)

    run_capctl(db_url, "db", "init")
    run_capctl(db_url, "plan", "add", "Home 10GB", "--limit", "10GB", "--action", "reduce",
               "--reduce-percent", "80", "--rate", "10M/20M", "--bonus", "5GB",
               "--time-frame", "00:00-04:00", "--rollover")
    run_capctl(db_url, "topup-plan", "add", "Home 10GB", "5GB", "--size", "5GB", "--price", "10")
    run_capctl(db_url, "topup-plan", "add", "Home 10GB", "10GB", "--size", "10GB", "--price", "15",
               "--valid-months", "2")
    run_capctl(db_url, "notification", "add", "Home 10GB", "--source", "monthly", "--threshold", "80",
               "--subject", "80% of your data used",
               "--body", "Hello {{ customer.name }}, you have used 80% of {{ service.description }}.")
    run_capctl(db_url, "customer", "add", "alice", "--email", "alice@example.net", "--balance", "30")
    run_capctl(db_url, "service", "add", USER, "--customer", "alice", "--plan", "Home 10GB",
               "--description", "Home internet")

    engine = store.make_engine(db_url)
    period = period_at(datetime.now(timezone.utc), timezone.utc)
    day = period.start + timedelta(days=1)
    click.secho("\nThe NAS reports alice's traffic (Accounting Start, then Interim-Updates):", bold=True)
    alice = Subscriber(engine, day + timedelta(hours=18))
    GB = 10**9
    seen: set[int] = set()
    story = [
        (day + timedelta(hours=19), day + timedelta(hours=22), 3 * GB, GB // 5, "evening streaming, 3 GB"),
        (day + timedelta(days=1, hours=19), day + timedelta(days=1, hours=22), 3 * GB, GB // 5,
         "evening streaming, 3 GB"),
        (day + timedelta(days=2, hours=1), day + timedelta(days=2, hours=3), 2 * GB, GB // 10,
         "night download 01:00-03:00, 2 GB"),
        (day + timedelta(days=2, hours=19), day + timedelta(days=2, hours=21), 2 * GB, GB // 10,
         "evening streaming, 2 GB"),
        (day + timedelta(days=3, hours=19), day + timedelta(days=3, hours=21), 2 * GB, GB // 10,
         "evening streaming, 2 GB"),
    ]
    for begin, end, down, up, what in story:
        alice.use(begin, end, down, up)
        show_day(engine, end, what, seen)

    click.secho("\nalice calls support; the operator adds a 5 GB top-up (now, by the real clock):", bold=True)
    run_capctl(db_url, "topup", "add", USER, "--plan", "5GB")
    after = max(datetime.now(timezone.utc), story[-1][1]) + timedelta(minutes=5)
    if after.hour >= 23 or after.hour < 4:  # keep this step out of the 00:00-04:00 bonus frame
        after = (after + timedelta(hours=2)).replace(hour=4, minute=5)
    show_day(engine, after, "after the top-up", seen)
    alice.use(after, after + timedelta(hours=1), GB, GB // 10)
    show_day(engine, after + timedelta(hours=1), "1.1 GB more, from the top-up", seen)

    click.secho("\nWhat the operator sees:", bold=True)
    run_capctl(db_url, "usage", USER)
    run_capctl(db_url, "history", USER, "--all")
    run_capctl(db_url, "customer", "show", "alice")
    click.secho("\nWhat would 100 MB past the CAP do on this plan? (simulation, no live data touched)", bold=True)
    run_capctl(db_url, "simulate", "--plan", "Home 10GB", "--after-cap", "100MB")
    engine.dispose()
    click.secho(f"\nExplore further: .venv/bin/capctl --db {db_url} plan show 'Home 10GB'", bold=True)


if __name__ == "__main__":
    sys.exit(main())
