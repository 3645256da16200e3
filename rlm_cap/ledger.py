"""The operations on a service's data and money, composed from the pure core and the store.

Each function runs inside the caller's transaction (``store.run_in_transaction``)
and takes the time as a parameter. The FreeRADIUS module's applier, the
enforcer and ``capctl`` all change usage, buckets and money only through here,
so every path keeps the same invariants: each counted byte lands in exactly one
bucket or in the period's recorded over-use, and every change of available data
writes a history row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Connection

from . import counters, policy, store
from .periods import Period, months_after, period_at, split_by_frames
from .policy import BONUS, COMPENSATION, MONTHLY, ROLLOVER, TOPUP, TOPUP_KINDS, Plan, TopupPlan
from .settings import Settings, resolve
from .templates import render
from .units import format_size

SYSTEM = "system"


class Refused(ValueError):
    """An operation the rules forbid (over the monthly top-up limit, balance too low, ...)."""


@dataclass(frozen=True)
class Context:
    """Everything the policy needs to know about one service, loaded once per operation."""

    service: dict
    customer: dict
    plan: Plan
    settings: Settings
    rules: tuple[policy.NotificationRule, ...]

    @property
    def tz(self) -> ZoneInfo:
        return self.settings.tz

    def period(self, now: datetime) -> Period:
        return period_at(now, self.tz, self.customer["billing_day"])


def _scopes(service: dict, customer: dict) -> list[tuple[str, int | None]]:
    """Where a service's settings come from, most general first."""
    return _scopes_of(customer["partner_id"], service["plan_id"], customer["id"], service["id"])


def _scopes_of(partner_id: int | None, plan_id: int, customer_id: int, service_id: int):
    return [("global", 0), ("partner", partner_id), ("plan", plan_id), ("customer", customer_id),
            ("service", service_id)]


class ContextCache:
    """What the applier reads for every record of a service, kept for ``ttl`` seconds.

    Plan, time frames, notification rules, settings and the customer row (its
    auto top-up switch and billing day; money is always re-read under lock
    where it is charged) change rarely; the service row itself, with its CAP
    state, is never cached. An operator's change shows within ``ttl``.
    """

    def __init__(self, ttl: float = 10.0, clock=time.monotonic):
        self.ttl, self.clock = ttl, clock
        self._contexts: dict[tuple, tuple[float, Context]] = {}
        self._periods: dict[tuple[int, datetime], int] = {}

    @staticmethod
    def _key(service: dict) -> tuple:
        return service["id"], service["plan_id"], service["customer_id"]

    def _fresh(self, service: dict) -> Context | None:
        hit = self._contexts.get(self._key(service))
        if hit is not None and self.clock() - hit[0] < self.ttl:
            return replace(hit[1], service=service)
        return None

    def context(self, conn: Connection, service: dict) -> Context:
        return self.contexts(conn, [service])[service["id"]]

    def contexts(self, conn: Connection, services: list[dict]) -> dict[int, Context]:
        """The context of each service (by id); what is not cached is read in a few set-based queries."""
        found = {s["id"]: self._fresh(s) for s in services}
        missing = [s for s in services if found[s["id"]] is None]
        if missing:
            customers = store.customers_by_id(conn, [s["customer_id"] for s in missing])
            plans = {pid: (store.load_plan(conn, pid), store.load_notification_rules(conn, pid))
                     for pid in {s["plan_id"] for s in missing}}
            layers = store.settings_of(conn, [scope for s in missing
                                              for scope in _scopes(s, customers[s["customer_id"]])])
            now = self.clock()
            for service in missing:
                customer = customers[service["customer_id"]]
                plan, rules = plans[service["plan_id"]]
                settings = resolve([layers.get(scope, {}) for scope in _scopes(service, customer)])
                found[service["id"]] = ctx = Context(service, customer, plan, settings, rules)
                self._contexts[self._key(service)] = (now, ctx)
        return found

    def known_period(self, service_id: int, start: datetime) -> int | None:
        return self._periods.get((service_id, start))

    def remember_period(self, service_id: int, start: datetime, period_id: int) -> None:
        self._periods[(service_id, start)] = period_id

    def find_periods(self, conn: Connection, wanted) -> None:
        """Remember the ids of the existing periods among (context, moment) pairs, in one query."""
        keys = {(ctx.service["id"], ctx.period(now).start) for ctx, now in wanted} - self._periods.keys()
        self._periods.update(store.period_ids(conn, keys))

    def clear(self) -> None:
        """Forget everything (after a rolled-back transaction, cached ids may not exist)."""
        self._contexts.clear()
        self._periods.clear()


