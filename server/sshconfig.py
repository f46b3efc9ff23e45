"""ssh_config files read once per load, then resolved for each alias from memory.

asyncssh's `SSHClientConfig` resolves one host name by parsing every file again: for a
fleet of N aliases that is N parses of N lines (minutes for a few thousand). Here each
file is read and split into lines once, grouped into blocks (a `Host` or `Match` line
and the lines under it), and the blocks are indexed by the literal names on their `Host`
line. Resolving an alias replays, through asyncssh's own option handlers and in file
order, only the blocks that can apply to it: the general ones (patterns, `Match`, the
lines before any `Host`) and those that name it. A literal `Host` line that does not
name the alias only turns matching off until the next `Host` or `Match`, so skipping its
block changes nothing.

Lines that would run a command on the gateway itself are refused at load, naming the
file and line: `Match exec` (unless `[ssh] allow_match_exec = true`) and `ProxyCommand`
(scout does not run it; `ProxyJump` is the pooled way through a bastion).
"""

from __future__ import annotations

import getpass
import heapq
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asyncssh.config import ConfigParseError, SSHClientConfig

from .config import ConfigError

PATTERN_CHARS = frozenset("*?!")  # a Host entry with one of these is a pattern
CONDITIONALS = frozenset({"host", "match"})
NO_SPLIT = frozenset({"proxycommand", "remotecommand"})  # asyncssh keeps these whole
MAX_INCLUDE_DEPTH = 16  # Include nesting, as OpenSSH's READCONF_MAX_DEPTH


@dataclass(frozen=True)
class Line:
    """One option line: where it is, its option (lower case) and its arguments."""

    path: Path
    number: int
    option: str
    args: tuple[str, ...]
    includes: tuple[ParsedFile, ...] = ()  # Include: the files it names, read at load


@dataclass
class Block:
    """A `Host` or `Match` line (none for a file's first lines) and the lines under it."""

    head: Line | None
    body: list[Line] = field(default_factory=list)
    names: frozenset[str] | None = None  # a literal Host line's names; None: general


@dataclass
class ParsedFile:
    """One file's blocks, and which of them can apply to a given alias."""

    path: Path
    blocks: list[Block]
    general: list[int]
    by_name: dict[str, list[int]]

    def blocks_for(self, alias: str) -> list[Block]:
        """The general blocks and the alias's own, in file order."""
        own = self.by_name.get(alias)
        if not own:
            return [self.blocks[i] for i in self.general]
        return [self.blocks[i] for i in heapq.merge(self.general, own)]


class SSHConfigFiles:
    """`[ssh] config_files`, read once: the aliases they define and each one's options."""

    def __init__(self, paths: Sequence[Path], *, allow_match_exec: bool = False) -> None:
        self._allow_exec = allow_match_exec
        self.files = [self._read(path, 0) for path in paths]

    def aliases(self) -> list[str]:
        """Every `Host` entry of the files read for no host in particular, in order, once."""
        recorder = _Replay("", record=True)
        self._replay(recorder)
        return list(dict.fromkeys(recorder.recorded))

    def options(self, alias: str) -> SSHClientConfig:
        """What the files say for one host name, resolved as asyncssh would."""
        resolved = _Replay(alias)
        self._replay(resolved)
        return resolved

    def _replay(self, config: _Replay) -> None:
        try:
            for parsed in self.files:
                config.replay(parsed)
        except ConfigParseError as exc:
            raise ConfigError(f"ssh.config_files: {exc}") from None

    def _read(self, path: Path, depth: int) -> ParsedFile:
        if depth > MAX_INCLUDE_DEPTH:
            raise ConfigError(f"ssh.config_files: {path}: Include nested too deeply")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"ssh.config_files: {path}: {reason}") from None
        blocks = [Block(None)]
        for number, raw in enumerate(text.splitlines(), 1):
            line = self._line(path, number, raw, depth)
            if line is None:
                continue
            if line.option in CONDITIONALS:
                blocks.append(Block(line, names=_literal_names(line)))
            else:
                blocks[-1].body.append(line)
        general: list[int] = []
        by_name: dict[str, list[int]] = {}
        for index, block in enumerate(blocks):
            if block.names is None:
                general.append(index)
            else:
                for name in block.names:
                    by_name.setdefault(name, []).append(index)
        return ParsedFile(path, blocks, general, by_name)

    def _line(self, path: Path, number: int, raw: str, depth: int) -> Line | None:
        """One line split as asyncssh's parser splits it; None for blanks, comments and
        options asyncssh does not know (it skips those too)."""
        text = raw.strip()
        if not text or text[0] == "#":
            return None
        where = f"ssh.config_files: {path} line {number}"
        if '"' in text or "'" in text or "\\" in text:
            try:
                words = shlex.split(text)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        else:
            words = text.split()  # what shlex.split does to a line with no quote or escape
        option, args = _option_and_args(words)
        if not option:
            raise ConfigError(f"{where}: no option name")
        if option in NO_SPLIT:
            args = [text[len(option) :].strip()]
        if option not in SSHClientConfig._handlers:
            return None
        if not args or args == [""]:
            raise ConfigError(f"{where}: {option} needs a value")
        if option == "proxycommand" and args[0].lower() != "none":
            raise ConfigError(
                f"{where}: ProxyCommand runs a command on the gateway and scout does not "
                "support it; reach the host through a bastion with ProxyJump instead"
            )
        if option == "match" and not self._allow_exec and _has_exec(args):
            raise ConfigError(
                f"{where}: `Match exec` runs a command on the gateway for every host it "
                "resolves; scout refuses it unless [ssh] allow_match_exec = true"
            )
        includes: tuple[ParsedFile, ...] = ()
        if option == "include":
            includes = tuple(self._read(p, depth + 1) for p in _included(args))
        return Line(path, number, option, tuple(args), includes)


