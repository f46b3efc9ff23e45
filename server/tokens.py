"""`scout-server hash-token` and `scout-server new-token`: the token side of `[[callers]]`.

A token never travels on the command line (`ps` shows argv): hash-token reads it from
stdin; new-token makes one with `secrets.token_urlsafe` and prints it once, with the
`token_sha256` line the server's config wants (the server keeps only the hash).
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from .callers import hash_token

__all__ = ["TOKEN_BYTES", "add_token_commands", "hash_token_command", "new_token_command"]

TOKEN_BYTES = 32  # 256 bits of randomness, 43 URL-safe characters


def add_token_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Describe both subcommands, so `scout-server --help` lists them and each has --help."""
    commands.add_parser(
        "hash-token",
        help="print the token_sha256 of a token read from stdin",
        description="Read a token from stdin (never from argv, which `ps` shows) and print "
        "the SHA-256 hex that a [[callers]] entry's token_sha256 holds.",
    )
    commands.add_parser(
        "new-token",
        help="print a fresh random token and its token_sha256 line",
        description="Print a new random token (line 1: give it to the caller, e.g. in the "
        "file of `scout --token-file`) and the token_sha256 line for its [[callers]] entry "
        "(line 2). The server keeps only the hash; the token is shown this once.",
    )


def hash_token_command() -> int:
    """A token from stdin to the SHA-256 hex that `[[callers]] token_sha256` holds."""
    token = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline()
    token = token.strip()
    if not token:
        sys.stderr.write("scout-server hash-token: no token on stdin\n")
        return 2
    sys.stdout.write(hash_token(token) + "\n")
    return 0


def new_token_command() -> int:
    """A fresh token, then its config line."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    sys.stdout.write(f'{token}\ntoken_sha256 = "{hash_token(token)}"\n')
    return 0
