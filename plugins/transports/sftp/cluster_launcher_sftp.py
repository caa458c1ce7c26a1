"""The sftp transport: connection files sent to and fetched from other hosts
over SSH (paramiko's SFTP), so no shared filesystem is needed.

A file lands on the other host as it does here: mode 0600, whole or not at
all.  It is written inside a folder of its own made 0700 next to the
target, made 0600, then renamed over the target in one step
(``posix-rename@openssh.com``): at no moment can another user of that host
open it, and a reader never sees half of it.  Folders missing on the way are
made 0700.
"""

from __future__ import annotations

import errno
import posixpath
import secrets
import stat
import threading

import paramiko
from traitlets import Float

from cluster_launcher import hookimpl
from cluster_launcher.error import SSHError
from cluster_launcher.protocol.connection import write_private_file
from cluster_launcher.protocol.ssh import SSHConnection, connect_ssh
from cluster_launcher.transport import Host, Transport


class SFTPTransport(Transport):
    """Moves files over SFTP, on the launcher's own SSH connection when it
    passes one, else on one this transport opens (and ``close`` closes)."""

    name = "sftp"
    timeout = Float(30.0, min=1.0, help="Seconds a login of the transport's own may take.").tag(config=True)

    def __init__(self, **kwargs: object):
        super().__init__(**kwargs)
        self._own: dict[str, SSHConnection] = {}
        self._lock = threading.Lock()

    def _connection(self, host: Host) -> SSHConnection:
        if isinstance(host, SSHConnection):
            return host
        if not host:
            raise SSHError("the sftp transport needs a host to send to or fetch from")
        with self._lock:
            if host not in self._own or self._own[host].closed:
                if host in self._own:
                    self._own[host].close()  # dropped: its threads end before another login
                self._own[host] = connect_ssh(host, self.timeout)
            return self._own[host]

    def send(self, local_path: str, remote_path: str, host: Host = None) -> None:
        connection = self._connection(host)
        with open(local_path, "rb") as source:
            data = source.read()
        sftp = connection.sftp()
        folder, name = posixpath.split(remote_path)
        try:
            _make_folders(sftp, folder)
            private = posixpath.join(folder, f".{name}.{secrets.token_hex(4)}.partial")
            sftp.mkdir(private, 0o700)
            try:
                partial = posixpath.join(private, name)
                with sftp.open(partial, "wb") as out:
                    out.write(data)
                sftp.chmod(partial, 0o600)
                _replace(sftp, partial, remote_path)
            finally:
                _remove_quietly(sftp, posixpath.join(private, name))
                sftp.rmdir(private)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SSHError(f"{connection.target.where}{connection.target.origin}: cannot send {local_path} to "
                           f"{remote_path}: {_reason(exc)}") from None

    def fetch(self, remote_path: str, local_path: str, host: Host = None) -> None:
        connection = self._connection(host)
        try:
            with connection.sftp().open(remote_path, "rb") as remote:
                data = remote.read()
        except FileNotFoundError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SSHError(f"{connection.target.where}{connection.target.origin}: cannot fetch {remote_path}: "
                           f"{_reason(exc)}") from None
        write_private_file(local_path, data)

    def close(self) -> None:
        with self._lock:
            for connection in self._own.values():
                connection.close()
            self._own.clear()


def _reason(exc: BaseException) -> str:
    return " ".join((getattr(exc, "strerror", None) or str(exc)).split()) or type(exc).__name__


def _make_folders(sftp: paramiko.SFTPClient, folder: str) -> None:
    """``mkdir -p`` with mode 0700 for the folders it makes."""
    missing = []
    while folder not in ("", "/"):
        try:
            if not stat.S_ISDIR(sftp.stat(folder).st_mode or 0):
                raise NotADirectoryError(errno.ENOTDIR, f"{folder} is not a folder")
            break
        except FileNotFoundError:
            missing.append(folder)
            folder = posixpath.dirname(folder)
    for path in reversed(missing):
        try:
            sftp.mkdir(path, 0o700)
        except OSError:
            if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):  # made meanwhile by another sender: fine
                raise


def _replace(sftp: paramiko.SFTPClient, source: str, target: str) -> None:
    """Rename ``source`` over ``target`` in one step where the server can."""
    try:
        sftp.posix_rename(source, target)
    except OSError as exc:
        if "unsupported" not in str(exc).lower() and not isinstance(exc, NotImplementedError):
            raise
        _remove_quietly(sftp, target)  # a server without posix-rename: replaced in two steps
        sftp.rename(source, target)


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.remove(path)
    except FileNotFoundError:
        pass


@hookimpl
def cluster_launcher_register_transports():
    return [SFTPTransport]