def _option_and_args(words: list[str]) -> tuple[str, list[str]]:
    """The option (lower case) and its arguments, with asyncssh's handling of `=`."""
    args: list[str] = []
    option = ""
    allow_equal = True
    for i, word in enumerate(words, 1):
        if word.startswith("="):
            if len(word) > 1:
                args.append(word[1:])
        elif not allow_equal:
            args.extend(words[i - 1 :])
            break
        elif word.endswith("="):
            args.append(word[:-1])
        elif "=" in word:
            name, value = word.split("=", 1)
            args.extend((name, value))
        else:
            args.append(word)
        if i == 1:
            option = args.pop(0).lower() if args else ""
            allow_equal = option in CONDITIONALS
    return option, args


def _literal_names(line: Line) -> frozenset[str] | None:
    """A `Host` line's names when none is a pattern or a negation; else None."""
    if line.option != "host":
        return None
    names = [name for arg in line.args for name in arg.split(",")]
    if any(PATTERN_CHARS & set(name) for name in names):
        return None
    return frozenset(names)


def _has_exec(args: list[str]) -> bool:
    """Whether a Match line has an `exec` criterion (negated or not)."""
    words = iter(args)
    for word in words:
        criterion = word.lower().lstrip("!")
        if criterion == "exec":
            return True
        if criterion not in ("all", "canonical", "final"):
            next(words, None)  # its pattern
    return False


def _included(args: list[str]) -> list[Path]:
    """The files an Include names, found as asyncssh finds them (relative to ~/.ssh)."""
    found: list[Path] = []
    for pattern in args:
        path = Path(pattern).expanduser()
        if path.anchor:
            base, glob = Path(path.anchor), str(Path(*path.parts[1:]))
        else:
            base, glob = Path("~", ".ssh").expanduser(), pattern
        found.extend(p for p in base.glob(glob) if p.is_file())
    return found


class _Replay(SSHClientConfig):
    """asyncssh's client config for one alias, fed from lines read before."""

    def __init__(self, alias: str, *, record: bool = False) -> None:
        super().__init__(None, False, False, False, getpass.getuser(), (), alias, ())  # type: ignore[arg-type]
        self._alias = alias
        self._record = record
        self.recorded: list[str] = []

    def replay(self, parsed: ParsedFile) -> None:
        """What asyncssh's parse() does with the file, from memory."""
        self._path = parsed.path
        self._line_no = 0
        self._matching = True
        self._tokens = {"%": "%"}
        blocks = parsed.blocks if self._record else parsed.blocks_for(self._alias)
        for block in blocks:
            if block.head is not None:
                if self._record and block.head.option == "host":
                    self.recorded.extend(block.head.args)
                self._run(block.head)
            if self._matching:  # only a Host or Match line changes it (Include resets it)
                for line in block.body:
                    self._run(line)
        self._expand()

    def _run(self, line: Line) -> None:
        self._line_no = line.number
        if line.option == "include":
            for parsed in line.includes:
                self.replay(parsed)
            self._path, self._line_no, self._matching = line.path, line.number, True
            return
        option, handler = self._handlers[line.option]
        args = list(line.args)
        handler(self, option, args)
        if args:
            raise ConfigError(
                f"ssh.config_files: {line.path} line {line.number}: extra data at end: "
                + " ".join(args)
            )

    def _expand(self) -> None:
        """The end of asyncssh's parse(): tokens, then %-expansion of the options that take it."""
        self._set_tokens()
        for option in self._percent_expand:
            value = self._options.get(option)
            if isinstance(value, list):
                self._options[option] = [self._expand_val(item) for item in value]
            elif isinstance(value, str):
                self._options[option] = self._expand_val(value)
