"""The schedule parser and `next_after` (cron.py, SPEC section 11): worked examples, rejected expressions, and
properties checked against an independent brute-force matcher written here from the cron rules, not from cron.py."""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from fuzzing import fuzz

from tinyfaas_std.cron import BadSchedule, Schedule, parse
from tinyfaas_std.errors import BadRequest

UTC = timezone.utc


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- worked examples ----------------------------------------------------------------------------------------------
# 2025-03-01 is a Saturday; 2025-03-13 a Thursday; 2032-02-29 the first Feb 29 on a Sunday after 2025.

NEXT = [
    ("* * * * *", "2025-03-01 12:00", "2025-03-01 12:01"),
    ("* * * * *", "2025-03-01 12:00:30.5", "2025-03-01 12:01"),
    ("* * * * *", "2025-12-31 23:59:59.999999", "2026-01-01 00:00"),
    ("*/15 * * * *", "2025-03-01 12:07", "2025-03-01 12:15"),
    ("*/15 * * * *", "2025-03-01 12:14:59.999999", "2025-03-01 12:15"),
    ("*/15 * * * *", "2025-03-01 12:15", "2025-03-01 12:30"),  # at a match: strictly after
    ("*/15 * * * *", "2025-03-01 23:50", "2025-03-02 00:00"),
    ("10-30/10 * * * *", "2025-03-01 12:31", "2025-03-01 13:10"),
    ("5/20 * * * *", "2025-03-01 12:45", "2025-03-01 13:05"),  # a/n is a-59/n: 5, 25, 45
    ("0 9-17/4 * * *", "2025-03-01 13:00", "2025-03-01 17:00"),
    ("0 9-17/4 * * *", "2025-03-01 17:00", "2025-03-02 09:00"),
    ("1,2,58 * * * *", "2025-03-01 12:02", "2025-03-01 12:58"),
    ("0,30 8,20 * * *", "2025-03-01 08:30", "2025-03-01 20:00"),
    ("0 0 1 jan *", "2025-03-01 00:00", "2026-01-01 00:00"),
    ("0 0 1 JAN,Mar *", "2025-02-01 00:00", "2025-03-01 00:00"),
    ("0 12 * * mon-fri", "2025-03-01 00:00", "2025-03-03 12:00"),
    ("0 12 * * Mon-Fri", "2025-03-03 12:00", "2025-03-04 12:00"),
    ("0 0 * * 7", "2025-03-01 00:00", "2025-03-02 00:00"),  # 7 is Sunday, like 0
    ("0 0 * * 0", "2025-03-01 00:00", "2025-03-02 00:00"),
    ("0 0 * * 5-7", "2025-03-03 00:00", "2025-03-07 00:00"),
    ("0 0 * * 1/2", "2025-03-01 00:00", "2025-03-02 00:00"),  # 1-7/2: mon, wed, fri, sun
    ("0 0 13 * 5", "2025-03-01 00:00", "2025-03-07 00:00"),  # both restricted: Friday OR the 13th
    ("0 0 13 * 5", "2025-03-08 00:00", "2025-03-13 00:00"),
    ("30 4 1,15 * 5", "2025-03-01 00:00", "2025-03-01 04:30"),
    ("0 0 13 * *", "2025-03-01 00:00", "2025-03-13 00:00"),  # day of week '*': AND
    ("0 0 13 * */7", "2025-03-01 00:00", "2025-04-13 00:00"),  # '*/7' starts with '*': the 13th AND a Sunday
    ("0 0 31 * *", "2025-03-31 00:00", "2025-05-31 00:00"),  # April has 30 days
    ("0 0 31 * *", "2025-05-31 00:00", "2025-07-31 00:00"),
    ("0 0 29 2 *", "2025-03-01 00:00", "2028-02-29 00:00"),  # leap years only
    ("0 0 29 2 *", "2096-03-01 00:00", "2104-02-29 00:00"),  # 2100 is not a leap year
    ("0 0 29 2 */7", "2025-03-01 00:00", "2032-02-29 00:00"),  # rare, but not never
    ("0 0 * * *", "2025-02-28 00:00", "2025-03-01 00:00"),
    ("0 0 * * *", "2024-02-28 00:00", "2024-02-29 00:00"),
    ("0 0 1 */3 *", "2025-03-01 00:00", "2025-04-01 00:00"),
    ("0 0 1 1 *", "2025-06-01 00:00", "2026-01-01 00:00"),
    ("59 23 31 12 *", "2025-12-31 23:59", "2026-12-31 23:59"),
    ("  0\t0  * *   sun ", "2025-03-01 00:00", "2025-03-02 00:00"),
    ("@hourly", "2025-03-01 12:00", "2025-03-01 13:00"),
    ("@hourly", "2025-12-31 23:00:01", "2026-01-01 00:00"),
    ("@daily", "2025-03-01 00:00", "2025-03-02 00:00"),
    ("@midnight", "2025-02-28 23:59:59", "2025-03-01 00:00"),
    ("@weekly", "2025-03-01 00:00", "2025-03-02 00:00"),
    ("@monthly", "2025-12-15 08:00", "2026-01-01 00:00"),
    ("@yearly", "2025-01-01 00:00", "2026-01-01 00:00"),
    ("@annually", "2024-12-31 23:59:59", "2025-01-01 00:00"),
    ("@every 1s", "2025-03-01 12:00:00.25", "2025-03-01 12:00:01.25"),
    ("@every 5m", "2025-03-01 12:03:07", "2025-03-01 12:08:07"),
    ("@every 2h", "2025-12-31 23:00", "2026-01-01 01:00"),
    ("@every 90s", "2025-03-01 12:00", "2025-03-01 12:01:30"),
]


