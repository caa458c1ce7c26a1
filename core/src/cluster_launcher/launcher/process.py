"""Launchers that run a command as a local child process, and how a later
process tells whether a recorded PID is still the process that was started
(with psutil, on every system it supports).

:class:`WrapperLauncher` and :class:`WrappedEngineSetLauncher` are such a
process that starts the real ones itself (``mpiexec -n N``, ``srun
--ntasks=N``): the MPI and Srun launchers build on them."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from datetime import datetime
from typing import ClassVar

import psutil
from traitlets import Integer, Unicode

from .base import DeadEngine, EngineSetLauncher, Launcher


def process_start_token(pid: int) -> str:
    """An id of *this* run of ``pid`` (when it started, in seconds after the
    system booted), so a PID the system reused for another process is not
    mistaken for ours; '' when it cannot be told (no such process, or not
    allowed)."""
    if pid <= 0:
        return ""
    try:
        return f"{_seconds_after_boot(psutil.Process(pid)):.2f}"
    except psutil.Error:
        return ""


def _seconds_after_boot(process: psutil.Process) -> float:
    # psutil's create_time is the boot time (wall clock) plus the start
    # offset; the wall clock can be stepped between `start` and a later
    # `stop` (an NTP sync), the offset from boot cannot.
    return process.create_time() - psutil.boot_time()


def _same_run(start_token: str, process: psutil.Process) -> bool:
    """Whether ``start_token`` was taken from ``process``."""
    offset = _seconds_after_boot(process)
    if start_token.isdigit():
        # A record written before psutil (Linux only): the start time in clock
        # ticks since boot, from /proc/<pid>/stat.
        return round(offset * os.sysconf("SC_CLK_TCK")) == int(start_token)
    try:
        # Two decimals: finer than the kernel's clock tick, coarser than float noise.
        return abs(float(start_token) - offset) < 0.015
    except ValueError:
        return False


def pid_alive(pid: int, start_token: str = "") -> bool:
    """Whether ``pid`` runs: reaped first if it is our exited child; a zombie
    (exited, parent not yet reaping) counts as gone, and so does a process
    whose start token differs from ``start_token`` (the PID was reused).  A
    process we may not inspect (AccessDenied) counts as running."""
    if pid <= 0:
        return False
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: its parent reaps it
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        return not start_token or _same_run(start_token, process)
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:
        return True


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

    log_name: str = "process"  # a class default; one engine of a set gets its own (engine-3)
    pid = Integer(0, help="The PID of the process started.").tag(config=False, state=True)
    start_token = Unicode("", help="process_start_token(pid) when it started.").tag(config=False, state=True)
    log_path = Unicode("", help="The log file its output goes to.").tag(config=False, state="log")
    log_offset = Integer(0, help="Where this run's output starts in the log file.").tag(config=False, state=True)

    # ``args`` (the command line) comes from the role class it is mixed with:
    # ``class LocalControllerLauncher(LocalProcessLauncher, ControllerLauncher)``.
    args: list[str]

    def start(self, n: int = 1) -> None:
        env = {**os.environ, **self.environment}
        self.log_path = self.log_file(self.log_name)
        args = [*self.args, *self.captured_output_args()]
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

    def display_name(self) -> str:
        """'engine 3', 'controller'."""
        return self.name_from_log(self.log_path, self.log_name)

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
        """SIGTERM, then SIGKILL after ``stop_timeout``; returns once the
        process has exited (a zombie another process must reap counts as
        exited), or after a second ``stop_timeout`` if even SIGKILL did not
        end it.  What it had to kill is in :attr:`killed`."""
        self.killed = ()
        self.signal(signal.SIGTERM)
        if self.wait(self.stop_timeout) is None:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, wait up to ``stop_timeout``, and record it in :attr:`killed`."""
        self.signal(signal.SIGKILL)
        gone = self.wait(self.stop_timeout) is not None
        outcome = "killed" if gone else f"still running {self.stop_timeout:g}s after SIGKILL"
        self.killed = (*self.killed, f"{self.display_name()} (pid {self.pid}) ignored SIGTERM for "
                       f"{self.stop_timeout:g}s: {outcome}")
        self.log.debug("%s", self.killed[-1])


class WrapperLauncher(LocalProcessLauncher):
    """``<program> [its options] <command>`` as a local child process, the
    program (``mpiexec``, ``srun``) starting the controller or the engines
    itself, wherever it puts them.  A subclass gives the program
    (:attr:`wrapper_cmd`) and how it wraps a command (:meth:`wrap`); an early
    exit is reported as the program's ('mpiexec of the engines exited with code
    1'), its command line first."""

    @property
    def wrapper_cmd(self) -> list[str]:
        """The program and the options it always gets (``c.MPILauncher.mpi_cmd``)."""
        raise NotImplementedError

    def wrap(self, n: int, command: list[str]) -> list[str]:
        """The command line that runs ``command`` ``n`` times under the program."""
        raise NotImplementedError

    def program_name(self) -> str:
        """'mpiexec', 'srun': the program, for messages."""
        return os.path.basename(self.wrapper_cmd[0]) if self.wrapper_cmd else type(self).__name__

    def exit_label(self, role: str) -> str:
        program = self.wrapper_cmd[0] if self.wrapper_cmd else self.program_name()
        return f"{program} of the {'engines' if role == 'engine' else role}"

    def exited(self) -> list[tuple[int, str, list[str]]]:
        reports = super().exited()
        # The command first: "mpiexec exited with code 255" says little on its own.
        return [(code, log, [f"$ {' '.join(self.args)}", *lines[:8]]) for code, log, lines in reports]


class WrappedEngineSetLauncher(WrapperLauncher, EngineSetLauncher):
    """``n`` engines as the tasks of one wrapper program (``mpiexec -n n``,
    ``srun --ntasks=n``): one process, one log, all its engines running or
    none."""

    log_name = "engines"
    task_word: ClassVar[str] = "tasks"  # what describe() calls the engines: MPI's 'ranks'

    @property  # LocalProcessLauncher only declares args, which its role class gives
    def args(self) -> list[str]:  # type: ignore[override]
        return self.wrap(self.n, EngineSetLauncher.args.fget(self))  # type: ignore[attr-defined]

    def start(self, n: int = 1) -> None:
        self.n = n
        super().start(n)

    def dry_run(self, n: int = 1) -> list[str]:
        return [f"$ {shlex.join(self.wrap(n, EngineSetLauncher.args.fget(self)))}"]  # type: ignore[attr-defined]

    def running_engines(self) -> int:
        return self.n if self.poll() is None else 0

    # Its engines are one program's tasks (mpiexec's ranks): one dead rank takes the program down, so the
    # whole set is one slot, restarted as a whole (its n engines start again, each a new engine).
    def dead_engines(self) -> list[DeadEngine]:
        code = self.poll()
        if code in (None, 0) or "0" in self.given_up:
            return []
        return [DeadEngine(0, code, self.log_path, self.exit_label("engine"))]

    def restart_engine(self, slot: int) -> None:
        LocalProcessLauncher.start(self, self.n)
        self.count_restart(slot)

    def describe(self) -> str:
        return f"{self.program_name()} pid {self.pid} with {self.n} {self.task_word}, log {self.log_path}"
