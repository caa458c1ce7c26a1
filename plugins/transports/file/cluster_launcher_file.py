"""The file transport: connection files reach other hosts through a shared
filesystem (or stay on this one), so moving one is a copy."""

import os

from cluster_launcher import hookimpl
from cluster_launcher.protocol.connection import write_private_file
from cluster_launcher.transport import Host, Transport


class FileTransport(Transport):
    name = "file"

    def send(self, local_path: str, remote_path: str, host: Host = None) -> None:
        self._copy(local_path, remote_path)

    def fetch(self, remote_path: str, local_path: str, host: Host = None) -> None:
        self._copy(remote_path, local_path)

    @staticmethod
    def _copy(source: str, target: str) -> None:
        if os.path.abspath(source) == os.path.abspath(target):
            return
        with open(source, "rb") as src:
            write_private_file(target, src.read())


@hookimpl
def cluster_launcher_register_transports():
    return [FileTransport]
