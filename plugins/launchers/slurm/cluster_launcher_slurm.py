"""The controller and engines as Slurm jobs: ``sbatch`` submits, ``squeue``
tells their states, ``scancel`` deletes them.

``start --engines=Slurm -n 8`` submits one job of 8 tasks, whose script runs
``srun <engine command>``: Slurm starts the 8 engines, on as many nodes as
it gives the job.  ``--controller=Slurm`` submits a one-task job running the
controller; its profile folder must then be one both hosts see.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from traitlets import List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.launcher import BatchSystemLauncher, ControllerLauncher, EngineSetLauncher, JobState, JobStatus

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

    def output_path(self, job_id: str) -> str:
        return self.output_file.replace("%j", job_id)


class SlurmControllerLauncher(SlurmLauncher, ControllerLauncher):
    """The controller as a one-task Slurm job."""

    controller_directives = ("#SBATCH --ntasks=1",)


class SlurmEngineSetLauncher(SlurmLauncher, EngineSetLauncher):
    """``n`` engines as the ``n`` tasks of one Slurm job, started by ``srun``."""

    engines_directives = ("#SBATCH --ntasks={n}",)
    status_per_engine = False  # srun starts them all: squeue tells the job's state
    # exec: srun is the batch shell, so the SIGUSR1 sent ahead of the walltime (--signal=B:) reaches
    # it, and it forwards it to the engines, which drain.
    default_template = "#!/bin/sh\n{header}\n{prologue}exec srun {command}\n"


@hookimpl
def cluster_launcher_register_launchers():
    return [SlurmControllerLauncher, SlurmEngineSetLauncher]
