"""Real OpenSSH servers for tests: ``/usr/sbin/sshd`` on a loopback address
(127.0.0.1 by default, or inside a network namespace), with everything it
needs (host key, authorized client key, config, PID file, log) in a temp
directory, and a temp HOME whose ``.ssh/config`` and ``.ssh/known_hosts``
let SSH clients reach it by a Host alias.  :class:`SSHHosts` makes several
such "hosts" at once, each with its own address, host key and remote HOME,
reached from one client HOME.

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
import sys
import time
from collections.abc import Sequence
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


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def connections_to(pids: Sequence[int], port: int) -> list:
    """The established TCP connections of processes ``pids`` to ``port``: how a
    test sees which process really carries a connection (an sshd session, or
    the process itself)."""
    found = []
    for pid in pids:
        try:
            found += [c for c in psutil.Process(pid).net_connections(kind="tcp")
                      if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port]
        except psutil.NoSuchProcess:
            pass
    return found


def this_python_path() -> str:
    """A PATH whose ``python3`` and ``cluster-launcher`` are this interpreter's (a
    venv's bin folder first), for remote logins to find what is installed here."""
    return os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"])


class SSHServer:
    """sshd for one test (or module): ``start()``, then reach it as
    :attr:`alias` with :meth:`env` (HOME) set; ``stop()`` (or the context
    manager) stops it and any session left."""

    def __init__(self, directory: str | os.PathLike, alias: str = "cluster-launcher-test-sshd",
                 start_timeout: float = 15.0, address: str = "127.0.0.1",
                 client_key: str | os.PathLike | None = None, set_env: dict[str, str] | None = None,
                 netns: str = ""):
        """``address``: where sshd listens; ``client_key``: an existing key
        to authorize (default: a new one in :attr:`home`); ``set_env``: what
        sshd sets in every session (``SetEnv``: a remote HOME, a PATH);
        ``netns``: the network namespace sshd runs in (it listens on port 22
        there)."""
        self.directory = Path(directory)
        self.alias = alias
        self.start_timeout = start_timeout
        self.address = address
        self.set_env = dict(set_env or {})
        self.netns = netns
        self.user = getpass.getuser()
        self.home = self.directory / "home"
        self.ssh_dir = self.home / ".ssh"
        self.config_path = self.ssh_dir / "config"
        self.known_hosts_path = self.ssh_dir / "known_hosts"
        self.client_key_path = Path(client_key) if client_key else self.ssh_dir / "id_cluster_launcher_test"
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
        if self.client_key_path.exists():
            client_public = Path(f"{self.client_key_path}.pub").read_text().strip()
        else:
            client_public = write_ed25519_key(self.client_key_path)
        self.authorized_keys_path.write_text(client_public + "\n")
        # A port found free can be taken before sshd binds it: try a few.  A network namespace of
        # the test's own has every port free.
        for _ in range(3):
            self.port = 22 if self.netns else _free_port(self.address)
            self._write_sshd_config()
            if self._launch():
                self._write_client_files()
                return self
        raise RuntimeError(f"sshd could not listen on {self.address} (3 ports tried):\n{self.output()}")

    def _write_sshd_config(self) -> None:
        # One SetEnv line: sshd keeps the first line of an option only.
        set_env = f"SetEnv {' '.join(repr(f'{k}={v}') for k, v in self.set_env.items())}\n" if self.set_env else ""
        self.sshd_config_path.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.address}\n"
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
            # The SFTP transport's files; sshd's own server, needing no path.
            "Subsystem sftp internal-sftp\n"
            "PrintMotd no\n"
            # Each connection and forwarding request shows up in the log.
            "LogLevel VERBOSE\n"
            + set_env)

    def _launch(self) -> bool:
        """Start sshd; True once it listens, False if it exited because the port was taken."""
        # `ip netns exec` enters the namespace and then execs sshd: the PID is sshd's.
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen([*prefix, SSHD, "-D", "-e", "-f", str(self.sshd_config_path)],
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
        raise RuntimeError(f"sshd did not listen on {self.address}:{self.port} within {self.start_timeout:g} s:\n"
                           f"{self.output()}")

    def _listening(self) -> bool:
        # Told by sshd itself (it logs this once it listens), not by connecting: a probe connection
        # would fork a session child that tests counting sessions would see; nor from its sockets,
        # which psutil reads in this process's network namespace, not in sshd's.
        return f"Server listening on {self.address} port {self.port}." in self.output()

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
    def remote_home(self) -> Path:
        """$HOME of a login to this server (``set_env``'s HOME, else the account's own)."""
        return Path(self.set_env.get("HOME") or os.path.expanduser(f"~{self.user}"))

    @property
    def pid(self) -> int:
        assert self.popen is not None, "sshd is not started"
        return self.popen.pid

    @property
    def known_hosts_line(self) -> str:
        """This server's known_hosts entry, as OpenSSH writes it (``[address]:port`` for a port not 22)."""
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {self.host_public_key}"

    def host_block(self, alias: str, identity_file: str | os.PathLike,
                   known_hosts: str | os.PathLike | None = None) -> str:
        """A ``~/.ssh/config`` Host block that reaches this server as ``alias`` with ``identity_file``."""
        return (f"Host {alias}\n"
                f"    HostName {self.address}\n"
                f"    Port {self.port}\n"
                f"    User {self.user}\n"
                f"    IdentityFile {identity_file}\n"
                "    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {known_hosts or self.known_hosts_path}\n"
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


class SSHHosts:
    """Several SSH "hosts" on this machine: one :class:`SSHServer` each, on
    its own loopback address (127.0.0.2, .3, …) with its own host key and a
    remote HOME of its own (so nothing is shared through ``~``), all reached
    from one client HOME (:attr:`home`) whose ``.ssh/config`` has a Host
    alias per name, with one key authorized everywhere.

        with SSHHosts(tmp_path, ["host1", "host2"]) as hosts:
            hosts["host1"].remote_home   # $HOME of a login to host1
    """

    def __init__(self, directory: str | os.PathLike, names: Sequence[str], path: str | None = None,
                 paths: dict[str, str] | None = None, first_address: int = 2,
                 addresses: dict[str, str] | None = None, netns: dict[str, str] | None = None):
        """``path``: the PATH of logins (default: this Python's first, see
        :func:`this_python_path`); ``paths``: another PATH for some hosts;
        ``addresses``: another address than 127.0.0.<n> for some hosts, and
        ``netns`` the network namespace some of them run in
        (:class:`cluster_launcher.testing.netns.NetworkNamespace`)."""
        self.directory = Path(directory)
        self.home = self.directory / "client-home"
        self.ssh_dir = self.home / ".ssh"
        self.config_path = self.ssh_dir / "config"
        self.known_hosts_path = self.ssh_dir / "known_hosts"
        self.client_key_path = self.ssh_dir / "id_cluster_launcher_test"
        self.servers: dict[str, SSHServer] = {}
        for i, name in enumerate(names):
            remote_home = self.directory / name / "remote-home"
            login_path = (paths or {}).get(name, path or this_python_path())
            self.servers[name] = SSHServer(self.directory / name, alias=name,
                                           address=(addresses or {}).get(name, f"127.0.0.{first_address + i}"),
                                           client_key=self.client_key_path, netns=(netns or {}).get(name, ""),
                                           set_env={"HOME": str(remote_home), "PATH": login_path})

    def __getitem__(self, name: str) -> SSHServer:
        return self.servers[name]

    def start(self) -> SSHHosts:
        self.ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_ed25519_key(self.client_key_path)
        try:
            for server in self.servers.values():
                server.remote_home.mkdir(parents=True, exist_ok=True)
                server.start()
        except BaseException:
            self.stop()
            raise
        self.config_path.write_text("".join(server.host_block(name, self.client_key_path, self.known_hosts_path)
                                            for name, server in self.servers.items()))
        self.known_hosts_path.write_text("".join(s.known_hosts_line + "\n" for s in self.servers.values()))
        return self

    def copy_client_to(self, name: str) -> None:
        """Give host ``name``'s remote HOME the client's ~/.ssh (config, key,
        known_hosts), so processes there reach the other hosts as the client does."""
        target = self.servers[name].remote_home / ".ssh"
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in (self.config_path, self.known_hosts_path, self.client_key_path):
            content = path.read_text().replace(str(self.ssh_dir), str(target))
            fd = os.open(target / path.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(content)

    def add_alias(self, alias: str, block: str) -> None:
        """Add a Host block of your own (``Host alias`` first) to the client's config."""
        with open(self.config_path, "a") as config:
            config.write(block if block.startswith("Host ") else f"Host {alias}\n{block}")

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def session_pids(self) -> dict[str, list[int]]:
        """The PIDs sshd forked on each host (one or two per open connection)."""
        return {name: server.session_pids() for name, server in self.servers.items() if server.session_pids()}

    def env(self) -> dict[str, str]:
        """Environment for a process that should reach the hosts by name (paramiko reads $HOME)."""
        return {"HOME": str(self.home)}

    def __enter__(self) -> SSHHosts:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
