"""Summarise a `py-spy record -f raw` profile by function: self and inclusive share of samples.

    .venv/bin/py-spy record -p PID -d 30 -r 200 -f raw -o cp.raw --nonblocking
    .venv/bin/python bench/profile_summary.py cp.raw [--top 40] [--under NAME]

A raw profile is one line per distinct stack, ``frame;frame;… count``, outermost first.
Idle samples (the event loop waiting in epoll/select) are counted apart, so the shares are
of the time the process was busy. `--under` keeps only stacks through a function whose name
contains NAME (e.g. ``FinishRun`` or ``run_claim``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# Where an asyncio/grpc process sleeps: its samples are idle, not work.
IDLE_LEAVES = ("select (selectors.py", "poll (selectors.py", "wait (threading.py")
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def frame_name(frame: str) -> str:
    """Return `function (file)`, dropping the line number so one function is one row."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/services/", "/devtools/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def main(argv: list[str] | None = None) -> int:
    """Print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--under", default=None)
    args = parser.parse_args(argv)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        leaf = frames[-1].split(" (")[0].rsplit(".", 1)[-1] + " (" + frames[-1].split(" (", 1)[-1]
        if leaf.startswith(IDLE_LEAVES):
            idle += count
            continue
        if args.under and not any(args.under in f for f in frames):
            continue
        busy += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not busy:
        print("no busy samples")
        return 1
    print(f"{busy} busy samples, {idle} idle (event loop waiting)")
    print(f"\n{'self %':>7}  function (own time)")
    for name, count in own.most_common(args.top):
        print(f"{100 * count / busy:7.1f}  {name}")
    print(f"\n{'incl %':>7}  function (with what it calls)")
    for name, count in inclusive.most_common(args.top):
        print(f"{100 * count / busy:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
