"""The file transport: connection files reach other hosts through a shared
filesystem (or stay on this one), so moving one is a copy."""

import os
import shutil

from cluster_launcher import hookimpl
from cluster_launcher.transport import Transport


class FileTransport(Transport):
    name = "file"

    def send(self, local_path: str, remote_path: str, host: str | None = None) -> None:
        self._copy(local_path, remote_path)

    def fetch(self, remote_path: str, local_path: str, host: str | None = None) -> None:
        self._copy(remote_path, local_path)

    @staticmethod
    def _copy(source: str, target: str) -> None:
        if os.path.abspath(source) == os.path.abspath(target):
            return
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        partial = f"{target}.partial-{os.getpid()}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(partial, target)  # readers never see half a file


@hookimpl
def cluster_launcher_register_transports():
    return [FileTransport]
