"""The one place the code reads the wall clock.

Dates decide what a request may do (a model retires, a price changes on a UTC day), so every date
and timestamp comes from here and tests pin it with `pinned()` instead of depending on the day
they run. Durations (timeouts, rates, progress) use `time.monotonic()` directly: they are not dates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator

_source: Callable[[], float] = time.time


def now() -> float:
    """Unix seconds (UTC)."""
    return _source()


def utcnow() -> dt.datetime:
    return dt.datetime.fromtimestamp(_source(), dt.timezone.utc)


_day: tuple[float, float, dt.date] = (0.0, 0.0, dt.date.min)  # [start, end) of the day last asked for, and the day


def today() -> dt.date:
    """The UTC day: the day a retirement or a price change is judged by (asked for on every request,
    so the day is kept with its bounds and worked out again only when the clock leaves it)."""
    global _day
    t = _source()
    start, end, day = _day
    if not start <= t < end:
        day = dt.datetime.fromtimestamp(t, dt.timezone.utc).date()
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()
        _day = (start, start + 86400, day)
    return day


@contextlib.contextmanager
def pinned(when: dt.datetime | dt.date | str | float) -> Iterator[None]:
    """Start this process's clock at `when` (a date means its 12:00 UTC), for tests.

    The pinned clock keeps ticking from there, so windows and expiries still pass in real time.
    """
    global _source
    offset = _stamp(when) - time.time()
    saved, _source = _source, (lambda: time.time() + offset)
    try:
        yield
    finally:
        _source = saved


def _stamp(when: dt.datetime | dt.date | str | float) -> float:
    if isinstance(when, (int, float)):
        return float(when)
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when) if "T" in when or " " in when else dt.date.fromisoformat(when)
    if not isinstance(when, dt.datetime):
        when = dt.datetime(when.year, when.month, when.day, 12, tzinfo=dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()
