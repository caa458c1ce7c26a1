"""Real single-node batch systems for tests: Slurm (with its PBS/Torque wrappers), Grid Engine and
HTCondor, each started in a temp directory and stopped by the PIDs it started.

``.ci/install-batch-systems`` installs once, as root, what must exist system-wide: the Debian packages,
Slurm's PBS wrappers (:func:`pbs_bin_dir`) and an HTCondor chroot (:func:`condor_root`), all under
:func:`testbeds_dir` (``$CLUSTER_LAUNCHER_TESTBEDS``, default ``/opt/cluster-launcher-testbeds``).
Everything a bed writes when it runs (configuration, daemon state, spools, logs, the munge key, the
Grid Engine cell) goes under the directory it is given; the one exception is HTCondor's mount points
for the host folders it mounts in the chroot, empty folders made there the first time.

    with SlurmBed(tmp_path) as slurm:
        subprocess.run(["sbatch", "job.sh"], env={**os.environ, **slurm.env()})
        assert slurm.jobs() == []          # once the job is over

Each node declares :data:`SLOTS` CPUs (Slurm ``CPUs``, Grid Engine queue slots, HTCondor ``NUM_CPUS``)
whatever the machine has, so a test can run that many one-core jobs on a two-core machine.  ``stop()``
cancels every job of the bed, stops its daemons (SIGTERM, a bounded wait, SIGKILL), then any process
still carrying the bed's mark in its environment (for Slurm also the job-step daemons, known by their
socket in its spool folder) and their children (shepherds, starters, the jobs under them): never a
process by name.

:func:`why_unavailable` says, in one line, what is missing to start a bed here ('' if nothing is), for
fixtures that skip locally and fail under CI.

HTCondor refuses jobs owned by root, so :class:`CondorBed` differs: see its docstring for what a test
must do (submit as :data:`CONDOR_USER`, in folders that user can reach).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from xml.etree import ElementTree

import psutil

#: The environment variable naming where ``.ci/install-batch-systems`` installed the test beds' files.
TESTBEDS_VARIABLE = "CLUSTER_LAUNCHER_TESTBEDS"
DEFAULT_TESTBEDS = "/opt/cluster-launcher-testbeds"
#: What to run when something is missing (in every :func:`why_unavailable` message).
INSTALL_HINT = "run .ci/install-batch-systems as root"
#: The CPUs (job slots) every bed's node declares, more than this machine has on purpose.
SLOTS = 8
#: HTCondor's unprivileged submit user inside the chroot, and its uid and gid there (and so on the host).
CONDOR_USER = "cltest"
CONDOR_UID = 2001
#: The kinds :func:`why_unavailable` knows: ``pbs`` is Slurm driven through its PBS/Torque wrappers.
KINDS = ("slurm", "pbs", "sge", "condor")

# Grid Engine's Debian layout: the packaged binaries and the default files of a new cell.
SGE_PACKAGE_ROOT = Path("/var/lib/gridengine")
SGE_LIBEXEC = Path("/usr/lib/gridengine")
SGE_DEFAULTS = Path("/usr/share/gridengine")
# The PATH of commands run inside the HTCondor chroot (the host's PATH means nothing there).
CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class BedError(RuntimeError):
    """A test bed could not start or stop: a one-line reason, then the end of the daemon logs."""


def testbeds_dir() -> Path:
    """Where ``.ci/install-batch-systems`` put the PBS wrappers and the HTCondor chroot."""
    return Path(os.environ.get(TESTBEDS_VARIABLE) or DEFAULT_TESTBEDS)


def pbs_bin_dir() -> Path:
    """Slurm's PBS/Torque wrappers (qsub, qstat, qdel, ... -> sbatch, squeue, scancel): first on PATH
    (:meth:`SlurmBed.pbs_env`), ``qsub`` means them and not Grid Engine's."""
    return testbeds_dir() / "pbs" / "bin"


def condor_root() -> Path:
    """The Debian 13 chroot HTCondor runs in."""
    return testbeds_dir() / "condor" / "root"


def condor_bin_dir() -> Path:
    """Host commands ``condor_*`` that run the chroot's, inside it, as :data:`CONDOR_USER`."""
    return testbeds_dir() / "condor" / "bin"


def _needs(kind: str) -> list[Path]:
    slurm = [Path(p) for p in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/sbin/mungekey",
                               "/usr/bin/sbatch", "/usr/bin/squeue", "/usr/bin/sinfo")]
    if kind == "slurm":
        return slurm
    if kind == "pbs":
        return [*slurm, pbs_bin_dir() / "qsub", pbs_bin_dir() / "qstat", pbs_bin_dir() / "qdel"]
    if kind == "sge":
        return [Path("/usr/sbin/sge_qmaster"), Path("/usr/sbin/sge_execd"), SGE_LIBEXEC / "spoolinit",
                SGE_LIBEXEC / "spooldefaults", Path("/usr/bin/qsub"), Path("/usr/bin/qconf")]
    if kind == "condor":
        return [condor_root() / "usr/sbin/condor_master", condor_bin_dir() / "condor_submit",
                Path("/usr/sbin/chroot"), Path("/usr/bin/mount"), Path("/usr/bin/umount")]
    raise ValueError(f"unknown test bed kind {kind!r}: one of {', '.join(KINDS)}")


