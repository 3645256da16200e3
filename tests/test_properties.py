"""Properties of the pure core, checked on random inputs (hypothesis)."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from rlm_cap.counters import (
    CLOSED_BY_NAS_RESTART, CLOSED_BY_STOP, GIGAWORD, INTERIM, START, STOP, AccountingRecord, Session, advance)
from rlm_cap.periods import TimeFrame, split_by_frames
from rlm_cap.policy import BONUS, BUCKET_KINDS, Bucket, Plan, consume, with_consumption
from rlm_cap.settings import Settings

UTC = timezone.utc
T0 = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
ZONES = [ZoneInfo("UTC"), ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")]
PROPERTY = settings(max_examples=200, deadline=None)

# --------------------------------------------------------------------------- (1) conservation of bytes

# Validity relative to T0: already expired, valid now, not yet valid, never expiring.
VALIDITY = st.sampled_from([
    (T0 - timedelta(days=60), T0 - timedelta(days=1)),
    (T0 - timedelta(days=60), T0),  # expires exactly at T0 (exclusive)
    (T0 - timedelta(days=2), T0 + timedelta(days=27)),
    (T0 - timedelta(days=2), None),
    (T0, T0 + timedelta(days=30)),
    (T0 + timedelta(days=1), None),
    (T0 - timedelta(days=40), T0 + timedelta(hours=6)),
])


@st.composite
def buckets(draw):
    result = []
    for index in range(draw(st.integers(0, 8))):
        size = draw(st.integers(0, 2_000))
        used = draw(st.integers(0, size))
        valid_from, valid_until = draw(VALIDITY)
        result.append(Bucket(index + 1, draw(st.sampled_from(BUCKET_KINDS)), size, used, valid_from, valid_until))
    return tuple(result)


PLANS = st.builds(
    lambda unlimited, after_cap: Plan(id=1, name="p", monthly_limit=1_000, bonus_unlimited=unlimited,
                                      bonus_after_cap=after_cap),
    st.booleans(), st.booleans())
STREAMS = st.lists(st.tuples(st.integers(0, 1_500), st.integers(0, 1_500), st.integers(0, 12)),
                   min_size=1, max_size=12)


@PROPERTY
@given(buckets(), PLANS, st.booleans(), STREAMS)
def test_every_byte_fed_lands_exactly_once(start, plan, topup_first, stream):
    settings_ = Settings(use_topup_first=topup_first)
    current = start
    fed = overuse = free = 0
    for normal, frame, hours in stream:
        now = T0 + timedelta(hours=hours)
        c = consume(current, normal, frame, plan, settings_, now)
        assert c.total == normal + frame
        assert all(v > 0 for v in c.taken.values())
        by_id = {b.id: b for b in current}
        for bucket_id, amount in c.taken.items():
            bucket = by_id[bucket_id]
            assert bucket.active(now)  # only valid buckets are charged
            assert amount <= bucket.remaining
        bonus_taken = sum(v for k, v in c.taken.items() if by_id[k].kind == BONUS)
        assert bonus_taken <= frame  # bonus only ever takes time-frame bytes
        current = with_consumption(current, c)
        fed += normal + frame
        overuse += c.overuse
        free += c.free
    used_increase = sum(after.used - before.used for before, after in zip(start, current))
    assert used_increase + overuse + free == fed
    for before, after in zip(start, current):
        assert after.used <= after.size
        assert after.used >= before.used
        assert (after.id, after.kind, after.size) == (before.id, before.kind, before.size)


@PROPERTY
@given(buckets(), PLANS, st.integers(0, 5_000), st.integers(0, 5_000))
def test_overuse_only_when_every_active_normal_bucket_is_full(start, plan, normal, frame):
    c = consume(start, normal, frame, plan, Settings(), T0)
    after = with_consumption(start, c)
    if c.overuse:
        assert all(b.remaining == 0 for b in after if b.kind != BONUS and b.active(T0))


# --------------------------------------------------------------------------- accounting records

OPTIONAL_OCTETS = st.none() | st.integers(0, 2**32 - 1)
HUGE = st.none() | st.integers(0, 2**32 - 1) | st.integers(2**32, 2**66)
SESSION_TIMES = st.none() | st.integers(0, 2**32 - 1) | st.integers(2**32, 2**66)


@st.composite
def records(draw, octets=OPTIONAL_OCTETS, gigawords=OPTIONAL_OCTETS, session_times=SESSION_TIMES):
    return AccountingRecord(
        status=draw(st.sampled_from([START, INTERIM, STOP])), nas="10.0.0.1", session_id="4",
        username="alice", time=T0 + timedelta(seconds=draw(st.integers(-86_400, 86_400))),
        input_octets=draw(octets), input_gigawords=draw(gigawords),
        output_octets=draw(octets), output_gigawords=draw(gigawords),
        session_time=draw(session_times))


@st.composite
def sessions(draw, totals=st.integers(0, 2**64)):
    if draw(st.booleans()):
        return None
    started = T0 - timedelta(seconds=draw(st.integers(0, 10**6)))
    return Session(draw(totals), draw(totals), draw(st.none() | st.integers(0, 2**32 - 1)),
                   started + timedelta(seconds=draw(st.integers(0, 10**5))), started,
                   draw(st.sampled_from([None, CLOSED_BY_STOP, CLOSED_BY_NAS_RESTART])))


# --------------------------------------------------------------------------- (2) replay is idempotent

@PROPERTY
@given(sessions(), records())
def test_replaying_a_record_changes_nothing(session, record):
    first = advance(session, record)
    again = advance(first.session, record)
    assert (again.input_delta, again.output_delta) == (0, 0)
    assert again.session == first.session
    assert not again.new_session


# --------------------------------------------------------------------------- (3) how updates are split

@st.composite
def monotone_streams(draw):
    """Cumulative totals of one session, strictly later session times, never decreasing."""
    n = draw(st.integers(1, 10))
    up = down = 0
    session_time = 0
    updates = []
    for _ in range(n):
        up += draw(st.integers(0, 2**33))  # large steps cross 2**32 (Gigawords)
        down += draw(st.integers(0, 2**33))
        session_time += draw(st.integers(1, 3_600))
        updates.append((up, down, session_time))
    return updates


def interim(up, down, session_time, status=INTERIM):
    return AccountingRecord(status, "10.0.0.1", "4", "alice", T0 + timedelta(seconds=session_time),
                            input_octets=up % GIGAWORD, input_gigawords=up // GIGAWORD,
                            output_octets=down % GIGAWORD, output_gigawords=down // GIGAWORD,
                            session_time=session_time)


def total_deltas(records_) -> tuple[int, int]:
    session, up, down = None, 0, 0
    for record in records_:
        step = advance(session, record)
        assert step.input_delta >= 0 and step.output_delta >= 0
        session = step.session
        up += step.input_delta
        down += step.output_delta
    return up, down


@PROPERTY
@given(monotone_streams(), st.data())
def test_any_subsequence_of_updates_counts_the_same_total(updates, data):
    start = AccountingRecord(START, "10.0.0.1", "4", "alice", T0, session_time=0)
    final_up, final_down = updates[-1][0], updates[-1][1]
    full = [start] + [interim(*u) for u in updates]
    assert total_deltas(full) == (final_up, final_down)
    # a subsequence that keeps the last update, with or without the Start
    keep = data.draw(st.lists(st.booleans(), min_size=len(updates) - 1, max_size=len(updates) - 1))
    chosen = [interim(*u) for u, k in zip(updates, keep) if k] + [interim(*updates[-1])]
    with_start = data.draw(st.booleans())
    sub = ([start] if with_start else []) + chosen
    assert total_deltas(sub) == (final_up, final_down)


@PROPERTY
@given(monotone_streams(), st.data())
def test_reordered_duplicated_and_counterless_updates_count_the_same_total(updates, data):
    """Out of order (late ones are ignored), duplicates, and updates without counters."""
    final_up, final_down = updates[-1][0], updates[-1][1]
    packets = [interim(*u) for u in updates]
    packets += data.draw(st.lists(st.sampled_from(packets), max_size=5))  # retransmits
    bare = [AccountingRecord(INTERIM, "10.0.0.1", "4", "alice", T0 + timedelta(seconds=s), session_time=s)
            for s in data.draw(st.lists(st.integers(0, 40_000), max_size=3))]
    order = data.draw(st.permutations(packets + bare))
    assert total_deltas(order) == (final_up, final_down)


# --------------------------------------------------------------------------- (4) split_by_frames

HOURS = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
FRAMES = st.lists(st.builds(TimeFrame, HOURS, HOURS,
                            st.frozensets(st.integers(0, 6), min_size=1)), max_size=3).map(tuple)
MOMENTS = st.integers(0, 366 * 24 * 3600).map(lambda s: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s))


@PROPERTY
@given(st.integers(0, 2**64), MOMENTS, st.integers(-3600, 80 * 86_400), FRAMES, st.sampled_from(ZONES))
def test_split_by_frames_conserves_bytes(delta, begin, length, frames, tz):
    end = begin + timedelta(seconds=length)
    normal, frame = split_by_frames(delta, begin, end, frames, tz)
    assert normal + frame == delta
    assert normal >= 0 and frame >= 0
    if not frames:
        assert frame == 0


@PROPERTY
@given(st.integers(0, 2**64), MOMENTS, st.integers(1, 60 * 86_400), st.sampled_from(ZONES))
def test_whole_day_frame_takes_every_byte(delta, begin, length, tz):
    every_day = (TimeFrame(time(0), time(0)),)
    assert split_by_frames(delta, begin, begin + timedelta(seconds=length), every_day, tz) == (0, delta)


# --------------------------------------------------------------------------- (5) advance never raises

@PROPERTY
@given(sessions(), records(octets=HUGE, gigawords=HUGE))
def test_advance_never_raises_and_never_goes_negative(session, record):
    step = advance(session, record)
    assert step.input_delta >= 0 and step.output_delta >= 0
    assert step.note in (None, "retransmit", "late", "wrap", "reset", "no-counters")
    assert step.session.input_total >= 0 and step.session.output_total >= 0
    if step.note in ("late", "no-counters") and not step.new_session:
        assert (step.input_delta, step.output_delta) == (0, 0)
        assert (step.session.input_total, step.session.output_total) == (session.input_total,
                                                                         session.output_total)
    if record.status == STOP:
        assert step.session.closed == CLOSED_BY_STOP
