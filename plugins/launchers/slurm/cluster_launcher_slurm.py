"""The controller and engines as Slurm jobs: ``sbatch`` submits, ``squeue``
tells their states, ``scancel`` deletes them.

``start --engines=Slurm -n 8`` submits one job array of 8 tasks
(``--array=1-8``), each running one engine (``exec <engine command>``), on
whatever node Slurm gives it: one job id, one ``squeue`` line per engine, and
``scancel`` of that id stops them all.  More than ``max_array_size`` engines
go out as several arrays; ``array_throttle`` caps how many run at once.
``--controller=Slurm`` submits a one-task job running the
controller; its profile folder must then be one both hosts see.

Inside a Slurm job (``SLURM_JOB_ID``, from ``sbatch`` or ``salloc``) a bare
``cluster-launcher start`` runs the controller where it runs and the engines
as one ``srun`` job step of the allocation's tasks
(:class:`SrunEngineSetLauncher`, ``--engines=Srun``; the plugin's
``cluster_launcher_allocation`` hook says so).
"""

from __future__ import annotations

import getpass
import re
import shutil
from collections.abc import Mapping, Sequence

from traitlets import List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.error import ClusterLauncherError
from cluster_launcher.launcher import (
    Allocation,
    BatchSystemLauncher,
    ControllerLauncher,
    EngineSetLauncher,
    JobState,
    JobStatus,
    WrappedEngineSetLauncher,
)

