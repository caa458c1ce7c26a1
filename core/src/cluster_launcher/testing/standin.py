"""Stand-in engines: many engines in a few processes, for tests and benchmarks
of the controller at scale (1000 engines on one 2-core machine).

A stand-in speaks the real engine protocol (docs/internals/protocol.md) with
the real connection file and key, over the same five connections a real
engine opens, each with its own private routing id: it registers, echoes the
controller's heartbeats (routing id + ``-echo``, what a real engine's libzmq
proxy does), pings the controller every heartbeat period (``-hb``, what its
heartbeat thread does), keeps its stream socket (``-io``) and its task watchdog's (``-int``; a
no-op has nothing to interrupt) connected, and
answers every ``apply`` with a signed ``apply_reply`` whose result is
``None``, serialized as a real engine serializes it, without unpickling or
running the task's function.  ``shutdown`` and SIGTERM make it unregister
and leave; a controller that stops answering its pings for ``timeout``
seconds makes it leave too, so none is left behind.

Each process runs its stand-ins as coroutines on one asyncio loop
(``zmq.asyncio``).  ``StandInEngines`` starts them and stops them by PID::

    with StandInEngines(profile_dir, n=1000, processes=4) as engines:
        client.wait_for_engines(1000, timeout=120)

A stand-in costs its process :data:`FDS_PER_STANDIN` file descriptors, and the
controller :data:`cluster_launcher.controller.hub.FDS_PER_ENGINE`; each process
raises its soft ``RLIMIT_NOFILE`` to what its stand-ins need and fails with
one line when the hard limit is lower.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import signal
import socket as _socket
import subprocess
import sys
import time
from typing import Any

import zmq
import zmq.asyncio

from ..error import ClusterLauncherError
from ..protocol import connection
from ..protocol.serialize import serialize
from ..protocol.session import Session, discard_bulk, new_id, utcnow

# Five zmq sockets per stand-in (task, stream, heartbeat echo, ping, watchdog), each a TCP
# connection plus the socket's own mailbox (an eventfd).
SOCKETS_PER_STANDIN = 5
FDS_PER_STANDIN = 2 * SOCKETS_PER_STANDIN
# The process's own: Python, zmq's context and io thread, the event loop, its log.
BASE_FDS = 64
REFUSED_MARK = "the controller refused registration"
_REFUSED_LINE = re.compile(rf"stand-in \d+: {REFUSED_MARK}: .*")


def fds_needed(count: int) -> int:
    """File descriptors a process running ``count`` stand-ins needs."""
    return BASE_FDS + FDS_PER_STANDIN * count


def raise_open_file_limit(needed: int, what: str) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to at least ``needed`` (never
    lower it) for ``what`` (plural: "250 stand-in engines"); ClusterLauncherError
    naming ``ulimit -Hn`` when the hard limit is lower.  Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ClusterLauncherError(f"{what} need {needed} open files "
                                   f"but the hard limit (ulimit -Hn) is {hard}: raise it, or spread them over "
                                   "more processes")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


class StandInEngines:
    """``n`` stand-in engines in ``processes`` processes for the controller of
    ``profile_dir`` (``cluster_id``; or the connection file ``file``).  Started
    by :meth:`start` (or ``with``), stopped by :meth:`stop`, each process by
    the PID it was started with.  ``timeout``: seconds a stand-in waits for its
    registration to be answered, and for a pong, before it gives up."""

    def __init__(self, profile_dir: str, n: int, processes: int = 1, cluster_id: str = "", file: str = "",
                 timeout: float = 60.0):
        if n < 1 or processes < 1:
            raise ValueError(f"StandInEngines: n ({n}) and processes ({processes}) must be at least 1")
        self.profile_dir, self.n, self.cluster_id, self.timeout = str(profile_dir), n, cluster_id, timeout
        self.file = file or connection.connection_file(self.profile_dir, "engine", cluster_id)
        processes = min(processes, n)
        self.counts = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
        self.popens: list[subprocess.Popen] = []
        self.log_paths: list[str] = []

    def start(self) -> StandInEngines:
        if not os.path.exists(self.file):
            raise ClusterLauncherError(f"{self.file}: no connection file; start the controller first")
        # Children inherit the hard limit: better one clear error here than one per process.
        raise_open_file_limit(fds_needed(max(self.counts)), f"{max(self.counts)} stand-in engines per process")
        try:
            for index, count in enumerate(self.counts):
                log_path = os.path.join(self.profile_dir, f"standin-{os.getpid()}-{time.monotonic_ns()}-{index}.log")
                with open(log_path, "wb") as log:
                    self.popens.append(subprocess.Popen(
                        [sys.executable, "-m", "cluster_launcher.testing.standin", f"--file={self.file}",
                         f"--count={count}", f"--timeout={self.timeout}"],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
                self.log_paths.append(log_path)
        except BaseException:  # none left running by a start that failed half-way
            self.stop()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        return [popen.pid for popen in self.popens]

    def running(self) -> int:
        """How many of the processes are still running."""
        return sum(popen.poll() is None for popen in self.popens)

    def output(self) -> str:
        text = []
        for path in self.log_paths:
            with open(path, errors="replace") as f:
                text.append(f.read())
        return "\n".join(text)

    def refusals(self) -> list[str]:
        """The one-line errors of the stand-ins whose registration the controller refused."""
        return _REFUSED_LINE.findall(self.output())

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM each process (its stand-ins unregister), SIGKILL one that
        does not exit within ``timeout`` seconds."""
        for popen in self.popens:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for popen in self.popens:
            try:
                popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)

    def __enter__(self) -> StandInEngines:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- inside a stand-in process ---------------------------------------------------------


