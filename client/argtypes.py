"""Value types for the scout command's arguments: parse, check, or say what was wrong."""

from __future__ import annotations

import argparse
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
