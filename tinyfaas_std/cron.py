"""Pure parsing of a function's `schedule` (SPEC section 11) and the arithmetic of when it next fires.

Strategy: this module owns the schedule syntax: five cron fields in UTC, the `@daily`-style names, and
`@every <n>s|m|h`. `parse` turns text into a frozen `Schedule` or raises `BadSchedule` (400, `bad_schedule`) whose
message and `field` extra name the part that is wrong (`minute`, `hour`, `day of month`, `month`, `day of week`,
`@every`, or `schedule` for the expression as a whole). `Schedule.next_after` is plain calendar arithmetic. It
never reads the clock, sleeps, or starts a thread: `scheduler.py` owns waiting.

Cron follows Vixie cron: day of week 0 and 7 are Sunday; `a/n` means `a-max/n`; names are three letters in any
case; day of month and day of week are ORed when both are restricted (neither starts with `*`), else ANDed.

`next_after` skips a month that does not match, then a day, then an hour, then a minute, so a year-long gap
costs a few hundred steps, never a walk over every minute.

"Never matches" (`0 0 30 2 *`) is decided exactly, not by searching a few years ahead. Such a schedule must be
in AND mode, because in OR mode every month has every weekday. Every weekday falls on every (month, day) pair
that exists within the 400-year Gregorian cycle (Feb 29 included, since its weekday moves 5 every 4 years).
So a schedule can match iff one of its months has one of its days. A bounded search would wrongly reject a
rare schedule like `0 0 29 2 */7` (Feb 29 on a Sunday: 2032, 2060, 2088, 2128).
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import BadRequest

__all__ = ["BadSchedule", "Schedule", "parse", "MAX_LENGTH", "MAX_EVERY_SECONDS"]

MAX_LENGTH = 200  # a real schedule fits in a line; the cap also bounds the work of parsing junk
MAX_EVERY_SECONDS = 366 * 86400  # a year: keeps t + interval inside datetime's range; longer is a cron schedule
_CYCLE_YEARS = 400  # the Gregorian calendar repeats (weekdays included) every 400 years

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names that stand for lowest, lowest + 1, ...)
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _WEEKDAYS),
)
_LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # Feb 29 exists in leap years
_MACROS = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *",
}
_UNITS = {"s": 1, "m": 60, "h": 3600}
_EVERY = re.compile(r"([0-9]+)([smh])")
_BLANKS = re.compile(r"[ \t]+")
_NUMBER = re.compile(r"[0-9]+")  # ASCII only: int() would also take '+1', '1_0' and other scripts' digits


class BadSchedule(BadRequest):
    code = "bad_schedule"

    def __init__(self, field: str, problem: str, **extra: Any) -> None:
        super().__init__(f"{field}: {problem}", field=field, **extra)


@dataclass(frozen=True, slots=True)
class _Cron:
    minutes: tuple[int, ...]  # each sorted, without repeats
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday; 7 is folded into 0
    any_day: bool  # day of month or day of week starts with '*': the two are ANDed, else ORed

    def day_matches(self, year: int, month: int, day: int) -> bool:
        in_month = day in self.days
        in_week = (calendar.weekday(year, month, day) + 1) % 7 in self.weekdays
        return (in_month and in_week) if self.any_day else (in_month or in_week)


@dataclass(frozen=True, slots=True)
class Schedule:
    expr: str
    every: float | None = None  # seconds between runs for `@every`, else None
    _cron: _Cron | None = field(default=None, repr=False)

    def next_after(self, t: datetime) -> datetime:
        """The first run strictly after the aware datetime `t`, in UTC: `t` plus the interval for `@every`."""
        if t.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        t = t.astimezone(timezone.utc)
        if self.every is not None:
            return t + timedelta(seconds=self.every)
        assert self._cron is not None
        return _next_cron(self._cron, t)


def parse(expr: str) -> Schedule:
    """The schedule `expr` stands for; `BadSchedule` names the field that is wrong."""
    if len(expr) > MAX_LENGTH:
        raise BadSchedule("schedule", f"longer than {MAX_LENGTH} characters")
    text = expr.strip()
    if not text:
        raise BadSchedule("schedule", "empty; expected five cron fields, @daily-style or @every <n>s|m|h")
    words = _BLANKS.split(text)
    head = words[0].lower()
    if head == "@every":
        return Schedule(text, every=float(_every(words[1:])))
    if head.startswith("@"):
        if head not in _MACROS or len(words) > 1:
            raise BadSchedule("schedule", f"{text!r} is not one of {', '.join(_MACROS)} or @every <n>s|m|h")
        words = _MACROS[head].split()
    if len(words) != len(_FIELDS):
        raise BadSchedule("schedule", f"expected 5 fields (minute hour day-of-month month day-of-week), "
                                      f"got {len(words)}")
    sets = [_field(word, *spec) for word, spec in zip(words, _FIELDS)]
    weekdays = tuple(sorted({day % 7 for day in sets[4]}))
    cron = _Cron(sets[0], sets[1], sets[2], sets[3], weekdays, words[2].startswith("*") or words[4].startswith("*"))
    if cron.any_day and not any(day <= _LONGEST_MONTH[month - 1] for month in cron.months for day in cron.days):
        raise BadSchedule("schedule", f"{text!r} never matches: none of its months has any of its days")
    return Schedule(text, _cron=cron)


def _every(rest: list[str]) -> int:
    match = _EVERY.fullmatch(rest[0].lower()) if len(rest) == 1 else None
    if match is None:
        raise BadSchedule("@every", "expected '@every <n>s|m|h' with a whole number n, e.g. '@every 5m'")
    seconds = int(match[1]) * _UNITS[match[2]]
    if not 1 <= seconds <= MAX_EVERY_SECONDS:
        raise BadSchedule("@every", f"{rest[0]} is out of 1s-{MAX_EVERY_SECONDS // 3600}h")
    return seconds


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> tuple[int, ...]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise BadSchedule(name, f"empty item in {text!r}")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text):
                raise BadSchedule(name, f"step {step_text!r} in {item!r} is not a whole number")
            step = int(step_text)
            if step == 0:
                raise BadSchedule(name, f"step 0 in {item!r}")
        if base == "*":
            first, last = low, high
        else:
            first_text, dash, last_text = base.partition("-")
            first = _value(first_text, name, low, high, names)
            last = _value(last_text, name, low, high, names) if dash else (high if slash else first)
            if first > last:
                raise BadSchedule(name, f"range {base!r} is reversed")
        values.update(range(first, last + 1, step))
    return tuple(sorted(values))


def _value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if _NUMBER.fullmatch(text):
        value = int(text)
        if not low <= value <= high:
            raise BadSchedule(name, f"{value} is out of {low}-{high}")
        return value
    if text.lower() in names:
        return low + names.index(text.lower())
    hint = f" or a name {names[0]}-{names[-1]}" if names else ""
    raise BadSchedule(name, f"{text!r} is not a number {low}-{high}{hint}")


def _next_cron(cron: _Cron, t: datetime) -> datetime:
    start = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    year, month, day, hour, minute = start.year, start.month, start.day, start.hour, start.minute
    while year <= start.year + _CYCLE_YEARS:  # parse() proved a match comes well before that
        if month not in cron.months:
            later = bisect_left(cron.months, month)
            if later == len(cron.months):
                year, later = year + 1, 0
            month, day, hour, minute = cron.months[later], 1, 0, 0
        elif day > calendar.monthrange(year, month)[1]:
            year, month, day, hour, minute = year + (month == 12), month % 12 + 1, 1, 0, 0
        elif not cron.day_matches(year, month, day):
            day, hour, minute = day + 1, 0, 0
        elif (i := bisect_left(cron.hours, hour)) == len(cron.hours):
            day, hour, minute = day + 1, 0, 0
        elif cron.hours[i] != hour:
            hour, minute = cron.hours[i], 0
        elif (j := bisect_left(cron.minutes, minute)) == len(cron.minutes):
            hour, minute = hour + 1, 0
        else:
            return datetime(year, month, day, hour, cron.minutes[j], tzinfo=timezone.utc)
    raise BadSchedule("schedule", "never matches")