class _Process:
    """The stand-ins of one process: one context, one session, one loop."""

    def __init__(self, info: dict[str, Any], count: int, timeout: float):
        self.info, self.count, self.timeout = info, count, timeout
        self.session = Session(key=info["key"], signature_scheme=info["signature_scheme"])
        self.context = zmq.asyncio.Context()
        # libzmq's default cap is 1023 sockets per context: SOCKETS_PER_STANDIN each.
        self.context.set(zmq.MAX_SOCKETS, SOCKETS_PER_STANDIN * count + 16)
        self.stopping = asyncio.Event()
        self.hostname = _socket.gethostname()
        self.none_result = serialize(None)  # what every no-op returns, as an engine sends it

    def socket(self, ident: bytes, port_field: str) -> zmq.asyncio.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, ident)
        sock.setsockopt(zmq.LINGER, 1000)
        for option in (zmq.SNDHWM, zmq.RCVHWM):
            sock.setsockopt(option, 0)
        connection.secure(sock, self.info)
        sock.connect(connection.url(self.info, port_field))
        return sock

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        outcomes = await asyncio.gather(*(StandIn(self, index).run() for index in range(self.count)))
        registered = sum(1 for outcome in outcomes if outcome)
        print(f"{registered} of {self.count} stand-in engines registered and left", flush=True)
        self.context.term()
        return 0


