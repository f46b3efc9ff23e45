"""client/profiles.py: which of flag, profile, environment and default wins, and what a
mistake in the profile file says."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.profiles import ProfileError, resolve

NO_FLAGS = {"target": None, "tls": False, "ca": None, "cert": None, "key": None, "token_file": None}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / ".config" / "scout"
    folder.mkdir(parents=True)
    (folder / "client.toml").write_text(
        '[default]\ntarget = "default:1"\nca = "default-ca.pem"\ntoken_file = "default.token"\n'
        '\n[stage]\ntarget = "stage:1"\ntls = true\ntoken_file = "~/stage.token"\n'
    )
    return tmp_path


def test_flag_then_named_profile_then_environment_then_default(home: Path) -> None:
    folder = home / ".config" / "scout"
    env = {"HOME": str(home), "SCOUT_TARGET": "env:1", "SCOUT_CA": "/env/ca.pem"}
    plain = resolve(NO_FLAGS, None, env)
    assert (plain.target, plain.ca) == ("env:1", Path("/env/ca.pem"))
    assert plain.token_file == folder / "default.token"  # no $SCOUT_TOKEN: the default's file
    assert plain.origin["target"] == "$SCOUT_TARGET"
    named = resolve(NO_FLAGS, "stage", env)
    assert (named.target, named.tls, named.ca) == ("stage:1", True, Path("/env/ca.pem"))
    assert named.token_file == Path("~/stage.token").expanduser()
    flagged = resolve({**NO_FLAGS, "target": "flag:1"}, "stage", env)
    assert (flagged.target, flagged.origin["target"]) == ("flag:1", "--target")
    bare = resolve(NO_FLAGS, None, {"HOME": str(home)})
    assert (bare.target, bare.ca) == ("default:1", folder / "default-ca.pem")


def test_scout_token_wins_over_the_default_profiles_file_only(home: Path) -> None:
    env = {"HOME": str(home), "SCOUT_TOKEN": "t"}
    assert resolve(NO_FLAGS, None, env).token_file is None  # $SCOUT_TOKEN is the token
    assert resolve(NO_FLAGS, "stage", env).token_file is not None  # asked for by name


def test_profile_mistakes_name_the_file_and_the_key(home: Path) -> None:
    path = home / ".config" / "scout" / "client.toml"
    with pytest.raises(ProfileError, match=r"no profile 'prod' in .* \(profiles: default, stage\)"):
        resolve(NO_FLAGS, "prod", {"HOME": str(home)})
    path.write_text('[default]\ntarget = "x:1"\ntoken = "secret"\n')
    with pytest.raises(ProfileError, match="unknown key token") as info:
        resolve(NO_FLAGS, None, {"HOME": str(home)})
    assert "secret" not in str(info.value)
    with pytest.raises(ProfileError, match=r"\$SCOUT_TLS must be 1 or 0"):
        resolve(NO_FLAGS, None, {"HOME": str(home / "none"), "SCOUT_TLS": "maybe"})


def test_no_file_and_no_environment_leave_the_built_in_defaults(tmp_path: Path) -> None:
    settings = resolve(NO_FLAGS, None, {"HOME": str(tmp_path)})
    assert (settings.target, settings.tls, settings.ca, settings.token_file) == (
        None,
        False,
        None,
        None,
    )