@pytest.mark.parametrize("expr, after, expected", NEXT)
def test_next_after(expr: str, after: str, expected: str) -> None:
    schedule = parse(expr)
    assert schedule.expr == expr.strip()
    got = schedule.next_after(_t(after))
    assert got == _t(expected) and got.utcoffset() == timedelta(0)


def test_every_is_seconds_and_cron_has_none() -> None:
    assert parse("@every 2h").every == 7200.0
    assert parse("@every 1s").every == 1.0
    assert parse("*/5 * * * *").every is None and parse("@daily").every is None
    assert isinstance(parse("@daily"), Schedule)


def test_next_after_accepts_another_zone_and_answers_in_utc() -> None:
    paris = timezone(timedelta(hours=2))
    got = parse("0 12 * * *").next_after(datetime(2025, 3, 1, 13, 30, tzinfo=paris))  # 11:30 UTC
    assert got == _t("2025-03-01 12:00") and got.tzinfo == UTC
    with pytest.raises(ValueError):
        parse("* * * * *").next_after(datetime(2025, 3, 1))


# -- rejected expressions -------------------------------------------------------------------------------------

BAD = [
    ("", "schedule"), ("   ", "schedule"), ("x" * 201, "schedule"), ("* " * 100 + "*", "schedule"),
    ("* * * *", "schedule"), ("* * * * * *", "schedule"), ("x", "schedule"),
    ("@reboot", "schedule"), ("@daily 0", "schedule"), ("@", "schedule"),
    ("0 0 30 2 *", "schedule"), ("0 0 31 2,4,6,9,11 *", "schedule"), ("0 0 30-31 feb *", "schedule"),
    ("60 * * * *", "minute"), ("-1 * * * *", "minute"), ("+1 * * * *", "minute"), ("\u0663 * * * *", "minute"),
    ("5-1 * * * *", "minute"), ("*/0 * * * *", "minute"), ("1,,2 * * * *", "minute"), ("1, * * * *", "minute"),
    (",1 * * * *", "minute"), ("1-2-3 * * * *", "minute"), ("*/5/2 * * * *", "minute"), ("*/ * * * *", "minute"),
    ("*-5 * * * *", "minute"), ("1-* * * * *", "minute"), ("a * * * *", "minute"), ("1_0 * * * *", "minute"),
    ("*/1.5 * * * *", "minute"), ("jan * * * *", "minute"),
    ("0 24 * * *", "hour"), ("0 23-0 * * *", "hour"), ("0 */-1 * * *", "hour"),
    ("0 0 0 * *", "day of month"), ("0 0 32 * *", "day of month"), ("0 0 1/0 * *", "day of month"),
    ("0 0 * 0 *", "month"), ("0 0 * 13 *", "month"), ("0 0 * foo *", "month"), ("0 0 * dec-jan *", "month"),
    ("0 0 * january *", "month"), ("0 0 * mon *", "month"),
    ("0 0 * * 8", "day of week"), ("0 0 * * mon-sun", "day of week"), ("0 0 * * funday", "day of week"),
    ("0 0 * * jan", "day of week"), ("0 0 * * 1-", "day of week"),
    ("@every 0s", "@every"), ("@every 0h", "@every"), ("@every 1d", "@every"), ("@every", "@every"),
    ("@every 5", "@every"), ("@every -5s", "@every"), ("@every 1.5s", "@every"), ("@every 5s 5s", "@every"),
    ("@every s", "@every"), ("@every 9999h", "@every"),
]