class StandIn:
    """One stand-in engine: four sockets and three coroutines."""

    def __init__(self, process: _Process, index: int):
        self.process, self.index = process, index
        self.session = process.session
        self.uuid = new_id()
        self.ident = new_id().encode()  # private to this stand-in and the controller, as an engine's
        self.engine_id: int | None = None
        self.left = asyncio.Event()

    async def run(self) -> bool:
        """Register, serve until told to leave; whether it was registered."""
        process = self.process
        self.task_socket = process.socket(self.ident, "engine_port")
        self.stream_socket = process.socket(self.ident + b"-io", "engine_port")
        self.echo_socket = process.socket(self.ident + b"-echo", "heartbeat_port")
        self.ping_socket = process.socket(self.ident + b"-hb", "heartbeat_port")
        # Where a real engine's watchdog hears of aborts: opened for what it costs the controller, never read.
        self.interrupt_socket = process.socket(self.ident + b"-int", "heartbeat_port")
        sockets = (self.task_socket, self.stream_socket, self.echo_socket, self.ping_socket, self.interrupt_socket)
        # The echo first, as an engine starts its proxy before it registers.
        echo = asyncio.ensure_future(self.echo())
        try:
            if not await self.register():
                return False
            served = [asyncio.ensure_future(c) for c in (self.serve(), self.ping())]
            stop = asyncio.ensure_future(process.stopping.wait())
            left = asyncio.ensure_future(self.left.wait())
            await asyncio.wait([stop, left, *served], return_when=asyncio.FIRST_COMPLETED)
            for future in (stop, left, *served):
                future.cancel()
            if self.engine_id is not None:
                self.session.send(self.task_socket, "unregister", {"reason": "shutdown"})
            return True
        finally:
            echo.cancel()
            for sock in sockets:
                sock.close(linger=1000 if sock is self.task_socket else 0)

    async def register(self) -> bool:
        self.session.send(self.task_socket, "register", {
            "uuid": self.uuid, "hostname": self.process.hostname, "pid": os.getpid(),
            "domain": self.session.domain, "mpi": None, "deadline": None, "draining": False})
        deadline = time.monotonic() + self.process.timeout
        while not self.process.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"stand-in {self.index}: no answer to its registration within {self.process.timeout:g}s",
                      flush=True)
                return False
            if not await self.task_socket.poll(min(left, 0.5) * 1000):
                continue
            msg = self.session.unpack(await self.task_socket.recv_multipart())
            if msg is None or msg.type != "register_reply":
                continue  # a task can only come after the reply
            if msg.header.get("status") != "ok":
                # The one line a real engine exits with (engine.py).
                print(f"stand-in {self.index}: {REFUSED_MARK}: {msg.header.get('reason')}", flush=True)
                return False
            self.engine_id = msg.header["engine_id"]
            self.heartbeat_period = float(msg.header.get("heartbeat_period") or 1.0)
            return True
        return False

    async def echo(self) -> None:
        """The controller's heartbeats back unchanged, as the engine's libzmq proxy sends them."""
        while True:
            await self.echo_socket.send_multipart(await self.echo_socket.recv_multipart(copy=False), copy=False)

    async def ping(self) -> None:
        """The engine's own check of the controller: a ping each heartbeat
        period; no pong for ``timeout`` seconds and the stand-in leaves."""
        last_pong = time.monotonic()
        while True:
            self.session.send(self.ping_socket, "ping", {"engine_id": self.engine_id, "draining": False})
            deadline = time.monotonic() + self.heartbeat_period
            while (left := deadline - time.monotonic()) > 0:
                if await self.ping_socket.poll(left * 1000):
                    msg = self.session.unpack(await self.ping_socket.recv_multipart())
                    if msg is not None and msg.type == "pong":
                        last_pong = time.monotonic()
            if time.monotonic() - last_pong > self.process.timeout:
                print(f"stand-in {self.index}: no heartbeat answer from the controller for "
                      f"{self.process.timeout:g}s: leaving", flush=True)
                self.engine_id = None  # nobody to unregister from
                self.left.set()
                return

    async def serve(self) -> None:
        while True:
            msg = self.session.unpack(await self.task_socket.recv_multipart())
            if msg is None:
                continue
            if msg.type == "apply":
                self.reply(msg)
            elif msg.type == "shutdown":
                self.left.set()
                return

    def reply(self, msg: Any) -> None:
        """A no-op's reply: status ok, result None."""
        discard_bulk(msg.header)  # its arguments' shared-memory files: nobody else reads them
        now = utcnow()
        header = {"type": "apply_reply", "id": new_id(), "parent": msg.header["id"], "status": "ok",
                  "engine_id": self.engine_id, "engine_uuid": self.uuid, "submitted": msg.header.get("submitted"),
                  "started": now, "completed": now, "stdout": "", "stderr": "", "error": None}
        self.task_socket.send_multipart(self.session.pack(header, self.process.none_result), copy=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster_launcher.testing.standin",
                                     description="Run stand-in engines (see cluster_launcher.testing.standin).")
    parser.add_argument("--file", required=True, help="the controller's controller-engine.json")
    parser.add_argument("--count", type=int, required=True, help="how many stand-in engines")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the registration's answer, and for a pong")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count={args.count}: must be at least 1")
    try:
        raise_open_file_limit(fds_needed(args.count), f"{args.count} stand-in engines")
        info = connection.read_connection_file(args.file, "engine")
    except ClusterLauncherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_Process(info, args.count, args.timeout).run())


if __name__ == "__main__":
    sys.exit(main())