def load_context(conn: Connection, service: dict, cache: ContextCache | None = None) -> Context:
    return (cache or ContextCache(ttl=0)).context(conn, service)


# --------------------------------------------------------------------------- periods

def open_period(conn: Connection, ctx: Context, now: datetime) -> dict:
    """The period row containing ``now``; opens it (buckets, rollover) the first time.

    The same set-based code as the enforcer's period close, for one service;
    idempotent and safe under concurrency (keyed inserts).
    """
    period = ctx.period(now)
    row = store.find_period(conn, ctx.service["id"], period.start)
    if row is None:
        # Opening a past period (a late record) must not restore a service capped today.
        newest = not store.has_later_period(conn, ctx.service["id"], period.start)
        _open(conn, [ctx.service["id"]], period, ctx.tz, ctx.customer["billing_day"],
              ctx.settings.rollover_months, now, restore=newest)
        row = store.find_period(conn, ctx.service["id"], period.start)
    return row


def _open(conn: Connection, service_ids: list[int], period: Period, tz: ZoneInfo, billing_day: int | None,
          rollover_months: int, now: datetime, restore: bool = True) -> None:
    previous = period_at(period.start - timedelta(microseconds=1), tz, billing_day)
    until = months_after(period.start, rollover_months, tz)
    store.open_periods(conn, service_ids, period.start, period.end, previous.start, until, now, restore)


def close_periods(conn: Connection, now: datetime) -> int:
    """Open the current period of every service whose period ended: rollover, usage reset, restore.

    Set-based: services are grouped by what decides their period (time zone,
    billing day, rollover validity) and each group is opened in a few
    statements. Returns how many services were due.
    """
    due = store.services_due_for_a_period(conn, now)
    layers = store.settings_named(conn, ("timezone", "rollover_months"))
    groups: dict[tuple, list[int]] = {}
    for row in due:
        scopes = _scopes_of(row["partner_id"], row["plan_id"], row["customer_id"], row["id"])
        settings = resolve([layers.get(scope, {}) for scope in scopes])
        groups.setdefault((settings.timezone, row["billing_day"], settings.rollover_months), []).append(row["id"])
    for (zone, billing_day, rollover_months), ids in groups.items():
        tz = ZoneInfo(zone)
        _open(conn, ids, period_at(now, tz, billing_day), tz, billing_day, rollover_months, now)
    return len(due)


def record_expiries(conn: Connection, now: datetime) -> int:
    """History for top-up, rollover, transfer and bonus data that expired unused."""
    return store.record_expiries(conn, now)


# --------------------------------------------------------------------------- accounting

@dataclass(frozen=True)
class Applied:
    """What one accounting record did (for logs and tests)."""

    status: str
    service_id: int | None = None
    input_delta: int = 0
    output_delta: int = 0
    note: str | None = None
    state: str | None = None


def apply_record(conn: Connection, record: counters.AccountingRecord, keep_unknown: bool = False,
                 cache: ContextCache | None = None) -> Applied:
    """``apply_records`` for one record (sync mode, capctl simulate, tests)."""
    return apply_records(conn, [record], keep_unknown, cache)[0]


