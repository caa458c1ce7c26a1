"""SSH logins with paramiko, as OpenSSH users expect them: what the SSH
launchers, the SFTP transport and the tunnels of clients and engines
(:mod:`cluster_launcher.protocol.tunnel`) share.

A destination is ``[user@]host[:port]`` or a ``~/.ssh/config`` Host alias.
What OpenSSH would use for it is used here: HostName, Port, User,
IdentityFile, IdentitiesOnly, ProxyJump, ProxyCommand, UserKnownHostsFile,
StrictHostKeyChecking, ConnectTimeout, ServerAliveInterval, Compression from
the config file; ssh-agent and the default key files; and command-line
options (:func:`parse_ssh_args`: ``-p``, ``-l``, ``-i``, ``-J``, ``-F``,
``-o Key=Value``) that win over the config file, as on ssh's command line.

Host keys are checked against known_hosts: a server whose key is unknown is
refused (unless StrictHostKeyChecking is ``accept-new`` or ``no``) and one
whose key changed is always refused, each with a one-line
:class:`~cluster_launcher.error.SSHError` saying what to do.

One :class:`SSHConnection` is one logged-in paramiko Transport (and the
jump hosts it goes through): it runs remote commands (:meth:`SSHConnection.run`),
opens SFTP sessions, and carries tunnels.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from ..error import SSHError

log = logging.getLogger("cluster_launcher.ssh")

DEFAULT_SSH_PORT = 22

# ssh's flags that take no value and change nothing for us (a terminal, verbosity, X11, …).
_IGNORED_FLAGS = set("tTqvxXaAnNgkKsy46")
# ssh's options with a value that we read, by the flag that sets them.
_VALUE_FLAGS = {"p": "port", "l": "user", "i": "identityfile", "J": "proxyjump", "F": "configfile"}
# -o options that are read (lower case, as paramiko's SSHConfig gives them) ...
_READ_OPTIONS = {"hostname", "port", "user", "identityfile", "identitiesonly", "proxyjump", "proxycommand",
                 "userknownhostsfile", "stricthostkeychecking", "connecttimeout", "serveraliveinterval",
                 "compression"}
# ... and those that only tune OpenSSH's own client or ask for a prompt we never show: accepted, no effect.
_NO_EFFECT_OPTIONS = {"batchmode", "loglevel", "serveralivecountmax", "controlmaster", "controlpath",
                      "controlpersist", "requesttty", "passwordauthentication", "kbdinteractiveauthentication",
                      "challengeresponseauthentication", "forwardx11", "forwardagent", "addkeystoagent",
                      "hashknownhosts", "checkhostip", "visualhostkey", "tcpkeepalive", "exitonforwardfailure"}


def parse_ssh_args(args: Sequence[str], setting: str = "ssh_args") -> dict[str, Any]:
    """OpenSSH command-line options as config keywords (lower case, as
    ``~/.ssh/config`` spells them): ``['-p', '2222', '-o', 'User=me']`` ->
    ``{'port': '2222', 'user': 'me'}``; ``identityfile`` is a list.  An
    option we cannot honour is an SSHError naming ``setting``."""
    options: dict[str, Any] = {}

    def put(key: str, value: str, origin: str) -> None:
        key = key.lower()
        if key in _NO_EFFECT_OPTIONS:
            return
        if key not in _READ_OPTIONS | {"configfile"}:
            raise SSHError(f"{setting}: {origin}: the SSH option {key!r} is not supported here (supported: "
                           f"{', '.join(sorted(_READ_OPTIONS))})")
        if key == "identityfile":
            options.setdefault(key, []).append(value)
        else:
            options.setdefault(key, value)  # as OpenSSH: the first value given wins

    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        i += 1
        if not arg.startswith("-") or len(arg) < 2:
            raise SSHError(f"{setting}: {arg!r} is not an ssh option (the destination and the command "
                           "are given by the launcher)")
        flag, attached = arg[1], arg[2:]
        if flag in _IGNORED_FLAGS and set(attached) <= _IGNORED_FLAGS:
            continue  # -tt, -q, -T ...
        if flag not in _VALUE_FLAGS and flag != "o":
            raise SSHError(f"{setting}: the ssh option -{flag} is not supported here (supported: -p -l -i -J -F "
                           "-o Key=Value, and flags without effect such as -tt -q)")
        if attached:
            value = attached
        elif i < len(items):
            value, i = items[i], i + 1
        else:
            raise SSHError(f"{setting}: the ssh option -{flag} needs a value")
        if flag == "o":
            key, sep, option_value = value.partition("=")
            if not sep:
                key, _, option_value = value.strip().partition(" ")
            if not key or not option_value.strip():
                raise SSHError(f"{setting}: -o {value!r}: expected -o Key=Value")
            put(key.strip(), option_value.strip(), f"-o {value}")
        else:
            put(_VALUE_FLAGS[flag], value, f"-{flag} {value}")
    return options


def split_destination(destination: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (``[v6 address]:port`` too) -> user, host, port."""
    user, at, host = destination.rpartition("@")
    port: str | None = None
    if host.startswith("[") and "]" in host:
        host, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    if not host or (port is not None and not port.isdigit()):
        raise SSHError(f"SSH server {destination!r}: expected [user@]host[:port] or a Host alias of ~/.ssh/config")
    return (user if at else None), host, (int(port) if port else None)


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to log in, once the destination, the command-line
    options and ``~/.ssh/config`` are combined."""

    server: str  # the destination as the user wrote it
    hostname: str
    port: int
    username: str
    key_filenames: tuple[str, ...]
    known_hosts_files: tuple[str, ...]  # the user's first: the one to name in messages, and to add to
    identities_only: bool = False
    proxy_jump: str = ""
    proxy_command: str = ""
    strict_host_key_checking: str = "yes"  # 'yes', 'accept-new' or 'no'
    connect_timeout: float | None = None
    keepalive: int = 0
    compression: bool = False
    config_path: str = ""  # the config file jump hosts are looked up in

    @property
    def where(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name of this server's entry in known_hosts (OpenSSH's form)."""
        return self.hostname if self.port == DEFAULT_SSH_PORT else f"[{self.hostname}]:{self.port}"

    @property
    def origin(self) -> str:
        """`` (from 'alias')`` when the user wrote something else than :attr:`where`."""
        return f" (from {self.server!r})" if self.server != self.where else ""


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "on")


