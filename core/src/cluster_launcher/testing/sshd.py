"""A real OpenSSH server for tests: ``/usr/sbin/sshd`` on 127.0.0.1, with
everything it needs (host key, authorized client key, config, PID file, log)
in a temp directory, and a temp HOME whose ``.ssh/config`` and
``.ssh/known_hosts`` let SSH clients reach it by a Host alias.

paramiko follows $HOME, so a process given :meth:`SSHServer.env` finds the
alias; OpenSSH's own ``ssh`` ignores $HOME, give it ``-F`` :attr:`config_path`
(the config names its known_hosts file and key by absolute path).

    with SSHServer(tmp_path) as sshd:
        Client(sshserver=sshd.alias)        # with HOME=sshd.home

sshd is stopped by the PID it was started with; sessions it forked and that
are still running at ``stop`` are stopped by theirs.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from pathlib import Path

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = "/usr/sbin/sshd"
# Debian's sshd refuses to start without its privilege-separation directory,
# which only the package's service unit creates.
PRIVSEP_DIR = "/run/sshd"


def write_ed25519_key(path: str | os.PathLike) -> str:
    """Write a new ed25519 private key (OpenSSH format, mode 0600) to ``path``
    and its public key to ``path.pub``; return the public key line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    Path(f"{path}.pub").write_text(public + "\n")
    return public


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SSHServer:
    """sshd for one test (or module): ``start()``, then reach it as
    :attr:`alias` with :meth:`env` (HOME) set; ``stop()`` (or the context
    manager) stops it and any session left."""

    def __init__(self, directory: str | os.PathLike, alias: str = "cluster-launcher-test-sshd",
                 start_timeout: float = 15.0):
        self.directory = Path(directory)
        self.alias = alias
        self.start_timeout = start_timeout
        self.user = getpass.getuser()
        self.home = self.directory / "home"
        self.ssh_dir = self.home / ".ssh"
        self.config_path = self.ssh_dir / "config"
        self.known_hosts_path = self.ssh_dir / "known_hosts"
        self.client_key_path = self.ssh_dir / "id_cluster_launcher_test"
        self.host_key_path = self.directory / "ssh_host_ed25519_key"
        self.authorized_keys_path = self.directory / "authorized_keys"
        self.sshd_config_path = self.directory / "sshd_config"
        self.pid_file = self.directory / "sshd.pid"
        self.log_path = self.directory / "sshd.log"
        self.port = 0
        self.host_public_key = ""
        self.popen: subprocess.Popen | None = None

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> SSHServer:
        if not os.access(SSHD, os.X_OK):
            raise RuntimeError(f"{SSHD} not found: the SSH tests need a real sshd; "
                               "run: apt-get install -y openssh-server")
        try:
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        except PermissionError:  # not root: sshd runs unprivileged and does not need it
            pass
        self.ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.host_public_key = write_ed25519_key(self.host_key_path)
        self.authorized_keys_path.write_text(write_ed25519_key(self.client_key_path) + "\n")
        # A port found free can be taken before sshd binds it: try a few.
        for _ in range(3):
            self.port = _free_port()
            self._write_sshd_config()
            if self._launch():
                self._write_client_files()
                return self
        raise RuntimeError(f"sshd could not listen on 127.0.0.1 (3 ports tried):\n{self.output()}")

    def _write_sshd_config(self) -> None:
        self.sshd_config_path.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key_path}\n"
            f"AuthorizedKeysFile {self.authorized_keys_path}\n"
            f"PidFile {self.pid_file}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # The temp directory is not owned and locked down as sshd wants for a home.
            "StrictModes no\n"
            "AllowTcpForwarding yes\n"
            "X11Forwarding no\n"
            "PrintMotd no\n"
            # Each connection and forwarding request shows up in the log.
            "LogLevel VERBOSE\n")

    def _launch(self) -> bool:
        """Start sshd; True once it listens, False if it exited because the port was taken."""
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.sshd_config_path)],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                if "Address already in use" in self.output():
                    return False
                raise RuntimeError(f"sshd exited with status {self.popen.returncode}:\n{self.output()}")
            if self._listening():
                return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port} within {self.start_timeout:g} s:\n"
                           f"{self.output()}")

    def _listening(self) -> bool:
        # Checked on sshd's own sockets, not by connecting: a probe connection
        # would fork a session child that tests counting sessions would see.
        try:
            connections = psutil.Process(self.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in connections)

    def _write_client_files(self) -> None:
        self.config_path.write_text(self.host_block(self.alias, self.client_key_path))
        self.known_hosts_path.write_text(self.known_hosts_line + "\n")

    def stop(self) -> None:
        """Stop sshd by its PID, then any session child still running by its own."""
        if self.popen is None:
            return
        try:
            sessions = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            sessions = []
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for session in sessions:
            try:
                session.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(sessions, timeout=5)
        for session in alive:
            session.kill()
        psutil.wait_procs(alive, timeout=5)

    def __enter__(self) -> SSHServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests look at ------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.popen is not None, "sshd is not started"
        return self.popen.pid

    @property
    def known_hosts_line(self) -> str:
        """This server's known_hosts entry, as OpenSSH writes it for a non-22 port."""
        return f"[127.0.0.1]:{self.port} {self.host_public_key}"

    def host_block(self, alias: str, identity_file: str | os.PathLike) -> str:
        """A ``~/.ssh/config`` Host block that reaches this server as ``alias`` with ``identity_file``."""
        return (f"Host {alias}\n"
                "    HostName 127.0.0.1\n"
                f"    Port {self.port}\n"
                f"    User {self.user}\n"
                f"    IdentityFile {identity_file}\n"
                "    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts_path}\n"
                "    StrictHostKeyChecking yes\n"
                "    BatchMode yes\n")

    def add_alias(self, alias: str, identity_file: str | os.PathLike) -> None:
        """Add a Host alias for this server that logs in with another key."""
        with open(self.config_path, "a") as config:
            config.write(self.host_block(alias, identity_file))

    def env(self) -> dict[str, str]:
        """Environment for a process that should reach :attr:`alias` (paramiko reads $HOME)."""
        return {"HOME": str(self.home)}

    def session_pids(self) -> list[int]:
        """PIDs of the processes sshd forked: one or two per open SSH connection."""
        try:
            return [child.pid for child in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def output(self) -> str:
        """sshd's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
