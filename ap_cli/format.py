"""Format resources, timestamps and tables for the terminal."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from google.protobuf import timestamp_pb2


def is_set(ts: timestamp_pb2.Timestamp) -> bool:
    """Say whether a timestamp field holds a value (proto3 leaves unset ones at the epoch)."""
    return bool(ts.seconds or ts.nanos)


def format_time(ts: timestamp_pb2.Timestamp) -> str:
    """Format a timestamp in local time to the second, or `-` when unset."""
    if not is_set(ts):
        return "-"
    return ts.ToDatetime(tzinfo=dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def seconds_between(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp) -> float | None:
    """Return the seconds from `start` to `end`, or None when either is unset."""
    if not (is_set(start) and is_set(end)):
        return None
    return (end.ToNanoseconds() - start.ToNanoseconds()) / 1e9


def format_seconds(seconds: float) -> str:
    """Format a duration as `120ms`, `3.42s` or `2m05s`."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Lay rows out in left-aligned columns under a header line."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [list(headers), *rows]
    ]
    return "\n".join(lines)


def format_fields(pairs: list[tuple[str, str]]) -> str:
    """Lay out `label: value` lines with the values aligned; multi-line values are indented."""
    width = max(len(label) for label, _ in pairs) + 2
    lines = []
    for label, value in pairs:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{label + ':':<{width}}{first}")
        lines.extend(" " * width + line for line in rest)
    return "\n".join(lines)
