"""The `scout` command's exit codes, in one table that `scout exec --help` and the README show.

One host exits with the remote command's own code, as ssh does, so scout's own codes
are few and chosen where coreutils put them: 124 for a command stopped by its timeout
(timeout(1)), 125 when nothing ran because scout itself could not run it (timeout(1),
env(1), docker run), 255 when scout lost track of a command that may have run (ssh). A
remote command that exits 124, 125 or 255 itself looks the same, which is why scout
says on stderr whenever the code is its own. Many hosts exit with the worst class any
host reached (1, 2, 3 sit below 124 and 125 as classes, not as numbers), and 4 when
every command exited 0 but some output was cut at the cap: output is never cut in
silence, and a failed command says more than a cut one, so 4 ranks just above 0.
"""

from __future__ import annotations

import signal
import textwrap

__all__ = [
    "BROKEN_PIPE",
    "FAN_OUT_ORDER",
    "INTERRUPTED",
    "MAY_HAVE_RUN",
    "NOTHING_RAN",
    "OUTPUT_CUT",
    "TABLE",
    "TIMED_OUT",
    "help_table",
]

OUTPUT_CUT = 4
TIMED_OUT = 124
NOTHING_RAN = 125
MAY_HAVE_RUN = 255
INTERRUPTED = 128 + signal.SIGINT
BROKEN_PIPE = 128 + signal.SIGPIPE

# (exit, when): the README's table has these rows, word for word.
TABLE: tuple[tuple[str, str], ...] = (
    ("N", "one host: the command's own exit code (0 to 255)"),
    ("128+N", "one host: signal N ended the command"),
    ("0", "many hosts: every host's command exited 0, and no output was cut"),
    ("1", "many hosts: some host's command exited non-zero"),
    ("2", "many hosts: some host's command was killed by a signal; any command: a usage mistake"),
    ("3", "many hosts: some host could not run the command, or scout lost track of it there"),
    (
        str(OUTPUT_CUT),
        "many hosts: every command exited 0, but some host's output reached the output cap "
        "and was cut (the summary names it)",
    ),
    (str(TIMED_OUT), "the command ran past --timeout and was stopped (one host, or some of many)"),
    (
        str(NOTHING_RAN),
        "nothing ran: scout could not be reached, refused the call (credentials, policy), "
        "or could not run the command (host unknown or unreachable, a bad request, an "
        "idempotency key already used for another command; attach: no command with that key)",
    ),
    (str(INTERRUPTED), "interrupted (Ctrl-C)"),
    (
        str(MAY_HAVE_RUN),
        "scout lost track of the call: the command may have run (with an idempotency key: "
        "its outcome is unknown, and it never runs again under that key)",
    ),
)

HELP_WIDTH = 88  # columns of `scout exec --help`'s table

# Many hosts: the worst outcome wins, in this order.
FAN_OUT_ORDER = "255, 125, 3, 124, 2, 1, 4, 0"


def help_table() -> str:
    """The table as `scout exec --help` prints it (a raw-text epilog)."""
    width = max(len(code) for code, _ in TABLE)
    indent = " " * (width + 4)
    rows = [
        textwrap.fill(f"  {code.ljust(width)}  {when}", HELP_WIDTH, subsequent_indent=indent)
        for code, when in TABLE
    ]
    return "\n".join(
        [
            "exit codes:",
            *rows,
            f"many hosts exit with the worst reached, in this order: {FAN_OUT_ORDER}",
        ]
    )
