"""Run a plan against a usage scenario without touching live data.

The simulation copies the plan (with its top-up plans, time frames,
notification rules and the global and plan settings) into a private in-memory
SQLite database and feeds the scenario through ``ledger.apply_record`` — the
very code the FreeRADIUS module runs — as one subscriber's session. What it
returns is what would happen: usage, states, CAP actions, top-ups and
notifications, step by step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.pool import StaticPool

from . import counters, ledger, store
from .units import format_size, parse_size

USERNAME = "simulated"
NAS = "simulator"


@dataclass(frozen=True)
class Step:
    """Traffic of the subscriber up to ``at`` since the step before."""

    at: datetime
    download: int
    upload: int = 0


@dataclass
class Line:
    at: datetime
    download: int
    upload: int
    used: int
    available: int
    state: str
    events: list[str] = field(default_factory=list)


def parse_step(text: str, tz) -> Step:
    """``'2026-11-03T10:00 1.5GB [100MB]'`` → Step (time in ``tz`` unless it has an offset)."""
    parts = text.split()
    if len(parts) not in (2, 3):
        raise ValueError(f"not a scenario line: {text!r} (write: 2026-11-03T10:00 1.5GB [upload])")
    try:
        at = datetime.fromisoformat(parts[0])
    except ValueError:
        raise ValueError(f"not a time: {parts[0]!r} (write it like 2026-11-03T10:00)") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=tz)
    return Step(at, parse_size(parts[1]), parse_size(parts[2]) if len(parts) == 3 else 0)


def _copy(source, target, table, where) -> None:
    rows = [dict(r) for r in source.execute(select(table).where(where)).mappings()]
    if rows:
        target.execute(table.insert(), rows)


def run(source_conn, plan_id: int, steps: list[Step], balance: Decimal = Decimal("0"),
        auto_topup: bool = True) -> list[Line]:
    """Simulate ``steps`` for one new subscriber of plan ``plan_id`` (read from ``source_conn``)."""
    if not steps:
        raise ValueError("a scenario needs at least one step")
    if any(b.at <= a.at for a, b in zip(steps, steps[1:])):
        raise ValueError("scenario steps must be in time order")
    engine = store.make_engine("sqlite://", poolclass=StaticPool)
    store.create_schema(engine)
    start = steps[0].at - timedelta(minutes=1)
    with engine.begin() as conn:
        _copy(source_conn, conn, store.plans, store.plans.c.id == plan_id)
        for table in (store.plan_time_frames, store.topup_plans, store.notification_rules):
            _copy(source_conn, conn, table, table.c.plan_id == plan_id)
        _copy(source_conn, conn, store.settings,
              ((store.settings.c.scope == "global") & (store.settings.c.scope_id == 0))
              | ((store.settings.c.scope == "plan") & (store.settings.c.scope_id == plan_id)))
        customer_id = store.add_customer(conn, USERNAME, start, balance=balance, auto_topup=auto_topup)
        store.add_service(conn, customer_id, plan_id, USERNAME, "simulated service", start, "ok")
        ledger.apply_record(conn, counters.AccountingRecord(counters.START, NAS, "1", USERNAME, start))

    lines: list[Line] = []
    down = up = 0
    seen_history = seen_actions = 0
    for step in steps:
        down, up = down + step.download, up + step.upload
        record = counters.AccountingRecord(
            counters.INTERIM, NAS, "1", USERNAME, step.at,
            input_octets=up % counters.GIGAWORD, input_gigawords=up // counters.GIGAWORD,
            output_octets=down % counters.GIGAWORD, output_gigawords=down // counters.GIGAWORD,
            session_time=int((step.at - start).total_seconds()))
        with engine.begin() as conn:
            ledger.apply_record(conn, record)
            service = store.find_service(conn, USERNAME)
            ctx = ledger.load_context(conn, service)
            report = ledger.usage(conn, ctx, step.at)
            sid = service["id"]
            events = []
            for row in store.list_history(conn, sid)[seen_history:]:
                events.append(_describe_history(row))
            for row in store.list_actions(conn, sid)[seen_actions:]:
                events.append(_describe_action(row, ctx.rules))
            seen_history = len(store.list_history(conn, sid))
            seen_actions = len(store.list_actions(conn, sid))
        evaluation = report.evaluation
        lines.append(Line(step.at, step.download, step.upload, evaluation.normal_used,
                          evaluation.normal_size, report.service["cap_state"], events))
    engine.dispose()
    return lines


def _describe_history(row: dict) -> str:
    if row["kind"] in ("cap_action", "restore"):
        return f"CAP action: {row['detail']}"
    amount = f", {row['amount']}" if row["amount"] else ""
    return f"{row['kind'].replace('_', ' ')}: {row['detail']}{amount}"


def _describe_action(row: dict, rules) -> str:
    if row["kind"] == "notify":
        rule = next((r for r in rules if r.id == row["rule_id"]), None)
        what = f"{rule.source} {rule.threshold_percent}% via {rule.channel}: {rule.subject!r}" if rule else ""
        return f"notification {what}"
    target = "Disconnect-Request" if row["kind"] == "block" else "CoA-Request"
    return f"{target} to the NAS" + (f" (rate {row['rate']})" if row["rate"] else "")


def format_line(line: Line) -> str:
    traffic = f"+{format_size(line.download)}" + (f" / up {format_size(line.upload)}" if line.upload else "")
    head = (f"{line.at:%Y-%m-%d %H:%M}  {traffic:<16} used {format_size(line.used)} of "
            f"{format_size(line.available)}  state {line.state}")
    return "\n".join([head] + [f"    -> {event}" for event in line.events])