def resolve_target(destination: str, keyfile: str | None = None,
                   options: dict[str, Any] | None = None) -> SSHTarget:
    """The login details for ``destination``: what it spells out, then
    ``options`` (from :func:`parse_ssh_args`, as ssh's command line), then
    what the ssh config file says for it, then OpenSSH's defaults.
    ``keyfile`` is tried before any other key."""
    user, host, port = split_destination(destination)
    options = dict(options or {})
    home = os.path.expanduser("~")
    named_config = options.pop("configfile", "")
    config_path = os.path.expanduser(named_config or os.path.join(home, ".ssh", "config"))
    settings: dict[str, Any] = {}
    if os.path.isfile(config_path):
        try:
            settings = dict(paramiko.SSHConfig.from_path(config_path).lookup(host))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise SSHError(f"SSH server {destination!r}: cannot read {config_path}: {exc}") from None
    elif named_config:
        raise SSHError(f"SSH server {destination!r}: the ssh config file {config_path} (-F) does not exist")
    command_line_keys = [os.path.expanduser(path) for path in options.pop("identityfile", [])]
    settings.update(options)  # the command line wins over the config file
    if keyfile:
        keyfile = os.path.expanduser(keyfile)
        if not os.path.isfile(keyfile):
            raise SSHError(f"SSH server {destination!r}: key file {keyfile} does not exist")
    # As OpenSSH, IdentityFile entries that do not exist are skipped, not errors.
    configured = [path for path in [*command_line_keys, *settings.get("identityfile", [])] if os.path.isfile(path)]
    user_known_hosts = [os.path.expanduser(path) for path in settings.get("userknownhostsfile", "").split()]
    strict = settings.get("stricthostkeychecking", "yes").strip().lower()
    strict = {"ask": "yes", "true": "yes", "off": "no", "false": "no"}.get(strict, strict)
    if strict not in ("yes", "accept-new", "no"):
        raise SSHError(f"SSH server {destination!r}: StrictHostKeyChecking {strict!r}: expected yes, accept-new "
                       "or no")
    try:
        hostname = settings.get("hostname", host)
        port = port or int(settings.get("port", DEFAULT_SSH_PORT))
        username = user or settings.get("user") or getpass.getuser()
        proxy_command = "" if settings.get("proxycommand", "none").lower() == "none" else settings["proxycommand"]
        if "proxycommand" in options:  # paramiko expands the config file's %h %p %r; ssh expands -o's too
            proxy_command = _expand_tokens(proxy_command, {"h": hostname, "p": str(port), "r": username, "n": host})
        return SSHTarget(
            server=destination,
            hostname=hostname,
            port=port,
            username=username,
            key_filenames=tuple(dict.fromkeys(([keyfile] if keyfile else []) + configured)),
            known_hosts_files=(*(user_known_hosts or [os.path.join(home, ".ssh", "known_hosts")]),
                               "/etc/ssh/ssh_known_hosts"),
            identities_only=_yes(settings.get("identitiesonly", "no")),
            proxy_jump="" if settings.get("proxyjump", "none").lower() == "none" else settings["proxyjump"],
            proxy_command=proxy_command,
            strict_host_key_checking=strict,
            connect_timeout=float(settings["connecttimeout"]) if "connecttimeout" in settings else None,
            keepalive=int(settings.get("serveraliveinterval", 0)),
            compression=_yes(settings.get("compression", "no")),
            config_path=config_path,
        )
    except ValueError as exc:  # a Port, ConnectTimeout or ServerAliveInterval that is not a number
        raise SSHError(f"SSH server {destination!r}: bad setting in {config_path} or the ssh options: {exc}") from None