# squeue's %T, by what it means here.
STATES = {
    **dict.fromkeys(["PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                     "SUSPENDED", "STOPPED"], JobState.PENDING),
    **dict.fromkeys(["RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"], JobState.RUNNING),
    "COMPLETED": JobState.DONE,
    "CANCELLED": JobState.CANCELLED,
    **dict.fromkeys(["TIMEOUT", "DEADLINE"], JobState.TIMEOUT),
    **dict.fromkeys(["FAILED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"],
                    JobState.FAILED),
}
# One line per job (per array task, with -r): "<array job id or job id> <task id or N/A> <state> <reason>".
SQUEUE_FORMAT = "%F %K %T %r"
_LINE = re.compile(r"^(\d+)\s+(\S+)\s+(\S+)\s*(.*)$")


class SlurmLauncher(BatchSystemLauncher):
    """What Slurm's launchers share (IPython's and ipyparallel's ``SlurmLauncher`` settings)."""

    system = "Slurm"
    directive = "#SBATCH"
    queue_directive = "#SBATCH --partition={queue}"
    walltime_directive = "#SBATCH --time={walltime}"
    walltime_bare_unit = 60  # --time=90: 90 minutes
    # B: the batch shell only, not every step's tasks (which srun forwards it to in the engines' job).
    walltime_signal_directive = "#SBATCH --signal=B:USR1@{seconds}"
    name_directives = ("#SBATCH --job-name={job_name}", "#SBATCH --output={output}")
    output_pattern = "{job_name}-%j.out"
    # squeue, asked about a job it has purged: "slurm_load_jobs error: Invalid job id specified", code 1.
    unknown_job_markers = ("Invalid job id specified",)
    # sbatch when slurmctld is busy or unreachable ("Batch job submission failed: Socket timed out on
    # send/recv operation", "Unable to contact slurm controller (connect failure)").
    transient_submit_markers = ("Socket timed out", "Unable to contact slurm controller",
                                "Resource temporarily unavailable", "Slurm temporarily unable")
    throttle_suffix = "%{array_throttle}"

    submit_command = List(Unicode(), ["sbatch", "--parsable"], help="The Slurm submit command.").tag(config=True)
    delete_command = List(Unicode(), ["scancel"], help="The Slurm delete command.").tag(config=True)
    status_command = List(Unicode(), ["squeue", "--noheader", "--array", "--states=all",
                                      f"--format={SQUEUE_FORMAT}"],
                          help="The Slurm status command (--jobs=<ids> is added).").tag(config=True)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return [*self.status_command, f"--jobs={','.join(job_ids)}"]

    def parse_states(self, output: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        statuses: dict[str, JobStatus] = {}
        for line in output.splitlines():
            match = _LINE.match(line.strip())
            if not match or match.group(1) not in job_ids:
                continue
            job_id, _, native, reason = match.groups()
            status = statuses.setdefault(job_id, JobStatus(job_id))
            status.states.append(STATES.get(native, JobState.RUNNING if native else JobState.GONE))
            status.native, status.reason = native, reason.strip()
        return statuses

    def submitted_jobs_named(self, job_name: str) -> list[str]:
        squeue = self.status_command[0]  # the site's squeue, where status_command names one
        done = self.run_command([squeue, "--noheader", f"--user={getpass.getuser()}", f"--name={job_name}",
                                 "--format=%F"], check=False)
        return list(dict.fromkeys(done.stdout.split())) if done.returncode == 0 else []

    def output_path(self, job_id: str) -> str:
        return self.output_file.replace("%j", job_id).replace("%A", job_id).replace("%a", "1")


class SlurmControllerLauncher(SlurmLauncher, ControllerLauncher):
    """The controller as a one-task Slurm job."""

    controller_directives = ("#SBATCH --ntasks=1",)


class SlurmEngineSetLauncher(SlurmLauncher, EngineSetLauncher):
    """``n`` engines as the ``n`` tasks of one Slurm job array, one engine each."""

    engines_directives = ("#SBATCH --array=1-{n}{throttle}", "#SBATCH --ntasks=1")
    output_pattern = "{job_name}-%A_%a.out"


@hookimpl
def cluster_launcher_register_launchers():
    return [SlurmControllerLauncher, SlurmEngineSetLauncher, SrunEngineSetLauncher]


# --- one allocation: `cluster-launcher start` inside a Slurm job ---------------------------------------

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list as names: ``'node[01-03,7],gpu1'`` is
    ``['node01', 'node02', 'node03', 'node7', 'gpu1']`` (zero padding kept,
    several bracket groups in one name multiplied out)."""
    names, depth, start = [], 0, 0
    for i, char in enumerate(f"{hostlist},"):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            if hostlist[start:i].strip():
                names += _expand_host(hostlist[start:i].strip())
            start = i + 1
    return names


def _expand_host(pattern: str) -> list[str]:
    head, bracket, rest = pattern.partition("[")
    if not bracket:
        return [pattern]
    ranges, _, tail = rest.partition("]")
    numbers = []
    for part in ranges.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            return [pattern]  # not a host list we know: the name as given
        first, last = match.group(1), match.group(2) or match.group(1)
        numbers += [str(k).zfill(len(first)) for k in range(int(first), int(last) + 1)]
    return [f"{head}{number}{name}" for number in numbers for name in _expand_host(tail)]


def count_cpus_per_node(value: str) -> int:
    """The CPUs of ``SLURM_JOB_CPUS_PER_NODE``, summed: ``'4(x2),2'`` is 10; 0 if it cannot be read."""
    total = 0
    for part in value.split(","):
        match = re.match(r"^\s*(\d+)(?:\(x(\d+)\))?\s*$", part)
        if not match:
            return 0
        total += int(match.group(1)) * int(match.group(2) or 1)
    return total


def _positive(value: str | None) -> int:
    return int(value) if value and value.strip().isdigit() and int(value) > 0 else 0


def slurm_allocation(environ: Mapping[str, str]) -> Allocation | None:
    """The Slurm allocation ``environ`` runs inside (``SLURM_JOB_ID``, from
    ``sbatch`` or ``salloc``), or None.  Its slots: ``SLURM_NTASKS`` (the job's
    ``--ntasks``), else ``SLURM_NPROCS`` (its older name), else the CPUs of
    ``SLURM_JOB_CPUS_PER_NODE``, else one per node."""
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        return None
    nodes = expand_hostlist(environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "")
    slots = (_positive(environ.get("SLURM_NTASKS")) or _positive(environ.get("SLURM_NPROCS"))
             or count_cpus_per_node(environ.get("SLURM_JOB_CPUS_PER_NODE", ""))
             or len(nodes) or _positive(environ.get("SLURM_JOB_NUM_NODES")) or 1)
    return Allocation(system="Slurm", job_id=job_id, engine_launcher="Srun", slots=slots,
                      nodes=tuple(dict.fromkeys(nodes)))


class SrunEngineSetLauncher(WrappedEngineSetLauncher):
    """``n`` engines as the ``n`` tasks of one ``srun --ntasks=n`` job step, run
    as a local child process: what ``cluster-launcher start`` uses inside a
    Slurm allocation (``sbatch``, ``salloc``) when no engine launcher is
    configured.  ``srun`` passes SIGTERM on to the tasks, so stopping it stops
    the engines wherever Slurm put them."""

    srun_cmd = List(Unicode(), default_value=["srun"], help="The srun command, e.g. "
                    "['/opt/slurm/bin/srun'].").tag(config=True)
    srun_args = List(Unicode(), default_value=["--overlap", "--kill-on-bad-exit=0"],
                     help="Options for srun before the engine command.  The defaults let the engines' "
                     "step share the allocation's CPUs with other steps (the controller's batch step, "
                     "your own srun) and keep the other engines running when one exits; keep them "
                     "when adding your own, e.g. ['--overlap', '--kill-on-bad-exit=0', "
                     "'--cpus-per-task=2'].").tag(config=True)

    @property
    def wrapper_cmd(self) -> list[str]:
        return list(self.srun_cmd)

    def wrap(self, n: int, command: list[str]) -> list[str]:
        return [*self.srun_cmd, f"--ntasks={n}", *self.srun_args, *command]

    def check(self, n: int = 1) -> None:
        if not self.srun_cmd:
            raise ClusterLauncherError("SrunEngineSetLauncher.srun_cmd is empty; set it to your srun, e.g. ['srun']")
        if shutil.which(self.srun_cmd[0]) is None:
            raise ClusterLauncherError(f"SrunEngineSetLauncher.srun_cmd: {self.srun_cmd[0]!r} not found on PATH; "
                                       "run start where Slurm's commands are, or set c.SrunEngineSetLauncher.srun_cmd")


@hookimpl(tryfirst=True)  # Slurm's own variables win over a PBS_NODEFILE a compatibility layer may set
def cluster_launcher_allocation(environ):
    return slurm_allocation(environ)
