"""Durations as users write them: ``"250ms"``, ``"5s"``, ``"1m"``, ``"1h"``, ``"1d"`` or a ``timedelta``.

Examples
--------
>>> from lockgate.operators.durations import parse_duration
>>> parse_duration("1m")
datetime.timedelta(seconds=60)
>>> parse_duration("250ms").total_seconds()
0.25
"""

from __future__ import annotations

import re
from datetime import timedelta

from lockgate.errors import PipelineDefinitionError

__all__ = ["Duration", "parse_duration"]

Duration = str | timedelta

_UNITS = {
    "us": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)\s*$")


def parse_duration(value: Duration, *, what: str = "duration", allow_zero: bool = True) -> timedelta:
    """Parse ``value`` into a ``timedelta``; ``what`` names the option in the error.

    Raises
    ------
    PipelineDefinitionError
        When the text is not a number followed by one of us, ms, s, m, h, d, or is negative.
    """
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        delta = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise PipelineDefinitionError(
            f"{what}: cannot read {value!r} as a duration; write a number and a unit "
            f"(one of {', '.join(_UNITS)}), e.g. '250ms', '5s', '1m', or pass a datetime.timedelta"
        )
    if delta < timedelta(0) or (not allow_zero and delta == timedelta(0)):
        raise PipelineDefinitionError(f"{what}: {value!r} must be {'>= 0' if allow_zero else '> 0'}")
    return delta