def _load_known_hosts(host_keys: paramiko.HostKeys, paths: Sequence[str]) -> dict[tuple[str, str], str]:
    """Add the keys of the known_hosts files ``paths`` to ``host_keys``, but
    those marked ``@revoked``: returned, ``(key type, base64) -> file``, for
    the policies to refuse.  ``@cert-authority`` lines are skipped (host
    certificates are not supported), as paramiko's own loader cannot (it
    fails on the whole file)."""
    lines: list[tuple[int, str]] = []
    revoked: dict[tuple[str, str], str] = {}
    for path in paths:
        try:
            with open(path) as f:
                numbered = list(enumerate(f, 1))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SSHError(f"cannot read the known hosts file {path}: {exc.strerror or exc}") from None
        for number, raw in numbered:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("@"):
                fields = line.split()
                if fields[0] == "@revoked" and len(fields) >= 4:
                    revoked[(fields[2], fields[3])] = path
                continue
            lines.append((number, line))
    for number, line in lines:
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (paramiko.SSHException, InvalidHostKey):
            continue  # as OpenSSH: a line it cannot read is skipped, the rest of the file still counts
        if entry is None or entry.key is None or (entry.key.get_name(), entry.key.get_base64()) in revoked:
            continue
        for name in entry.hostnames:
            host_keys.add(name, entry.key.get_name(), entry.key)
    return revoked


def _expand_tokens(text: str, tokens: dict[str, str]) -> str:
    """OpenSSH's ``%h``-style tokens of ``text`` replaced (``%%`` is ``%``)."""
    return re.sub(r"%(.)", lambda match: "%" if match.group(1) == "%" else tokens.get(match.group(1), match.group(0)),
                  text)


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """What both policies share: a server whose key is unknown reaches them,
    and so does one whose key is marked @revoked (left out of the known keys)."""

    def __init__(self, target: SSHTarget, revoked: dict[tuple[str, str], str]):
        self.target = target
        self.revoked = revoked

    def refuse_revoked(self, key: paramiko.PKey) -> None:
        where = self.revoked.get((key.get_name(), key.get_base64()))
        if where is not None:
            target = self.target
            raise SSHError(f"SSH server {target.hostname} port {target.port}{target.origin} sent a {key.get_name()} "
                           f"host key that {where} marks @revoked: refusing it; ask the server's administrator for "
                           "its current key")


