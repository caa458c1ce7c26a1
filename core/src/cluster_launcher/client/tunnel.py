"""SSH tunnels for clients outside the controller's network (``Client(sshserver=...)``)."""

from __future__ import annotations

import shlex
import socket as _socket
import subprocess
import time

from ..error import ClusterLauncherError


def _free_local_port() -> int:
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_ssh_tunnel(sshserver: str, remote_host: str, remote_port: int, timeout: float,
                    sshkey: str | None = None) -> tuple[subprocess.Popen, int]:
    """Forward a free local port to ``remote_host:remote_port`` as seen from
    ``sshserver`` (``[user@]host[:port]``) with an ``ssh -N -L`` subprocess;
    return the process and the local port once it accepts connections."""
    server, _, ssh_port = sshserver.partition(":") if sshserver.count(":") == 1 else (sshserver, "", "")
    local_port = _free_local_port()
    command = ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes",
               "-L", f"127.0.0.1:{local_port}:{remote_host}:{remote_port}"]
    if ssh_port:
        command += ["-p", ssh_port]
    if sshkey:
        command += ["-i", sshkey]
    command.append(server)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            why = process.stderr.read().decode(errors="replace").strip().splitlines()
            raise ClusterLauncherError(f"sshserver={sshserver}: ssh tunnel failed ({shlex.join(command)}): "
                                       f"{why[-1] if why else f'exit status {process.returncode}'}")
        try:
            with _socket.create_connection(("127.0.0.1", local_port), timeout=0.2):
                return process, local_port
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise TimeoutError(f"sshserver={sshserver}: ssh tunnel not up within {timeout:g} s")