def apply_records(conn: Connection, records: list[counters.AccountingRecord], keep_unknown: bool = False,
                  cache: ContextCache | None = None) -> list[Applied]:
    """Apply a batch of accounting records in the caller's transaction.

    Session counters → deltas → buckets → CAP state → outbox, idempotent per
    record: a session's last totals make a replayed record count nothing.
    Set-based: whatever the batch size, the services, sessions and buckets
    are read in one statement each and written back in one statement each;
    only a record that may change the CAP state (``policy.settle_needed``)
    takes the per-record settle. Services are locked first, in User-Name
    order, so appliers on several FreeRADIUS nodes serialise per service.
    Accounting-On/Off splits the batch: it closes the NAS's sessions between
    the records before and after it.
    """
    results: list[Applied] = []
    segment: list[counters.AccountingRecord] = []
    for record in records:
        if record.status in (counters.ACCOUNTING_ON, counters.ACCOUNTING_OFF):
            results += _apply_segment(conn, segment, keep_unknown, cache)
            segment = []
            store.close_nas_sessions(conn, record.nas)
            results.append(Applied(record.status, note="nas-restart"))
        else:
            segment.append(record)
    return results + _apply_segment(conn, segment, keep_unknown, cache)


@dataclass
class _SessionWrite:
    """A session as the batch leaves it: row id None = to be inserted."""

    row_id: int | None
    session: counters.Session
    record: counters.AccountingRecord
    service_id: int | None
    framed_ip: str | None
    changed: bool = False


def _apply_segment(conn: Connection, records: list[counters.AccountingRecord], keep_unknown: bool,
                   cache: ContextCache | None) -> list[Applied]:
    if not records:
        return []
    services = store.services_by_username(conn, {r.username for r in records if r.username})
    wanted = [r for r in records if r.username in services or keep_unknown]
    found = store.latest_sessions(conn, {(r.nas, r.session_id, r.username) for r in wanted})
    current: dict[tuple, _SessionWrite] = {
        key: _SessionWrite(row_id, session, None, None, None) for key, (row_id, session) in found.items()}
    existing = list(current.values())  # a Start after a Stop replaces the key, not the old row's changes
    inserts: list[_SessionWrite] = []
    usage: dict[int, list[tuple[counters.AccountingRecord, counters.Step]]] = {}
    results = []
    for record in records:
        service = services.get(record.username)
        if service is None and not keep_unknown:
            results.append(Applied(record.status, note="unknown-user"))
            continue
        key = (record.nas, record.session_id, record.username)
        write = current.get(key)
        step = counters.advance(write.session if write else None, record)
        service_id = service["id"] if service else None
        if step.new_session or write is None:
            write = _SessionWrite(None, step.session, record, service_id, record.framed_ip)
            inserts.append(write)
            current[key] = write
        elif step.session != write.session or record.framed_ip:
            write.session, write.changed = step.session, True
            write.framed_ip = record.framed_ip or write.framed_ip
        if write.record is None:
            write.record = record
        if service is not None and (step.input_delta or step.output_delta):
            usage.setdefault(service_id, []).append((record, step))
        results.append(Applied(record.status, service_id, step.input_delta, step.output_delta, step.note,
                               service["cap_state"] if service else None))

    store.insert_sessions(conn, [_session_row(w) for w in inserts])
    store.update_sessions(conn, {w.row_id: (w.session, w.framed_ip) for w in existing if w.changed})
    if usage:
        states = _count_usage(conn, services, usage, cache)
        results = [r if states.get(r.service_id, r.state) == r.state else replace(r, state=states[r.service_id])
                   for r in results]
    return results


def _session_row(write: _SessionWrite) -> dict:
    record, session = write.record, write.session
    return dict(nas=record.nas, acct_session_id=record.session_id, username=record.username,
                service_id=write.service_id, input_total=session.input_total, output_total=session.output_total,
                counter_time=session.counter_time, last_time=session.last_time, started_at=session.started_at,
                closed=session.closed, framed_ip=write.framed_ip, nas_ip=record.nas_ip)