class _RejectUnknownHost(_HostKeyPolicy):
    """StrictHostKeyChecking yes: refuses a server missing from known_hosts,
    with a message that says what to do."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        self.refuse_revoked(key)
        target = self.target
        raise SSHError(
            f"SSH server {target.hostname} port {target.port}{target.origin} is unknown: its "
            f"{key.get_name()} host key is not in {target.known_hosts_files[0]}; connect once with ssh "
            f"(ssh -p {target.port} {target.username}@{target.hostname}) to check and accept its key, or set "
            "StrictHostKeyChecking accept-new for it in ~/.ssh/config")


class _AcceptNewHost(_HostKeyPolicy):
    """StrictHostKeyChecking accept-new (or no): trusts a server seen for the
    first time; with accept-new its key is added to the user's known_hosts,
    so a later change is caught.  A changed key never reaches this policy:
    paramiko refuses it first.  A revoked key is refused all the same."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.refuse_revoked(key)
        target = self.target
        if target.strict_host_key_checking == "no":
            log.warning("SSH server %s%s is unknown; trusting its %s key because StrictHostKeyChecking is no",
                        target.where, target.origin, key.get_name())
            return
        path = target.known_hosts_files[0]
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as known_hosts:
            known_hosts.write(f"{target.known_hosts_name} {key.get_name()} {key.get_base64()}\n")
        log.warning("SSH server %s%s: added its %s host key to %s (StrictHostKeyChecking accept-new)",
                    target.where, target.origin, key.get_name(), path)


