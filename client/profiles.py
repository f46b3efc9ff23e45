"""Where the `scout` command's connection settings come from, so flags are not repeated.

A profile file, `$XDG_CONFIG_HOME/scout/client.toml` (else `~/.config/scout/client.toml`),
holds one table per profile; relative paths are relative to the file, `~` is expanded:

    [default]                          # used when no --profile / $SCOUT_PROFILE is given
    target = "scout.internal:443"
    ca = "ca.pem"                      # TLS trusting this CA (PEM)
    token_file = "~/.config/scout/token"

    [staging]
    target = "scout.staging.internal:443"
    tls = true                         # TLS trusting the default roots
    token_file = "staging.token"

Each setting is taken from the first of: its flag; the profile named by --profile (or
$SCOUT_PROFILE), which is asked for by name; the environment ($SCOUT_TARGET, $SCOUT_TLS,
$SCOUT_CA, $SCOUT_TOKEN); the [default] profile; the built-in default. `origin` keeps
where each came from, so that a message names the flag, variable or file to fix.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KEYS",
    "ProfileError",
    "Settings",
    "profile_file",
    "resolve",
]

DEFAULT_PROFILE = "default"
KEYS = ("target", "tls", "ca", "cert", "key", "token_file")
ENV = {"target": "SCOUT_TARGET", "tls": "SCOUT_TLS", "ca": "SCOUT_CA"}
TOKEN_ENV = "SCOUT_TOKEN"
PROFILE_ENV = "SCOUT_PROFILE"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ProfileError(ValueError):
    """A profile or variable that cannot be used; the message names which and why."""


@dataclass(frozen=True)
class Settings:
    """How to reach scout; origin maps each setting given to where it came from."""

    target: str | None = None
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token_file: Path | None = None
    token_from_env: bool = False  # no token file: $SCOUT_TOKEN, if set, is the token
    origin: Mapping[str, str] = field(default_factory=dict)


def profile_file(environ: Mapping[str, str]) -> Path:
    """The profile file's path (it need not exist)."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~"), ".config"))
    return Path(base).expanduser() / "scout" / "client.toml"


def _load(path: Path) -> dict[str, Any]:
    """The file's tables; a missing file has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ProfileError(f"cannot read the profile file {path}: {err.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"the profile file {path} is not valid TOML: {err}") from None


def _profile(tables: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    """One profile's values, with paths made absolute; unknown keys are refused."""
    table = tables.get(name)
    if not isinstance(table, dict):
        known = ", ".join(sorted(k for k, v in tables.items() if isinstance(v, dict))) or "none"
        raise ProfileError(f"no profile {name!r} in {path} (profiles: {known})")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ProfileError(
            f"profile {name!r} in {path}: unknown key {', '.join(unknown)} "
            f"(known: {', '.join(KEYS)})"
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        wanted = bool if key == "tls" else str
        if not isinstance(value, wanted):
            raise ProfileError(
                f"profile {name!r} in {path}: {key} must be a {wanted.__name__}, got {value!r}"
            )
        is_path = key in ("ca", "cert", "key", "token_file")
        values[key] = path.parent / Path(str(value)).expanduser() if is_path else value
    return values


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """$SCOUT_TARGET, $SCOUT_TLS and $SCOUT_CA, when set and not empty."""
    values: dict[str, Any] = {}
    if target := environ.get(ENV["target"], "").strip():
        values["target"] = target
    if ca := environ.get(ENV["ca"], "").strip():
        values["ca"] = Path(ca).expanduser()
    tls = environ.get(ENV["tls"], "").strip().lower()
    if tls not in _TRUE | _FALSE:
        raise ProfileError(f"${ENV['tls']} must be 1 or 0 (true or false), not {tls!r}")
    if tls in _TRUE:
        values["tls"] = True
    return values


def resolve(flags: Mapping[str, Any], profile: str | None, environ: Mapping[str, str]) -> Settings:
    """Settings from flags (None: not given), then the profiles and the environment."""
    path = profile_file(environ)
    tables = _load(path)
    chosen = profile or environ.get(PROFILE_ENV, "").strip() or None
    layers: list[tuple[str, dict[str, Any]]] = [
        ("flag", {k: v for k, v in flags.items() if v is not None and v is not False}),
    ]
    if chosen is not None:
        layers.append((f"profile {chosen!r} in {path}", _profile(tables, chosen, path)))
    layers.append(("environment", _env_values(environ)))
    if chosen is None and DEFAULT_PROFILE in tables:
        layers.append((f"profile {DEFAULT_PROFILE!r} in {path}", _profile(tables, "default", path)))
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, layer in layers:
        for key, value in layer.items():
            if key not in values:
                values[key] = value
                origin[key] = where
    token_from_env = "token_file" not in values or (
        origin["token_file"].startswith(f"profile {DEFAULT_PROFILE!r}")
        and bool(environ.get(TOKEN_ENV, "").strip())
    )
    if token_from_env:
        values.pop("token_file", None)
        origin.pop("token_file", None)
    for key, where in origin.items():  # name the very flag or variable
        if where == "flag":
            origin[key] = "--" + key.replace("_", "-")
        elif where == "environment":
            origin[key] = f"${ENV[key]}"
    return Settings(**values, token_from_env=token_from_env, origin=origin)
