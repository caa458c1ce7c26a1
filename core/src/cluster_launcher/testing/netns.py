"""A network namespace for tests: a "host" whose network is not this one's.

:class:`NetworkNamespace` makes a namespace of its own (``ip netns add``)
joined to this one by a veth pair on a private /30 of 10.213.0.0/16 (one
of 16384, at random, none this host already has: its first address here,
its second inside) and nothing else: a process in it cannot reach this
host's loopback, so a controller listening on 127.0.0.1 is out of its reach
unless an SSH tunnel carries the connection.  Needs root and iproute2 (``ip``).

    with NetworkNamespace() as node:
        sshd = SSHServer(tmp_path, address=node.inside_address, netns=node.name)

``stop`` kills what still runs in the namespace (by the PIDs ``ip netns
pids`` lists), then deletes the veth pair and the namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess

import psutil


def why_unavailable() -> str:
    """'' where network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's ip (apt-get install -y iproute2)"
    return ""


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _free_pair() -> tuple[str, str]:
    """The two usable addresses of a /30 of 10.213.0.0/16 that no interface here is in."""
    taken = _ip("-o", "-4", "addr", "show")
    for _ in range(100):
        block = secrets.randbelow(1 << 14) * 4  # the /30's offset in the /16
        first = f"10.213.{block >> 8}.{(block & 0xFF) + 1}"
        if f" {first}/" not in taken and f" 10.213.{block >> 8}.{(block & 0xFF) + 2}/" not in taken:
            return first, f"10.213.{block >> 8}.{(block & 0xFF) + 2}"
    raise RuntimeError("no free /30 in 10.213.0.0/16 for a test network namespace")


class NetworkNamespace:
    """A namespace ``cltest-<token>`` with a veth pair to this one."""

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.name = f"cltest-{token}"
        self.outside_interface = f"clo{token}"  # interface names: 15 characters at most
        self.inside_interface = f"cli{token}"
        self.outside_address, self.inside_address = _free_pair()
        self._made: list[str] = []

    def start(self) -> NetworkNamespace:
        try:
            _ip("netns", "add", self.name)
            self._made.append("netns")
            _ip("link", "add", self.outside_interface, "type", "veth", "peer", "name", self.inside_interface)
            self._made.append("link")
            _ip("link", "set", self.inside_interface, "netns", self.name)
            _ip("addr", "add", f"{self.outside_address}/30", "dev", self.outside_interface)
            _ip("link", "set", self.outside_interface, "up")
            _ip("-n", self.name, "addr", "add", f"{self.inside_address}/30", "dev", self.inside_interface)
            _ip("-n", self.name, "link", "set", self.inside_interface, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.stop()
            raise
        return self

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the PID is the command's)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def pids(self) -> list[int]:
        """The processes that run in the namespace."""
        if "netns" not in self._made:
            return []
        return [int(pid) for pid in _ip("netns", "pids", self.name).split()]

    def stop(self) -> None:
        """Kill what still runs inside (by PID), then delete the veth pair and the namespace."""
        left = []
        for pid in self.pids():
            try:
                process = psutil.Process(pid)
                process.send_signal(signal.SIGKILL)
                left.append(process)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=10)
        if "link" in self._made:
            subprocess.run(["ip", "link", "del", self.outside_interface], capture_output=True, timeout=30)
        if "netns" in self._made:
            _ip("netns", "del", self.name)
        self._made.clear()

    def __enter__(self) -> NetworkNamespace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
