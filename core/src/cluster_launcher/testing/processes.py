"""Real controller and engine processes for tests: started by PID, stopped by
that PID, with their output kept for the failure message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from ..protocol import connection

if TYPE_CHECKING:
    from ..client import Client


class Process:
    """One ``python -m cluster_launcher <role> ...`` child process."""

    def __init__(self, role: str, profile_dir: str, *args: str, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None):
        self.role = role
        self.log_path = os.path.join(profile_dir, f"test-{role}-{time.monotonic_ns()}.log")
        self.log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "cluster_launcher", role, f"--profile-dir={profile_dir}", *args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)
        self.pid = self.popen.pid

    def output(self) -> str:
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            if self.wait(timeout) is None:
                self.popen.kill()
                self.popen.wait(timeout)
        self.log.close()
        return self.popen.returncode


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` every 20 ms until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_gate(gate: str, timeout: float = 60, started: str | None = None) -> None:
    """Run on an engine: wait until the test creates the file ``gate`` (the
    cross-package tests' ``make_gate``), so a task stays running or queued
    exactly as long as the test needs; TimeoutError after ``timeout`` seconds,
    so that an engine is never held for ever.  ``started``: a file created
    first, for a test that must know the task runs (not only that it was sent)."""
    if started:
        open(started, "w").close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was not opened within {timeout:g} s")
        time.sleep(0.01)


def ignore_interrupts(seconds: float, started: str | None = None) -> str:
    """Run on an engine: a task that catches KeyboardInterrupt and goes on, for
    ``seconds`` (bounded, so an engine is never held for ever), then returns
    'ignored'; what an abort or a ``time_limit`` cannot stop before
    ``Engine.interrupt_grace``.  ``started``: a file created first, as for
    :func:`wait_for_gate`."""
    if started:
        open(started, "w").close()
    deadline = time.monotonic() + seconds
    while True:
        try:  # around the whole loop: the interrupt may land anywhere in it
            while time.monotonic() < deadline:
                time.sleep(0.05)
            return "ignored"
        except KeyboardInterrupt:
            pass


def running_with(marker: str) -> list[psutil.Process]:
    """Processes (not zombies, not this one) whose command line contains ``marker``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.pid != os.getpid() and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


class LocalCluster:
    """A controller and engines as separate processes (what ``cluster-launcher
    controller`` and ``engine`` run), for tests that need to kill one of them."""

    def __init__(self, profile_dir: str, n: int = 2, controller_args: tuple[str, ...] = (),
                 engine_args: tuple[str, ...] = (), controller_preexec: Callable[[], None] | None = None):
        """``controller_preexec``: run in the controller's process before it
        starts (``resource.setrlimit``, for a test of its limits)."""
        self.profile_dir = str(profile_dir)
        self.controller_preexec = controller_preexec
        self.n = n
        self.controller_args, self.engine_args = controller_args, engine_args
        self.controller: Process | None = None
        self.engines: list[Process] = []

    def start(self) -> LocalCluster:
        """The controller, then ``n`` engines."""
        self.start_controller()
        self.start_engines(self.n)
        return self

    def start_controller(self, *extra: str) -> Process:
        client_file = connection.connection_file(self.profile_dir, "client")
        before = os.stat(client_file).st_mtime_ns if os.path.exists(client_file) else 0
        controller = self.controller = Process("controller", self.profile_dir, *self.controller_args, *extra,
                                               preexec_fn=self.controller_preexec)
        wait_for(lambda: os.path.exists(client_file) and os.stat(client_file).st_mtime_ns != before
                 or controller.popen.poll() is not None, 15, "the controller's connection file")
        assert controller.popen.poll() is None, controller.output()
        return controller

    def start_engines(self, n: int, *extra: str) -> list[Process]:
        started = [Process("engine", self.profile_dir, *self.engine_args, *extra) for _ in range(n)]
        self.engines += started
        return started

    add_engines = start_engines

    def client(self, n: int | None = None, **kwargs: Any) -> Client:
        """A connected Client once ``n`` (default: every engine started) engines registered."""
        from ..client import Client

        client = Client(profile_dir=self.profile_dir, timeout=10, **kwargs)
        try:
            client.wait_for_engines(len(self.engines) if n is None else n, timeout=20)
        except BaseException:
            client.close()
            raise
        return client

    def processes(self) -> list[Process]:
        return [*self.engines, *([self.controller] if self.controller else [])]

    def stop(self) -> None:
        """Stop every process by its PID; AssertionError naming any still running."""
        # Every engine told at once, then waited for: one engine's exit time, not the sum of them all.
        for engine in self.engines:
            if engine.poll() is None:
                engine.popen.send_signal(signal.SIGTERM)
        for engine in self.engines:
            engine.wait(5.0)
        for process in self.processes():
            process.stop()
        left = [f"{p.role} pid {p.pid}" for p in self.processes() if p.popen.poll() is None]
        assert not left, f"still running after stop: {', '.join(left)}"

    def logs(self) -> str:
        return "\n".join(f"--- {p.role} pid {p.pid}\n{p.output()[-3000:]}" for p in self.processes())
