"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) as the share of samples per
function: inclusive (the function or anything it calls is running) and self (the function
itself is the innermost Python frame).

    .venv/bin/python -m bench.profile_summary bench/out/profiles/transition_distinct_c32.txt
    .venv/bin/python -m bench.profile_summary FILE --top 40 --match flowstate

`bench.run --profile DIR` writes such files (py-spy record of the server while a scenario runs).
Idle samples (the event loop waiting in epoll/select) are counted separately, so percentages are
of the samples in which the server was busy, unless ``--with-idle``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_IDLE = re.compile(r"\b(select|poll|epoll_wait|_run_once)\b.*\((selectors|asyncio/base_events)")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Profile:
    """Sample counts per function."""

    total: int
    idle: int
    inclusive: Counter[str]
    self_time: Counter[str]


def _name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``file.py:func`` (line numbers merged)."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/clients/python/src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{match['func']}"


def parse(lines: Iterable[str]) -> Profile:
    """Read collapsed stacks: ``frame;frame;...;frame count`` per line."""
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = idle = 0
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f]
        total += count
        if frames and _IDLE.search(frames[-1]):
            idle += count
            continue
        names = [_name(f) for f in frames]
        for name in set(names):
            inclusive[name] += count
        if names:
            self_time[names[-1]] += count
    return Profile(total, idle, inclusive, self_time)


def report(profile: Profile, *, top: int, match: str, with_idle: bool) -> str:
    """The two top lists as text."""
    base = profile.total if with_idle else profile.total - profile.idle
    base = max(base, 1)
    lines = [
        f"samples: {profile.total}, idle (event loop waiting): {profile.idle} "
        f"({profile.idle / max(profile.total, 1):.0%}); percentages of "
        f"{'all' if with_idle else 'busy'} samples ({base})",
        "",
        "inclusive:",
    ]
    for name, count in profile.inclusive.most_common():
        if match and match not in name:
            continue
        lines.append(f"  {count / base:6.1%}  {name}")
        if len(lines) > top + 3:
            break
    lines += ["", "self:"]
    start = len(lines)
    for name, count in profile.self_time.most_common():
        if match and match not in name:
            continue
        lines.append(f"  {count / base:6.1%}  {name}")
        if len(lines) - start >= top:
            break
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="Summarise a py-spy raw profile")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", default="", help="only functions whose name contains this")
    parser.add_argument("--with-idle", action="store_true", help="percentages of all samples")
    args = parser.parse_args(argv)
    with args.profile.open() as handle:
        profile = parse(handle)
    print(report(profile, top=args.top, match=args.match, with_idle=args.with_idle))


if __name__ == "__main__":
    main(sys.argv[1:])
