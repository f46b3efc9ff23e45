"""Argv patterns and environment rules: what a caller with a `commands` policy may run.

A glob over a shell line is no boundary (`*` matches `;`, `$(...)` and newlines, and the
shell runs them all), so a restricted caller sends argv, and its `commands` are argv
patterns, as sudo's rules are: split like a shell word list, each pattern word matches
exactly one argv element (fnmatch, case sensitive, `*` crosses `/` but never matches a
`..` path component), and a final `...` matches any number of further elements.

scout sends argv as one simple command of single-quoted words. Every word is quoted,
even a plain one, so that no element can become an assignment (`A=1 prog`), a reserved
word, an alias or a zsh `=cmd` expansion: the remote login shell runs exactly one
program with exactly these arguments.

The environment is exported in the line before the program runs, so a variable that
changes how a shell, the dynamic loader or `cd` behaves would run code (or go
somewhere) the policy never named: those are refused for every restricted caller.
"""

from __future__ import annotations

import fnmatch
import functools
import shlex
from collections.abc import Sequence

REST = "..."  # a final pattern word: any number of further elements

# Names a restricted caller may never set, even if its `env` lists them, and why.
_SHELL = "it changes how a shell starts or reads its commands"
_LOADER = "it changes what the dynamic loader loads into the program"
STARTUP_NAMES: dict[str, str] = {
    "BASH_ENV": _SHELL,
    "ENV": _SHELL,
    "ZDOTDIR": _SHELL,
    "IFS": _SHELL,
    "PS4": _SHELL,
    "SHELLOPTS": _SHELL,
    "BASHOPTS": _SHELL,
    "PROMPT_COMMAND": _SHELL,
    "GLOBIGNORE": _SHELL,
    "PATH": "it changes which program a name runs",
    "CDPATH": "it changes where working_dir leads",
    "GCONV_PATH": _LOADER,
    "GLIBC_TUNABLES": _LOADER,
}


def startup_reason(name: str) -> str | None:
    """Why name is never settable by a restricted caller, or None when it may be listed."""
    if name.startswith("LD_"):
        return _LOADER
    return STARTUP_NAMES.get(name)


class PatternError(ValueError):
    """An argv pattern that cannot be split or uses `...` anywhere but at the end."""


@functools.lru_cache(maxsize=4096)
def split_pattern(pattern: str) -> tuple[str, ...]:
    """A `commands` entry as its words; PatternError says what is wrong with it."""
    try:
        words = tuple(shlex.split(pattern))
    except ValueError as exc:  # an unclosed quote, a trailing backslash
        raise PatternError(f"{pattern!r} is not a shell word list ({exc})") from None
    if not words:
        raise PatternError(f"{pattern!r} has no words")
    if REST in words[:-1]:
        raise PatternError(f"{pattern!r}: `...` may only be the last word")
    return words


def argv_matches(pattern: str, argv: Sequence[str]) -> bool:
    """Whether argv is one that the pattern allows (the pattern has been checked)."""
    words = split_pattern(pattern)
    if words[-1] == REST:
        fixed = words[:-1]
        if len(argv) < len(fixed):
            return False
    else:
        fixed = words
        if len(argv) != len(fixed):
            return False
    return all(_word_matches(arg, word) for arg, word in zip(argv, fixed, strict=False))


def _word_matches(arg: str, word: str) -> bool:
    """fnmatch, except that a wildcard never matches a `..` path component: every `..`
    in arg must be one the pattern word spells out (`"cat /var/log/*"` does not allow
    `/var/log/../../etc/shadow`)."""
    if not fnmatch.fnmatchcase(arg, word):
        return False
    return arg.split("/").count("..") <= word.split("/").count("..")


def quote_word(word: str) -> str:
    """word in single quotes, always (a `'` inside becomes `'"'"'`)."""
    return "'" + word.replace("'", "'\"'\"'") + "'"


def argv_line(argv: Sequence[str]) -> str:
    """The shell line that runs exactly argv: `'prog' 'arg' ...` (no `exec`)."""
    return " ".join(quote_word(word) for word in argv)
