"""SSH tunnels to the controller, for clients and engines that cannot reach it
directly (``Client(sshserver=...)``, ``cluster-launcher engine --ssh=HOST``).

One :class:`SSHConnection` is one authenticated paramiko Transport; each
:meth:`SSHConnection.forward` listens on a free 127.0.0.1 port and carries
every connection made to it over a ``direct-tcpip`` channel to
``remote_host:remote_port`` as seen from the SSH server.  An engine forwards
two ports through one connection; :func:`open_tunnel` is the one-port case.

OpenSSH users' habits hold: ``~/.ssh/config`` (HostName, Port, User,
IdentityFile, UserKnownHostsFile), ssh-agent, the default key files, and
known_hosts checking: a server whose host key is unknown or changed is
refused, never trusted silently.
"""

from __future__ import annotations

import getpass
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import paramiko

from ..error import SSHTunnelError

log = logging.getLogger("cluster_launcher.tunnel")

DEFAULT_SSH_PORT = 22
# Per direction and per forwarded connection: a slow reader on one side
# stops the reading on the other instead of growing memory without bound.
_BUFFER_LIMIT = 256 * 1024
_RECV_CHUNK = 64 * 1024
# paramiko tells no file descriptor when a channel's send window reopens, so
# while data waits for it the loop looks again this often.
_WINDOW_POLL_SECONDS = 0.01


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to log in, after ``~/.ssh/config`` is applied."""

    server: str  # as the user wrote it
    hostname: str
    port: int
    username: str
    key_filenames: tuple[str, ...]
    known_hosts_files: tuple[str, ...]  # the user's first: the one to name in messages

    @property
    def where(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name of this server's entry in known_hosts (OpenSSH's form)."""
        return self.hostname if self.port == DEFAULT_SSH_PORT else f"[{self.hostname}]:{self.port}"


