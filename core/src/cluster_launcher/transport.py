"""Base class of connection-file transport plugins.

A transport moves the controller's connection files to (or from) the host
where engines or clients run: a shared filesystem needs only a copy, a
remote host an SFTP upload.  A launcher that starts processes on other hosts
picks one by name (``plugins.resolve('transport', 'file')``).
"""

from __future__ import annotations

from typing import ClassVar

from traitlets.config import LoggingConfigurable


class Transport(LoggingConfigurable):
    name: ClassVar[str] = ""

    def send(self, local_path: str, remote_path: str, host: str | None = None) -> None:
        """Place ``local_path`` at ``remote_path`` on ``host`` (``None``: this host),
        mode 0600, replacing what is there."""
        raise NotImplementedError

    def fetch(self, remote_path: str, local_path: str, host: str | None = None) -> None:
        """Bring ``remote_path`` from ``host`` to ``local_path``, mode 0600."""
        raise NotImplementedError
