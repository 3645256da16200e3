"""Billing periods and bonus time frames, in the service's time zone.

Pure functions of their inputs: the current time is always a parameter. All
datetimes are timezone-aware; arithmetic on instants is done in UTC and wall
clock times (midnight, 00:00-04:00) are placed with ``zoneinfo``, so a DST
change makes a night frame 3 or 5 real hours long, as it really is.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

ALL_DAYS = frozenset(range(7))  # Monday = 0 ... Sunday = 6, as date.weekday()
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: times must carry a time zone")


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


def _period_start_day(year: int, month: int, billing_day: int) -> date:
    # Billing day 29-31 falls on the month's last day in shorter months.
    return date(year, month, min(billing_day, calendar.monthrange(year, month)[1]))


def _add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # inclusive, local midnight in the service's zone
    end: datetime  # exclusive

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    @property
    def label(self) -> str:
        return self.start.strftime("%Y-%m-%d")


def period_at(moment: datetime, tz: ZoneInfo, billing_day: int | None = None) -> Period:
    """The billing period containing ``moment``.

    ``billing_day`` None or 1 = calendar month; 2-31 = the period starts on that
    day of each month (clamped to the month's last day).
    """
    day = billing_day or 1
    last = _last_period.get((tz, day))
    # The accounting applier asks about the same month thousands of times a second.
    if last is not None and moment.tzinfo is not None and last.start <= moment < last.end:
        return last
    _require_aware(moment)
    if not 1 <= day <= 31:
        raise ValueError(f"billing day must be 1-31, not {billing_day}")
    local = moment.astimezone(tz).date()
    year, month = local.year, local.month
    start = _period_start_day(year, month, day)
    if local < start:
        year, month = _add_months(year, month, -1)
        start = _period_start_day(year, month, day)
    next_year, next_month = _add_months(year, month, 1)
    end = _period_start_day(next_year, next_month, day)
    period = _last_period[(tz, day)] = Period(_local_midnight(start, tz), _local_midnight(end, tz))
    return period


_last_period: dict[tuple[ZoneInfo, int], Period] = {}


def months_after(moment: datetime, months: int, tz: ZoneInfo) -> datetime:
    """The same local day ``months`` later (clamped), at local midnight: expiry dates."""
    _require_aware(moment)
    local = moment.astimezone(tz)
    year, month = _add_months(local.year, local.month, months)
    day = min(local.day, calendar.monthrange(year, month)[1])
    return _local_midnight(date(year, month, day), tz)


@dataclass(frozen=True)
class TimeFrame:
    """A daily window of bonus time, e.g. 00:00-04:00 on every day.

    ``end <= start`` crosses midnight (22:00-06:00); ``start == end`` is the whole
    day. ``days`` are the weekdays on which the window *starts*.
    """

    start: time
    end: time
    days: frozenset[int] = ALL_DAYS

    def windows_on(self, day: date, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
        if day.weekday() not in self.days:
            return None
        begin = datetime.combine(day, self.start, tzinfo=tz)
        end_day = day if self.end > self.start else day + timedelta(days=1)
        return begin, datetime.combine(end_day, self.end, tzinfo=tz)

    def describe(self) -> str:
        days = "" if self.days == ALL_DAYS else " " + ",".join(DAY_NAMES[d] for d in sorted(self.days))
        return f"{self.start:%H:%M}-{self.end:%H:%M}{days}"


def parse_time_frame(text: str) -> TimeFrame:
    """``'00:00-04:00'`` or ``'22:00-06:00 sat,sun'`` → TimeFrame."""
    parts = text.strip().split()
    if not parts or len(parts) > 2 or "-" not in parts[0]:
        raise ValueError(f"not a time frame: {text!r} (write it like 00:00-04:00 or 22:00-06:00 sat,sun)")
    start_text, end_text = parts[0].split("-", 1)
    try:
        start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
    except ValueError:
        raise ValueError(f"not a time frame: {text!r} (times are HH:MM)") from None
    if start.tzinfo is not None or end.tzinfo is not None:
        # fromisoformat reads "04:00-05:00" as a UTC offset; frames are wall clock in the service's zone
        raise ValueError(f"not a time frame: {text!r} (times are HH:MM, without a UTC offset)")
    days = ALL_DAYS
    if len(parts) == 2:
        try:
            days = frozenset(DAY_NAMES.index(d.strip().lower()[:3]) for d in parts[1].split(","))
        except ValueError:
            raise ValueError(f"unknown weekday in {text!r}: use mon,tue,wed,thu,fri,sat,sun") from None
    return TimeFrame(start, end, days)


def frame_windows(begin: datetime, end: datetime, frames: tuple[TimeFrame, ...],
                  tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """The merged bonus windows (UTC) overlapping ``[begin, end)``."""
    begin, end = begin.astimezone(timezone.utc), end.astimezone(timezone.utc)
    first = begin.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date()
    windows = []
    day = first
    while day <= last:
        for frame in frames:
            window = frame.windows_on(day, tz)
            if window:
                lo = max(window[0].astimezone(timezone.utc), begin)
                hi = min(window[1].astimezone(timezone.utc), end)
                if lo < hi:
                    windows.append((lo, hi))
        day += timedelta(days=1)
    windows.sort()
    merged: list[tuple[datetime, datetime]] = []
    for lo, hi in windows:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def in_frame(moment: datetime, frames: tuple[TimeFrame, ...], tz: ZoneInfo) -> bool:
    _require_aware(moment)
    return bool(frame_windows(moment, moment + timedelta(microseconds=1), frames, tz))


# Longest interval split by time; older bytes (a session without Start that ran
# for a year) are attributed as if used within the last MAX_SPLIT before the update.
MAX_SPLIT = timedelta(days=62)


def split_by_frames(delta: int, begin: datetime, end: datetime,
                    frames: tuple[TimeFrame, ...], tz: ZoneInfo) -> tuple[int, int]:
    """Split ``delta`` bytes used in ``[begin, end]`` into (normal, bonus-frame).

    Proportional to the time inside the frames; integer maths, so
    ``normal + frame == delta`` exactly. A zero-length interval puts every byte
    on the side of ``end``.
    """
    _require_aware(begin)
    _require_aware(end)
    if delta == 0 or not frames:
        return delta, 0
    # Same-tzinfo subtraction is wall-clock time in Python; real seconds need UTC.
    begin, end = begin.astimezone(timezone.utc), end.astimezone(timezone.utc)
    begin = max(begin, end - MAX_SPLIT)
    if begin >= end:
        return (0, delta) if in_frame(end, frames, tz) else (delta, 0)
    inside = sum(((hi - lo) for lo, hi in frame_windows(begin, end, frames, tz)), timedelta())
    total_us = (end - begin) // timedelta(microseconds=1)
    inside_us = inside // timedelta(microseconds=1)
    frame = delta * inside_us // total_us
    return delta - frame, frame