class _Writes:
    """Bucket and period increments of a batch, written in one statement each."""

    def __init__(self):
        self.buckets: dict[int, dict[str, int]] = {}
        self.periods: dict[int, dict[str, int]] = {}

    def add(self, period_id: int, consumption: policy.Consumption, bonus_ids: set[int], **usage: int) -> None:
        for bucket_id, amount in consumption.taken.items():
            columns = self.buckets.setdefault(bucket_id, {})
            columns["used"] = columns.get("used", 0) + amount
        bonus = sum(v for k, v in consumption.taken.items() if k in bonus_ids)
        columns = self.periods.setdefault(period_id, {})
        for name, amount in dict(usage, bonus_bytes=bonus, free_bytes=consumption.free,
                                 overuse_bytes=consumption.overuse).items():
            columns[name] = columns.get(name, 0) + amount

    def flush(self, conn: Connection) -> None:
        store.add_many(conn, store.buckets, self.buckets)
        store.add_many(conn, store.periods, self.periods)
        self.buckets, self.periods = {}, {}


def _count_usage(conn: Connection, services: dict[str, dict],
                 usage: dict[int, list[tuple[counters.AccountingRecord, counters.Step]]],
                 cache: ContextCache | None) -> dict[int, str]:
    """Charge the batch's deltas to buckets; returns each service's CAP state after."""
    by_id = {s["id"]: s for s in services.values()}
    earliest = min(record.time for items in usage.values() for record, _ in items)
    all_buckets = store.buckets_of(conn, list(usage), earliest)
    writes = _Writes()
    states = {}
    cache = cache or ContextCache(ttl=0)
    contexts = cache.contexts(conn, [by_id[sid] for sid in usage])
    cache.find_periods(conn, [(contexts[sid], record.time) for sid, items in usage.items() for record, _ in items])
    for sid, items in usage.items():
        ctx = contexts[sid]
        buckets = all_buckets[sid]
        # Records are in receive order, not time order: a reload must keep the
        # buckets an earlier-stamped record of this batch may still use.
        since = min(record.time for record, _ in items)
        for record, step in items:
            now = record.time
            period = ctx.period(now)
            period_id, opened = _period(conn, ctx, now, period, cache, writes)
            if opened:  # new monthly / bonus / rollover buckets; a capped service was restored
                buckets = store.load_buckets(conn, sid, since, for_update=True)
                ctx = replace(ctx, service=store.find_service(conn, sid))
            plan = ctx.plan
            counted = policy.counted_bytes(plan.direction, step.input_delta, step.output_delta)
            normal, frame = split_by_frames(counted, step.interval_start, now, plan.time_frames, ctx.tz)
            consumption = policy.consume(buckets, normal, frame, plan, ctx.settings, now)
            after = policy.with_consumption(buckets, consumption)
            capped = ctx.service["cap_state"] == policy.CAPPED
            # A late record of a period that a newer one has replaced counts there,
            # but today's CAP state belongs to the newest period: it decides nothing.
            late = any(b.kind == MONTHLY and b.valid_from > period.start for b in buckets)
            writes.add(period_id, consumption, {b.id for b in buckets if b.kind == BONUS},
                       upload_bytes=step.input_delta, download_bytes=step.output_delta, counted_bytes=counted,
                       pending_overuse_bytes=0 if capped or late else consumption.overuse)
            if late:
                after = _take_back_rollover(conn, ctx, after, consumption, now, writes)
            if not late and policy.settle_needed(plan, ctx.service["cap_state"], ctx.rules, buckets, after, now):
                writes.flush(conn)
                settle(conn, ctx, now, consumption)
                ctx = load_context(conn, store.find_service(conn, sid), cache)
                buckets = store.load_buckets(conn, sid, since, for_update=True)
            else:
                buckets = after
        states[sid] = ctx.service["cap_state"]
    writes.flush(conn)
    return states


