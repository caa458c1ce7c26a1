"""SSH tunnels to the controller, for clients and engines that cannot reach it
directly (``Client(sshserver=...)``, ``cluster-launcher engine --ssh=HOST``).

Each :func:`forward` listens on a free 127.0.0.1 port of this host and carries
every connection made to it over a ``direct-tcpip`` channel of an
:class:`~cluster_launcher.protocol.ssh.SSHConnection` to
``remote_host:remote_port`` as seen from the SSH server.  An engine forwards
two ports through one connection; :func:`open_tunnel` is the one-port case
with a connection of its own.  The login itself (``~/.ssh/config``,
ssh-agent, known_hosts, ProxyJump) is :mod:`cluster_launcher.protocol.ssh`'s.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading

import paramiko

from ..error import SSHError
from .ssh import SSHConnection, connect_ssh, error_reason

log = logging.getLogger("cluster_launcher.tunnel")

# Per direction and per forwarded connection: a slow reader on one side
# stops the reading on the other instead of growing memory without bound.
_BUFFER_LIMIT = 256 * 1024
_RECV_CHUNK = 64 * 1024
# paramiko tells no file descriptor when a channel's send window reopens, so
# while data waits for it the loop looks again this often.
_WINDOW_POLL_SECONDS = 0.01


def forward(connection: SSHConnection, remote_host: str, remote_port: int, timeout: float = 10.0) -> Tunnel:
    """Listen on a free 127.0.0.1 port and forward each connection made to it
    to ``remote_host:remote_port`` as seen from ``connection``'s server (each
    channel must open within ``timeout`` seconds); the tunnel stops when the
    connection closes."""
    tunnel = Tunnel(connection, remote_host, remote_port, timeout)
    try:
        connection.attach(tunnel)
    except SSHError:
        tunnel.close()
        raise
    log.debug("forwarding 127.0.0.1:%d to %s:%d through %s", tunnel.local_port, remote_host, remote_port,
              connection.target.where)
    return tunnel


def open_tunnel(server: str, remote_host: str, remote_port: int, timeout: float,
                keyfile: str | None = None) -> Tunnel:
    """Forward a free 127.0.0.1 port to ``remote_host:remote_port`` as seen
    from ``server`` over a connection of its own; the tunnel's ``close``
    closes that connection too."""
    ssh = connect_ssh(server, timeout, keyfile)
    try:
        tunnel = forward(ssh, remote_host, remote_port, timeout)
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
            except (OSError, EOFError, paramiko.SSHException, SSHError) as exc:
                level = logging.DEBUG if self._failing else logging.WARNING
                log.log(level, "SSH server %s cannot open a connection to %s:%d: %s", self.connection.target.where,
                        self.remote_host, self.remote_port, error_reason(exc))
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
