"""constraints.txt pins what CI, the Makefile and the Dockerfile install.

It is `uv pip compile --universal` of pyproject.toml with every extra (`make constraints`
writes it), so one file holds a version of every dependency for every platform: a new
release on PyPI changes nothing here until someone re-pins and the tests pass.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .deployfiles import stage

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"


def pins() -> dict[str, str]:
    """Each pinned name and its version, for this interpreter and platform."""
    found: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints.txt: not a pin: {line}"
        if req.marker is None or req.marker.evaluate():
            found[canonicalize_name(req.name)] = spec.version
    return found


def declared() -> list[Requirement]:
    """The runtime dependencies and those of every extra, as pyproject.toml names them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for e in extras for r in e)]]


def test_every_dependency_in_pyproject_is_pinned_within_its_range() -> None:
    pinned = pins()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in constraints.txt: run `make constraints`"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject's {req}: "
            "run `make constraints`"
        )


def test_this_environment_has_the_pinned_versions() -> None:
    pinned = pins()
    for req in declared():
        name = canonicalize_name(req.name)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment does not have (bench, with `make test`)
        assert installed == pinned[name], (
            f"{name} {installed} is installed, constraints.txt pins {pinned[name]}: `make test` "
            "reinstalls from the constraints"
        )


def test_the_makefile_and_the_image_install_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^PIP\s*:=.*pip install .*--constraint constraints\.txt$", makefile, re.M)
    for line in makefile.splitlines():
        if "pip install" in line and "-e " in line:
            raise AssertionError(f"the Makefile installs without $(PIP): {line.strip()}")
    (build,) = [s.args for s in stage(0) if s.keyword == "RUN"]
    (install,) = [c for c in build.split("&&") if " install " in c]
    assert "--constraint constraints.txt" in install, install
    assert "constraints.txt" in [w for s in stage(0) if s.keyword == "COPY" for w in s.args.split()]