def _split_server(server: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (``[v6 address]:port`` too) -> user, host, port."""
    user, at, host = server.rpartition("@")
    port: str | None = None
    if host.startswith("[") and "]" in host:
        host, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    if not host or (port is not None and not port.isdigit()):
        raise SSHTunnelError(f"SSH server {server!r}: expected [user@]host[:port] or a Host alias of ~/.ssh/config")
    return (user if at else None), host, (int(port) if port else None)


def resolve_target(server: str, keyfile: str | None = None) -> SSHTarget:
    """The login details for ``server``: what it spells out, else what
    ``~/.ssh/config`` says for it, else OpenSSH's defaults."""
    user, host, port = _split_server(server)
    home = os.path.expanduser("~")
    config_path = os.path.join(home, ".ssh", "config")
    settings: dict = {}
    if os.path.isfile(config_path):
        try:
            settings = paramiko.SSHConfig.from_path(config_path).lookup(host)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise SSHTunnelError(f"SSH server {server!r}: cannot read {config_path}: {exc}") from None
    if keyfile:
        keyfile = os.path.expanduser(keyfile)
        if not os.path.isfile(keyfile):
            raise SSHTunnelError(f"SSH server {server!r}: key file {keyfile} does not exist")
    # As OpenSSH, IdentityFile entries that do not exist are skipped, not errors.
    configured_keys = [path for path in settings.get("identityfile", []) if os.path.isfile(path)]
    user_known_hosts = [os.path.expanduser(path) for path in settings.get("userknownhostsfile", "").split()]
    return SSHTarget(
        server=server,
        hostname=settings.get("hostname", host),
        port=port or int(settings.get("port", DEFAULT_SSH_PORT)),
        username=user or settings.get("user") or getpass.getuser(),
        key_filenames=tuple(([keyfile] if keyfile else []) + configured_keys),
        known_hosts_files=(*(user_known_hosts or [os.path.join(home, ".ssh", "known_hosts")]),
                           "/etc/ssh/ssh_known_hosts"),
    )


class _RejectUnknownHost(paramiko.RejectPolicy):
    """Refuses a server missing from known_hosts with a message that says
    what to do (paramiko's own says only that it is not found)."""

    def __init__(self, target: SSHTarget):
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        target = self.target
        raise SSHTunnelError(
            f"SSH server {target.hostname} port {target.port} (from {target.server!r}) is unknown: its "
            f"{key.get_name()} host key is not in {target.known_hosts_files[0]}; connect once with ssh "
            f"(ssh -p {target.port} {target.username}@{target.hostname}) to check and accept its key")


def connect_ssh(server: str, timeout: float, keyfile: str | None = None) -> SSHConnection:
    """Log in to ``server`` (``[user@]host[:port]`` or a ``~/.ssh/config`` Host
    alias); an SSHTunnelError of one line if its host key is unknown or
    changed, it refuses us, or it cannot be reached within ``timeout`` s."""
    target = resolve_target(server, keyfile)
    client = paramiko.SSHClient()
    try:
        for path in target.known_hosts_files:
            if os.path.isfile(path):
                client.load_system_host_keys(path)
        client.set_missing_host_key_policy(_RejectUnknownHost(target))
        # key_filename takes a list too (documented by paramiko; its type stubs say str only).
        key_filenames: Any = list(target.key_filenames) or None
        client.connect(target.hostname, target.port, target.username, key_filename=key_filenames,
                       allow_agent=True, look_for_keys=True, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout, channel_timeout=timeout)
    except BaseException as exc:
        _close_client(client)
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
    log.debug("SSH connection to %s open", target.where)
    return SSHConnection(client, target)


def _close_client(client: paramiko.SSHClient, then: Sequence[Callable[[], None]] = ()) -> None:
    """Close ``client``, call ``then``, and wait for its transport thread to end
    (paramiko's ``close`` does not), so no thread outlives the connection."""
    transport = client.get_transport()
    client.close()
    for step in then:
        step()
    if transport is not None and transport is not threading.current_thread() and transport.is_alive():
        transport.join(timeout=5)


def _explained(exc: BaseException, target: SSHTarget) -> SSHTunnelError | None:
    """The one-line error a failed login becomes (None: not a login failure)."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, SSHTunnelError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return SSHTunnelError(
            f"SSH server {target.hostname} port {target.port} (from {target.server!r}) sent a host key that does "
            f"not match the one in {target.known_hosts_files[0]}: someone may be intercepting the connection; if "
            f"the server was reinstalled, remove the old key (ssh-keygen -R '{target.known_hosts_name}') and "
            "connect once with ssh to accept the new one")
    what_to_do = ("add the public key to the server's ~/.ssh/authorized_keys or name the right key "
                  "(IdentityFile in ~/.ssh/config, or the sshkey option)")
    if isinstance(exc, paramiko.AuthenticationException):
        tried = ", ".join([*target.key_filenames, "ssh-agent", "~/.ssh/id_*"])
        return SSHTunnelError(f"SSH server {target.where} refused authentication ({reason}); keys tried: {tried}; "
                              f"{what_to_do}")
    # paramiko's way of saying it found no key at all (no class of its own).
    if isinstance(exc, paramiko.SSHException) and "no authentication methods available" in reason.lower():
        return SSHTunnelError(f"SSH server {target.where}: no key to log in with (no sshkey, no IdentityFile, "
                              f"no ssh-agent, no ~/.ssh/id_*); {what_to_do}")
    if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
        origin = f" (from {target.server!r})" if target.server != target.where else ""
        return SSHTunnelError(f"cannot reach SSH server {target.where}{origin}: {reason}")
    return None


class SSHConnection:
    """One logged-in SSH connection (one paramiko Transport) and the local
    ports it forwards.  ``close`` stops every tunnel, then the connection."""

    def __init__(self, client: paramiko.SSHClient, target: SSHTarget):
        self._client = client
        self.target = target
        self.tunnels: list[Tunnel] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def transport(self) -> paramiko.Transport:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHTunnelError(f"the SSH connection to {self.target.where} is closed")
        return transport

    def forward(self, remote_host: str, remote_port: int, timeout: float = 10.0) -> Tunnel:
        """Listen on a free 127.0.0.1 port and forward each connection made to
        it to ``remote_host:remote_port`` as seen from the SSH server (each
        channel must open within ``timeout`` seconds)."""
        with self._lock:
            if self._closed:
                raise SSHTunnelError(f"the SSH connection to {self.target.where} is closed")
            tunnel = Tunnel(self, remote_host, remote_port, timeout)
            self.tunnels.append(tunnel)
        log.debug("forwarding 127.0.0.1:%d to %s:%d through %s", tunnel.local_port, remote_host, remote_port,
                  self.target.where)
        return tunnel

    def close(self) -> None:
        """Stop every tunnel and close the connection; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for tunnel in self.tunnels:
            tunnel._request_stop()
        # Closed before the tunnels are joined: it ends a wait for a channel to open.
        _close_client(self._client, then=[tunnel._join for tunnel in self.tunnels])
        log.debug("SSH connection to %s closed", self.target.where)

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tunnel(server: str, remote_host: str, remote_port: int, timeout: float,
                keyfile: str | None = None) -> Tunnel:
    """Forward a free 127.0.0.1 port to ``remote_host:remote_port`` as seen
    from ``server`` over a connection of its own; the tunnel's ``close``
    closes that connection too."""
    ssh = connect_ssh(server, timeout, keyfile)
    try:
        tunnel = ssh.forward(remote_host, remote_port, timeout)
    except BaseException:
        ssh.close()
        raise
    tunnel._owns_connection = True
    return tunnel


class _ForwardedConnection:
    """One accepted local connection and its channel, with a bounded buffer
    each way and each direction's end of stream passed on (half-close)."""

    def __init__(self, local: socket.socket, channel: paramiko.Channel):
        self.local, self.channel = local, channel
        self.upstream = bytearray()  # read locally, not yet sent on the channel
        self.downstream = bytearray()  # read from the channel, not yet written locally
        self.local_eof = self.channel_eof = False  # each side said it sends no more
        self.upstream_shut = self.downstream_shut = False  # that end of stream passed on

    def local_events(self) -> int:
        events = selectors.EVENT_READ if not self.local_eof and len(self.upstream) < _BUFFER_LIMIT else 0
        return events | (selectors.EVENT_WRITE if self.downstream else 0)

    def channel_events(self) -> int:
        return selectors.EVENT_READ if not self.channel_eof and len(self.downstream) < _BUFFER_LIMIT else 0

    def waits_for_window(self) -> bool:
        return bool(self.upstream) and not self.channel.send_ready()

    def pump(self) -> bool:
        """Move what can move without blocking; False once the connection is over."""
        if not self.local_eof and len(self.upstream) < _BUFFER_LIMIT:
            try:
                data = self.local.recv(min(_RECV_CHUNK, _BUFFER_LIMIT - len(self.upstream)))
            except BlockingIOError:
                pass
            else:
                self.upstream += data
                self.local_eof = not data
        while self.upstream and self.channel.send_ready():
            sent = self.channel.send(bytes(self.upstream[:_RECV_CHUNK]))
            if sent == 0:  # the channel is closed: nowhere to send
                return False
            del self.upstream[:sent]
        if self.local_eof and not self.upstream and not self.upstream_shut:
            if not self.channel.closed:
                self.channel.shutdown_write()
            self.upstream_shut = True
        if not self.channel_eof and len(self.downstream) < _BUFFER_LIMIT:
            try:
                data = self.channel.recv(min(_RECV_CHUNK, _BUFFER_LIMIT - len(self.downstream)))
            except TimeoutError:
                pass
            else:
                self.downstream += data
                self.channel_eof = not data
        while self.downstream:
            try:
                written = self.local.send(self.downstream)
            except BlockingIOError:
                break
            del self.downstream[:written]
        if self.channel_eof and not self.downstream and not self.downstream_shut:
            self.local.shutdown(socket.SHUT_WR)
            self.downstream_shut = True
        return not (self.downstream_shut and (self.upstream_shut or self.channel.closed))

    def close(self) -> None:
        self.channel.close()
        self.local.close()


class Tunnel:
    """A local port forwarded through an :class:`SSHConnection`: a listening
    socket on 127.0.0.1 and a daemon thread that accepts connections and pumps
    each one to its own ``direct-tcpip`` channel.  ``close`` is idempotent."""

    def __init__(self, connection: SSHConnection, remote_host: str, remote_port: int, timeout: float):
        self.connection = connection
        self.remote_host, self.remote_port = remote_host, remote_port
        self.timeout = timeout
        self.connections_forwarded = 0  # channels opened so far (the proof that traffic goes through)
        self._owns_connection = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.setblocking(False)
        self.local_port: int = self._listener.getsockname()[1]
        self._wake_recv, self._wake_send = socket.socketpair()
        self._lock = threading.Lock()
        self._stop_requested = False
        self._failing = False  # the last channel failed to open: log the next failure at debug level only
        self._thread = threading.Thread(target=self._run, name=f"ssh-tunnel-{self.local_port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The zmq URL of the tunnel's local end."""
        return f"tcp://127.0.0.1:{self.local_port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop forwarding and close every socket and channel (and the SSH
        connection, if the tunnel was opened by :func:`open_tunnel`)."""
        if self._owns_connection:
            self.connection.close()
        else:
            self._request_stop()
            self._join()

    def _request_stop(self) -> None:
        with self._lock:
            if self._stop_requested:
                return
            self._stop_requested = True
        try:
            self._wake_send.send(b"\0")
        except OSError:  # the thread is gone already
            pass

    def _join(self) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._wake_send.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        forwarded: list[_ForwardedConnection] = []
        try:
            selector.register(self._wake_recv, selectors.EVENT_READ)
            selector.register(self._listener, selectors.EVENT_READ)
            while True:
                for conn in forwarded:
                    _set_interest(selector, conn.local, conn.local_events())
                    _set_interest(selector, conn.channel, conn.channel_events())
                waiting = any(conn.waits_for_window() for conn in forwarded)
                ready = {key.fileobj for key, _ in selector.select(_WINDOW_POLL_SECONDS if waiting else None)}
                if self._wake_recv in ready:
                    return
                if self._listener in ready:
                    forwarded += self._accept()
                for conn in list(forwarded):
                    try:
                        alive = conn.pump()
                    except (OSError, EOFError, paramiko.SSHException) as exc:
                        log.debug("forwarded connection to %s:%d ended: %s", self.remote_host, self.remote_port, exc)
                        alive = False
                    if not alive:
                        _set_interest(selector, conn.local, 0)
                        _set_interest(selector, conn.channel, 0)
                        conn.close()
                        forwarded.remove(conn)
        except Exception:  # the thread must not die silently: the tunnel would just stop answering
            log.exception("SSH tunnel 127.0.0.1:%d -> %s:%d failed", self.local_port, self.remote_host,
                          self.remote_port)
        finally:
            for conn in forwarded:
                conn.close()
            selector.close()
            self._listener.close()
            self._wake_recv.close()

    def _accept(self) -> list[_ForwardedConnection]:
        """Every connection waiting on the listener, each with its channel
        open (a connection whose channel cannot open is closed: zmq retries)."""
        accepted = []
        for _ in range(64):  # the rest wait for the next turn of the loop
            try:
                local, peer = self._listener.accept()
            except BlockingIOError:
                break
            try:
                channel = self.connection.transport.open_channel(
                    "direct-tcpip", (self.remote_host, self.remote_port), peer, timeout=self.timeout)
            except (OSError, EOFError, paramiko.SSHException, SSHTunnelError) as exc:
                level = logging.DEBUG if self._failing else logging.WARNING
                log.log(level, "SSH server %s cannot open a connection to %s:%d: %s", self.connection.target.where,
                        self.remote_host, self.remote_port, " ".join(str(exc).split()) or type(exc).__name__)
                self._failing = True
                local.close()
                continue
            self._failing = False
            channel.settimeout(0.0)  # never block the loop: recv raises TimeoutError when empty
            local.setblocking(False)
            # zmq's small messages (heartbeats, replies) must not wait for Nagle's delay.
            local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections_forwarded += 1
            accepted.append(_ForwardedConnection(local, channel))
        return accepted


def _set_interest(selector: selectors.BaseSelector, fileobj: socket.socket | paramiko.Channel, events: int) -> None:
    """Watch ``fileobj`` for ``events`` (none: stop watching it)."""
    key = selector.get_map().get(fileobj)
    if key is None:
        if events:
            selector.register(fileobj, events)
    elif not events:
        selector.unregister(fileobj)
    elif key.events != events:
        selector.modify(fileobj, events)
