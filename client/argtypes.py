"""Value types for the scout command's arguments: parse, check, or say what was wrong."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def checked(
    convert: Callable[[str], T], valid: Callable[[T], bool], not_parsed: str, not_valid: str
) -> Callable[[str], T]:
    """An argparse type: convert the text, then check it; each message names the text
    as {text!r}."""

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(not_parsed.format(text=text)) from None
        if not valid(value):
            raise argparse.ArgumentTypeError(not_valid.format(text=text))
        return value

    return parse


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m|h|d)")


def duration(text: str) -> float:
    """Seconds from `600`, `90s`, `10m`, `1.5h`, `1h30m` or `2d` (ValueError otherwise).

    A bare number is seconds, as --timeout takes them; units may be combined from the
    largest down, as Go and systemd write durations.
    """
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if not text or _PART.sub("", text):
        raise ValueError(f"not a duration: {text!r}")
    parts = _PART.findall(text)
    units = [unit for _, unit in parts]
    if len(set(units)) != len(units):
        raise ValueError(f"a unit given twice: {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)
