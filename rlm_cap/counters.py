"""Session counter maths: from the NAS's running totals to exact deltas.

Implements SPEC "Accounting semantics" 1-3 as pure functions: no database, no
clock. A session remembers its last totals per direction and the
Acct-Session-Time at which the NAS reported them (its *counter time*); each
packet is compared with that to yield the bytes not yet counted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

GIGAWORD = 2**32

START, INTERIM, STOP, ACCOUNTING_ON, ACCOUNTING_OFF = (
    "Start", "Interim-Update", "Stop", "Accounting-On", "Accounting-Off")
STATUS_TYPES = (START, INTERIM, STOP, ACCOUNTING_ON, ACCOUNTING_OFF)

# Why a session is closed: a Stop keeps the key bound to the session (a late
# Interim still belongs to it); a NAS restart (Accounting-On/Off) unbinds it, so
# the NAS's reused Acct-Session-Id values begin new sessions.
CLOSED_BY_STOP = "stop"
CLOSED_BY_NAS_RESTART = "nas-restart"
# Closed by the enforcer, not by the NAS: no update for too long ("stale"), or
# the NAS answered a CoA with Session-Context-Not-Found ("gone"). A later
# counted update proves the session alive: it reopens.
CLOSED_AS_STALE = "stale"
CLOSED_AS_GONE = "gone"
PRESUMED_CLOSED = (CLOSED_AS_STALE, CLOSED_AS_GONE)


@dataclass(frozen=True, slots=True)
class AccountingRecord:
    """One Accounting-Request, typed. Octet/gigaword fields are None when absent.

    ``time`` is when the usage happened by the server's clock: receive time minus
    Acct-Delay-Time (or the NAS's Event-Timestamp when configured to trust it).
    """

    status: str
    nas: str
    session_id: str
    username: str
    time: datetime
    input_octets: int | None = None
    input_gigawords: int | None = None
    output_octets: int | None = None
    output_gigawords: int | None = None
    session_time: int | None = None
    framed_ip: str | None = None
    nas_ip: str | None = None

    @property
    def has_counters(self) -> bool:
        return self.input_octets is not None or self.output_octets is not None

    @property
    def has_gigawords(self) -> bool:
        return self.input_gigawords is not None or self.output_gigawords is not None

    @property
    def input_total(self) -> int | None:
        return _total(self.input_octets, self.input_gigawords)

    @property
    def output_total(self) -> int | None:
        return _total(self.output_octets, self.output_gigawords)


def _total(octets: int | None, gigawords: int | None) -> int | None:
    if octets is None:
        return None
    return (gigawords or 0) * GIGAWORD + octets


@dataclass(frozen=True, slots=True)
class Session:
    """What is remembered of one NAS session between packets."""

    input_total: int
    output_total: int
    counter_time: int | None  # Acct-Session-Time of the last counted totals
    last_time: datetime  # when the last counted totals were reported (server clock)
    started_at: datetime
    closed: str | None = None  # None = open, CLOSED_BY_STOP, CLOSED_BY_NAS_RESTART


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one packet: the session after it and the bytes it adds.

    ``interval_start``..``record.time`` is the stretch of time the delta was used
    in, for splitting it between bonus time frames and normal time.
    """

    session: Session
    new_session: bool
    input_delta: int
    output_delta: int
    interval_start: datetime
    note: str | None = None  # 'retransmit', 'late', 'wrap', 'reset', 'no-counters'


def begins_new_session(session: Session | None, status: str) -> bool:
    if session is None or session.closed == CLOSED_BY_NAS_RESTART:
        return True
    return status == START and session.closed is not None


def advance(session: Session | None, record: AccountingRecord) -> Step:
    """Apply one Start / Interim-Update / Stop to a session.

    Accounting-On/Off is not per session: see ``close_for_nas_restart``.
    """
    if record.status not in (START, INTERIM, STOP):
        raise ValueError(f"advance() takes Start, Interim-Update or Stop, not {record.status!r}")
    closed = CLOSED_BY_STOP if record.status == STOP else None

    if begins_new_session(session, record.status):
        began = record.time
        if record.status != START and record.session_time:
            # Interim/Stop without a Start: the session ran for Acct-Session-Time.
            try:
                began = record.time - timedelta(seconds=record.session_time)
            except OverflowError:  # a session time beyond any date: its start is unknown
                pass
        fresh = Session(0, 0, None, began, began)
        step = _count(fresh, record)
        return replace(step, new_session=True,
                       session=replace(step.session, closed=closed, started_at=began))

    if record.status == START:  # a repeated Start for an open session
        return Step(session, False, 0, 0, record.time, "retransmit")

    step = _count(session, record)
    if closed and step.session.closed in (None,) + PRESUMED_CLOSED:
        step = replace(step, session=replace(step.session, closed=closed))
    elif step.session.closed in PRESUMED_CLOSED and step.note not in ("late", "no-counters"):
        step = replace(step, session=replace(step.session, closed=None))  # alive after all
    return step


def _count(session: Session, record: AccountingRecord) -> Step:
    if not record.has_counters:
        return Step(session, False, 0, 0, record.time, "no-counters")
    new_in = record.input_total if record.input_total is not None else session.input_total
    new_out = record.output_total if record.output_total is not None else session.output_total
    t0, t1 = session.counter_time, record.session_time
    lower = new_in < session.input_total or new_out < session.output_total
    late = (t0 is not None and t1 is not None and t1 < t0) or (
        lower and (t0 is None or t1 is None or t1 == t0))
    if late:
        return Step(session, False, 0, 0, record.time, "late")

    note = None
    deltas = []
    for old, new in ((session.input_total, new_in), (session.output_total, new_out)):
        if new >= old:
            deltas.append(new - old)
        elif not record.has_gigawords and old < GIGAWORD:
            deltas.append(new + GIGAWORD - old)
            note = "wrap"
        else:
            deltas.append(new)
            note = note or "reset"
    if note is None and deltas == [0, 0]:
        note = "retransmit"
    counter_time = t1 if t1 is not None else t0
    last_time = max(session.last_time, record.time)
    after = Session(new_in, new_out, counter_time, last_time, session.started_at, session.closed)
    interval_start = min(session.last_time, record.time)
    return Step(after, False, deltas[0], deltas[1], interval_start, note)


def close_for_nas_restart(session: Session) -> Session:
    """Accounting-On/Off: the NAS rebooted; its session ids will be reused."""
    return replace(session, closed=CLOSED_BY_NAS_RESTART)
