"""A real OpenSSH sshd on loopback, started by the tests themselves.

Its own temp dir holds an ed25519 host key, a client key, authorized_keys, known_hosts,
sshd_config, the pid file and the log. The config is sshd's defaults plus what a test
server needs (public keys only, no PAM, paths in the temp dir); in particular it keeps
the default MaxSessions (10 sessions per connection) and MaxStartups (10:30:100), and
serves SFTP (internal-sftp: an SFTP session is one of those sessions).

sshd cannot report a port-0 bind, so start_openssh() picks a free port, and picks again
when sshd says the port was taken meanwhile; it returns once sshd answers with its banner.

Facts worth knowing (OpenSSH 9.2, measured with these tests):

- The 11th concurrent session on one connection is refused: ChannelOpenError code 2
  (OPEN_CONNECT_FAILED), reason "open failed"; sshd logs "no more sessions".
- Closing a channel does not stop a command that runs without a pty: sshd closes its
  stdin and confirms the close only when the command exits, and the session keeps its
  MaxSessions slot until then. Dropping the connection orphans the command (it runs on).
  With a pty, closing the channel hangs the command up (SIGHUP) and the close is at once.
- `signal` requests work only for non-root logins: for root, sshd skips post-auth
  privilege separation and logs "session signalling requires privilege separation".
  So when the tests run as root (CI does), scout logs in as the unprivileged user
  `scout-test` (shell /bin/sh), created on first use, as a production gateway should.
  That also keeps root's shell start-up files (here: pyenv) out of every command.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import pwd
import random
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import psutil

from server.config import HostConfig, host_entry
from server.keyfiles import write_key

from .ports import free_port

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd running as root refuses to start without it
START_TIMEOUT = 10.0
BIND_ATTEMPTS = 5
TEST_USER = "scout-test"  # the login user when the tests run as root
USERADD_LOCK = Path("/run/lock/scout-test-useradd.lock")  # taken by every test process


class OpenSSHError(RuntimeError):
    """sshd is missing or would not start; the message says what to do."""


def login_user(shell: str = "/bin/sh") -> str:
    """Who scout logs in as: ourselves, or (as root) an unprivileged user made on first use.

    As root, each login shell gets its own user: `scout-test` has /bin/sh, and another
    shell gives `scout-test-bash` and so on. Not root, we are the only user we have.
    """
    if os.geteuid() != 0:
        return getpass.getuser()
    name = TEST_USER if shell == "/bin/sh" else f"{TEST_USER}-{Path(shell).name}"
    if not _user_exists(name):
        # Test processes (pytest-xdist workers, other runs) may all find the user missing
        # at once: the first to take the lock creates it, the others then find it.
        USERADD_LOCK.parent.mkdir(parents=True, exist_ok=True)
        with USERADD_LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _user_exists(name):
                _useradd(name, shell)
    return name


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _useradd(name: str, shell: str) -> None:
    """useradd, retried while another program holds /etc/passwd's lock (exit 10)."""
    for _ in range(50):
        done = subprocess.run(
            # password "*": no password login, but not "locked" (sshd refuses locked users)
            ["useradd", "--create-home", "--shell", shell, "--password", "*", name],
            check=False,
            capture_output=True,
        )
        if done.returncode == 0 or (done.returncode == 9 and _user_exists(name)):
            return  # 9: made meanwhile by a run that does not take our lock
        if done.returncode != 10:
            break
        time.sleep(0.1)
    raise OpenSSHError(f"useradd {name} failed ({done.returncode}): {done.stderr.decode()}")


