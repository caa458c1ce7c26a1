"""Start engines (or the controller) under ``mpiexec``: IPython's MPI mode.

``start -n 4 --engines=MPI`` runs one ``mpiexec -n 4 <engine command>``; each
rank is an engine, with ``c.MPI.use = 'mpi4py'`` (``Engine.mpi``) initializing
MPI in it, so the engines can talk to each other through MPI while the client
drives them.  ``c.MPILauncher.mpi_cmd`` and ``mpi_args`` are IPython's names.

``mpiexec`` runs each rank in a session of its own, so signalling its process
group does not reach them: :meth:`MPILauncher.stop` takes the whole process
tree (``mpiexec``, its proxies, the ranks) as it is at that moment, asks
``mpiexec`` to stop (it passes SIGTERM on to the ranks), and kills by PID
whatever of that tree is still running after ``stop_timeout``.

Inside a PBS/Torque job (``$PBS_NODEFILE`` set) the plugin answers the
``cluster_launcher_allocation`` hook: a bare ``cluster-launcher start`` there
starts one engine per line of the node file under mpiexec, and the engines'
mpiexec gets the node file as its host file unless ``mpi_args`` names hosts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time

import psutil
from traitlets import List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.error import ClusterLauncherError
from cluster_launcher.launcher import Allocation, ControllerLauncher, WrappedEngineSetLauncher, WrapperLauncher
from cluster_launcher.launcher.process import pid_alive, process_start_token

log = logging.getLogger("cluster_launcher")

# Open MPI refuses to run as root unless told twice; MPICH does not ask.
OPENMPI_ROOT_ENVIRONMENT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
# mpi_args naming hosts (MPICH's Hydra and Open MPI): with one, a PBS node file is not added.
HOST_OPTIONS = frozenset({"-f", "-hosts", "-host", "--host", "-H", "-hostfile", "--hostfile", "-machinefile",
                          "--machinefile", "-machine", "--default-hostfile", "-configfile", "--configfile"})


class MPILauncher(WrapperLauncher):
    """``mpiexec -n N [mpi_args] <command>`` as a local child process."""

    mpi_cmd = List(Unicode(), default_value=["mpiexec"], help="The mpiexec command (IPython's "
                   "c.MPILauncher.mpi_cmd), e.g. ['mpirun'] or ['/opt/mpich/bin/mpiexec'].").tag(config=True)
    mpi_args = List(Unicode(), help="Arguments for mpiexec before the command, e.g. ['-hosts', 'node1,node2'] "
                    "or ['--oversubscribe'] (IPython's c.MPILauncher.mpi_args).").tag(config=True)
    # The ranks' PIDs and start tokens, recorded while mpiexec runs: it may be
    # gone by the time they must be killed.
    tree = List(help="[pid, start token] of each process seen under mpiexec.").tag(config=False, state=True)
    mpi_flavor = Unicode("", help="'mpich', 'openmpi' or '' (unknown), from `mpiexec --version`.").tag(
        config=False, state=True)

    @property
    def wrapper_cmd(self) -> list[str]:
        return list(self.mpi_cmd)

    def wrap(self, n: int, command: list[str]) -> list[str]:
        hosts = self.allocation_args() if self.role == "engines" else []
        return [*self.mpi_cmd, "-n", str(n), *hosts, *self.mpi_args, *command]

    def allocation_args(self) -> list[str]:
        """Inside a PBS allocation (``$PBS_NODEFILE``) and with no hosts in
        ``mpi_args``: the node file as mpiexec's host file, so the ranks go
        to the job's nodes (MPICH ``-f``, Open MPI ``--hostfile``, an
        mpiexec not known ``-machinefile``, which both understand too)."""
        node_file = os.environ.get("PBS_NODEFILE")
        if not node_file or any(arg.split("=", 1)[0] in HOST_OPTIONS for arg in self.mpi_args):
            return []
        if not self.mpi_flavor and self.mpi_cmd and shutil.which(self.mpi_cmd[0]):
            self.mpi_flavor = self._check_mpiexec()  # start sets it first; a dry run asks here
        return [{"mpich": "-f", "openmpi": "--hostfile"}.get(self.mpi_flavor, "-machinefile"), node_file]

    def start(self, n: int = 1) -> None:
        self.mpi_flavor = self._check_mpiexec()
        if self.mpi_flavor == "openmpi" and os.geteuid() == 0:
            # Said out loud rather than done quietly: Open MPI asks root to confirm.
            log.warning("running Open MPI's %s as root: setting %s", self.mpi_cmd[0],
                        " ".join(f"{k}=1" for k in OPENMPI_ROOT_ENVIRONMENT))
            self.environment = {**OPENMPI_ROOT_ENVIRONMENT, **self.environment}
        super().start(n)

    def _check_mpiexec(self) -> str:
        """The MPI implementation behind ``mpi_cmd``; ClusterLauncherError
        naming the setting if there is no such command."""
        if not self.mpi_cmd:
            raise ClusterLauncherError("MPILauncher.mpi_cmd is empty; set it to your mpiexec, e.g. ['mpiexec']")
        program = self.mpi_cmd[0]
        if shutil.which(program) is None:
            raise ClusterLauncherError(f"MPILauncher.mpi_cmd: {program!r} not found on PATH; "
                                       "install an MPI (e.g. pip install mpich mpi4py, or your system's "
                                       "mpich / openmpi-bin) or set c.MPILauncher.mpi_cmd to its mpiexec")
        try:
            version = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30,
                                     stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return ""
        text = (version.stdout + version.stderr).lower()
        return "openmpi" if any(word in text for word in ("open mpi", "openrte", "open-mpi")) else \
            "mpich" if "hydra" in text else ""

    def stop(self) -> None:
        """SIGTERM to mpiexec (it passes it on to the ranks), then SIGKILL to
        every process of its tree still running after ``stop_timeout``."""
        self.killed = ()
        self._take_tree()
        deadline = time.monotonic() + self.stop_timeout
        if self.poll() is None:
            self.signal(signal.SIGTERM)
        else:  # mpiexec is gone: nobody passes SIGTERM on to what it left behind
            for process in self._tree_processes():
                with contextlib.suppress(psutil.Error):
                    process.terminate()
        self.wait(self.stop_timeout)
        _, alive = psutil.wait_procs(self._tree_processes(), timeout=max(0.0, deadline - time.monotonic()))
        if alive or self.poll() is None:
            self.signal(signal.SIGKILL)
            for process in alive:
                try:
                    process.kill()
                except psutil.Error:
                    continue
            psutil.wait_procs(alive, timeout=self.stop_timeout)
            self.killed = (f"{self.display_name()} (mpiexec pid {self.pid}, {len(alive)} more processes) "
                           f"ignored SIGTERM for {self.stop_timeout:g}s: killed",)
        self.wait(self.stop_timeout)

    def _take_tree(self) -> None:
        """Record every process under mpiexec now (so a later `stop` from another
        process, or one after mpiexec died, still knows the ranks)."""
        if super().poll() is not None:
            return
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return
        known = {pid for pid, _ in self.tree}
        found = [[child.pid, process_start_token(child.pid)] for child in children if child.pid not in known]
        # No token (it exited meanwhile, or cannot be inspected): not recorded,
        # or a later stop could kill whatever process gets that PID next.
        self.tree = [*self.tree, *(entry for entry in found if entry[1])]

    def _tree_processes(self) -> list[psutil.Process]:
        """The recorded processes that are still the ones recorded and running."""
        processes = []
        for pid, token in self.tree:
            if not pid_alive(pid, token):  # gone, a zombie, or the PID now someone else's
                continue
            try:
                processes.append(psutil.Process(pid))
            except psutil.Error:
                continue
        return processes

    def poll(self) -> int | None:
        code = super().poll()
        if code is None:
            self._take_tree()  # cheap, and keeps the record current for a later `stop`
        return code


class MPIControllerLauncher(MPILauncher, ControllerLauncher):
    """The controller as rank 0 of ``mpiexec -n 1`` (IPython's MPIControllerLauncher)."""

    log_name = "controller"

    @property
    def args(self) -> list[str]:
        return self.wrap(1, ControllerLauncher.args.fget(self))  # type: ignore[attr-defined]


class MPIEngineSetLauncher(MPILauncher, WrappedEngineSetLauncher):
    """``n`` engines as the ranks of one ``mpiexec -n n`` (IPython's MPIEngineSetLauncher)."""

    task_word = "ranks"


def read_node_file(path: str) -> list[str]:
    """The host names of a PBS node file, one line per slot (blank lines and
    ``#`` comments skipped); [] if it cannot be read."""
    try:
        with open(path) as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
    except OSError:
        return []
    return [line for line in lines if line]


@hookimpl
def cluster_launcher_register_launchers():
    return [MPIControllerLauncher, MPIEngineSetLauncher]


@hookimpl
def cluster_launcher_allocation(environ):
    """Inside a PBS/Torque job (``$PBS_NODEFILE``): engines under mpiexec, one
    per line of the node file, the file as mpiexec's host file."""
    node_file = environ.get("PBS_NODEFILE")
    if not node_file:
        return None
    hosts = read_node_file(node_file)
    if not hosts:
        log.warning("PBS_NODEFILE=%s names no hosts (missing or empty): not starting engines across it", node_file)
        return None
    return Allocation(system="PBS", job_id=environ.get("PBS_JOBID", "?"), engine_launcher="MPI", slots=len(hosts),
                      nodes=tuple(dict.fromkeys(hosts)))