def _take_back_rollover(conn: Connection, ctx: Context, buckets, consumption: policy.Consumption,
                        now: datetime, writes: _Writes) -> tuple:
    """A late record used monthly data that the next period already rolled over: take it back
    out of that rollover bucket, or the same bytes would be granted twice."""
    period = ctx.period(now)
    old = next((b for b in buckets if b.kind == MONTHLY and b.valid_from == period.start), None)
    rolled = next((b for b in buckets if b.kind == ROLLOVER and b.valid_from == period.end), None)
    cut = min(consumption.taken.get(old.id, 0), rolled.remaining) if old and rolled else 0
    if not cut:
        return buckets
    columns = writes.buckets.setdefault(rolled.id, {})
    columns["size"] = columns.get("size", 0) - cut
    store.add_history(conn, ctx.service["id"], now, "rollover", SYSTEM, size=-cut, bucket_id=rolled.id,
                      detail=f"late usage of {period.label}: {format_size(cut)} less rolled over")
    return tuple(replace(b, size=b.size - cut) if b.id == rolled.id else b for b in buckets)


def _period(conn: Connection, ctx: Context, now: datetime, period: Period, cache: ContextCache,
            writes: _Writes) -> tuple[int, bool]:
    """The id of ``period`` (the one containing ``now``), and whether this call opened it."""
    sid = ctx.service["id"]
    known = cache.known_period(sid, period.start)
    if known is not None:
        return known, False
    row = store.find_period(conn, sid, period.start)
    opened = row is None
    if opened:
        writes.flush(conn)  # the previous period's usage must be in before its rollover is computed
        row = open_period(conn, ctx, now)
    cache.remember_period(sid, period.start, row["id"])
    return row["id"], opened


# --------------------------------------------------------------------------- state

def account(conn: Connection, ctx: Context, now: datetime, period_row: dict) -> policy.Account:
    period = ctx.period(now)
    customer = store.find_customer(conn, ctx.customer["id"])  # money is never taken from a cache
    return policy.Account(
        buckets=store.load_buckets(conn, ctx.service["id"], now),
        overuse=period_row["pending_overuse_bytes"],
        auto_topup_enabled=bool(customer["auto_topup"]),
        topups_this_month=store.topups_in(conn, ctx.service["id"], period.start, period.end),
        balance=customer["balance"])


def settle(conn: Connection, ctx: Context, now: datetime,
           consumption: policy.Consumption | None = None) -> str:
    """Bring the service's CAP state up to date and queue what the change calls for.

    Compensation and auto top-ups are applied here, in the same transaction as
    the usage that made them due; CoA/Disconnect and notifications go to the
    outbox for the enforcer. Returns the new state.
    """
    sid = ctx.service["id"]
    period_row = open_period(conn, ctx, now)
    ctx = replace(ctx, service=store.find_service(conn, sid))  # opening a period may have restored it
    previous = ctx.service["cap_state"]
    plan = ctx.plan
    if consumption is not None and plan.compensate and consumption.overuse and consumption.remaining_before:
        _compensate(conn, ctx, consumption.overuse, period_row, now)
        period_row = store.find_period(conn, sid, period_row["period_start"])

    evaluation = policy.evaluate(plan, ctx.settings, account(conn, ctx, now, period_row), now)
    applied = 0
    while evaluation.auto_topup_due and applied < 12:  # bounded: each one is paid for
        try:
            apply_topup(conn, ctx, "auto", SYSTEM, now, plan.auto_topup_plan)
        except Refused as refusal:
            # evaluate() saw an unlocked balance; apply_topup checks the locked row.
            evaluation = replace(evaluation, state=policy.CAPPED, auto_topup_due=False,
                                 auto_topup_refused=str(refusal).removeprefix("top-up refused: "))
            break
        ctx = load_context(conn, store.find_service(conn, sid))
        period_row = store.find_period(conn, sid, period_row["period_start"])
        evaluation = policy.evaluate(plan, ctx.settings, account(conn, ctx, now, period_row), now)
        applied += 1

    for action in policy.actions_due(plan, previous, evaluation):
        if action.kind in ("compensate", "auto_topup"):
            continue  # done above, in this transaction
        store.add_action(conn, sid, action.kind, now, rate=action.rate)
        detail = f"{action.kind}" + (f" {action.rate}" if action.rate else "")
        if evaluation.auto_topup_refused:
            detail += f" (auto top-up refused: {evaluation.auto_topup_refused})"
        store.add_history(conn, sid, now, "cap_action" if action.kind != "restore" else "restore",
                          SYSTEM, detail=detail)
    if evaluation.state != previous:
        store.update_service(conn, sid, cap_state=evaluation.state, state_changed_at=now)
        if evaluation.state == policy.CAPPED and period_row["pending_overuse_bytes"]:
            # Capped now: the over-use so far stays recorded, but no later auto
            # top-up may take it (SPEC: a top-up is charged for data to come).
            store.add_period_usage(conn, period_row["id"],
                                   pending_overuse_bytes=-period_row["pending_overuse_bytes"])

    buckets = store.load_buckets(conn, sid, now)
    sent = store.sent_rule_ids(conn, sid, period_row["period_start"])
    for rule in policy.notifications_due(ctx.rules, buckets, now, sent):
        store.add_action(conn, sid, "notify", now, rule_id=rule.id,
                         dedupe_key=store.notify_key(sid, period_row["period_start"], rule.id))
    return evaluation.state


