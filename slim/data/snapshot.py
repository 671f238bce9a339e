"""Snapshots cut from one source: `data.until` keeps only the interactions with timestamp <= until, so "last week"
and "this week" can be replayed from one dataset. The cut is applied to the events as they are read, before any
filter (items without text, the k-core, short histories), so those apply to the snapshot as if it were the source.
"""

from __future__ import annotations

import datetime

import numpy as np

from slim.data.sources import Source, parse_time


def until_seconds(value) -> int | None:
    """`data.until` (None, epoch seconds, or an ISO 8601 date / date-time; naive = UTC, a date = its midnight)
    -> epoch seconds. Raises ConfigError naming the setting when it cannot be read."""
    from slim.runtime.config import ConfigError

    if value is None:
        return None
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):  # YAML reads 2024-01-31 so
        value = datetime.datetime(value.year, value.month, value.day)
    try:
        return parse_time(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"until: cannot read {value!r} as a time; give epoch seconds (1700000000) or an ISO "
                          "8601 date or date-time (2024-01-31, 2024-01-31T12:00:00Z)") from None


def cut(source: Source, until: int | None) -> Source:
    """The source without its events later than `until` (None: the source as it is). Chunks that lose every event
    are not passed on."""
    if until is None:
        return source

    def chunks(rows: int):
        for users, items, times in source.chunks(rows):
            keep = np.flatnonzero(np.asarray(times, dtype=np.int64) <= until)
            if len(keep) == len(times):
                yield users, items, times
            elif len(keep):
                yield [users[i] for i in keep], [items[i] for i in keep], [times[i] for i in keep]

    return Source(chunks, source.text)
