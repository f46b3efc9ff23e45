"""Readers for the deployment files, so tests/test_deploy.py can check what they say.

Each reader is as small as the file's own format allows: Dockerfile instructions with
their stage, a systemd unit's settings per section, the Kubernetes documents by kind and
name, and the fenced shell blocks of deploy/README.md.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from server.config import Config
from server.configfile import parse

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "scout.service"
SYSTEMD_TOML = DEPLOY / "systemd" / "scout.toml"
KUBERNETES = DEPLOY / "kubernetes"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, its continuation lines joined."""

    stage: int  # 0 for the first FROM's stage
    keyword: str
    args: str

    def json_args(self) -> list[str]:
        """The exec form (`["a", "b"]`) of ENTRYPOINT or CMD."""
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions in order; comments and blank lines dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    out, stage = [], -1
    for line in lines:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword.upper(), args.strip()))
    return out


def stage(index: int) -> list[Instruction]:
    """The instructions of one stage (-1: the last, the image that runs)."""
    steps = dockerfile()
    last = max(s.stage for s in steps)
    wanted = last if index == -1 else index
    return [s for s in steps if s.stage == wanted]


def only(steps: list[Instruction], keyword: str) -> Instruction:
    """The one instruction of this kind in a stage."""
    found = [s for s in steps if s.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def build_sources() -> list[str]:
    """What the build stage copies from the context (the wheel's inputs)."""
    sources: list[str] = []
    for step in stage(0):
        if step.keyword == "COPY":
            words = step.args.split()
            assert not any(w.startswith("--from") for w in words)
            sources += words[:-1]
    return sources


def healthcheck() -> list[str]:
    """The HEALTHCHECK's command, in exec form."""
    _, sep, command = only(stage(-1), "HEALTHCHECK").args.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    return Instruction(-1, "CMD", command).json_args()


def image_user() -> tuple[int, int]:
    """The runtime stage's USER as numbers (uid, gid)."""
    user, _, group = only(stage(-1), "USER").args.partition(":")
    assert user.isdigit() and group.isdigit(), "USER must be numeric uid:gid"
    return int(user), int(group)


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values (a key may repeat, as in the unit)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def kustomization() -> Manifest:
    """deploy/kubernetes/kustomization.yaml."""
    value = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert isinstance(value, dict)
    return value


def manifests() -> dict[tuple[str, str], Manifest]:
    """Every document the kustomization lists, by (kind, metadata.name)."""
    docs: dict[tuple[str, str], Manifest] = {}
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((KUBERNETES / name).read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{key} twice"
            docs[key] = doc
    return docs


def pod_spec() -> Manifest:
    """The Deployment's pod template spec."""
    spec = manifests()[("Deployment", "scout")]["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def main_container() -> Manifest:
    """The container that runs scout-server."""
    (container,) = pod_spec()["containers"]
    assert isinstance(container, dict)
    return container


def configmap_toml() -> str:
    """The scout.toml that the ConfigMap holds."""
    text = manifests()[("ConfigMap", "scout-config")]["data"]["scout.toml"]
    assert isinstance(text, str)
    return text


def read_config(text: str) -> Config:
    """A TOML config through scout's own parser (its paths are absolute)."""
    return parse(tomllib.loads(text), Path("/nonexistent"))


def resource_keys(doc: Manifest) -> set[str]:
    """The file names a ConfigMap or Secret provides."""
    return set(doc.get("data") or {}) | set(doc.get("stringData") or {})


def source_of(path: str, container: Manifest, volumes: dict[str, Manifest]) -> tuple[str, str]:
    """Which volume a container's file lives in (the mount of its folder), and its name."""
    folder = PurePosixPath(path).parent
    mounts = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == folder]
    assert len(mounts) == 1, f"{path}: its folder is not mounted in {container['name']}"
    return mounts[0]["name"], PurePosixPath(path).name


def shell_block(markdown: str, heading: str) -> str:
    """The first ```sh block after a heading."""
    after = markdown.split(f"\n{heading}\n", 1)[1]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, f"no sh block after {heading}"
    return match.group(1)


def rebased(text: str, root: Path) -> str:
    """A TOML config whose absolute paths are moved under root (they are all quoted)."""
    return text.replace('"/', f'"{root}/')
