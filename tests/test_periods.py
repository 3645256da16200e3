"""Billing periods and bonus time frames in the service's time zone (rlm_cap.periods)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from rlm_cap.periods import (
    ALL_DAYS, Period, TimeFrame, frame_windows, in_frame, months_after, parse_time_frame,
    period_at, split_by_frames)

UTC = timezone.utc
UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = parse_time_frame("00:00-04:00")
HOUR = timedelta(hours=1)


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def local(tz, *args):
    return datetime(*args, tzinfo=tz)


def days(period: Period) -> tuple[date, date]:
    return period.start.date(), period.end.date()


def real_length(period: Period) -> timedelta:
    # same-tzinfo subtraction would be wall-clock time; convert to UTC for real time
    return period.end.astimezone(UTC) - period.start.astimezone(UTC)


# --------------------------------------------------------------------------- period_at

def test_calendar_month():
    p = period_at(utc(2026, 11, 3, 10), UTC_ZONE)
    assert p.start == utc(2026, 11, 1) and p.end == utc(2026, 12, 1)
    assert p.label == "2026-11-01"
    assert period_at(utc(2026, 11, 3, 10), UTC_ZONE, 1) == p  # billing day 1 = calendar month


def test_calendar_month_boundaries_are_inclusive_start_exclusive_end():
    p = period_at(utc(2026, 11, 1), UTC_ZONE)
    assert p.start == utc(2026, 11, 1)
    assert p.contains(utc(2026, 11, 1)) and p.contains(utc(2026, 11, 30, 23, 59, 59, 999999))
    assert not p.contains(utc(2026, 12, 1))
    assert period_at(utc(2026, 11, 30, 23, 59, 59, 999999), UTC_ZONE) == p


def test_december_rolls_into_next_year():
    p = period_at(utc(2026, 12, 31, 23), UTC_ZONE)
    assert days(p) == (date(2026, 12, 1), date(2027, 1, 1))
    p = period_at(utc(2027, 1, 10), UTC_ZONE, billing_day=15)
    assert days(p) == (date(2026, 12, 15), date(2027, 1, 15))


@pytest.mark.parametrize("moment, expected", [
    (utc(2026, 11, 14, 23, 59), (date(2026, 10, 15), date(2026, 11, 15))),  # day before
    (utc(2026, 11, 15, 0, 0), (date(2026, 11, 15), date(2026, 12, 15))),  # the billing day
    (utc(2026, 11, 16, 12), (date(2026, 11, 15), date(2026, 12, 15))),  # day after
])
def test_billing_day_15(moment, expected):
    assert days(period_at(moment, UTC_ZONE, billing_day=15)) == expected


@pytest.mark.parametrize("moment, expected", [
    # leap year 2028: billing day 31 falls on Feb 29
    (utc(2028, 1, 30), (date(2027, 12, 31), date(2028, 1, 31))),
    (utc(2028, 1, 31), (date(2028, 1, 31), date(2028, 2, 29))),
    (utc(2028, 2, 28, 23), (date(2028, 1, 31), date(2028, 2, 29))),
    (utc(2028, 2, 29), (date(2028, 2, 29), date(2028, 3, 31))),
    (utc(2028, 3, 30), (date(2028, 2, 29), date(2028, 3, 31))),
    (utc(2028, 3, 31), (date(2028, 3, 31), date(2028, 4, 30))),
    (utc(2028, 4, 30), (date(2028, 4, 30), date(2028, 5, 31))),
    # 2026: Feb 28
    (utc(2026, 2, 27), (date(2026, 1, 31), date(2026, 2, 28))),
    (utc(2026, 2, 28), (date(2026, 2, 28), date(2026, 3, 31))),
])
def test_billing_day_31_clamps_to_the_months_last_day(moment, expected):
    assert days(period_at(moment, UTC_ZONE, billing_day=31)) == expected


@pytest.mark.parametrize("billing_day, moment, expected", [
    (29, utc(2026, 2, 28), (date(2026, 2, 28), date(2026, 3, 29))),
    (29, utc(2026, 2, 27), (date(2026, 1, 29), date(2026, 2, 28))),
    (29, utc(2028, 2, 28), (date(2028, 1, 29), date(2028, 2, 29))),
    (29, utc(2028, 2, 29), (date(2028, 2, 29), date(2028, 3, 29))),
    (30, utc(2026, 3, 29), (date(2026, 2, 28), date(2026, 3, 30))),
    (30, utc(2026, 3, 30), (date(2026, 3, 30), date(2026, 4, 30))),
    (30, utc(2028, 2, 29), (date(2028, 2, 29), date(2028, 3, 30))),
    (31, utc(2026, 4, 30), (date(2026, 4, 30), date(2026, 5, 31))),
    (31, utc(2026, 4, 29), (date(2026, 3, 31), date(2026, 4, 30))),
])
def test_billing_days_29_to_31(billing_day, moment, expected):
    assert days(period_at(moment, UTC_ZONE, billing_day=billing_day)) == expected


@pytest.mark.parametrize("billing_day", [-1, 32, 100])
def test_billing_day_out_of_range(billing_day):
    with pytest.raises(ValueError, match="billing day"):
        period_at(utc(2026, 1, 1), UTC_ZONE, billing_day)


def test_period_uses_the_local_date_not_utc():
    # 2026-03-31 22:00 UTC is already April 1st in Berlin (CEST, +2)
    assert period_at(utc(2026, 3, 31, 21, 59, 59), BERLIN).start == local(BERLIN, 2026, 3, 1)
    assert period_at(utc(2026, 3, 31, 22, 0), BERLIN).start == local(BERLIN, 2026, 4, 1)
    # and 2026-11-01 03:59 UTC is still October 31st in New York (EDT, -4)
    assert period_at(utc(2026, 11, 1, 3, 59), NEW_YORK).start == local(NEW_YORK, 2026, 10, 1)
    assert period_at(utc(2026, 11, 1, 4, 0), NEW_YORK).start == local(NEW_YORK, 2026, 11, 1)


@pytest.mark.parametrize("tz, moment, start_utc, end_utc", [
    # Berlin: spring forward 2026-03-29, fall back 2026-10-25
    (BERLIN, utc(2026, 3, 15), utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)),
    (BERLIN, utc(2026, 10, 15), utc(2026, 9, 30, 22), utc(2026, 10, 31, 23)),
    # New York: spring forward 2026-03-08, fall back 2026-11-01
    (NEW_YORK, utc(2026, 3, 15), utc(2026, 3, 1, 5), utc(2026, 4, 1, 4)),
    (NEW_YORK, utc(2026, 11, 15), utc(2026, 11, 1, 4), utc(2026, 12, 1, 5)),
])
def test_periods_start_at_local_midnight_across_dst(tz, moment, start_utc, end_utc):
    p = period_at(moment, tz)
    assert p.start.astimezone(UTC) == start_utc
    assert p.end.astimezone(UTC) == end_utc
    for edge in (p.start, p.end):
        assert edge.astimezone(tz).time() == time(0)


def test_dst_month_is_an_hour_shorter_or_longer():
    assert real_length(period_at(utc(2026, 3, 15), BERLIN)) == timedelta(days=31) - HOUR
    assert real_length(period_at(utc(2026, 10, 15), BERLIN)) == timedelta(days=31) + HOUR
    assert real_length(period_at(utc(2026, 11, 15), NEW_YORK)) == timedelta(days=30) + HOUR


def test_billing_day_on_the_dst_day():
    p = period_at(utc(2026, 4, 10), BERLIN, billing_day=29)
    assert p.start.astimezone(UTC) == utc(2026, 3, 28, 23)  # Mar 29 00:00 CET
    assert p.end.astimezone(UTC) == utc(2026, 4, 28, 22)  # Apr 29 00:00 CEST


def test_naive_moment_is_refused():
    with pytest.raises(ValueError, match="naive"):
        period_at(datetime(2026, 11, 3), UTC_ZONE)


def test_period_does_not_read_the_clock():
    expected = period_at(utc(2026, 11, 3, 10), BERLIN, 15)
    with freeze_time("2031-07-20 12:00:00"):
        assert period_at(utc(2026, 11, 3, 10), BERLIN, 15) == expected
        assert days(expected) == (date(2026, 10, 15), date(2026, 11, 15))


# --------------------------------------------------------------------------- consecutive periods

@pytest.mark.parametrize("tz", [UTC_ZONE, BERLIN, NEW_YORK])
@pytest.mark.parametrize("billing_day", [None, 2, 15, 28, 29, 30, 31])
def test_period_after_is_continuous(tz, billing_day):
    p = period_at(local(tz, 2027, 11, 20, 12), tz, billing_day)
    seen_start_days = set()
    for _ in range(30):  # through a leap February (2028) and several DST changes
        nxt = period_at(p.end, tz, billing_day)  # the next period begins where this one ends
        assert nxt.start == p.end
        assert p.start < p.end
        assert p.contains(p.start) and not p.contains(p.end)
        assert period_at(p.end - timedelta(microseconds=1), tz, billing_day) == p
        assert period_at(p.start, tz, billing_day) == p
        assert timedelta(days=27) < real_length(p) < timedelta(days=32)
        seen_start_days.add(p.start.astimezone(tz).day)
        p = nxt
    if billing_day in (None, 2, 15, 28):
        assert seen_start_days == {billing_day or 1}


# --------------------------------------------------------------------------- months_after

@pytest.mark.parametrize("moment, months, expected", [
    (local(BERLIN, 2026, 1, 15, 10), 1, local(BERLIN, 2026, 2, 15)),
    (local(BERLIN, 2026, 1, 31, 10), 1, local(BERLIN, 2026, 2, 28)),  # clamped
    (local(BERLIN, 2028, 1, 31, 10), 1, local(BERLIN, 2028, 2, 29)),  # leap year
    (local(BERLIN, 2026, 11, 30), 3, local(BERLIN, 2027, 2, 28)),
    (local(BERLIN, 2026, 3, 31), 1, local(BERLIN, 2026, 4, 30)),
    (local(BERLIN, 2026, 1, 15), 12, local(BERLIN, 2027, 1, 15)),
    (local(BERLIN, 2026, 10, 31, 18), 0, local(BERLIN, 2026, 10, 31)),
])
def test_months_after(moment, months, expected):
    result = months_after(moment, months, BERLIN)
    assert result == expected
    assert result.astimezone(BERLIN).time() == time(0)


def test_months_after_uses_the_local_day():
    # 23:30 UTC on Jan 31 is already Feb 1 in Berlin
    result = months_after(utc(2026, 1, 31, 23, 30), 1, BERLIN)
    assert result.astimezone(UTC) == utc(2026, 2, 28, 23)  # Mar 1 00:00 CET


def test_months_after_across_dst_is_local_midnight():
    result = months_after(local(BERLIN, 2026, 3, 1), 1, BERLIN)
    assert result.astimezone(UTC) == utc(2026, 3, 31, 22)  # Apr 1 00:00 CEST


def test_months_after_refuses_naive():
    with pytest.raises(ValueError, match="naive"):
        months_after(datetime(2026, 1, 31), 1, BERLIN)


# --------------------------------------------------------------------------- parse_time_frame

def test_parse_every_day_frame():
    frame = parse_time_frame("00:00-04:00")
    assert frame == TimeFrame(time(0), time(4), ALL_DAYS)
    assert frame.describe() == "00:00-04:00"


def test_parse_weekday_set():
    frame = parse_time_frame("22:00-06:00 sat,sun")
    assert (frame.start, frame.end) == (time(22), time(6))
    assert frame.days == {5, 6}
    assert frame.describe() == "22:00-06:00 sat,sun"


def test_weekday_names_are_case_insensitive_and_may_be_spelled_out():
    assert parse_time_frame("08:00-18:00 Mon,TUE,wednesday").days == {0, 1, 2}
    assert parse_time_frame(" 08:30-17:45  fri ").days == {4}


@pytest.mark.parametrize("text", ["00:00-04:00", "22:00-06:00 sat,sun", "08:15-17:45 mon,tue,wed,thu,fri",
                                  "00:00-00:00 sun"])
def test_describe_parses_back(text):
    frame = parse_time_frame(text)
    assert parse_time_frame(frame.describe()) == frame


@pytest.mark.parametrize("text, hint", [
    ("", "00:00-04:00"),
    ("   ", "00:00-04:00"),
    ("00:00", "00:00-04:00"),
    ("night", "00:00-04:00"),
    ("00:00 - 04:00", "00:00-04:00"),
    ("00:00-04:00 sat sun", "00:00-04:00"),
    ("25:00-04:00", "HH:MM"),
    ("00:00-04:60", "HH:MM"),
    ("ab:cd-04:00", "HH:MM"),
    ("00:00-", "HH:MM"),
    ("00:00-04:00-05:00", "HH:MM"),  # would be read as a UTC offset
    ("00:00Z-04:00", "HH:MM"),
    ("00:00-04:00 xyz", "mon,tue"),
    ("00:00-04:00 sat,", "mon,tue"),
    ("00:00-04:00 sat,,sun", "mon,tue"),
])
def test_bad_time_frames(text, hint):
    with pytest.raises(ValueError) as error:
        parse_time_frame(text)
    assert repr(text) in str(error.value)
    assert hint in str(error.value)


def test_whole_day_frame():
    frame = parse_time_frame("00:00-00:00")
    start, end = frame.windows_on(date(2026, 11, 3), UTC_ZONE)
    assert end - start == timedelta(days=1)


def test_frame_windows_are_merged():
    frames = (parse_time_frame("00:00-04:00"), parse_time_frame("02:00-06:00"))
    assert frame_windows(utc(2026, 11, 3), utc(2026, 11, 4), frames, UTC_ZONE) == [
        (utc(2026, 11, 3), utc(2026, 11, 3, 6))]


# --------------------------------------------------------------------------- in_frame

def test_in_frame_start_inclusive_end_exclusive():
    frames = (NIGHT,)
    assert in_frame(utc(2026, 11, 3, 0, 0), frames, UTC_ZONE)
    assert in_frame(utc(2026, 11, 3, 3, 59, 59), frames, UTC_ZONE)
    assert not in_frame(utc(2026, 11, 3, 4, 0), frames, UTC_ZONE)
    assert not in_frame(utc(2026, 11, 2, 23, 59, 59), frames, UTC_ZONE)


def test_in_frame_uses_the_zone():
    # 23:30 UTC in winter is 00:30 in Berlin
    assert in_frame(utc(2026, 11, 2, 23, 30), (NIGHT,), BERLIN)
    assert not in_frame(utc(2026, 11, 3, 3, 30), (NIGHT,), BERLIN)  # 04:30 local


def test_in_frame_refuses_naive():
    with pytest.raises(ValueError, match="naive"):
        in_frame(datetime(2026, 11, 3, 1), (NIGHT,), UTC_ZONE)


# --------------------------------------------------------------------------- split_by_frames

def test_no_frames_is_all_normal():
    assert split_by_frames(12345, utc(2026, 11, 3, 0), utc(2026, 11, 3, 2), (), UTC_ZONE) == (12345, 0)


def test_zero_delta():
    assert split_by_frames(0, utc(2026, 11, 3, 0), utc(2026, 11, 3, 2), (NIGHT,), UTC_ZONE) == (0, 0)


def test_split_proportional_to_time_inside():
    # 00:00-08:00 with frame 00:00-04:00: half inside
    assert split_by_frames(8000, utc(2026, 11, 3, 0), utc(2026, 11, 3, 8), (NIGHT,), UTC_ZONE) == (4000, 4000)
    # 03:00-05:00: one hour of two
    assert split_by_frames(1000, utc(2026, 11, 3, 3), utc(2026, 11, 3, 5), (NIGHT,), UTC_ZONE) == (500, 500)
    # all inside / all outside
    assert split_by_frames(777, utc(2026, 11, 3, 1), utc(2026, 11, 3, 2), (NIGHT,), UTC_ZONE) == (0, 777)
    assert split_by_frames(777, utc(2026, 11, 3, 5), utc(2026, 11, 3, 9), (NIGHT,), UTC_ZONE) == (777, 0)


def test_frame_crossing_midnight():
    frames = (parse_time_frame("22:00-06:00"),)
    # 20:00 → 08:00 next day: 8 of 12 hours inside
    assert split_by_frames(1200, utc(2026, 11, 3, 20), utc(2026, 11, 4, 8), frames, UTC_ZONE) == (400, 800)
    # after midnight, inside the window that started the evening before
    assert split_by_frames(500, utc(2026, 11, 4, 1), utc(2026, 11, 4, 3), frames, UTC_ZONE) == (0, 500)


def test_weekday_frame_belongs_to_the_day_it_starts():
    saturday_night = (parse_time_frame("22:00-06:00 sat"),)
    assert date(2026, 1, 3).weekday() == 5  # Saturday
    # Sunday 00:00-12:00: Saturday's window runs until Sunday 06:00 → 6 of 12 hours
    assert split_by_frames(1200, utc(2026, 1, 4, 0), utc(2026, 1, 4, 12), saturday_night, UTC_ZONE) == (600, 600)
    # Saturday 00:00-12:00: Friday's window does not exist
    assert split_by_frames(1200, utc(2026, 1, 3, 0), utc(2026, 1, 3, 12), saturday_night, UTC_ZONE) == (1200, 0)
    # Saturday noon → Sunday noon: one 8-hour window of 24 hours
    assert split_by_frames(2400, utc(2026, 1, 3, 12), utc(2026, 1, 4, 12), saturday_night, UTC_ZONE) == (1600, 800)
    # Sunday 22:00 → Monday 06:00 is not a frame (only Saturday's)
    assert split_by_frames(800, utc(2026, 1, 4, 22), utc(2026, 1, 5, 6), saturday_night, UTC_ZONE) == (800, 0)


def test_dst_spring_forward_night_is_three_hours():
    # 2026-03-29 Europe/Berlin: 00:00 CET = 23:00 UTC, 04:00 CEST = 02:00 UTC
    assert frame_windows(utc(2026, 3, 28, 12), utc(2026, 3, 29, 12), (NIGHT,), BERLIN) == [
        (utc(2026, 3, 28, 23), utc(2026, 3, 29, 2))]
    # the whole local day is 23 real hours, 3 of them in the frame
    begin, end = local(BERLIN, 2026, 3, 29), local(BERLIN, 2026, 3, 30)
    assert split_by_frames(23_000, begin, end, (NIGHT,), BERLIN) == (20_000, 3_000)


def test_dst_fall_back_night_is_five_hours():
    # 2026-10-25 Europe/Berlin: 00:00 CEST = 22:00 UTC, 04:00 CET = 03:00 UTC
    assert frame_windows(utc(2026, 10, 24, 12), utc(2026, 10, 25, 12), (NIGHT,), BERLIN) == [
        (utc(2026, 10, 24, 22), utc(2026, 10, 25, 3))]
    begin, end = local(BERLIN, 2026, 10, 25), local(BERLIN, 2026, 10, 26)
    assert split_by_frames(25_000, begin, end, (NIGHT,), BERLIN) == (20_000, 5_000)


def test_dst_split_uses_real_time_for_local_datetimes():
    # 00:00-06:00 local on 2026-03-29 is 5 real hours, 3 of them in the frame
    # (wall-clock arithmetic would say 4 of 6)
    begin, end = local(BERLIN, 2026, 3, 29, 0), local(BERLIN, 2026, 3, 29, 6)
    assert split_by_frames(5_000, begin, end, (NIGHT,), BERLIN) == (2_000, 3_000)


def test_dst_new_york():
    # 2026-03-08: 00:00 EST = 05:00 UTC, 04:00 EDT = 08:00 UTC; 2026-11-01: 04:00 UTC → 09:00 UTC
    assert frame_windows(utc(2026, 3, 8), utc(2026, 3, 9), (NIGHT,), NEW_YORK) == [
        (utc(2026, 3, 8, 5), utc(2026, 3, 8, 8))]
    assert frame_windows(utc(2026, 11, 1), utc(2026, 11, 1, 12), (NIGHT,), NEW_YORK) == [
        (utc(2026, 11, 1, 4), utc(2026, 11, 1, 9))]


def test_zero_length_interval_goes_to_the_side_of_its_end():
    inside, outside = utc(2026, 11, 3, 1), utc(2026, 11, 3, 12)
    assert split_by_frames(999, inside, inside, (NIGHT,), UTC_ZONE) == (0, 999)
    assert split_by_frames(999, outside, outside, (NIGHT,), UTC_ZONE) == (999, 0)
    # begin after end (clock skew) is treated as zero length too
    assert split_by_frames(999, utc(2026, 11, 3, 2), inside, (NIGHT,), UTC_ZONE) == (0, 999)


def test_split_is_exact_with_awkward_fractions():
    # 1 hour of 3 inside; 10 bytes do not divide by 3
    normal, frame = split_by_frames(10, utc(2026, 11, 3, 3), utc(2026, 11, 3, 6), (NIGHT,), UTC_ZONE)
    assert normal + frame == 10
    assert frame in (3, 4)
    normal, frame = split_by_frames(2**64 - 1, utc(2026, 11, 3, 3), utc(2026, 11, 3, 6), (NIGHT,), UTC_ZONE)
    assert normal + frame == 2**64 - 1
    assert abs(frame * 3 - (2**64 - 1)) < 3


@pytest.mark.parametrize("begin, end", [
    (datetime(2026, 11, 3, 0), utc(2026, 11, 3, 8)),
    (utc(2026, 11, 3, 0), datetime(2026, 11, 3, 8)),
])
def test_split_refuses_naive(begin, end):
    with pytest.raises(ValueError, match="naive"):
        split_by_frames(100, begin, end, (NIGHT,), UTC_ZONE)