def _explained(exc: BaseException, target: SSHTarget) -> SSHError | None:
    """The one-line error a failed login becomes (None: not a login failure)."""
    reason = error_reason(exc)
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        # "[Errno None] Unable to connect to port 22 on 10.0.0.5": the cause is in each address's error.
        reason = "; ".join(sorted({getattr(error, "strerror", None) or str(error)
                                   for error in exc.errors.values()})) or reason
    if isinstance(exc, SSHError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return SSHError(
            f"SSH server {target.hostname} port {target.port}{target.origin} sent a host key that does "
            f"not match the one in {target.known_hosts_files[0]}: someone may be intercepting the connection; if "
            f"the server was reinstalled, remove the old key (ssh-keygen -R '{target.known_hosts_name}') and "
            "connect once with ssh to accept the new one")
    what_to_do = ("add the public key to the server's ~/.ssh/authorized_keys or name the right key "
                  "(IdentityFile in ~/.ssh/config, or the sshkey option)")
    if isinstance(exc, paramiko.AuthenticationException):
        tried = ", ".join([*target.key_filenames, *([] if target.identities_only else ["ssh-agent", "~/.ssh/id_*"])])
        return SSHError(f"SSH server {target.where}{target.origin} refused authentication ({reason}); keys tried: "
                        f"{tried or 'none'}; {what_to_do}")
    # paramiko's way of saying it found no key at all (no class of its own).
    if isinstance(exc, paramiko.SSHException) and "no authentication methods available" in reason.lower():
        return SSHError(f"SSH server {target.where}{target.origin}: no key to log in with (no sshkey, no "
                        f"IdentityFile, no ssh-agent, no ~/.ssh/id_*); {what_to_do}")
    if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
        via = f" via ProxyJump {target.proxy_jump}" if target.proxy_jump else ""
        return SSHError(f"cannot reach SSH server {target.where}{target.origin}{via}: {reason}")
    return None


def _close_client(client: paramiko.SSHClient, then: Sequence[Callable[[], None]] = ()) -> None:
    """Close ``client``, call ``then``, and wait for its transport thread to end
    (paramiko's ``close`` does not), so no thread outlives the connection."""
    transport = client.get_transport()
    client.close()
    for step in then:
        step()
    if transport is not None and transport is not threading.current_thread() and transport.is_alive():
        transport.join(timeout=5)


def _login(target: SSHTarget, timeout: float, sock: Any = None) -> paramiko.SSHClient:
    """A paramiko client logged in to ``target`` (over ``sock`` if given: a
    jump host's channel or a ProxyCommand); SSHError of one line if not."""
    client = paramiko.SSHClient()
    try:
        revoked = _load_known_hosts(client.get_host_keys(), target.known_hosts_files)
        policy = _RejectUnknownHost if target.strict_host_key_checking == "yes" else _AcceptNewHost
        client.set_missing_host_key_policy(policy(target, revoked))
        # key_filename takes a list too (documented by paramiko; its type stubs say str only).
        key_filenames: Any = list(target.key_filenames) or None
        wait = target.connect_timeout or timeout
        client.connect(target.hostname, target.port, target.username, key_filename=key_filenames,
                       allow_agent=not target.identities_only, look_for_keys=not target.identities_only,
                       timeout=wait, banner_timeout=wait, auth_timeout=timeout, channel_timeout=timeout,
                       compress=target.compression, sock=sock)
    except BaseException as exc:
        _close_client(client)
        if sock is not None:
            sock.close()
        explained = _explained(exc, target)
        if explained is None:
            raise
        raise explained from None
    transport = client.get_transport()
    assert transport is not None  # connect() succeeded
    if isinstance(transport.sock, socket.socket):
        # Heartbeats and replies are small messages: Nagle's delay would add
        # tens of milliseconds to each of them.
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if target.keepalive:
        transport.set_keepalive(target.keepalive)
    return client


def connect_ssh(destination: str, timeout: float, keyfile: str | None = None,
                options: dict[str, Any] | None = None) -> SSHConnection:
    """Log in to ``destination`` (``[user@]host[:port]`` or a ``~/.ssh/config``
    Host alias), through its ProxyJump hosts or ProxyCommand if it has any;
    an SSHError of one line if a host key is unknown or changed, a server
    refuses us, or one cannot be reached within ``timeout`` s.  ``options``:
    ssh command-line options (:func:`parse_ssh_args`)."""
    target = resolve_target(destination, keyfile, options)
    jumps: list[SSHConnection] = []
    sock: Any = None
    try:
        if target.proxy_jump:
            jumps = _connect_jumps(target, timeout)
            sock = _open_hop(jumps[-1], target, timeout, target)
        elif target.proxy_command:
            try:
                sock = paramiko.ProxyCommand(target.proxy_command)
            except (OSError, ValueError, paramiko.SSHException) as exc:
                raise SSHError(f"cannot reach SSH server {target.where}{target.origin}: its ProxyCommand "
                               f"{target.proxy_command!r} cannot run: {error_reason(exc)}") from None
        client = _login(target, timeout, sock)
    except BaseException:
        for jump in reversed(jumps):
            jump.close()
        raise
    log.debug("SSH connection to %s open%s", target.where,
              f" via {', '.join(jump.target.where for jump in jumps)}" if jumps else "")
    return SSHConnection(client, target, jumps)


def _connect_jumps(target: SSHTarget, timeout: float) -> list[SSHConnection]:
    """Logged-in connections to each ProxyJump host of ``target``, in order,
    each reached through the one before it."""
    hops = [hop.strip() for hop in target.proxy_jump.split(",") if hop.strip()]
    if len(hops) > 8:
        raise SSHError(f"SSH server {target.server!r}: ProxyJump {target.proxy_jump!r} has more than 8 hosts")
    jumps: list[SSHConnection] = []
    try:
        for hop in hops:
            # A jump host is looked up in the same config file, without the command line's options
            # (as OpenSSH does), and its own ProxyJump is not followed: the chain is the list above.
            same_config = {"configfile": target.config_path} if os.path.isfile(target.config_path) else {}
            hop_target = resolve_target(hop, options={**same_config, "proxyjump": "none"})
            sock = None
            if jumps:
                sock = _open_hop(jumps[-1], hop_target, timeout, target)
            jumps.append(SSHConnection(_login(hop_target, timeout, sock), hop_target))
    except BaseException:
        for jump in reversed(jumps):
            jump.close()
        raise
    return jumps


def _remote_word(arg: str) -> str:
    """``arg`` quoted for the remote shell, a leading ``~/`` left for it to
    expand to the remote home (as ``ssh host ~/venv/bin/python`` does)."""
    return "~/" + shlex.quote(arg[2:]) if arg.startswith("~/") and len(arg) > 2 else shlex.quote(arg)


def _open_hop(jump: SSHConnection, to: SSHTarget, timeout: float, target: SSHTarget) -> paramiko.Channel:
    """A channel from the jump host ``jump`` to the SSH server ``to`` (a
    further jump host, or ``target`` itself)."""
    try:
        return jump.transport.open_channel("direct-tcpip", (to.hostname, to.port), ("127.0.0.1", 0), timeout=timeout)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise SSHError(f"cannot reach SSH server {target.where}{target.origin} via ProxyJump {target.proxy_jump}: "
                       f"the jump host {jump.target.where} cannot open a connection to {to.hostname} port "
                       f"{to.port}: {error_reason(exc)}") from None


def error_reason(exc: BaseException) -> str:
    """``exc`` as one line: its message, else its type's name."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass
class RemoteResult:
    """What a command run over SSH gave: its exit status and output."""

    status: int
    stdout: bytes
    stderr: bytes
    command: str = field(repr=False, default="")

    def stderr_lines(self) -> list[str]:
        return self.stderr.decode(errors="replace").splitlines()


class _Closeable(Protocol):
    """Something carried by a connection (a tunnel) that stops with it."""

    def _request_stop(self) -> None: ...

    def _join(self) -> None: ...


class SSHConnection:
    """One logged-in SSH connection (one paramiko Transport), the jump hosts
    it goes through, and what it carries (tunnels, an SFTP session).
    ``close`` stops all of it; it is idempotent."""

    def __init__(self, client: paramiko.SSHClient, target: SSHTarget, jumps: Sequence[SSHConnection] = ()):
        self._client = client
        self.target = target
        self.jumps = list(jumps)
        self.tunnels: list[_Closeable] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def transport(self) -> paramiko.Transport:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"the SSH connection to {self.target.where} is closed")
        return transport

    @property
    def closed(self) -> bool:
        """Closed here, or dropped (the server or the network ended it)."""
        if self._closed:
            return True
        transport = self._client.get_transport()
        return transport is None or not transport.is_active()

    def attach(self, carried: _Closeable) -> None:
        """Stop ``carried`` when this connection closes."""
        with self._lock:
            if self._closed:
                raise SSHError(f"the SSH connection to {self.target.where} is closed")
            self.tunnels.append(carried)

    def run(self, argv: Sequence[str], stdin: bytes = b"", timeout: float = 60.0) -> RemoteResult:
        """Run ``argv`` (quoted for the remote shell) on the server, feed it
        ``stdin``, and return its status and output; SSHError if it does not
        end within ``timeout`` seconds or the connection fails."""
        command = " ".join(_remote_word(arg) for arg in argv)
        deadline = time.monotonic() + timeout
        try:
            channel = self.transport.open_session(timeout=timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SSHError(f"SSH server {self.target.where}{self.target.origin}: cannot run a command: "
                           f"{error_reason(exc)}") from None
        stdout, stderr = bytearray(), bytearray()
        try:
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            while True:
                while channel.recv_ready():
                    stdout += channel.recv(65536)
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(65536)
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    raise SSHError(f"SSH server {self.target.where}{self.target.origin}: {argv[0]} did not finish "
                                   f"within {timeout:g}s")
                # Wakes when stdout has data; stderr and the exit status are looked at every 20 ms.
                select.select([channel], [], [], 0.02)
            status = channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SSHError(f"SSH server {self.target.where}{self.target.origin}: the connection failed while "
                           f"{argv[0]} ran: {error_reason(exc)}") from None
        finally:
            channel.close()
        return RemoteResult(status, bytes(stdout), bytes(stderr), command)

    def sftp(self) -> paramiko.SFTPClient:
        """This connection's SFTP session (opened once, closed with it)."""
        with self._lock:
            if self._sftp is None:
                try:
                    sftp = paramiko.SFTPClient.from_transport(self.transport)
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    sftp, reason = None, f": {error_reason(exc)}"
                else:
                    reason = ""
                if sftp is None:
                    raise SSHError(f"SSH server {self.target.where}{self.target.origin}: cannot open SFTP{reason} "
                                   "(its sshd_config needs a 'Subsystem sftp' line)")
                self._sftp = sftp
            return self._sftp

    def close(self) -> None:
        """Stop every tunnel, close the connection, then its jump hosts'; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for carried in self.tunnels:
            carried._request_stop()
        if self._sftp is not None:
            self._sftp.close()
        # Closed before the tunnels are joined: it ends a wait for a channel to open.
        _close_client(self._client, then=[carried._join for carried in self.tunnels])
        for jump in reversed(self.jumps):
            jump.close()
        log.debug("SSH connection to %s closed", self.target.where)

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