@dataclass
class OpenSSHServer:
    """A running sshd: where it listens, how to log in, and what it did."""

    root: Path
    address: str = "127.0.0.1"
    user: str = field(default_factory=login_user)
    port: int = 0
    netns: str | None = None  # run inside this network namespace (testkit.netns)
    process: subprocess.Popen[bytes] | None = None
    _host_public: str = field(default="", repr=False)
    _keys_dir: Path = field(default=Path(), repr=False)

    @property
    def identity_file(self) -> Path:
        """The client's private key, authorized for user."""
        return self.root / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        """known_hosts with sshd's host key for [address]:port."""
        return self.root / "known_hosts"

    @property
    def config_file(self) -> Path:
        """The sshd_config sshd runs with."""
        return self.root / "sshd_config"

    @property
    def log_file(self) -> Path:
        """sshd's stderr (-e), LogLevel INFO."""
        return self.root / "sshd.log"

    @property
    def log(self) -> str:
        """Everything sshd logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def host_config(self, name: str = "openssh") -> HostConfig:
        """A scout inventory entry that reaches this sshd."""
        return host_entry(name, self)

    def prepare(self) -> None:
        """Make the keys, authorized_keys and the sshd_config body (port comes later)."""
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519", comment="scout-test-sshd")
        client_key = asyncssh.generate_private_key("ssh-ed25519", comment="scout-test-client")
        write_key(self.root / "ssh_host_ed25519_key", host_key)
        write_key(self.identity_file, client_key)
        # sshd reads authorized_keys as the login user: keep it where that user can.
        self._keys_dir = Path(tempfile.mkdtemp(prefix="scout-sshd-keys-"))
        self._keys_dir.chmod(0o755)
        authorized = self._keys_dir / "authorized_keys"
        authorized.write_bytes(client_key.export_public_key("openssh"))
        authorized.chmod(0o644)
        self._host_public = host_key.export_public_key("openssh").decode("ascii").strip()

    def _write_config(self) -> None:
        """sshd_config for the current port; MaxSessions stays at its default (10)."""
        root = self.root
        self.config_file.write_text(
            f"ListenAddress {self.address}:{self.port}\n"
            f"HostKey {root / 'ssh_host_ed25519_key'}\n"
            f"AuthorizedKeysFile {self._keys_dir / 'authorized_keys'}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "LogLevel INFO\n"
            "Subsystem sftp internal-sftp\n"
        )
        self.known_hosts.write_text(f"[{self.address}]:{self.port} {self._host_public}\n")

    def _ready(self, logged: int) -> bool:
        """Whether sshd listens: its banner, or (inside a netns, out of our reach) its log."""
        if self.netns is not None:
            return "Server listening on" in self.log[logged:]
        try:
            with socket.create_connection((self.address, self.port), timeout=1.0) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def _launch(self) -> bool:
        """Start sshd on a fresh port; False when the port was taken, raise on other failures."""
        self.port = free_port(self.address) if self.netns is None else random.randint(20000, 60000)
        self._write_config()
        logged = len(self.log)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [*prefix, str(SSHD), "-D", "-e", "-f", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                if "Address already in use" in self.log[logged:]:
                    return False
                raise OpenSSHError(f"sshd exited at start; its log:\n{self.log}")
            if self._ready(logged):
                return True
            time.sleep(0.05)
        self.stop()
        raise OpenSSHError(f"sshd did not answer within {START_TIMEOUT}s; its log:\n{self.log}")

    def start(self) -> None:
        """Start sshd and wait for its banner."""
        if not SSHD.exists():
            raise OpenSSHError(f"{SSHD} not found: apt-get install openssh-server")
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.prepare()
        for _ in range(BIND_ATTEMPTS):
            if self._launch():
                return
        raise OpenSSHError(f"sshd found no free port in {BIND_ATTEMPTS} tries:\n{self.log}")

    def _tree(self) -> list[psutil.Process]:
        """The listener and every process below it (connections, sessions, commands)."""
        if self.process is None:
            return []
        try:
            listener = psutil.Process(self.process.pid)
            return [listener, *listener.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pause(self) -> None:
        """SIGSTOP sshd and its children: connections stay up but nothing answers.

        Repeated until every process is stopped: a child forked while its parent was
        being stopped (sshd's post-auth child, say) is missed by the first pass.
        """
        for _ in range(50):
            running = []
            for proc in self._tree():
                with contextlib.suppress(psutil.NoSuchProcess):
                    if proc.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                        running.append(proc)
            if not running:
                return
            for proc in running:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGSTOP)
            time.sleep(0.01)
        raise OpenSSHError("sshd's processes would not all stop")

    def resume(self) -> None:
        """SIGCONT what pause() stopped."""
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)

    def commands(self) -> list[psutil.Process]:
        """Processes sshd runs for sessions (not sshd's own): empty when no command runs."""
        found = []
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.name() != "sshd" and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        return found

    def connection_processes(self, command: psutil.Process) -> list[psutil.Process]:
        """The sshd processes that carry the connection a command runs on."""
        with contextlib.suppress(psutil.NoSuchProcess):
            listener = self.process.pid if self.process else -1
            return [p for p in command.parents() if p.name() == "sshd" and p.pid != listener]
        return []

    def established_connections(self) -> int:
        """TCP connections to sshd's port in ESTABLISHED state, counted on sshd's side."""
        return sum(
            1
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED
            and c.laddr
            and c.laddr.port == self.port
            and c.laddr.ip == self.address
        )

    def stop(self) -> None:
        """Stop sshd and everything it started (sessions do not end with the listener)."""
        tree = self._tree()
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=3.0)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self.process is not None:
            self.process.wait()
            self.process = None
        if self._keys_dir != Path():
            for leftover in self._keys_dir.iterdir():
                leftover.unlink()
            self._keys_dir.rmdir()


def start_openssh(
    root: Path, address: str = "127.0.0.1", netns: str | None = None
) -> OpenSSHServer:
    """Start an sshd with everything in root (in a network namespace if given); stop() it."""
    server = OpenSSHServer(root, address, netns=netns)
    server.start()
    return server
