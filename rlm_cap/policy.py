"""The CAP policy engine: buckets, consumption, state and the actions due.

Pure: every function takes the plan, the effective settings, the service's
buckets and usage, and the time, and returns values. FreeRADIUS, the enforcer,
``capctl simulate`` and the tests all evaluate CAP with this code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from .periods import TimeFrame, in_frame
from .settings import Settings

DIRECTIONS = ("up+down", "up", "down")
ACTIONS = ("block", "fixed", "reduce")
OK, CAPPED, UNLIMITED = "ok", "capped", "unlimited"

MONTHLY, ROLLOVER, TOPUP, TRANSFER, COMPENSATION, BONUS = (
    "monthly", "rollover", "topup", "transfer", "compensation", "bonus")
BUCKET_KINDS = (MONTHLY, ROLLOVER, TOPUP, TRANSFER, COMPENSATION, BONUS)
TOPUP_KINDS = (TOPUP, TRANSFER, COMPENSATION)  # bought or moved data, consumed as top-ups
NORMAL_KINDS = (MONTHLY, ROLLOVER) + TOPUP_KINDS

NOTIFICATION_SOURCES = ("monthly", "total", "topup", "topup_action", "auto_topup_action")
THRESHOLD_SOURCES = ("monthly", "total", "topup")
CHANNELS = ("email", "sms", "both")


@dataclass(frozen=True)
class TopupPlan:
    id: int
    name: str
    size: int
    price: Decimal
    valid_months: int | None = None  # None = never expires
    category: str = "Top-up"
    add_to_invoice: bool = False


@dataclass(frozen=True)
class Plan:
    id: int
    name: str
    monthly_limit: int | None  # None = no CAP (unlimited)
    direction: str = "up+down"
    action: str = "block"
    fixed_rate: str | None = None  # e.g. "1M/1M" for action 'fixed'
    reduce_percent: int = 0  # for action 'reduce'
    normal_rate: str | None = None  # e.g. "10M/20M": the plan's speed, base of 'reduce'
    bonus_limit: int = 0
    bonus_unlimited: bool = False
    bonus_after_cap: bool = False
    time_frames: tuple[TimeFrame, ...] = ()
    rollover: bool = False
    auto_topup_plan: TopupPlan | None = None
    auto_topup_trigger_percent: int = 0
    compensate: bool = False
    overuse_price_per_gb: Decimal = Decimal("0")

    def rate_when_capped(self) -> str | None:
        if self.action == "fixed":
            return self.fixed_rate
        if self.action == "reduce" and self.normal_rate:
            return reduce_rate(self.normal_rate, self.reduce_percent)
        return None


@dataclass(frozen=True, slots=True)
class Bucket:
    id: int
    kind: str
    size: int
    used: int
    valid_from: datetime
    valid_until: datetime | None = None  # None = valid until used

    @property
    def remaining(self) -> int:
        return max(self.size - self.used, 0)

    def active(self, now: datetime) -> bool:
        return self.valid_from <= now and (self.valid_until is None or now < self.valid_until)


_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kKMG]?)$")
_RATE_FACTORS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}


def _format_rate(bits: int) -> str:
    for suffix, factor in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if bits >= factor and bits % factor == 0:
            return f"{bits // factor}{suffix}"
    if bits >= 10**3:
        return f"{bits // 10**3}k"
    return str(bits)


def parse_rate(rate: str) -> tuple[int, int]:
    """``'10M/20M'`` → (10_000_000, 20_000_000) bits/s (rx = subscriber upload, tx)."""
    first = rate.strip().split()[0] if rate.strip() else ""
    parts = first.split("/")
    if len(parts) not in (1, 2):
        raise ValueError(f"not a rate: {rate!r} (write it like 10M/20M)")
    values = []
    for part in parts:
        match = _RATE.match(part)
        if not match:
            raise ValueError(f"not a rate: {rate!r} (write it like 10M/20M, k=1000, M=1000000)")
        values.append(int(Decimal(match.group(1)) * _RATE_FACTORS[match.group(2)]))
    return values[0], values[-1]


def reduce_rate(rate: str, percent: int) -> str:
    """``reduce_rate('10M/20M', 50)`` → ``'5M/10M'`` (MikroTik rx/tx).

    A rate of 0 means *no limit* to RouterOS, so the result is never below 1
    bit/s, and 100 % is refused: that is the action ``block``.
    """
    if not 0 <= percent < 100:
        raise ValueError(f"reduce percent must be 0-99 (100 % is the action block), not {percent}")
    rx, tx = parse_rate(rate)
    keep = 100 - percent
    return f"{_format_rate(max(rx * keep // 100, 1))}/{_format_rate(max(tx * keep // 100, 1))}"


def counted_bytes(direction: str, upload: int, download: int) -> int:
    if direction == "up+down":
        return upload + download
    if direction == "up":
        return upload
    if direction == "down":
        return download
    raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")


def _expiry_key(bucket: Bucket) -> tuple:
    return (bucket.valid_until is None, bucket.valid_until or bucket.valid_from, bucket.id)


def normal_order(buckets: tuple[Bucket, ...] | list[Bucket], now: datetime,
                 use_topup_first: bool) -> list[Bucket]:
    """Active normal buckets in consumption order.

    Default: monthly → rollover (oldest first) → top-ups (soonest expiry first).
    ``use_topup_first``: top-ups → monthly → rollover.
    """
    active = [b for b in buckets if b.active(now)]
    monthly = sorted((b for b in active if b.kind == MONTHLY), key=lambda b: (b.valid_from, b.id))
    rollover = sorted((b for b in active if b.kind == ROLLOVER), key=lambda b: (b.valid_from, b.id))
    topups = sorted((b for b in active if b.kind in TOPUP_KINDS), key=_expiry_key)
    return topups + monthly + rollover if use_topup_first else monthly + rollover + topups


def bonus_order(buckets, now: datetime) -> list[Bucket]:
    return sorted((b for b in buckets if b.kind == BONUS and b.active(now)), key=_expiry_key)


@dataclass(frozen=True, slots=True)
class Consumption:
    """Where one delta went: bytes per bucket id, over-use, and free bonus bytes."""

    taken: dict[int, int] = field(default_factory=dict)
    overuse: int = 0
    free: int = 0  # counted against no limit: an unlimited plan, or an unlimited bonus time frame
    remaining_before: int = 0  # normal data left before this delta

    @property
    def total(self) -> int:
        return sum(self.taken.values()) + self.overuse + self.free


def consume(buckets, normal_bytes: int, frame_bytes: int, plan: Plan,
            settings: Settings, now: datetime) -> Consumption:
    """Charge counted bytes to buckets. ``normal + frame == result.total`` always."""
    if normal_bytes < 0 or frame_bytes < 0:
        raise ValueError("bytes to consume must not be negative")
    if plan.monthly_limit is None:  # no CAP: nothing to charge, and no over-use either
        return Consumption({}, 0, normal_bytes + frame_bytes, 0)
    normal = normal_order(buckets, now, settings.use_topup_first)
    remaining_before = sum(b.remaining for b in normal)
    taken: dict[int, int] = {}
    free = 0

    if frame_bytes:
        if plan.bonus_unlimited:
            free, frame_bytes = frame_bytes, 0
        elif remaining_before > 0 or plan.bonus_after_cap:
            frame_bytes = _take(bonus_order(buckets, now), frame_bytes, taken)
        # Bonus left unused (or not usable once the CAP is reached) counts as normal data.
        normal_bytes += frame_bytes

    overuse = _take(normal, normal_bytes, taken)
    return Consumption(taken, overuse, free, remaining_before)


def _take(ordered: list[Bucket], amount: int, taken: dict[int, int]) -> int:
    for bucket in ordered:
        if amount == 0:
            break
        part = min(bucket.remaining, amount)
        if part:
            taken[bucket.id] = taken.get(bucket.id, 0) + part
            amount -= part
    return amount


def with_consumption(buckets, consumption: Consumption) -> tuple[Bucket, ...]:
    taken = consumption.taken
    return tuple(replace(b, used=b.used + taken[b.id]) if b.id in taken else b for b in buckets)


def topup_refusal(origin: str, settings: Settings, topups_this_month: dict[str, int],
                  balance: Decimal, price: Decimal, to_invoice: bool) -> str | None:
    """Why a top-up may not be applied now, or None.

    ``origin``: 'auto', 'admin' or 'portal'; ``topups_this_month`` counts
    top-ups by origin in the current calendar month.
    """
    limit = settings.max_topups_per_month
    if limit:
        if settings.limitation_type == "all":
            count = sum(topups_this_month.values())
        elif settings.limitation_type == "auto":
            count = topups_this_month.get("auto", 0) if origin == "auto" else -1
        else:  # manual: operator and portal top-ups
            count = (-1 if origin == "auto" else
                     topups_this_month.get("admin", 0) + topups_this_month.get("portal", 0))
        if count >= limit:
            return f"the limit of {limit} top-ups per month is reached ({count} this month)"
    if settings.check_balance and not to_invoice and price > balance:
        return f"balance {balance} is below the price {price}"
    return None


@dataclass(frozen=True)
class Account:
    """The service's data and money, as the policy needs them."""

    buckets: tuple[Bucket, ...]
    # Over-use since the data ran out while the service was not capped: what the
    # auto top-up trigger value measures and what an auto top-up takes over.
    # Traffic while capped (at reduced speed) is never charged to a later top-up.
    overuse: int = 0
    auto_topup_enabled: bool = False  # the customer's own switch
    topups_this_month: dict[str, int] = field(default_factory=dict)
    balance: Decimal = Decimal("0")