@pytest.mark.parametrize("expr, field", BAD)
def test_bad_schedule_names_the_field(expr: str, field: str) -> None:
    with pytest.raises(BadSchedule) as caught:
        parse(expr)
    exc = caught.value
    assert isinstance(exc, BadRequest) and exc.status == 400 and exc.code == "bad_schedule"
    assert exc.extra["field"] == field and exc.message.startswith(field + ": ")
    assert exc.body()["error"]["field"] == field


def test_length_limit_is_200_characters_of_otherwise_valid_input() -> None:
    minutes = ",".join(["7"] * 95) + ",07"  # 193 characters
    assert parse(minutes + " * * * *").next_after(_t("2025-03-01 12:00")) == _t("2025-03-01 12:07")  # 200
    with pytest.raises(BadSchedule) as caught:
        parse(minutes + "  * * * *")
    assert caught.value.extra["field"] == "schedule" and "200" in caught.value.message


def test_messages_say_what_is_wrong() -> None:
    def message(expr: str) -> str:
        with pytest.raises(BadSchedule) as caught:
            parse(expr)
        return caught.value.message

    assert message("0 0 32 * *") == "day of month: 32 is out of 1-31"
    assert "never matches" in message("0 0 30 2 *")
    assert "reversed" in message("5-1 * * * *") and "step 0" in message("*/0 * * * *")
    assert "empty" in message("1,,2 * * * *") and "got 4" in message("* * * *")


# -- an independent matcher -----------------------------------------------------------------------------------

_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
           "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_LIMITS = [(0, 59, []), (0, 23, []), (1, 31, []), (1, 12, _MONTH_NAMES), (0, 7, _DAY_NAMES)]


class Matcher:
    """Decides whether one minute matches, by testing each list item as a predicate (no value sets)."""

    def __init__(self, expr: str) -> None:
        fields = _MACROS.get(expr.strip().lower(), expr).split()
        assert len(fields) == 5
        self.fields = fields
        self.both_restricted = not fields[2].startswith("*") and not fields[4].startswith("*")

    def _ok(self, index: int, value: int) -> bool:
        low, high, names = _LIMITS[index]

        def number(text: str) -> int:
            return low + names.index(text.lower()) if text.lower() in names else int(text)

        for item in self.fields[index].split(","):
            base, slash, step = item.partition("/")
            if base == "*":
                first, last = low, high
            elif "-" in base:
                first, last = (number(part) for part in base.split("-"))
            else:
                first = number(base)
                last = high if slash else first
            if first <= value <= last and (value - first) % int(step or 1) == 0:
                return True
        return False

    def month(self, month: int) -> bool:
        return self._ok(3, month)

    def day(self, d: date) -> bool:
        if not self.month(d.month):
            return False
        weekday = d.isoweekday() % 7
        in_month = self._ok(2, d.day)
        in_week = self._ok(4, weekday) or (weekday == 0 and self._ok(4, 7))
        return (in_month or in_week) if self.both_restricted else (in_month and in_week)

    def __call__(self, t: datetime) -> bool:
        return (t.second == 0 and t.microsecond == 0 and self.day(t.date())
                and self._ok(1, t.hour) and self._ok(0, t.minute))

    def first_after(self, t: datetime) -> datetime:
        """The first matching minute after t: day by day, then every minute of the first day that matches."""
        first = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
        d = first.date()
        while True:
            if self.day(d):
                midnight = datetime(d.year, d.month, d.day, tzinfo=UTC)
                for offset in range(1440):
                    moment = midnight + timedelta(minutes=offset)
                    if moment >= first and self(moment):
                        return moment
            d += timedelta(days=1)


@pytest.mark.parametrize("expr, after, expected", [row for row in NEXT if not row[0].startswith("@every")])
def test_the_matcher_agrees_with_the_worked_examples(expr: str, after: str, expected: str) -> None:
    assert Matcher(expr).first_after(_t(after)) == _t(expected)


# -- properties -----------------------------------------------------------------------------------------------

