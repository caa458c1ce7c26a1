"""Launchers that run a command as a local child process, and how a later
process tells whether a recorded PID is still the process that was started."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import datetime
from typing import Any, ClassVar

from traitlets import Integer, Unicode

from .base import Launcher


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None
    (no such process, or no /proc on this system)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses


def process_start_token(pid: int) -> str:
    """An id of *this* run of ``pid`` (its start time since boot), so a PID the
    system reused for another process is not mistaken for ours; '' where the
    system does not tell."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def pid_alive(pid: int, start_token: str = "") -> bool:
    """Whether ``pid`` runs: reaped first if it is our exited child; a zombie
    (exited, parent not yet reaping) counts as gone, and so does a process
    whose start token differs from ``start_token`` (the PID was reused)."""
    if pid <= 0:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return not os.path.isdir("/proc/self")  # no /proc: trust kill(0); with /proc: it just exited
    if fields[0] in ("Z", "X"):
        return False
    return not start_token or start_token == fields[19]


def tail(path: str, lines: int = 10, offset: int = 0) -> list[str]:
    """The last ``lines`` lines of ``path`` from byte ``offset`` on (what a
    process wrote since it started); [] when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read()[-64 * 1024:].decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


class LocalProcessLauncher(Launcher):
    """Runs ``self.args`` as a child process of this host, output to a log file,
    in its own session: a Ctrl-C at the terminal reaches only the process that
    launched it, and it outlives that terminal (``start --daemonize``)."""

    log_name: ClassVar[str] = "process"
    pid = Integer(0).tag(config=False)
    start_token = Unicode("").tag(config=False)
    log_path = Unicode("").tag(config=False)
    log_offset = Integer(0, help="Where this run's output starts in the log file.").tag(config=False)

    # ``args`` (the command line) comes from the role class it is mixed with:
    # ``class LocalControllerLauncher(LocalProcessLauncher, ControllerLauncher)``.
    args: list[str]

    def start(self, n: int = 1) -> None:
        env = {**os.environ, **self.environment}
        self.log_path = self.log_file(self.log_name)
        args = self.args
        with open(self.log_path, "ab") as log:
            # Appending keeps what an earlier run left there; the offset lets
            # an error report show this run's lines only.
            log.write(f"--- {datetime.now().isoformat(timespec='seconds')} {' '.join(args)}\n".encode())
            log.flush()
            self.log_offset = log.tell()
            self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = self._process.pid
        self.start_token = process_start_token(self.pid)
        self.log.debug("started %s (pid %s): %s", self.log_name, self.pid, " ".join(args))

    def poll(self) -> int | None:
        process = getattr(self, "_process", None)
        if process is not None:
            return process.poll()
        return None if pid_alive(self.pid, self.start_token) else 0

    def exited(self) -> list[tuple[int, str, list[str]]]:
        code = self.poll()
        return [] if code is None else [(code, self.log_path, tail(self.log_path, offset=self.log_offset))]

    def describe(self) -> str:
        return f"pid {self.pid}, log {self.log_path}"

    def signal(self, sig: int) -> None:
        if not self.pid or self.poll() is not None:
            return
        try:
            # The process leads its own process group (start_new_session):
            # signal the group so what a wrapper command (sh, ssh, mpiexec)
            # spawned goes too.
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        if self.wait(self.stop_timeout) is None:
            self.log.warning("%s (pid %s) ignored SIGTERM for %ss; sending SIGKILL",
                             self.log_name, self.pid, self.stop_timeout)
            self.signal(signal.SIGKILL)
            self.wait(self.stop_timeout)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "pid": self.pid, "start_token": self.start_token,
                "log": self.log_path, "log_offset": self.log_offset}

    def load_state(self, data: dict[str, Any]) -> None:
        super().load_state(data)
        self.pid = data.get("pid", 0)
        self.start_token = data.get("start_token", "")
        self.log_path = data.get("log", "")
        self.log_offset = data.get("log_offset", 0)