@dataclass(frozen=True)
class Evaluation:
    state: str
    normal_size: int
    normal_used: int
    bonus_size: int
    bonus_used: int
    in_frame: bool
    auto_topup_due: bool = False
    auto_topup_refused: str | None = None

    @property
    def normal_remaining(self) -> int:
        return max(self.normal_size - self.normal_used, 0)


def evaluate(plan: Plan, settings: Settings, account: Account, now: datetime) -> Evaluation:
    """The service's CAP state at ``now``."""
    normal = normal_order(account.buckets, now, settings.use_topup_first)
    bonus = bonus_order(account.buckets, now)
    frame = in_frame(now, plan.time_frames, ZoneInfo(settings.timezone)) if plan.time_frames else False
    sizes = dict(normal_size=sum(b.size for b in normal), normal_used=sum(min(b.used, b.size) for b in normal),
                 bonus_size=sum(b.size for b in bonus), bonus_used=sum(min(b.used, b.size) for b in bonus),
                 in_frame=frame)
    if plan.monthly_limit is None:
        return Evaluation(UNLIMITED, **sizes)
    if sum(b.remaining for b in normal) > 0:
        return Evaluation(OK, **sizes)
    if frame and plan.bonus_after_cap and (plan.bonus_unlimited or sum(b.remaining for b in bonus) > 0):
        return Evaluation(OK, **sizes)

    topup = plan.auto_topup_plan
    if topup is not None and settings.auto_topup and account.auto_topup_enabled:
        to_invoice = topup.add_to_invoice or settings.issue_invoice_with_auto_topup
        refused = topup_refusal("auto", settings, account.topups_this_month,
                                account.balance, topup.price, to_invoice)
        if refused is None:
            trigger = topup.size * plan.auto_topup_trigger_percent // 100
            # Within the trigger value the service keeps running on over-use.
            return Evaluation(OK, auto_topup_due=account.overuse >= trigger, **sizes)
        return Evaluation(CAPPED, auto_topup_refused=refused, **sizes)
    return Evaluation(CAPPED, **sizes)