@st.composite
def _field(draw: st.DrawFn, index: int) -> str:
    low, high, names = _LIMITS[index]

    def show(value: int) -> str:
        if value - low < len(names) and draw(st.booleans()):
            name = names[value - low]
            return draw(st.sampled_from([name, name.upper(), name.title()]))
        return str(value)

    if draw(st.integers(0, 3)) == 0:
        return "*"
    items = []
    for _ in range(draw(st.integers(1, 3))):
        first = draw(st.integers(low, high))
        last = draw(st.integers(first, high))
        step = draw(st.integers(1, high - low + 2))
        a, b = show(first), show(last)
        items.append(draw(st.sampled_from(["*", a, f"{a}-{b}", f"*/{step}", f"{a}-{b}/{step}", f"{a}/{step}"])))
    return ",".join(items)


_EXPRESSIONS = st.one_of(
    st.sampled_from(sorted(_MACROS)),
    st.tuples(*(_field(i) for i in range(5))).map(" ".join),
)
_TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 31, 23, 59, 59),
                      timezones=st.just(UTC))


def _never(matcher: Matcher) -> bool:
    """No day matches in 2000-2027: 28 years with a leap year every 4 put every date on every weekday."""
    return not any(matcher.day(date(year, month, day)) for year in range(2000, 2028) for month in range(1, 13)
                   if matcher.month(month) for day in range(1, calendar.monthrange(year, month)[1] + 1))


@fuzz(300)
@given(_EXPRESSIONS, _TIMES)
def test_random_cron_next_after_is_the_first_match_strictly_after(expr: str, t: datetime) -> None:
    matcher = Matcher(expr)
    try:
        schedule = parse(expr)
    except BadSchedule as exc:
        assert "never matches" in exc.message and _never(matcher)
        return
    got = schedule.next_after(t)
    assert got > t and matcher(got) and got.tzinfo == UTC
    assert got == matcher.first_after(t)
    if got - t <= timedelta(days=1):  # small gaps: every minute in between, without the day skipping
        moment = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
        while moment < got:
            assert not matcher(moment)
            moment += timedelta(minutes=1)


_LATE_DAYS = st.lists(st.sampled_from(["29", "30", "31", "30-31", "29-31", "31/1", "*/29"]),
                      min_size=1, max_size=2).map(",".join)
_SHORT_MONTHS = st.lists(st.sampled_from(["2", "feb", "4", "APR", "6", "9", "11", "9-11/2", "2/2"]),
                         min_size=1, max_size=2).map(",".join)


@fuzz(60)
@given(_LATE_DAYS, _SHORT_MONTHS, st.sampled_from(["*", "*/2", "*/7", "1", "sun", "mon-fri"]))
def test_random_never_matches_exactly_when_no_day_ever_matches(days: str, months: str, weekdays: str) -> None:
    expr = f"0 0 {days} {months} {weekdays}"
    try:
        parse(expr)
    except BadSchedule as exc:
        assert exc.extra["field"] == "schedule" and "never matches" in exc.message
        assert _never(Matcher(expr))
    else:
        assert not _never(Matcher(expr))


@fuzz(100)
@given(st.integers(1, 1000), st.sampled_from([("s", 1), ("m", 60), ("h", 3600)]), _TIMES)
def test_random_every_adds_exactly_the_interval(n: int, unit: tuple[str, int], t: datetime) -> None:
    schedule = parse(f"@every {n}{unit[0]}")
    assert schedule.every == n * unit[1]
    assert schedule.next_after(t) - t == timedelta(seconds=n * unit[1])


@fuzz(300)
@given(st.one_of(st.text(alphabet="0123456789*/-, \t@abcdefhjlmnorstuvwyJMS", max_size=40), st.text(max_size=40)),
       _TIMES)
def test_random_text_is_a_schedule_or_bad_schedule(text: str, t: datetime) -> None:
    try:
        schedule = parse(text)
    except BadSchedule as exc:
        assert exc.status == 400 and exc.extra["field"] in (
            "schedule", "minute", "hour", "day of month", "month", "day of week", "@every")
        return
    assert schedule.expr == text.strip() and schedule.next_after(t) > t


def test_feb_29_fires_only_in_leap_years() -> None:
    schedule, t = parse("0 0 29 2 *"), _t("2000-01-01 00:00")
    runs = [t := schedule.next_after(t) for _ in range(26)]
    assert runs == [_t(f"{year}-02-29 00:00") for year in range(2000, 2105) if calendar.isleap(year)]