def _charge(conn: Connection, ctx: Context, amount: Decimal, category: str, description: str,
            to_invoice: bool, now: datetime) -> None:
    if not amount:
        return
    if to_invoice:
        store.add_invoice_item(conn, ctx.customer["id"], ctx.service["id"], now, amount, category, description)
    else:
        store.add_transaction(conn, ctx.customer["id"], ctx.service["id"], now, -amount, category, description)


def _describe(ctx: Context, template: str, size: int) -> str:
    # A service without a description is named by its User-Name, not by "".
    service = dict(ctx.service, description=ctx.service["description"] or ctx.service["username"])
    return render(template, size=format_size(size), service=service, customer=ctx.customer)


def _compensate(conn: Connection, ctx: Context, overuse: int, period_row: dict, now: datetime) -> None:
    sid = ctx.service["id"]
    price = (Decimal(overuse) / 10**9 * ctx.plan.overuse_price_per_gb).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP)
    bucket_id = store.add_bucket(conn, sid, COMPENSATION, overuse, now, None, "system", now, used=overuse)
    store.add_period_usage(conn, period_row["id"], overuse_bytes=-overuse,
                           pending_overuse_bytes=-min(overuse, period_row["pending_overuse_bytes"]))
    description = f"Over-usage {format_size(overuse)} for {ctx.service['description'] or ctx.service['username']}"
    _charge(conn, ctx, price, "Top-up", description, False, now)
    store.add_history(conn, sid, now, "compensation", SYSTEM, detail=description, size=overuse,
                      amount=price, bucket_id=bucket_id)


# --------------------------------------------------------------------------- top-ups, bonus, removal

ORIGINS = ("admin", "auto", "portal")


