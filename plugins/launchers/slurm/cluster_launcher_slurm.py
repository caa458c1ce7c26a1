"""The controller and engines as Slurm jobs: ``sbatch`` submits, ``squeue``
tells their states, ``scancel`` deletes them.

``start --engines=Slurm -n 8`` submits one job array of 8 tasks
(``--array=1-8``), each running one engine (``exec <engine command>``), on
whatever node Slurm gives it: one job id, one ``squeue`` line per engine, and
``scancel`` of that id stops them all.  More than ``max_array_size`` engines
go out as several arrays; ``array_throttle`` caps how many run at once.
``--controller=Slurm`` submits a one-task job running the
controller; its profile folder must then be one both hosts see.
"""

from __future__ import annotations

import getpass
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
        done = self.run_command(["squeue", "--noheader", f"--user={getpass.getuser()}", f"--name={job_name}",
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
    # The engine is the job's shell: a signal for the batch shell (--signal=B:...) reaches it.
    default_template = "#!/bin/sh\n{header}\n{prologue}exec {command}\n"


@hookimpl
def cluster_launcher_register_launchers():
    return [SlurmControllerLauncher, SlurmEngineSetLauncher]
