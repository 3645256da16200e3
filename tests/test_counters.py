"""Session counters → deltas: SPEC "Accounting semantics" 1-3 (rlm_cap.counters)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from rlm_cap.counters import (
    ACCOUNTING_OFF, ACCOUNTING_ON, CLOSED_BY_NAS_RESTART, CLOSED_BY_STOP, GIGAWORD, INTERIM, START,
    STOP, AccountingRecord, Session, advance, close_for_nas_restart)

T0 = datetime(2026, 11, 3, 10, 0, tzinfo=timezone.utc)


def rec(status, at=0, inp=None, out=None, in_gw=None, out_gw=None, st=None, **kw):
    """A record ``at`` seconds after T0; octets/gigawords/session time as given."""
    return AccountingRecord(status=status, nas="10.0.0.1", session_id="4", username="alice",
                            time=T0 + timedelta(seconds=at), input_octets=inp, output_octets=out,
                            input_gigawords=in_gw, output_gigawords=out_gw, session_time=st, **kw)


def run(*records, session=None):
    """Feed records in order; return the list of steps."""
    steps = []
    for record in records:
        step = advance(session, record)
        session = step.session
        steps.append(step)
    return steps


def started(at=0):
    return advance(None, rec(START, at=at, st=0)).session


def open_session(inp, out, counter_time, at, started_at=T0):
    return Session(inp, out, counter_time, T0 + timedelta(seconds=at), started_at)


# --------------------------------------------------------------------------- totals (SPEC 2)

def test_totals_are_gigawords_times_2_32_plus_octets():
    r = rec(INTERIM, inp=5, in_gw=2, out=7, out_gw=3)
    assert r.input_total == 2 * 2**32 + 5
    assert r.output_total == 3 * 2**32 + 7


def test_total_without_gigawords_is_the_octets():
    assert rec(INTERIM, inp=123, out=0).input_total == 123
    assert rec(INTERIM, inp=123, out=0).output_total == 0
    assert rec(INTERIM).input_total is None  # absent, not zero


def test_input_is_upload_output_is_download():
    step = advance(started(), rec(INTERIM, at=60, inp=100, out=9000, st=60))
    assert (step.input_delta, step.output_delta) == (100, 9000)


def test_gigawords_delta_crossing_2_32():
    session = advance(started(), rec(INTERIM, at=60, inp=2**32 - 296, in_gw=0, out=0, out_gw=0, st=60)).session
    step = advance(session, rec(INTERIM, at=120, inp=1000, in_gw=1, out=10, out_gw=0, st=120))
    assert step.input_delta == 296 + 1000  # up to 2**32, then 1000 past it
    assert step.output_delta == 10
    assert step.note is None  # a crossing with Gigawords is not a wrap
    assert step.session.input_total == 2**32 + 1000


def test_large_gigaword_totals_are_exact():
    session = advance(started(), rec(INTERIM, at=60, inp=17, in_gw=1000, out=0, st=60)).session
    step = advance(session, rec(INTERIM, at=120, inp=16, in_gw=1001, out=0, st=120))
    assert step.input_delta == 2**32 - 1


# --------------------------------------------------------------------------- Start / Interim / Stop

def test_start_begins_an_open_session_with_zero_totals():
    step = advance(None, rec(START, st=0))
    assert step.new_session
    assert (step.input_delta, step.output_delta) == (0, 0)
    s = step.session
    assert (s.input_total, s.output_total, s.closed) == (0, 0, None)
    assert s.started_at == T0


def test_interim_counts_difference_to_last_totals():
    s1, s2, s3 = run(rec(START, st=0),
                     rec(INTERIM, at=300, inp=1000, out=5000, st=300),
                     rec(INTERIM, at=600, inp=1500, out=12000, st=600))
    assert (s2.input_delta, s2.output_delta) == (1000, 5000)
    assert (s3.input_delta, s3.output_delta) == (500, 7000)
    assert not s2.new_session and not s3.new_session
    assert (s3.session.input_total, s3.session.output_total) == (1500, 12000)
    assert s3.session.counter_time == 600
    assert s3.note is None


def test_interval_runs_from_the_previous_update():
    _, s2, s3 = run(rec(START, st=0),
                    rec(INTERIM, at=300, inp=1, out=1, st=300),
                    rec(INTERIM, at=600, inp=2, out=2, st=600))
    assert s2.interval_start == T0
    assert s3.interval_start == T0 + timedelta(seconds=300)


def test_stop_counts_and_closes():
    *_, stop = run(rec(START, st=0), rec(INTERIM, at=300, inp=100, out=200, st=300),
                   rec(STOP, at=400, inp=150, out=260, st=400))
    assert (stop.input_delta, stop.output_delta) == (50, 60)
    assert stop.session.closed == CLOSED_BY_STOP
    assert not stop.new_session


@pytest.mark.parametrize("status", [ACCOUNTING_ON, ACCOUNTING_OFF, "Alive", ""])
def test_advance_refuses_non_session_packets(status):
    with pytest.raises(ValueError, match="Start, Interim-Update or Stop"):
        advance(started(), rec(status))


# --------------------------------------------------------------------------- duplicates

def test_duplicate_interim_counts_nothing():
    interim = rec(INTERIM, at=300, inp=1000, out=5000, st=300)
    _, first, again = run(rec(START, st=0), interim, interim)
    assert (first.input_delta, first.output_delta) == (1000, 5000)
    assert (again.input_delta, again.output_delta) == (0, 0)
    assert again.note == "retransmit"
    assert again.session == first.session


def test_retransmitted_stop_counts_nothing_and_stays_closed():
    stop = rec(STOP, at=300, inp=1000, out=5000, st=300)
    _, first, again = run(rec(START, st=0), stop, stop)
    assert (first.input_delta, first.output_delta) == (1000, 5000)
    assert (again.input_delta, again.output_delta, again.new_session) == (0, 0, False)
    assert again.session.closed == CLOSED_BY_STOP


def test_repeated_start_for_open_session_is_a_retransmit():
    _, interim, start_again = run(rec(START, st=0), rec(INTERIM, at=300, inp=1000, out=5000, st=300),
                                  rec(START, at=310, st=0))
    assert start_again.note == "retransmit"
    assert not start_again.new_session
    assert (start_again.input_delta, start_again.output_delta) == (0, 0)
    assert start_again.session == interim.session  # totals not reset by the repeated Start


# --------------------------------------------------------------------------- packets without counters

def test_interim_without_counters_keeps_totals_and_counter_time():
    _, counted, bare = run(rec(START, st=0), rec(INTERIM, at=300, inp=1000, out=5000, st=300),
                           rec(INTERIM, at=600, st=600))
    assert (bare.input_delta, bare.output_delta) == (0, 0)
    assert bare.note == "no-counters"
    assert bare.session.input_total == 1000 and bare.session.output_total == 5000
    assert bare.session.counter_time == 300
    assert bare.session == counted.session


def test_after_a_counterless_packet_counting_continues_from_the_kept_totals():
    *_, after = run(rec(START, st=0), rec(INTERIM, at=300, inp=1000, out=5000, st=300),
                    rec(INTERIM, at=600, st=600), rec(INTERIM, at=900, inp=1200, out=5100, st=900))
    assert (after.input_delta, after.output_delta) == (200, 100)  # not 1200/5100 again


def test_stop_without_counters_still_closes():
    *_, stop = run(rec(START, st=0), rec(INTERIM, at=300, inp=1000, out=5000, st=300), rec(STOP, at=400))
    assert stop.session.closed == CLOSED_BY_STOP
    assert (stop.input_delta, stop.output_delta) == (0, 0)
    assert (stop.session.input_total, stop.session.output_total) == (1000, 5000)
    assert stop.note == "no-counters"


def test_gigawords_without_octets_is_no_counters():
    *_, step = run(rec(START, st=0), rec(INTERIM, at=300, inp=1000, out=5000, st=300),
                   rec(INTERIM, at=600, in_gw=1, out_gw=1, st=600))
    assert step.note == "no-counters"
    assert (step.input_delta, step.output_delta) == (0, 0)


def test_one_direction_only_keeps_the_other_total():
    *_, step = run(rec(START, st=0), rec(INTERIM, at=300, inp=1000, out=5000, st=300),
                   rec(INTERIM, at=600, inp=1800, st=600))
    assert (step.input_delta, step.output_delta) == (800, 0)
    assert step.session.output_total == 5000


# --------------------------------------------------------------------------- late packets

def test_late_packet_with_lower_session_time_is_ignored_even_with_higher_totals():
    session = open_session(10_000, 50_000, counter_time=600, at=600)
    step = advance(session, rec(INTERIM, at=700, inp=99_999, out=99_999, st=300))
    assert (step.input_delta, step.output_delta) == (0, 0)
    assert step.note == "late"
    assert step.session == session
    # and its bytes are counted by the next in-order update, once
    nxt = advance(step.session, rec(INTERIM, at=900, inp=12_000, out=60_000, st=900))
    assert (nxt.input_delta, nxt.output_delta) == (2_000, 10_000)


def test_late_packet_with_lower_totals_is_not_a_wrap():
    session = open_session(10_000, 50_000, counter_time=600, at=600)
    step = advance(session, rec(INTERIM, at=700, inp=5_000, out=20_000, st=300))
    assert step.note == "late"
    assert (step.input_delta, step.output_delta) == (0, 0)


def test_late_stop_still_closes_the_session():
    session = open_session(10_000, 50_000, counter_time=600, at=600)
    step = advance(session, rec(STOP, at=700, inp=5_000, out=20_000, st=300))
    assert step.session.closed == CLOSED_BY_STOP
    assert (step.input_delta, step.output_delta) == (0, 0)
    assert (step.session.input_total, step.session.counter_time) == (10_000, 600)


def test_without_session_time_lower_totals_are_late():
    session = open_session(10_000, 50_000, counter_time=None, at=600)
    step = advance(session, rec(INTERIM, at=700, inp=9_000, out=50_000))
    assert step.note == "late"
    assert (step.input_delta, step.output_delta) == (0, 0)
    assert step.session == session


def test_record_without_session_time_compared_to_session_with_one():
    session = open_session(10_000, 50_000, counter_time=600, at=600)
    lower = advance(session, rec(INTERIM, at=700, inp=10_000, out=40_000))
    assert lower.note == "late" and lower.output_delta == 0
    higher = advance(session, rec(INTERIM, at=700, inp=10_500, out=50_000))
    assert (higher.input_delta, higher.output_delta) == (500, 0)
    assert higher.session.counter_time == 600  # kept: the packet did not say


def test_without_session_time_higher_totals_count():
    session = open_session(10_000, 50_000, counter_time=None, at=600)
    step = advance(session, rec(INTERIM, at=700, inp=11_000, out=50_500))
    assert (step.input_delta, step.output_delta) == (1_000, 500)


def test_lower_totals_at_the_same_session_time_are_late_not_a_reset():
    # not "a greater Acct-Session-Time", so neither a wrap nor a reset
    session = open_session(10_000, 50_000, counter_time=600, at=600)
    step = advance(session, rec(INTERIM, at=700, inp=1_000, out=50_000, in_gw=0, out_gw=0, st=600))
    assert step.note == "late"
    assert (step.input_delta, step.output_delta) == (0, 0)


# --------------------------------------------------------------------------- wrap and reset

def test_32_bit_wrap_without_gigawords():
    old = 4_294_000_000  # below 2**32
    session = open_session(old, 100, counter_time=600, at=600)
    step = advance(session, rec(INTERIM, at=900, inp=1_000, out=200, st=900))
    assert step.input_delta == 1_000 + 4_294_967_296 - 4_294_000_000 == 968_296
    assert step.output_delta == 100
    assert step.note == "wrap"
    assert step.session.input_total == 1_000  # the NAS's own 32-bit value, for the next compare
    assert step.session.counter_time == 900
    nxt = advance(step.session, rec(INTERIM, at=1200, inp=5_000, out=300, st=1200))
    assert (nxt.input_delta, nxt.output_delta, nxt.note) == (4_000, 100, None)


def test_wrap_in_the_download_direction():
    session = open_session(100, GIGAWORD - 10, counter_time=600, at=600)
    step = advance(session, rec(INTERIM, at=900, inp=100, out=5, st=900))
    assert (step.input_delta, step.output_delta) == (0, 15)
    assert step.note == "wrap"


def test_lower_totals_with_gigawords_are_a_counter_reset():
    session = open_session(4_000_000_000, 100, counter_time=600, at=600)
    step = advance(session, rec(INTERIM, at=900, inp=1_000, in_gw=0, out=200, out_gw=0, st=900))
    assert step.input_delta == 1_000  # the new counter, not new + 2**32 - old
    assert step.note == "reset"
    assert step.session.input_total == 1_000


def test_old_total_past_2_32_without_gigawords_is_a_reset():
    # The NAS sent Gigawords before (total >= 2**32): a lower 32-bit value now cannot be a wrap.
    session = open_session(GIGAWORD + 5_000, 100, counter_time=600, at=600)
    step = advance(session, rec(INTERIM, at=900, inp=2_000, out=100, st=900))
    assert step.input_delta == 2_000
    assert step.note == "reset"


# --------------------------------------------------------------------------- no Start

def test_interim_without_start_creates_the_session_and_counts_its_totals():
    step = advance(None, rec(INTERIM, at=3600, inp=7_000, out=90_000, st=1800))
    assert step.new_session
    assert (step.input_delta, step.output_delta) == (7_000, 90_000)
    began = T0 + timedelta(seconds=3600 - 1800)
    assert step.interval_start == began
    assert step.session.started_at == began
    assert step.session.closed is None
    assert step.session.counter_time == 1800
    assert step.session.last_time == T0 + timedelta(seconds=3600)


def test_stop_without_start_creates_a_closed_session_and_counts():
    step = advance(None, rec(STOP, at=3600, inp=7_000, out=90_000, in_gw=1, out_gw=0, st=600))
    assert step.new_session
    assert (step.input_delta, step.output_delta) == (GIGAWORD + 7_000, 90_000)
    assert step.session.closed == CLOSED_BY_STOP
    assert step.interval_start == T0 + timedelta(seconds=3000)


def test_interim_without_start_or_session_time_has_a_zero_length_interval():
    step = advance(None, rec(INTERIM, at=60, inp=10, out=20))
    assert step.new_session
    assert (step.input_delta, step.output_delta) == (10, 20)
    assert step.interval_start == T0 + timedelta(seconds=60)


def test_counterless_stop_without_start_creates_a_closed_empty_session():
    step = advance(None, rec(STOP, at=600, st=600))
    assert step.new_session
    assert step.session.closed == CLOSED_BY_STOP
    assert (step.input_delta, step.output_delta) == (0, 0)
    assert (step.session.input_total, step.session.output_total) == (0, 0)


# --------------------------------------------------------------------------- after Stop

def test_start_after_stop_begins_a_new_session():
    *_, stop, start = run(rec(START, st=0), rec(STOP, at=600, inp=1000, out=2000, st=600),
                          rec(START, at=900, st=0))
    assert start.new_session
    assert start.session.closed is None
    assert (start.session.input_total, start.session.output_total) == (0, 0)
    assert start.session.started_at == T0 + timedelta(seconds=900)
    # the reused Acct-Session-Id's new counters count from zero
    nxt = advance(start.session, rec(INTERIM, at=1200, inp=300, out=400, st=300))
    assert (nxt.input_delta, nxt.output_delta) == (300, 400)


def test_reordered_interim_with_newer_counters_after_counterless_stop_still_counts():
    _, _, stop, late_interim = run(rec(START, st=0), rec(INTERIM, at=300, inp=1000, out=2000, st=300),
                                   rec(STOP, at=600, st=600),
                                   rec(INTERIM, at=610, inp=1500, out=2600, st=590))
    assert stop.session.closed == CLOSED_BY_STOP
    assert not late_interim.new_session
    assert (late_interim.input_delta, late_interim.output_delta) == (500, 600)
    assert late_interim.session.closed == CLOSED_BY_STOP  # still the stopped session


def test_interim_after_stop_with_counters_is_late_or_duplicate():
    *_, stop, old_interim = run(rec(START, st=0), rec(STOP, at=600, inp=1000, out=2000, st=600),
                                rec(INTERIM, at=610, inp=800, out=1500, st=300))
    assert not old_interim.new_session
    assert old_interim.note == "late"
    assert (old_interim.input_delta, old_interim.output_delta) == (0, 0)
    assert old_interim.session == stop.session


# --------------------------------------------------------------------------- NAS restart

def test_after_nas_restart_any_packet_begins_a_new_session():
    session = advance(started(), rec(INTERIM, at=600, inp=50_000, out=80_000, st=600)).session
    closed = close_for_nas_restart(session)
    assert closed.closed == CLOSED_BY_NAS_RESTART
    assert (closed.input_total, closed.output_total) == (50_000, 80_000)
    # the NAS rebooted and reuses Acct-Session-Id "4": lower totals, lower time — yet all new
    step = advance(closed, rec(INTERIM, at=900, inp=700, out=900, st=120))
    assert step.new_session
    assert (step.input_delta, step.output_delta) == (700, 900)
    assert step.session.closed is None
    assert step.note is None


@pytest.mark.parametrize("status", [START, INTERIM, STOP])
def test_after_nas_restart_every_status_starts_over(status):
    closed = close_for_nas_restart(open_session(50_000, 80_000, counter_time=600, at=600))
    step = advance(closed, rec(status, at=900, inp=10, out=20, st=60))
    assert step.new_session
    assert step.session.closed == (CLOSED_BY_STOP if status == STOP else None)
    assert (step.input_delta, step.output_delta) == (10, 20)  # counted from zero, not from 50_000


def test_nas_restart_of_a_stopped_session_also_unbinds_it():
    stopped = advance(started(), rec(STOP, at=600, inp=5, out=5, st=600)).session
    step = advance(close_for_nas_restart(stopped), rec(INTERIM, at=900, inp=3, out=4, st=30))
    assert step.new_session
    assert (step.input_delta, step.output_delta) == (3, 4)


# --------------------------------------------------------------------------- notes

@pytest.mark.parametrize("session, record, note", [
    (open_session(10, 10, 60, at=60), rec(INTERIM, at=120, inp=20, out=20, st=120), None),
    (open_session(10, 10, 60, at=60), rec(INTERIM, at=120, inp=10, out=10, st=120), "retransmit"),
    (open_session(10, 10, 60, at=60), rec(INTERIM, at=120, inp=99, out=99, st=30), "late"),
    (open_session(10, 10, 60, at=60), rec(INTERIM, at=120, st=120), "no-counters"),
    (open_session(GIGAWORD - 1, 10, 60, at=60), rec(INTERIM, at=120, inp=1, out=10, st=120), "wrap"),
    (open_session(100, 10, 60, at=60), rec(INTERIM, at=120, inp=1, in_gw=0, out=10, st=120), "reset"),
])
def test_notes(session, record, note):
    assert advance(session, record).note == note


def test_longest_radius_session_time_without_start():
    # Acct-Session-Time is a 32-bit integer: ~136 years still makes a date
    step = advance(None, rec(INTERIM, at=60, inp=10, out=20, st=2**32 - 1))
    assert step.interval_start == T0 + timedelta(seconds=60) - timedelta(seconds=2**32 - 1)


def test_absurd_session_time_without_start_does_not_crash():
    # beyond any date (a broken NAS or parser): the bytes still count, the start is unknown
    step = advance(None, rec(INTERIM, at=60, inp=10, out=20, st=2**40))
    assert step.new_session
    assert (step.input_delta, step.output_delta) == (10, 20)
    assert step.interval_start == T0 + timedelta(seconds=60)
