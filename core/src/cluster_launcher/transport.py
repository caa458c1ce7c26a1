"""Base class of connection-file transport plugins.

A transport moves the controller's connection files to (or from) the host
where engines or clients run: a shared filesystem needs only a copy
(``file``), a remote host an SFTP upload (``sftp``).  A launcher that starts
processes on other hosts picks one by name
(``plugins.resolve('transport', 'sftp')``) and says which host each file goes
to or comes from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Union

from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:
    from .protocol.ssh import SSHConnection

# Where a file goes or comes from: None for this host; for transports that log in
# (sftp) an SSH destination ('[user@]host[:port]' or a ~/.ssh/config alias), or an
# SSHConnection a launcher already has open to that host.
Host = Union[str, "SSHConnection", None]


class Transport(LoggingConfigurable):
    """Moves files between this host and another one.  Paths on the other
    host are absolute (a launcher resolves them there first)."""

    name: ClassVar[str] = ""

    def send(self, local_path: str, remote_path: str, host: Host = None) -> None:
        """Place ``local_path`` at ``remote_path`` on ``host``, mode 0600,
        replacing what is there; a reader there never sees half a file."""
        raise NotImplementedError

    def fetch(self, remote_path: str, local_path: str, host: Host = None) -> None:
        """Bring ``remote_path`` from ``host`` to ``local_path``, mode 0600,
        atomically; FileNotFoundError if ``remote_path`` does not exist (yet)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close what the transport opened (connections it made itself)."""
