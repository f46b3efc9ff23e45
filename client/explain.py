"""What the `scout` command says when something fails, and the exit code that goes with it.

One line each, naming the cause in the operator's terms and the flag or variable that
fixes it, instead of grpc's words ("Socket closed", "Handshake failed ...: OK"). Whether
the command may have run decides the code (client/exitcodes.py): nothing ran 125, may
have run 255, stopped at its timeout 124. No message quotes a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CommandTimeout, NotAllowed, ScoutError, Unreachable
from .exitcodes import MAY_HAVE_RUN, NOTHING_RAN, TIMED_OUT

__all__ = ["Context", "SettingError", "explain", "unreadable"]

REACH_HINT = "--target / $SCOUT_TARGET"
TOKEN_HINT = "--token-file PATH or $SCOUT_TOKEN"
FLAG_HINTS = {
    "ca": "--ca FILE / $SCOUT_CA",
    "cert": "--cert FILE",
    "key": "--key FILE",
    "token_file": "--token-file PATH / $SCOUT_TOKEN",
}
WHAT = {
    "ca": "CA file",
    "cert": "client certificate",
    "key": "client key",
    "token_file": "token file",
}


class SettingError(ValueError):
    """A setting that stops the call before anything is sent (a file, a token)."""


@dataclass(frozen=True)
class Context:
    """What the command line asked for, to word a failure."""

    target: str
    action: str = "exec"
    fan_out: bool = False
    ca: Path | None = None
    token_sent: bool = False
    origin: Mapping[str, str] = field(default_factory=dict)


def _where(key: str, origin: Mapping[str, str]) -> str:
    """The flag or variable to fix, or the profile it came from."""
    came = origin.get(key, "")
    if came.startswith("profile"):
        return f"{key} in {came}"
    return FLAG_HINTS.get(key, came)


def unreadable(key: str, path: Path, err: OSError, origin: Mapping[str, str]) -> SettingError:
    """A file that could not be read: which file, why, and where it was named."""
    why = err.strerror or str(err)
    return SettingError(f"cannot read the {WHAT[key]} {path}: {why} ({_where(key, origin)})")


UNREACHABLE = {  # Unreachable.cause -> the words: {at} is "scout at TARGET"
    "plaintext-to-tls": "{at} closed the connection: it expects TLS "
    "(add --tls, or --ca FILE for a private CA; $SCOUT_TLS, $SCOUT_CA)",
    "tls-to-plaintext": "{at} does not speak TLS: drop --tls and --ca (and $SCOUT_TLS, $SCOUT_CA)",
    "untrusted": "{at} has a certificate not signed by {signer} "
    "(--ca FILE / $SCOUT_CA names the CA that signed it)",
    "client-cert": "{at} wants a client certificate: --cert FILE --key FILE",
    "tls": "the TLS handshake with {at} failed (check --ca, --cert, --key)",
    "dns": f"cannot reach {{at}}: the name does not resolve ({REACH_HINT})",
}
NOT_LISTENING = f"cannot reach {{at}} (is scout-server running? {REACH_HINT})"  # any other cause


def _unreachable(err: Unreachable, ctx: Context) -> str:
    """Why there is no connection, in terms of the flags that decide it."""
    signer = f"the CA in {ctx.ca}" if ctx.ca is not None else "a CA this machine trusts"
    words = UNREACHABLE.get(err.cause, NOT_LISTENING)
    return words.format(at=f"scout at {ctx.target}", signer=signer)


def _not_allowed(err: NotAllowed, ctx: Context) -> str:
    """An identity the server does not accept: name the token's flag or variable."""
    at = f"scout at {ctx.target}"
    if not ctx.token_sent:
        return f"{at} wants a bearer token: {TOKEN_HINT}"
    if "not one scout knows" in err.message:
        source = _where("token_file", ctx.origin) if "token_file" in ctx.origin else "$SCOUT_TOKEN"
        return f"{at} does not know this token (from {source})"
    return f"{err} ({TOKEN_HINT}; --cert FILE --key FILE)"


def explain(err: ScoutError, ctx: Context) -> tuple[str, int]:
    """The line to print (without "scout: ") and the exit code for a failed call."""
    if isinstance(err, CommandTimeout):
        return str(err), TIMED_OUT  # the server's words: "... ran past its timeout (2s) ..."
    code = MAY_HAVE_RUN if err.may_have_run else NOTHING_RAN
    if isinstance(err, Unreachable):  # no server: plainly nothing ran
        return _unreachable(err, ctx), code
    if isinstance(err, NotAllowed) and err.code == "UNAUTHENTICATED":
        return _not_allowed(err, ctx), code
    text = str(err)  # the server's words, which name the host and the cause
    if ctx.action != "exec":
        return text, code
    if ctx.fan_out:
        ran = "commands may have run" if err.may_have_run else "no command ran"
    else:
        ran = "the command may have run" if err.may_have_run else "the command did not run"
    return f"{text} ({ran})", code
