"""Label selectors in the Kubernetes style: `role=web,region in (eu,us),!canary`.

Requirements are separated by commas and must all hold:

    key=value, key==value      the label is set to value
    key!=value                 the label is not value (or not set)
    key in (a,b)               the label is one of them
    key notin (a,b)            the label is none of them (or not set)
    key                        the label is set
    !key                       the label is not set
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import InvalidRequest, brief

MAX_SELECTOR = 4096
MAX_REQUIREMENTS = 32  # each is checked against every host's labels
_NAME = r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?"
_VALUE = r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
_REQUIREMENT = re.compile(
    rf"\s*(?:(?P<not>!)\s*(?P<absent>{_NAME})"
    rf"|(?P<key>{_NAME})\s*(?:(?P<op>==|=|!=)\s*(?P<value>{_VALUE})"
    rf"|\s+(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?)\s*"
)

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Selector:
    """A parsed selector: every requirement must match."""

    text: str
    requirements: tuple[Callable[[Labels], bool], ...]

    def matches(self, labels: Labels) -> bool:
        """Whether a host with these labels is selected."""
        return all(requirement(labels) for requirement in self.requirements)


def _values(raw: str, selector: str) -> frozenset[str]:
    values = [v.strip() for v in raw.split(",")]
    if not values or not all(re.fullmatch(_VALUE, v) for v in values):
        raise InvalidRequest(f"selector: bad value list ({raw}) in {brief(selector)}")
    return frozenset(values)


def parse(text: str) -> Selector:
    """Parse a selector; InvalidRequest names what is wrong."""
    if len(text) > MAX_SELECTOR:
        raise InvalidRequest(f"selector: at most {MAX_SELECTOR} characters")
    requirements: list[Callable[[Labels], bool]] = []
    parts = _split(text)
    if len(parts) > MAX_REQUIREMENTS:
        raise InvalidRequest(
            f"selector: at most {MAX_REQUIREMENTS} requirements (each is checked against "
            f"every host), got {len(parts)}"
        )
    for part in parts:
        m = _REQUIREMENT.fullmatch(part)
        if m is None:
            raise InvalidRequest(
                f"selector: cannot read {brief(part.strip())}; write key=value, key!=value, "
                "key in (a,b), key notin (a,b), key or !key, separated by commas"
            )
        requirements.append(_requirement(m, text))
    return Selector(text, tuple(requirements))


def _requirement(m: re.Match[str], text: str) -> Callable[[Labels], bool]:
    """One requirement as a predicate over labels."""
    if m["not"]:
        absent = m["absent"]
        return lambda labels: absent not in labels
    key, op = m["key"], m["op"] or m["set"]
    if op in ("=", "=="):
        value = m["value"]
        return lambda labels: labels.get(key) == value
    if op == "!=":
        value = m["value"]
        return lambda labels: labels.get(key) != value
    if op == "in":
        values = _values(m["values"], text)
        return lambda labels: labels.get(key) in values
    if op == "notin":
        values = _values(m["values"], text)
        return lambda labels: labels.get(key) not in values
    return lambda labels: key in labels


def _split(text: str) -> list[str]:
    """The requirements: commas outside parentheses separate them."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    if depth != 0:
        raise InvalidRequest(f"selector: unbalanced parentheses in {brief(text)}")
    if not text.strip():
        return []
    if any(not p.strip() for p in parts):
        raise InvalidRequest(f"selector: an empty requirement in {brief(text)}")
    return parts