def apply_topup(conn: Connection, ctx: Context, origin: str, actor: str, now: datetime,
                topup_plan: TopupPlan | None = None, size: int | None = None,
                price: Decimal | None = None, valid_months: int | None = None) -> int:
    """Add a top-up (from a top-up plan, or a custom size/price/validity); returns its bucket id.

    Raises ``Refused`` when the monthly top-up limit or the balance check forbids it.
    An auto top-up takes the over-use recorded since the data ran out.
    """
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}")
    if topup_plan is not None:
        size, price, valid_months = topup_plan.size, topup_plan.price, topup_plan.valid_months
        category, to_invoice = topup_plan.category, topup_plan.add_to_invoice
    else:
        category, to_invoice = "Top-up", False
    if origin == "auto" and ctx.settings.issue_invoice_with_auto_topup:
        to_invoice = True
    if size is None or size <= 0:
        raise ValueError("a top-up needs a size above zero")
    price = price if price is not None else Decimal("0")
    if price < 0:
        raise ValueError("a top-up price must not be negative")
    sid = ctx.service["id"]
    customer = store.find_customer(conn, ctx.customer["id"], for_update=True)
    period_row = open_period(conn, ctx, now)
    period = ctx.period(now)
    refused = policy.topup_refusal(origin, ctx.settings, store.topups_in(conn, sid, period.start, period.end),
                                   customer["balance"], price, to_invoice)
    if refused:
        raise Refused(f"top-up refused: {refused}")

    period_row = store.find_period(conn, sid, period_row["period_start"], for_update=True)
    # The trigger value lets an auto top-up's service run past the data it had;
    # that over-use belongs to the auto top-up. An operator's or portal top-up
    # starts fresh: reduced-speed traffic while capped stays recorded over-use.
    absorbed = min(period_row["pending_overuse_bytes"], size) if origin == "auto" else 0
    until = months_after(now, valid_months, ctx.tz) if valid_months else None
    bucket_id = store.add_bucket(conn, sid, TOPUP, size, now, until, origin, now, used=absorbed,
                                 topup_plan_id=topup_plan.id if topup_plan else None)
    if absorbed:
        store.add_period_usage(conn, period_row["id"], overuse_bytes=-absorbed, pending_overuse_bytes=-absorbed)
    template = {"auto": ctx.settings.auto_topup_description, "admin": ctx.settings.admin_topup_description,
                "portal": ctx.settings.portal_topup_description}[origin]
    description = _describe(ctx, template, size)
    _charge(conn, ctx, price, category, description, to_invoice, now)
    detail = description + (f"; {format_size(absorbed)} of earlier over-use charged to it" if absorbed else "")
    store.add_history(conn, sid, now, "auto_topup" if origin == "auto" else "topup", actor, detail=detail,
                      size=size, amount=price, bucket_id=bucket_id)
    source = "auto_topup_action" if origin == "auto" else "topup_action"
    for rule in ctx.rules:
        if rule.source == source:
            store.add_action(conn, sid, "notify", now, rule_id=rule.id,
                             dedupe_key=f"notify:{sid}:bucket{bucket_id}:{rule.id}")
    if origin != "auto":
        settle(conn, load_context(conn, store.find_service(conn, sid)), now)
    return bucket_id


def add_bonus(conn: Connection, ctx: Context, size: int, valid_months: int | None, actor: str,
              now: datetime) -> int:
    """Bonus data: usable only inside the plan's time frames."""
    if size <= 0:
        raise ValueError("bonus data needs a size above zero")
    if not ctx.plan.time_frames:
        raise Refused(f"plan {ctx.plan.name!r} has no time frames: bonus data could never be used "
                      "(add one with: capctl plan edit PLAN --time-frame 00:00-04:00)")
    open_period(conn, ctx, now)
    until = months_after(now, valid_months, ctx.tz) if valid_months else None
    bucket_id = store.add_bucket(conn, ctx.service["id"], BONUS, size, now, until, "admin", now)
    store.add_history(conn, ctx.service["id"], now, "bonus", actor, size=size, bucket_id=bucket_id,
                      detail=f"bonus {format_size(size)}" + (f" valid until {until:%Y-%m-%d}" if until else ""))
    settle(conn, ctx, now)
    return bucket_id


