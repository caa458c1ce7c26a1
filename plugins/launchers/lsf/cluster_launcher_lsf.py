"""The controller and engines as LSF jobs: ``bsub`` submits (the script on
its stdin, the only way LSF honours its ``#BSUB`` lines), ``bjobs`` tells
their states, ``bkill`` deletes them.

``start --engines=LSF -n 8`` submits one job array of 8 elements,
``-J "name[1-8]"``, each element running one engine (IPython's way).
"""

from __future__ import annotations

from collections.abc import Sequence

from traitlets import List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.launcher import (
    BatchSystemLauncher,
    ControllerLauncher,
    EngineSetLauncher,
    JobState,
    JobStatus,
    walltime_seconds,
)

# bjobs' STAT, by what it means here (EXIT is refined by the job's exit reason).
STATES = {
    **dict.fromkeys(["PEND", "PSUSP", "WAIT", "PROV"], JobState.PENDING),
    **dict.fromkeys(["RUN", "USUSP", "SSUSP", "UNKWN"], JobState.RUNNING),
    "DONE": JobState.DONE,
    **dict.fromkeys(["EXIT", "ZOMBI"], JobState.FAILED),
}
# The exit reasons of LSF's own kills: run limit reached, killed by the owner or an administrator.
EXIT_REASONS = {"TERM_RUNLIMIT": JobState.TIMEOUT, "TERM_OWNER": JobState.CANCELLED, "TERM_ADMIN": JobState.CANCELLED}
BJOBS_FIELDS = "jobid stat exit_code exit_reason job_name"
DELIMITER = "^"


class LSFLauncher(BatchSystemLauncher):
    """What LSF's launchers share (IPython's ``LSFLauncher`` settings)."""

    system = "LSF"
    directive = "#BSUB"
    queue_directive = "#BSUB -q {queue}"
    walltime_directive = "#BSUB -W {walltime}"
    # The warning action: SIGUSR1, walltime_signal seconds (in minutes) before the run limit.
    walltime_signal_directive = "#BSUB -wa USR1 -wt {minutes}"
    walltime_bare_unit = 60  # bsub -W 90: 90 minutes
    name_directives = ("#BSUB -J {job_name}", "#BSUB -o {output}")
    output_pattern = "{job_name}-%J.out"
    submit_on_stdin = True
    # bjobs about a job it has forgotten (after CLEAN_PERIOD): "Job <N> is not found", code 255.
    unknown_job_markers = ("is not found",)
    throttle_suffix = "%{array_throttle}"
    # bsub when mbatchd is busy or down ("LSF is down. Please wait ...", "Batch system not responding").
    transient_submit_markers = ("LSF is down", "not responding", "Please wait")

    submit_command = List(Unicode(), ["bsub"], help="The LSF submit command (the job script goes to its "
                          "stdin).").tag(config=True)
    delete_command = List(Unicode(), ["bkill"], help="The LSF delete command.").tag(config=True)
    status_command = List(Unicode(), ["bjobs", "-noheader", "-o", f"{BJOBS_FIELDS} delimiter='{DELIMITER}'"],
                          help="The LSF status command (the job ids are added).").tag(config=True)
    job_id_regexp = Unicode(r"Job <(\d+)> is submitted", help="The job id in bsub's output.").tag(config=True)

    def walltime_limit(self) -> int | None:
        # bsub -W is [hour:]minute: "1:30" is 90 minutes, where Slurm and PBS read 90 seconds.
        fields = self.walltime.strip().split(":")
        if len(fields) == 2 and all(field.isdigit() for field in fields):
            return int(fields[0]) * 3600 + int(fields[1]) * 60
        return walltime_seconds(self.walltime, type(self).__name__, self.walltime_bare_unit)

    def parse_states(self, output: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        statuses: dict[str, JobStatus] = {}
        for line in output.splitlines():
            fields = line.strip().split(DELIMITER)
            if len(fields) != 5 or fields[0] not in job_ids:
                continue  # "Job <N> is not found" and the like go to stderr; anything else is not ours
            job_id, native, exit_code, reason, _ = fields
            state = STATES.get(native, JobState.RUNNING)
            if native == "EXIT":
                state = EXIT_REASONS.get(reason.split(":")[0], state)
            status = statuses.setdefault(job_id, JobStatus(job_id))
            status.states.append(state)
            status.native, status.reason = native, "" if reason == "-" else reason
            if exit_code.isdigit():
                status.exit_code = max(status.exit_code or 0, int(exit_code))
        return statuses

    def output_path(self, job_id: str) -> str:
        return self.output_file.replace("%J", job_id).replace("%I", "1")


class LSFControllerLauncher(LSFLauncher, ControllerLauncher):
    """The controller as an LSF job."""


class LSFEngineSetLauncher(LSFLauncher, EngineSetLauncher):
    """``n`` engines as the elements of one LSF job array."""

    name_directives = ('#BSUB -J "{job_name}[1-{n}]{throttle}"', "#BSUB -o {output}")
    output_pattern = "{job_name}-%J.%I.out"


@hookimpl
def cluster_launcher_register_launchers():
    return [LSFControllerLauncher, LSFEngineSetLauncher]