def why_unavailable(kind: str) -> str:
    """'' if a bed of ``kind`` (one of :data:`KINDS`) can be started here, else one line saying what is
    missing and how to install it."""
    needs = _needs(kind)
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return f"the {kind} test bed needs root on Linux (its daemons run as root)"
    missing = [str(path) for path in needs if not os.access(path, os.X_OK)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return f"the {kind} test bed needs {missing[0]}{more}: {INSTALL_HINT}"
    return ""


# --- processes ---------------------------------------------------------------------------------------


def require(kind: str) -> None:
    """Skip the calling test when the ``kind`` bed cannot start here, saying
    why; under ``CI``, which installs them (``.ci/install-batch-systems``),
    fail instead."""
    import pytest

    reason = why_unavailable(kind)
    if reason:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


def condor_directory() -> str:
    """A new folder HTCondor's submit user can reach (pytest's base temp folder is root's, 0700)."""
    directory = tempfile.mkdtemp(prefix="cluster-launcher-condor-")
    os.chmod(directory, 0o711)
    return directory


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie: a daemon that double-forked is reaped by init, maybe later."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(process: psutil.Process, signum: int) -> None:
    try:
        if process.is_running():  # is_running also checks the start time: never a reused PID
            process.send_signal(signum)
    except psutil.NoSuchProcess:
        pass


def _wait_gone(processes: Sequence[psutil.Process], timeout: float,
               popens: Sequence[subprocess.Popen[bytes]] = ()) -> list[psutil.Process]:
    """Wait up to ``timeout`` for ``processes`` to end (reaping ``popens``, our children); those left."""
    deadline = time.monotonic() + timeout
    while True:
        for popen in popens:
            popen.poll()
        left = [process for process in processes if _alive(process)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop_processes(processes: Sequence[psutil.Process], timeout: float = 10.0, signum: int = signal.SIGTERM,
                   popens: Sequence[subprocess.Popen[bytes]] = ()) -> list[psutil.Process]:
    """``signum`` to each process, ``timeout`` seconds to end, then SIGKILL; the ones still alive after
    that (normally none)."""
    for process in processes:
        _signal(process, signum)
    left = _wait_gone(processes, timeout, popens)
    for process in left:
        _signal(process, signal.SIGKILL)
    return _wait_gone(left, 5.0, popens)


def marked_processes(name: str, value: str) -> list[psutil.Process]:
    """Processes whose environment has ``name=value`` (a bed's mark)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(name) == value:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def socket_owners(folder: Path) -> list[psutil.Process]:
    """Processes with a Unix socket bound under ``folder``."""
    prefix = f"{folder}/"
    pids: set[int] = set()
    for connection in psutil.net_connections(kind="unix"):
        if connection.pid and isinstance(connection.laddr, str) and connection.laddr.startswith(prefix):
            pids.add(connection.pid)
    found = []
    for pid in sorted(pids):
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return found


def with_descendants(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """``processes`` and all their descendants that are alive, except this process and its ancestors
    (a test that put a bed's environment into its own)."""
    spared = {os.getpid()} | {parent.pid for parent in psutil.Process().parents()}
    found: dict[int, psutil.Process] = {}
    for process in processes:
        try:
            family = [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in family:
            if member.pid not in spared:
                found.setdefault(member.pid, member)
    return [process for process in found.values() if _alive(process)]


def _free_ports(n: int) -> list[int]:
    """``n`` different TCP ports free on the loopback now (all held open while choosing)."""
    probes = [socket.socket() for _ in range(n)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in text[-lines:])


@dataclass
class _Daemon:
    """A daemon a bed started: its process, our Popen of it (if it is our child) and its logs."""

    name: str
    process: psutil.Process
    popen: subprocess.Popen[bytes] | None
    logs: tuple[Path, ...]
    stop_signal: int = signal.SIGTERM
    # How long it may take to end after stop_signal before SIGKILL (None: the bed's stop_timeout).
    stop_grace: float | None = None


_BedT = TypeVar("_BedT", bound="_Bed")


class _Bed:
    """What the three beds share: start/stop, the daemons, the jobs, the environment."""

    kind = ""

    def __init__(self, directory: str | os.PathLike[str], start_timeout: float = 60.0, stop_timeout: float = 20.0):
        """``directory``: where everything of the bed goes (it is made if missing); ``start_timeout``:
        the longest ``start()`` waits for the bed to take jobs; ``stop_timeout``: for the jobs to leave
        the queue at ``stop()``, and for each daemon to end after its stop signal."""
        self.directory = Path(os.path.abspath(directory))
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.host = socket.gethostname().split(".")[0]
        self.daemons: list[_Daemon] = []

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self: _BedT) -> _BedT:
        why = why_unavailable(self.kind)
        if why:
            raise BedError(why)
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel every job, stop the daemons, then whatever still carries the bed's mark; BedError if a
        process could not be stopped (after SIGKILL) or a job would not leave the queue."""
        problems: list[str] = []
        if self.daemons and all(_alive(daemon.process) for daemon in self.daemons):
            try:
                self.cancel_all()
            except (BedError, OSError, subprocess.SubprocessError) as error:
                problems.append(str(error).splitlines()[0])
        left: list[psutil.Process] = []
        for daemon in reversed(self.daemons):
            popens = [daemon.popen] if daemon.popen else []
            grace = self.stop_timeout if daemon.stop_grace is None else daemon.stop_grace
            left += stop_processes([daemon.process], grace, daemon.stop_signal, popens)
        self.daemons.clear()
        left += stop_processes(with_descendants(self._roots()), self.stop_timeout)
        try:
            self._cleanup()
        except (BedError, OSError, subprocess.SubprocessError) as error:
            problems.append(str(error).splitlines()[0])
        if left:
            problems.append(f"processes still running after SIGKILL: {sorted(p.pid for p in left)}")
        if problems:
            raise BedError(f"the {self.kind} test bed did not stop cleanly: {'; '.join(problems)}")

    def __enter__(self: _BedT) -> _BedT:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests use --------------------------------------------------------------------------

    @property
    def mark(self) -> tuple[str, str]:
        """The environment variable and value every process of the bed inherits (its daemons, and
        through them its jobs): how ``stop()`` finds what is left."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """What a process needs, on top of ``os.environ``, to use the bed's commands."""
        raise NotImplementedError

    def jobs(self) -> list[str]:
        """The ids of the bed's jobs still queued or running (array tasks one by one)."""
        raise NotImplementedError

    def cancel_all(self) -> None:
        """Cancel every job of the bed and wait, at most ``stop_timeout``, until the queue is empty."""
        raise NotImplementedError

    def run(self, *argv: str, check: bool = True, timeout: float = 60.0, cwd: str | os.PathLike[str] | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run one of the bed's commands (``qsub``, ``squeue``, ...) with :meth:`env`; BedError naming
        the command and its output if it fails and ``check``."""
        done = subprocess.run(argv, env={**os.environ, **self.env(), **(env or {})}, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            output = (done.stderr or done.stdout).strip().replace("\n", " | ")
            raise BedError(f"{' '.join(argv)} failed ({done.returncode}): {output}")
        return done

    def daemon_pids(self) -> list[int]:
        """The PIDs of the daemons the bed started."""
        return [daemon.process.pid for daemon in self.daemons]

    def processes(self) -> list[psutil.Process]:
        """Every live process of the bed: daemons, job steps, jobs (what ``stop()`` will stop)."""
        found = {daemon.process.pid: daemon.process for daemon in self.daemons if _alive(daemon.process)}
        for process in with_descendants(self._roots()):
            found.setdefault(process.pid, process)
        return list(found.values())

    def logs(self) -> str:
        """The end of each daemon's log (for failure messages)."""
        parts = []
        for daemon in self.daemons:
            for log in daemon.logs:
                tail = _tail(log)
                if tail:
                    parts.append(f"  {daemon.name}: {log}\n{tail}")
        return "\n".join(parts)

    # --- for the subclasses ----------------------------------------------------------------------

    def _start(self) -> None:
        raise NotImplementedError

    def _roots(self) -> list[psutil.Process]:
        """The processes of the bed that are not its daemons' descendants (or no longer are)."""
        return marked_processes(*self.mark)

    def _cleanup(self) -> None:
        """After every process is gone: what else the bed must undo (HTCondor's mounts)."""

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str], logs: Iterable[Path] = (),
               stop_signal: int = signal.SIGTERM, stop_grace: float | None = None) -> _Daemon:
        """Start a daemon that stays in the foreground, as our child; its output in ``<name>.out``."""
        out = self.directory / "log" / f"{name}.out"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "ab") as log:
            popen = subprocess.Popen(list(argv), env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.directory, start_new_session=True)
        daemon = _Daemon(name, psutil.Process(popen.pid), popen, (out, *logs), stop_signal, stop_grace)
        self.daemons.append(daemon)
        return daemon

    def _wait(self, condition: Callable[[], object], what: str) -> None:
        """Poll ``condition`` until true; BedError with the logs if a daemon exits or ``start_timeout``
        runs out."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            for daemon in self.daemons:
                if daemon.popen is not None and daemon.popen.poll() is not None:
                    raise BedError(f"{daemon.name} exited ({daemon.popen.returncode}) while the {self.kind} test bed "
                                   f"waited for {what}\n{self.logs()}")
            try:
                if condition():
                    return
            except (OSError, subprocess.SubprocessError, BedError):
                pass  # the daemons are not answering yet
            if time.monotonic() >= deadline:
                raise BedError(f"the {self.kind} test bed timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.1)

    def _wait_queue_empty(self, what: str) -> None:
        deadline = time.monotonic() + self.stop_timeout
        while self.jobs():
            if time.monotonic() >= deadline:
                raise BedError(f"{what}: jobs {self.jobs()} still in the {self.kind} queue after "
                               f"{self.stop_timeout:g} s")
            time.sleep(0.1)


# --- Slurm --------------------------------------------------------------------------------------------


class SlurmBed(_Bed):
    """Slurm 22.05 on this host: its own munged (key, socket, PID file and log in the directory),
    slurmctld and slurmd as children, one node of :data:`SLOTS` CPUs (``slots``) in partition ``debug``, every
    file in the directory (``slurm.conf``, ``state/``, ``spool/``, ``log/``).  Jobs run as root.

    Commands: Slurm's (``sbatch``, ``squeue``, ``scancel``, ``sinfo``...) with :meth:`env`
    (``SLURM_CONF``); PBS-style ``qsub``/``qstat``/``qdel`` with :meth:`pbs_env`.  Finished jobs stay
    in ``squeue -t all`` for ``MinJobAge`` (:attr:`min_job_age`) seconds; the scheduler runs every
    second; a cancelled job gets SIGKILL ``KillWait`` (2) seconds after SIGTERM.  ``sbatch`` gives a
    job the submitter's environment (``SLURM_CONF`` included, so ``srun`` works inside).
    """

    kind = "slurm"
    partition = "debug"
    min_job_age = 300

    def __init__(self, directory: str | os.PathLike[str], start_timeout: float = 60.0, stop_timeout: float = 20.0,
                 slots: int = SLOTS):
        """``slots``: the CPUs its node declares (default :data:`SLOTS`); a benchmark that starts 16
        one-core engines at once declares 16."""
        super().__init__(directory, start_timeout, stop_timeout)
        self.slots = slots
        self.conf = self.directory / "slurm.conf"
        self.munge_socket = self.directory / "munge" / "munge.socket"

    @property
    def mark(self) -> tuple[str, str]:
        return ("SLURM_CONF", str(self.conf))

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def pbs_env(self) -> dict[str, str]:
        """:meth:`env` with Slurm's PBS/Torque wrappers first on PATH: ``qsub`` prints a bare job id,
        ``qstat`` shows ``Job id / Name / Username / Time Use / S / Queue`` with states Q/R/C, and jobs
        get only ``SLURM_*`` variables, no ``PBS_*``."""
        return {**self.env(), "PATH": f"{pbs_bin_dir()}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}

    def jobs(self) -> list[str]:
        return self.run("squeue", "--noheader", "--array", "--format=%i").stdout.split()

    def _roots(self) -> list[psutil.Process]:
        # slurmd starts each job step's slurmstepd with an environment of its own, then lets init
        # adopt it: it is known by its socket in the spool folder.
        return [*super()._roots(), *socket_owners(self.directory / "spool")]

    def cancel_all(self) -> None:
        ids = self.run("squeue", "--noheader", "--format=%A").stdout.split()
        if ids:
            self.run("scancel", *sorted(set(ids)))
        self._wait_queue_empty("scancel")

    def _start(self) -> None:
        d = self.directory
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # A Unix socket path has at most 107 bytes.
        if len(os.fsencode(self.munge_socket)) > 100:
            raise BedError(f"the munge socket path {self.munge_socket} is too long for a Unix socket: "
                           "give the Slurm test bed a shorter directory")
        key = d / "munge" / "munge.key"
        if not key.exists():
            subprocess.run(["/usr/sbin/mungekey", "--create", f"--keyfile={key}"], check=True, timeout=30,
                           capture_output=True)
        # -f: munged wants every folder above its socket executable by all, and pytest's base temp
        # folder is 0700; only root talks to this munged anyway.
        self._spawn("munged", ["/usr/sbin/munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--log-file={d / 'log' / 'munged.log'}",
                               f"--pid-file={d / 'munge' / 'munged.pid'}",
                               f"--seed-file={d / 'munge' / 'munged.seed'}"],
                    {}, [d / "log" / "munged.log"])
        self._wait(self.munge_socket.exists, "munged's socket")
        self.conf.write_text(self._slurm_conf(*_free_ports(2)))
        env = self.env()
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D"], env, [d / "log" / "slurmctld.log"])
        self._spawn("slurmd", ["/usr/sbin/slurmd", "-D"], env, [d / "log" / "slurmd.log"])
        self._wait(lambda: self.run("sinfo", "--noheader", "--format=%T").stdout.split() == ["idle"],
                   "its node to be idle")

    def _slurm_conf(self, controller_port: int, node_port: int) -> str:
        d = self.directory
        memory = psutil.virtual_memory().total // 2**20
        return f"""\
# A single-node Slurm for tests (cluster_launcher.testing.batchbeds.SlurmBed): root runs everything,
# no cgroups, no accounting database; every file under {d}.
ClusterName=clbed
SlurmctldHost={self.host}
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
# The node reports the CPUs declared below, not the machine's: more engines than cores.
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={d / 'log' / 'jobcomp.txt'}
# Tests wait on jobs: SIGKILL soon after SIGTERM, finished jobs visible in squeue -t all for a while.
KillWait=2
MinJobAge={self.min_job_age}
InactiveLimit=0
Waittime=0
NodeName={self.host} CPUs={self.slots} RealMemory={memory} State=UNKNOWN
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


# --- Grid Engine --------------------------------------------------------------------------------------


class GridEngineBed(_Bed):
    """Son of Grid Engine 8.1.9 on this host, in a cell of its own: ``$SGE_ROOT`` is ``sge/root`` in
    the directory (links to the packaged binaries, and the cell ``default`` with its bootstrap file), the
    qmaster spool, the Berkeley DB and the execd spool are in ``sge/``, the ports are free ones
    (``SGE_QMASTER_PORT``/``SGE_EXECD_PORT`` in :meth:`env`).  The daemons run as root (admin user
    none), in the foreground (``SGE_ND``), as our children; root may run jobs (``min_uid 0``).
    Queue ``all.q`` has :data:`SLOTS` slots and the parallel environments ``smp`` (``$pe_slots``),
    ``mpi`` and ``make`` (``$round_robin``); no load threshold (oversubscribing is the point); the
    scheduler runs every second.

    Jobs run as root.  ``qsub -terse`` prints the id (``10.1-4:1`` for ``-t 1-4``); a job script
    runs under ``/bin/sh`` whatever its ``#!`` line unless ``-S`` names a shell (``shell_start_mode
    posix_compliant``); a job gets the submitter's environment only with ``-V``; without ``-cwd`` it
    runs, and writes its output, in ``$HOME``.
    """

    kind = "sge"
    cell = "default"
    queue = "all.q"
    parallel_environments = ("smp", "mpi", "make")

    def __init__(self, directory: str | os.PathLike[str], start_timeout: float = 60.0, stop_timeout: float = 20.0):
        super().__init__(directory, start_timeout, stop_timeout)
        self.sge = self.directory / "sge"
        self.sge_root = self.sge / "root"
        self.qmaster_port = 0
        self.execd_port = 0

    @property
    def mark(self) -> tuple[str, str]:
        return ("SGE_ROOT", str(self.sge_root))

    def env(self) -> dict[str, str]:
        return {"SGE_ROOT": str(self.sge_root), "SGE_CELL": self.cell,
                "SGE_QMASTER_PORT": str(self.qmaster_port), "SGE_EXECD_PORT": str(self.execd_port)}

    def jobs(self) -> list[str]:
        # One <job_list> per pending job (its tasks as a range) and per running task.
        ids = []
        for job in ElementTree.fromstring(self.run("qstat", "-u", "*", "-xml").stdout).iter("job_list"):
            number, tasks = job.findtext("JB_job_number", ""), job.findtext("tasks")
            ids.append(f"{number}.{tasks}" if tasks else number)
        return ids

    def cancel_all(self) -> None:
        if self.jobs():
            self.run("qdel", "-u", "*", check=False)
        try:
            self._wait_queue_empty("qdel")
        except BedError:
            # A job whose shepherd no longer answers stays until forced out.
            self.run("qdel", "-f", "-u", "*", check=False)
            self._wait_queue_empty("qdel -f")

    def _start(self) -> None:
        self.qmaster_port, self.execd_port = _free_ports(2)
        common = self.sge_root / self.cell / "common"
        common.mkdir(parents=True, exist_ok=True)
        for sub in ("qmaster", "spooldb", "execd", "conf"):
            (self.sge / sub).mkdir(parents=True, exist_ok=True)
        for link in ("bin", "utilbin", "lib", "util"):
            if not (self.sge_root / link).is_symlink():
                (self.sge_root / link).symlink_to(SGE_PACKAGE_ROOT / link)
        (common / "bootstrap").write_text(
            "admin_user              none\n"  # the daemons stay root: the directory may be 0700 root's
            "default_domain          none\n"
            "ignore_fqdn             false\n"
            "spooling_method         berkeleydb\n"
            "spooling_lib            libspoolb\n"
            f"spooling_params         {self.sge / 'spooldb'}\n"
            "binary_path             /usr/sbin\n"
            f"qmaster_spool_dir       {self.sge / 'qmaster'}\n"
            "security_mode           none\n"
            "listener_threads        2\nworker_threads          2\nscheduler_threads       1\n")
        (common / "act_qmaster").write_text(f"{self.host}\n")
        # The host name resolves to an address whose name is another (here vm -> 127.0.0.1 ->
        # localhost): qmaster refuses such clients unless its host_aliases file names both.
        (common / "host_aliases").write_text(" ".join(self._host_names()) + "\n")
        env = self.env()
        global_conf = self._edited((SGE_DEFAULTS / "default-configuration").read_text(), {
            "execd_spool_dir": str(self.sge / "execd"),
            "min_uid": "0", "min_gid": "0",  # root's jobs ("your user id 0 is lower than minimum")
            "load_report_time": "00:00:05",
            # qacct (how a job that left the queue ended) reads what qmaster flushes, every 15 s by default.
            "reporting_params": "accounting=true reporting=false flush_time=00:00:01 joblog=false "
                                "sharelog=00:00:00 accounting_flush_time=00:00:00",
        })
        conf = self.sge / "conf"
        (conf / "global").write_text(global_conf)
        # What Debian's init_cluster does for the packaged cell, here for ours.
        resources = SGE_DEFAULTS / "util" / "resources"
        for argv in ([str(SGE_LIBEXEC / "spoolinit"), "berkeleydb", "libspoolb", str(self.sge / "spooldb"), "init"],
                     [str(SGE_LIBEXEC / "spooldefaults"), "configuration", str(conf / "global")],
                     [str(SGE_LIBEXEC / "spooldefaults"), "complexes", str(resources / "centry")],
                     [str(SGE_LIBEXEC / "spooldefaults"), "usersets", str(resources / "usersets")],
                     [str(SGE_LIBEXEC / "spooldefaults"), "managers", "root"]):
            self.run(*argv)
        daemon_env = {**env, "SGE_ND": "1"}  # "no daemon": stay in the foreground, our child
        # sge_qmaster 8.1.9 spins for about 10 s in its controlled shutdown, saving state that goes
        # with the directory: it gets SIGKILL after 2 s, once execd and every job are gone.
        self._spawn("sge_qmaster", ["/usr/sbin/sge_qmaster"], daemon_env, [self.sge / "qmaster" / "messages"],
                    stop_grace=2.0)
        self._wait(lambda: self.host in self.run("qconf", "-sh").stdout.split(), "qmaster to answer")
        self._configure()
        self._spawn("sge_execd", ["/usr/sbin/sge_execd"], daemon_env, self._execd_messages())
        self._wait(self._queue_ready, f"queue {self.queue}@{self.host} to take jobs")

    def _host_names(self) -> list[str]:
        names = [self.host]
        try:
            address = socket.gethostbyname(self.host)
            name, aliases, _ = socket.gethostbyaddr(address)
            names += [name, *aliases]
        except OSError:
            pass
        names += ["localhost", "localhost.localdomain"]
        return list(dict.fromkeys(names))

    def _execd_messages(self) -> list[Path]:
        # execd names its spool folder after the name its address resolves to (localhost here).
        return [self.sge / "execd" / name / "messages" for name in self._host_names()]

    @staticmethod
    def _edited(text: str, values: Mapping[str, str]) -> str:
        """A Grid Engine configuration (``name value`` lines) with ``values`` replaced."""
        lines = []
        for line in text.splitlines():
            name = line.split(maxsplit=1)[0] if line.strip() and not line.startswith("#") else ""
            lines.append(f"{name} {values[name]}" if name in values else line)
        return "\n".join(lines) + "\n"

    def _configure(self) -> None:
        """Scheduler, host, parallel environments and queue, from files (``qconf -A``/``-M``: no editor)."""
        conf = self.sge / "conf"
        scheduler = self._edited(self.run("qconf", "-ssconf").stdout, {
            "schedule_interval": "0:0:1", "flush_submit_sec": "1", "flush_finish_sec": "1",
            # Each started job would otherwise count as load for 7.5 minutes.
            "job_load_adjustments": "NONE", "load_adjustment_decay_time": "0:0:0",
        })
        (conf / "scheduler").write_text(scheduler)
        self.run("qconf", "-Msconf", str(conf / "scheduler"))
        (conf / "exechost").write_text(
            f"hostname {self.host}\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\n"
            "projects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n")
        self.run("qconf", "-Ae", str(conf / "exechost"))
        self.run("qconf", "-as", self.host)
        (conf / "allhosts").write_text(f"group_name @allhosts\nhostlist {self.host}\n")
        self.run("qconf", "-Ahgrp", str(conf / "allhosts"))
        for pe in self.parallel_environments:
            rule, control = ("$pe_slots", "FALSE") if pe == "smp" else ("$round_robin", "TRUE")
            (conf / f"pe_{pe}").write_text(
                f"pe_name {pe}\nslots 999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\n"
                f"stop_proc_args NONE\nallocation_rule {rule}\ncontrol_slaves {control}\njob_is_first_task TRUE\n"
                "urgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n")
            self.run("qconf", "-Ap", str(conf / f"pe_{pe}"))
        (conf / "queue").write_text(self._queue_conf())
        self.run("qconf", "-Aq", str(conf / "queue"))

    def _queue_conf(self) -> str:
        limits = "".join(f"{prefix}_{limit} INFINITY\n" for limit in
                         ("rt", "cpu", "fsize", "data", "stack", "core", "rss", "vmem") for prefix in ("s", "h"))
        return (f"qname {self.queue}\nhostlist @allhosts\nseq_no 0\n"
                # No load threshold: SLOTS jobs on fewer cores must not put the queue in alarm.
                "load_thresholds NONE\nsuspend_thresholds NONE\nnsuspend 1\nsuspend_interval 00:05:00\n"
                "priority 0\nmin_cpu_interval 00:05:00\nprocessors UNDEFINED\nqtype BATCH INTERACTIVE\n"
                f"ckpt_list NONE\npe_list {' '.join(self.parallel_environments)}\nrerun FALSE\nslots {SLOTS}\n"
                "tmpdir /tmp\nshell /bin/sh\nprolog NONE\nepilog NONE\nshell_start_mode posix_compliant\n"
                "starter_method NONE\nsuspend_method NONE\nresume_method NONE\nterminate_method NONE\n"
                "notify 00:00:60\nowner_list NONE\nuser_lists NONE\nxuser_lists NONE\nsubordinate_list NONE\n"
                "complex_values NONE\nprojects NONE\nxprojects NONE\ncalendar NONE\ninitial_state default\n"
                + limits)

    def _queue_ready(self) -> bool:
        # "all.q@vm  BIP  0/0/8  0.60  lx-amd64  [states]": ready once execd reported a load, no state.
        for line in self.run("qstat", "-f", "-q", self.queue).stdout.splitlines():
            fields = line.split()
            if fields and fields[0].startswith(f"{self.queue}@"):
                return len(fields) == 5 and fields[3] != "-NA-"
        return False


# --- HTCondor -----------------------------------------------------------------------------------------


class CondorBed(_Bed):
    """HTCondor 23 (Debian 13's minicondor) in the chroot :func:`condor_root`: ``condor_master -f`` as
    our child with ``CONDOR_CONFIG`` pointing at this bed's configuration in the directory, which puts
    ``LOCAL_DIR`` (logs, spool, execute, lock, run) there too, and the collector on a free port.  The
    node has one partitionable slot of :data:`SLOTS` CPUs; negotiation every second.

    Inside the chroot, ``/proc``, the directory and, read-only, ``mounts`` and (``share_python``) the
    folders this Python interpreter and its packages live in are mounted at the same paths: a job can
    run ``sys.executable``.  Each is mounted on its own, under folders of the chroot's own made 0755 where
    missing, so a checkout the submit user could not reach on this host (under a 0700 ``mktemp -d``
    folder) is reachable there; ``stop()`` unmounts them and removes the folders it made.

    HTCondor refuses jobs owned by root: jobs are submitted as :data:`CONDOR_USER` (uid and gid
    :data:`CONDOR_UID`), which is what the ``condor_*`` commands of :meth:`env` (wrappers in
    :func:`condor_bin_dir`) do, in the caller's working directory.  So:

    - the directory must be reachable by that user: every folder above it searchable by all (not under
      pytest's ``tmp_path``, which is 0700 root's: use ``tempfile.mkdtemp()`` in ``/tmp`` and chmod it
      0711);
    - what a job reads must be readable by it, and the folders it writes to (``output``, ``error``,
      ``log``, its ``initialdir``) writable by it: :meth:`job_dir` makes such a folder, owned by the
      submit user;
    - ``condor_submit`` must run in a folder visible in the chroot (the directory, or the mounts);
    - a job gets none of the submitter's environment unless ``getenv = true`` (then the caller's, with
      the chroot's PATH): name programs by absolute path (``sys.executable``);
    - the submit user cannot read what root keeps private (a root controller's 0600 connection files
      in its 0700 security folder): a program that must itself submit or be read by the jobs (a
      launcher under test, its controller) runs as the submit user inside the chroot, with
      :meth:`command` (the chroot's own ``condor_*`` are then on its PATH), its profile in a
      :meth:`job_dir`;
    - the chroot has its own ``/dev/shm``: to the cluster, a job runs on another host.
    """

    kind = "condor"

    def __init__(self, directory: str | os.PathLike[str], start_timeout: float = 60.0, stop_timeout: float = 20.0,
                 share_python: bool = True, mounts: Sequence[str | os.PathLike[str]] = ()):
        super().__init__(directory, start_timeout, stop_timeout)
        self.root = condor_root()
        self.conf = self.directory / "condor" / "condor_config"
        self.local_dir = self.directory / "condor" / "local"
        self.share_python = share_python
        self.extra_mounts = [os.path.abspath(path) for path in mounts]
        self.mounted: list[Path] = []
        self.made: list[Path] = []  # folders of the chroot made to mount on, removed at stop
        self.port = 0
        self.submit_user = CONDOR_USER
        self.submit_uid = CONDOR_UID

    @property
    def mark(self) -> tuple[str, str]:
        return ("CONDOR_CONFIG", str(self.conf))

    def env(self) -> dict[str, str]:
        return {"CONDOR_CONFIG": str(self.conf),
                "PATH": f"{condor_bin_dir()}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}

    def jobs(self) -> list[str]:
        done = self._in_chroot("condor_q", "-allusers", "-af", "ClusterId", "ProcId")
        return [".".join(line.split()) for line in done.stdout.splitlines() if line.strip()]

    def cancel_all(self) -> None:
        if self.jobs():
            self._in_chroot("condor_rm", "-all", check=False)
        try:
            self._wait_queue_empty("condor_rm -all")
        except BedError:
            # Removed jobs whose shadow is gone stay in state X until forced out.
            self._in_chroot("condor_rm", "-forcex", "-all", check=False)
            self._wait_queue_empty("condor_rm -forcex -all")

    def job_dir(self, name: str) -> Path:
        """A new folder ``jobs/<name>`` in the directory, owned by the submit user: where a job's files
        (submit file, output, error, log, what the job writes) go."""
        path = self.directory / "jobs" / name
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.mkdir(mode=0o755)
        os.chown(path, self.submit_uid, self.submit_uid)
        return path

    def command(self, argv: Sequence[str], cwd: str | os.PathLike[str],
                env: Mapping[str, str] | None = None) -> list[str]:
        """``argv`` as the submit user inside the chroot, in ``cwd`` (a folder visible there), with this
        bed's ``CONDOR_CONFIG`` and the chroot's PATH (its ``condor_*``), plus ``env``: for a program
        that submits jobs itself (``cluster-launcher start`` with ``sys.executable``)."""
        settings = [f"{name}={value}" for name, value in {"PATH": CHROOT_PATH, **(env or {}),
                                                           "CONDOR_CONFIG": str(self.conf)}.items()]
        return ["/usr/sbin/chroot", str(self.root), "/usr/sbin/runuser", "-u", self.submit_user, "--",
                "/usr/bin/env", *settings, "/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh",
                os.fspath(cwd), *argv]

    def mount_points(self) -> list[str]:
        """The host folders mounted at the same path inside the chroot while the bed runs."""
        paths = [str(self.directory)]
        for path in [*self.extra_mounts, *(python_paths(skip=paths) if self.share_python else [])]:
            if not _under(path, paths):
                paths.append(path)
        return paths

    def _start(self) -> None:
        self._check_reachable(self.directory)
        uid, gid = chroot_ids(self.root, "condor")
        for sub in ("log", "spool", "execute", "lock", "run", "cred_dir"):
            (self.local_dir / sub).mkdir(parents=True, exist_ok=True)
            os.chown(self.local_dir / sub, uid, gid)
        for sub, mode in (("security", 0o755), ("security/passwords.d", 0o700), ("security/tokens.d", 0o700),
                          ("known_hosts", 0o1777)):  # each user's tools write their own file there
            (self.local_dir / sub).mkdir(parents=True, exist_ok=True)
            (self.local_dir / sub).chmod(mode)
        [self.port] = _free_ports(1)
        self._write_config()
        self._mount("proc", "/proc", "-t", "proc", read_only=False)
        # The chroot resolves this host's name as the host does ("could not look up 'vm'" otherwise).
        self._mount("/etc/hosts", "/etc/hosts", "--bind", read_only=True)
        for path in self.mount_points():
            self._mount(path, path, "--bind", read_only=path != str(self.directory))
        log = self.local_dir / "log"
        self._spawn("condor_master", ["/usr/sbin/chroot", str(self.root), "/usr/sbin/condor_master", "-f"],
                    {"CONDOR_CONFIG": str(self.conf), "PATH": CHROOT_PATH},
                    [log / "MasterLog", log / "SchedLog", log / "StartLog", log / "CollectorLog"],
                    # SIGQUIT: fast shutdown, jobs killed at once (SIGTERM waits for them to vacate).
                    stop_signal=signal.SIGQUIT)
        self._wait(self._ready, "a schedd and an unclaimed slot")

    def _write_config(self) -> None:
        # The chroot's configuration, then ours: LOCAL_CONFIG_FILE is read after the config.d files,
        # which would override anything written here directly.
        local = self.conf.with_name("bed.config")
        self.conf.write_text("# cluster_launcher.testing.batchbeds.CondorBed: the chroot's configuration, then this "
                             "bed's\ninclude : /etc/condor/condor_config\n"
                             f"LOCAL_CONFIG_FILE = {local}\n")
        local.write_text(f"""\
LOCAL_DIR = {self.local_dir}
LOG = $(LOCAL_DIR)/log
SPOOL = $(LOCAL_DIR)/spool
EXECUTE = $(LOCAL_DIR)/execute
LOCK = $(LOCAL_DIR)/lock
RUN = $(LOCAL_DIR)/run
CRED_STORE_DIR = $(LOCAL_DIR)/cred_dir
# What a new pool makes for itself on its first start (the pool signing key, a CA and a host
# certificate) and what its tools record (known hosts): here, not in the chroot's /etc/condor and homes.
SEC_PASSWORD_DIRECTORY = $(LOCAL_DIR)/security/passwords.d
SEC_TOKEN_SYSTEM_DIRECTORY = $(LOCAL_DIR)/security/tokens.d
TRUST_DOMAIN_CAFILE = $(LOCAL_DIR)/security/trust_domain_ca.pem
TRUST_DOMAIN_CAKEY = $(LOCAL_DIR)/security/trust_domain_ca_privkey.pem
AUTH_SSL_AUTOGENERATE_CERTFILE = $(LOCAL_DIR)/security/hostcert.pem
AUTH_SSL_AUTOGENERATE_KEYFILE = $(LOCAL_DIR)/security/hostkey.pem
SEC_SYSTEM_KNOWN_HOSTS = $(LOCAL_DIR)/security/known_hosts
SEC_KNOWN_HOSTS = $(LOCAL_DIR)/known_hosts/$(USERNAME)
# Our own port: another bed (or a system HTCondor) may hold 9618.
COLLECTOR_HOST = 127.0.0.1:{self.port}
SHARED_PORT_PORT = {self.port}
# More slots than cores, on purpose.
NUM_CPUS = {SLOTS}
# Tests wait on jobs: negotiate, update and evaluate periodic expressions every second or two;
# a removed job gets SIGKILL 2 s after SIGTERM.
NEGOTIATOR_INTERVAL = 1
NEGOTIATOR_MIN_INTERVAL = 1
NEGOTIATOR_CYCLE_DELAY = 1
SCHEDD_INTERVAL = 1
SCHEDD_MIN_INTERVAL = 1
UPDATE_INTERVAL = 2
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
PERIODIC_EXPR_INTERVAL = 1
MachineMaxVacateTime = 2
""")

    def _ready(self) -> bool:
        schedds = self._in_chroot("condor_status", "-schedd", "-af", "Name").stdout.split()
        states = self._in_chroot("condor_status", "-af", "State").stdout.split()
        return bool(schedds) and "Unclaimed" in states

    def _in_chroot(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A condor command inside the chroot as root (who may see and remove every user's jobs)."""
        return self.run("/usr/sbin/chroot", str(self.root), *argv, check=check, env={"PATH": CHROOT_PATH})

    def _check_reachable(self, path: Path) -> None:
        for folder in [path, *path.parents]:
            if not folder.stat().st_mode & stat.S_IXOTH:
                raise BedError(f"the HTCondor test bed's directory {path} is out of reach of its submit user "
                               f"{self.submit_user}: {folder} is not searchable by all (make the directory with "
                               "tempfile.mkdtemp() in /tmp and chmod it 0711)")

    def _mount(self, source: str, path: str, *options: str, read_only: bool) -> None:
        """Mount ``source`` at ``path`` inside the chroot.  Mounts stack: two beds may mount the same
        folder at once, and each unmounts one."""
        target = self.root / path.lstrip("/")
        missing = [folder for folder in [target, *target.parents] if not folder.exists()]
        for folder in reversed(missing):
            folder.mkdir(mode=0o755)  # searchable by the submit user, whatever the host's folder is
            self.made.append(folder)
        commands = [["/usr/bin/mount", *options, source, str(target)]]
        if read_only:
            commands.append(["/usr/bin/mount", "-o", "remount,bind,ro", str(target)])
        for argv in commands:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise BedError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
            if target not in self.mounted:
                self.mounted.append(target)

    def _cleanup(self) -> None:
        failed = []
        while self.mounted:
            target = self.mounted.pop()
            if subprocess.run(["/usr/bin/umount", str(target)], capture_output=True, timeout=30).returncode == 0:
                continue
            # Busy: beds stack their mounts of the same folders, and umount takes the top one, which
            # another bed's processes may be using.  Detach it: they keep it while they need it, and
            # the mounts below are the same folders.
            done = subprocess.run(["/usr/bin/umount", "--lazy", str(target)], capture_output=True, text=True,
                                  timeout=30)
            if done.returncode != 0:
                failed.append(f"{target} ({done.stderr.strip()})")
        while self.made:
            try:
                self.made.pop().rmdir()  # deepest first; one another bed still mounts on stays
            except OSError:
                pass
        if failed:
            raise BedError(f"could not unmount {', '.join(failed)}")


def _under(path: str, folders: Iterable[str]) -> bool:
    return any(path == folder or path.startswith(folder.rstrip("/") + "/") for folder in folders)


def chroot_ids(root: Path, user: str) -> tuple[int, int]:
    """``user``'s uid and gid in the password file of the system at ``root`` (a chroot)."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise BedError(f"no user {user} in {root}/etc/passwd: {INSTALL_HINT}")


def python_paths(skip: Sequence[str] = ()) -> list[str]:
    """The host folders this interpreter runs from: its installation, its environment and the folders
    of its packages (editable ones included), as one project folder when they share one; none under
    ``skip`` (folders mounted anyway).  Mounted in the HTCondor chroot, they let a job run
    ``sys.executable`` with what this process can import."""
    base = os.path.realpath(sys.base_prefix)
    environment = os.path.realpath(sys.prefix)
    rest = [os.path.realpath(path) for path in sys.path if path and os.path.isdir(path)]
    rest = [path for path in rest if not _under(path, [base, environment, *skip])]
    project = [environment, *rest]
    common = os.path.commonpath(project)
    # One mount of the folder they share (a project with its .venv), unless that is / or a top folder.
    groups = [common] if common.count("/") >= 2 else project
    paths: list[str] = []
    for path in sorted({base, *groups}, key=len):
        if not _under(path, [*paths, *skip]):
            paths.append(path)
    return paths