@dataclass(frozen=True)
class Action:
    """Something the enforcer must do for a service because its state changed."""

    kind: str  # 'block', 'fixed', 'reduce', 'restore', 'auto_topup', 'compensate'
    rate: str | None = None
    size: int = 0


def actions_due(plan: Plan, previous_state: str, evaluation: Evaluation,
                consumption: Consumption | None = None) -> list[Action]:
    """The actions a state change calls for, in the order they must happen."""
    actions = []
    if (consumption is not None and plan.compensate and consumption.overuse
            and consumption.remaining_before > 0):
        actions.append(Action("compensate", size=consumption.overuse))
    if evaluation.auto_topup_due and plan.auto_topup_plan:
        actions.append(Action("auto_topup", size=plan.auto_topup_plan.size))
    if evaluation.state == CAPPED and previous_state != CAPPED:
        actions.append(Action(plan.action, rate=plan.rate_when_capped()))
    elif evaluation.state != CAPPED and previous_state == CAPPED:
        actions.append(Action("restore", rate=plan.normal_rate))
    return actions


@dataclass(frozen=True)
class NotificationRule:
    id: int
    source: str
    threshold_percent: int
    channel: str = "email"
    subject: str = ""
    body: str = ""


def usage_of(source: str, buckets, now: datetime) -> tuple[int, int]:
    """(used, size) of the data a notification source watches: monthly, total or topup."""
    kinds = {"monthly": (MONTHLY,), "total": NORMAL_KINDS, "topup": TOPUP_KINDS}[source]
    watched = [b for b in buckets if b.kind in kinds and b.active(now)]
    return sum(min(b.used, b.size) for b in watched), sum(b.size for b in watched)


def usage_percent(source: str, buckets, now: datetime) -> Decimal | None:
    """Used share of the data a threshold rule watches, in percent; None if none."""
    used, size = usage_of(source, buckets, now)
    if not size:
        return None
    return Decimal(used * 100) / size


def notifications_due(rules, buckets, now: datetime, already_sent: set[int]) -> list[NotificationRule]:
    """Threshold rules reached and not yet sent this period."""
    due = []
    for rule in rules:
        if rule.source not in THRESHOLD_SOURCES or rule.id in already_sent:
            continue
        percent = usage_percent(rule.source, buckets, now)
        if percent is not None and percent >= rule.threshold_percent:
            due.append(rule)
    return due


def settle_needed(plan: Plan, previous_state: str, rules, before, after, now: datetime) -> bool:
    """Whether a delta can change the CAP state, make an action or a notification due.

    ``before``/``after`` are the buckets around the delta. False only where the
    answer is certain: the service stays ``ok`` with normal data left and no
    threshold rule was crossed, or stays ``unlimited``, or stays ``capped``
    with nothing that could lift it. The applier then skips the full settle.
    """
    if plan.monthly_limit is None:
        return previous_state != UNLIMITED
    left = sum(b.remaining for b in normal_order(after, now, False))
    if previous_state == OK and left > 0:
        for rule in rules:
            if rule.source in THRESHOLD_SOURCES:
                was, now_used = usage_percent(rule.source, before, now), usage_percent(rule.source, after, now)
                if now_used is not None and now_used >= rule.threshold_percent and (
                        was is None or was < rule.threshold_percent):
                    return True
        return False
    if previous_state == CAPPED and left == 0:
        return plan.auto_topup_plan is not None or plan.bonus_after_cap or plan.compensate
    return True
