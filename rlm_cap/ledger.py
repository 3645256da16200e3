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


def effective_settings(conn: Connection, service: dict, customer: dict) -> Settings:
    return resolve(store.setting_layers(conn, [
        ("global", 0), ("partner", customer["partner_id"]), ("plan", service["plan_id"]),
        ("customer", customer["id"]), ("service", service["id"])]))


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

    def context(self, conn: Connection, service: dict) -> Context:
        key = (service["id"], service["plan_id"], service["customer_id"])
        hit = self._contexts.get(key)
        if hit is not None and self.clock() - hit[0] < self.ttl:
            return replace(hit[1], service=service)
        ctx = _load_context(conn, service)
        self._contexts[key] = (self.clock(), ctx)
        return ctx

    def period_id(self, conn: Connection, ctx: Context, now: datetime) -> int:
        key = (ctx.service["id"], ctx.period(now).start)
        if key not in self._periods:
            self._periods[key] = open_period(conn, ctx, now)["id"]
        return self._periods[key]

    def clear(self) -> None:
        """Forget everything (after a rolled-back transaction, cached ids may not exist)."""
        self._contexts.clear()
        self._periods.clear()


def load_context(conn: Connection, service: dict, cache: ContextCache | None = None) -> Context:
    return cache.context(conn, service) if cache is not None else _load_context(conn, service)


def _load_context(conn: Connection, service: dict) -> Context:
    customer = store.find_customer(conn, service["customer_id"])
    return Context(service, customer, store.load_plan(conn, service["plan_id"]),
                   effective_settings(conn, service, customer),
                   store.load_notification_rules(conn, service["plan_id"]))


# --------------------------------------------------------------------------- periods

def open_period(conn: Connection, ctx: Context, now: datetime) -> dict:
    """The period row containing ``now``; opens it (buckets, rollover) the first time.

    Idempotent and safe under concurrency: the period row's unique key decides
    which transaction opens it.
    """
    period = ctx.period(now)
    sid = ctx.service["id"]
    row = store.find_period(conn, sid, period.start)
    if row is not None:
        return row
    if store.insert_period(conn, sid, period.start, period.end):
        plan = ctx.plan
        if plan.monthly_limit is not None:
            store.add_bucket(conn, sid, MONTHLY, plan.monthly_limit, period.start, period.end, "plan",
                             now, period_start=period.start)
            if plan.bonus_limit and not plan.bonus_unlimited:
                store.add_bucket(conn, sid, BONUS, plan.bonus_limit, period.start, period.end, "plan",
                                 now, period_start=period.start)
        _roll_over(conn, ctx, period, now)
    return store.find_period(conn, sid, period.start)


def _roll_over(conn: Connection, ctx: Context, period: Period, now: datetime) -> None:
    previous = period_at(period.start - timedelta(microseconds=1), ctx.tz, ctx.customer["billing_day"])
    sid = ctx.service["id"]
    before = store.find_period(conn, sid, previous.start)
    if before is None:
        return
    store.close_period(conn, before["id"], now)
    monthly = store.period_bucket(conn, sid, MONTHLY, previous.start)
    unused = (monthly["size"] - monthly["used"]) if monthly else 0
    if ctx.plan.rollover and unused > 0:
        until = months_after(period.start, ctx.settings.rollover_months, ctx.tz)
        bucket_id = store.add_bucket(conn, sid, ROLLOVER, unused, period.start, until, "system", now,
                                     period_start=period.start)
        store.add_history(conn, sid, period.start, "rollover", SYSTEM, size=unused, bucket_id=bucket_id,
                          detail=f"unused {format_size(unused)} of {previous.label} valid until {until:%Y-%m-%d}")


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
    """Apply one accounting record: session counters → deltas → buckets → CAP state → outbox.

    Idempotent: the session's last totals make a replayed record count nothing.
    The service row is locked first, so concurrent appliers (two FreeRADIUS
    nodes) serialise per service.
    """
    if record.status in (counters.ACCOUNTING_ON, counters.ACCOUNTING_OFF):
        store.close_nas_sessions(conn, record.nas)
        return Applied(record.status, note="nas-restart")
    service = store.find_service(conn, record.username, for_update=True) if record.username else None
    if service is not None and service["username"] != record.username:
        service = None  # a numeric User-Name must not match a service by id
    if service is None and not keep_unknown:
        return Applied(record.status, note="unknown-user")

    found = store.find_session(conn, record.nas, record.session_id, record.username)
    step = counters.advance(found[1] if found else None, record)
    service_id = service["id"] if service else None
    if step.new_session or found is None:
        store.insert_session(conn, record, step.session, service_id)
    elif step.session != found[1] or record.framed_ip:
        store.save_session(conn, found[0], step.session, record)

    if service is None:
        return Applied(record.status, None, step.input_delta, step.output_delta, step.note)
    state = service["cap_state"]
    if step.input_delta or step.output_delta:
        state = _count_usage(conn, load_context(conn, service, cache), step, record.time, cache)
    return Applied(record.status, service_id, step.input_delta, step.output_delta, step.note, state)


def _count_usage(conn: Connection, ctx: Context, step: counters.Step, now: datetime,
                 cache: ContextCache | None = None) -> str:
    plan = ctx.plan
    period_id = cache.period_id(conn, ctx, now) if cache is not None else open_period(conn, ctx, now)["id"]
    counted = policy.counted_bytes(plan.direction, step.input_delta, step.output_delta)
    normal, frame = split_by_frames(counted, step.interval_start, now, plan.time_frames, ctx.tz)
    buckets = store.load_buckets(conn, ctx.service["id"], now, for_update=True)
    consumption = policy.consume(buckets, normal, frame, plan, ctx.settings, now)
    store.add_used(conn, consumption.taken)
    bonus_ids = {b.id for b in buckets if b.kind == BONUS}
    store.add_period_usage(conn, period_id, upload_bytes=step.input_delta,
                           download_bytes=step.output_delta, counted_bytes=counted,
                           bonus_bytes=sum(v for k, v in consumption.taken.items() if k in bonus_ids),
                           free_bytes=consumption.free, overuse_bytes=consumption.overuse,
                           pending_overuse_bytes=0 if ctx.service["cap_state"] == policy.CAPPED
                           else consumption.overuse)
    after = policy.with_consumption(buckets, consumption)
    if not policy.settle_needed(plan, ctx.service["cap_state"], ctx.rules, buckets, after, now):
        return ctx.service["cap_state"]
    return settle(conn, ctx, now, consumption)


# --------------------------------------------------------------------------- state

def account(conn: Connection, ctx: Context, now: datetime, period_row: dict) -> policy.Account:
    period = ctx.period(now)
    return policy.Account(
        buckets=store.load_buckets(conn, ctx.service["id"], now),
        overuse=period_row["pending_overuse_bytes"],
        auto_topup_enabled=bool(ctx.customer["auto_topup"]),
        topups_this_month=store.topups_in(conn, ctx.service["id"], period.start, period.end),
        balance=ctx.customer["balance"])


def settle(conn: Connection, ctx: Context, now: datetime,
           consumption: policy.Consumption | None = None) -> str:
    """Bring the service's CAP state up to date and queue what the change calls for.

    Compensation and auto top-ups are applied here, in the same transaction as
    the usage that made them due; CoA/Disconnect and notifications go to the
    outbox for the enforcer. Returns the new state.
    """
    sid = ctx.service["id"]
    period_row = open_period(conn, ctx, now)
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