def remove_topup(conn: Connection, ctx: Context, bucket_id: int, size: int | None, actor: str,
                 now: datetime) -> int:
    """Remove unused data of a top-up (all of it, or ``size``); returns bytes removed."""
    row = store.find_bucket(conn, bucket_id, for_update=True)
    if row is None or row["service_id"] != ctx.service["id"] or row["kind"] not in TOPUP_KINDS + (BONUS,):
        raise Refused(f"service {ctx.service['username']!r} has no top-up or bonus bucket {bucket_id} "
                      "(see: capctl usage SERVICE)")
    unused = row["size"] - row["used"]
    amount = unused if size is None else size
    if amount <= 0 or amount > unused:
        raise Refused(f"bucket {bucket_id} has {format_size(unused)} unused; cannot remove {format_size(amount)}")
    store.shrink_bucket(conn, bucket_id, row["size"] - amount)
    store.add_history(conn, ctx.service["id"], now, "removal", actor, size=-amount, bucket_id=bucket_id,
                      detail=f"removed {format_size(amount)} from {row['kind']} bucket {bucket_id}")
    settle(conn, ctx, now)
    return amount


def record_payment(conn: Connection, customer: dict, amount: Decimal, actor: str, now: datetime,
                   description: str = "Payment") -> Decimal:
    """A payment on the customer's account; returns the new balance."""
    if amount <= 0:
        raise ValueError("a payment must be above zero")
    store.add_transaction(conn, customer["id"], None, now, amount, "Payment", f"{description} ({actor})")
    return store.find_customer(conn, customer["id"])["balance"]


def change_plan(conn: Connection, ctx: Context, plan_id: int, actor: str, now: datetime) -> None:
    """Move the service to another plan, from ``now``.

    The current period's monthly limit becomes the new plan's. Unused top-up
    data stays with the service when ``transfer_usage`` is on; otherwise it is
    removed, with history.
    """
    sid = ctx.service["id"]
    period_row = open_period(conn, ctx, now)
    for bucket in store.load_buckets(conn, sid, now, for_update=True):
        if bucket.kind in TOPUP_KINDS and bucket.remaining:
            if ctx.settings.transfer_usage:
                store.add_history(conn, sid, now, "transfer", actor, size=bucket.remaining, bucket_id=bucket.id,
                                  detail=f"{format_size(bucket.remaining)} of top-up data kept on plan change")
            else:
                store.shrink_bucket(conn, bucket.id, bucket.used)
                store.add_history(conn, sid, now, "removal", actor, size=-bucket.remaining, bucket_id=bucket.id,
                                  detail="unused top-up data dropped on plan change (transfer_usage is off)")
    store.update_service(conn, sid, plan_id=plan_id)
    new = load_context(conn, store.find_service(conn, sid))
    monthly = store.period_bucket(conn, sid, MONTHLY, period_row["period_start"])
    if monthly is not None:
        store.shrink_bucket(conn, monthly["id"], new.plan.monthly_limit or monthly["used"])
    elif new.plan.monthly_limit is not None:
        store.add_bucket(conn, sid, MONTHLY, new.plan.monthly_limit, period_row["period_start"],
                         period_row["period_end"], "plan", now, period_start=period_row["period_start"])
    store.add_history(conn, sid, now, "plan_change", actor,
                      detail=f"plan {ctx.plan.name} -> {new.plan.name}")
    settle(conn, new, now)


# --------------------------------------------------------------------------- reports

@dataclass(frozen=True)
class Usage:
    service: dict
    plan: Plan
    period: dict
    state: str
    buckets: list[dict]
    evaluation: policy.Evaluation


def usage(conn: Connection, ctx: Context, now: datetime) -> Usage:
    """Usage of the current period, per bucket (opens the period if needed)."""
    period_row = open_period(conn, ctx, now)
    acc = account(conn, ctx, now, period_row)
    evaluation = policy.evaluate(ctx.plan, ctx.settings, acc, now)
    rows = [dict(r, remaining=max(r["size"] - r["used"], 0))
            for r in store.bucket_rows(conn, ctx.service["id"])
            if r["valid_until"] is None or r["valid_until"] > now]
    return Usage(ctx.service, ctx.plan, period_row, ctx.service["cap_state"], rows, evaluation)
