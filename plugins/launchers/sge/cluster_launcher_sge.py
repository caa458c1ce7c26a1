"""The controller and engines as Grid Engine jobs (Son of Grid Engine, Open
Grid Scheduler, Univa): ``qsub`` submits, ``qstat -xml`` tells the states of
those still queued or running, ``qacct`` how those that left ended, ``qdel``
deletes them.

``start --engines=SGE -n 8`` submits one array job of 8 tasks, ``-t 1-8``,
each running one engine: IPython's way.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from traitlets import List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.error import ClusterError
from cluster_launcher.launcher import BatchSystemLauncher, ControllerLauncher, EngineSetLauncher, JobState, JobStatus

# qacct's failed codes that mean a limit was enforced (h_rt and friends): the job ran out of time;
# and the one of a job killed by qdel ('100 : assumedly after job').
_LIMIT = re.compile(r"h_rt|s_rt|limit", re.IGNORECASE)
_DELETED = "100"


def _state(native: str) -> JobState:
    """qstat's state letters ('qw', 'r', 'Eqw', 'dr', 'hqw', 's') by what they mean here."""
    if "E" in native:
        return JobState.FAILED  # held in error: it will not run until someone clears it
    if any(letter in native for letter in "rtRd"):
        return JobState.RUNNING  # running, transferring, restarted, being deleted
    return JobState.PENDING  # queued, waiting, held, suspended


def _count_tasks(tasks: str) -> int:
    """How many array tasks '2-8:1' or '1,3,5-7:2' stands for (1 for a plain job)."""
    count = 0
    for part in tasks.split(","):
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        if first.isdigit():
            count += len(range(int(first), int(last or first) + 1, int(step or 1)))
    return count or 1


class SGELauncher(BatchSystemLauncher):
    """What Grid Engine's launchers share (IPython's ``SGELauncher`` settings)."""

    system = "SGE"
    directive = "#$"
    queue_directive = "#$ -q {queue}"
    walltime_directive = "#$ -l h_rt={walltime}"
    # The soft limit: Grid Engine sends SIGUSR1 when it passes, walltime_signal seconds before h_rt's kill.
    walltime_signal_directive = "#$ -l s_rt={soft_limit}"
    name_directives = ("#$ -N {job_name}", "#$ -o {output}", "#$ -j y", "#$ -S /bin/sh", "#$ -V")
    output_pattern = "{job_name}-$JOB_ID.out"
    # An execution host spools each job's script world-readable (execd's job_scripts/<id>, 0755): the
    # engines read the profile's connection file unless connection_in_job is set.
    job_is_private = False
    throttle_directives = ("#$ -tc {array_throttle}",)
    # qsub when the qmaster is busy or down ("unable to contact qmaster using port 6444 on host ...").
    transient_submit_markers = ("unable to contact qmaster", "commlib error", "failed receiving gdi request")

    submit_command = List(Unicode(), ["qsub", "-terse"], help="The Grid Engine submit command.").tag(config=True)
    delete_command = List(Unicode(), ["qdel"], help="The Grid Engine delete command.").tag(config=True)
    status_command = List(Unicode(), ["qstat", "-xml"], help="The Grid Engine status command (it lists "
                          "every job of yours).").tag(config=True)
    accounting_command = List(Unicode(), ["qacct", "-j"], help="The command that tells how a job that left "
                              "the queue ended (its id is added).").tag(config=True, state=True)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return list(self.status_command)  # qstat takes no job ids: every job of the user

    def parse_states(self, output: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        try:
            root = ET.fromstring(output)
        except ET.ParseError as exc:
            raise ValueError(f"qstat -xml printed no XML ({exc})") from None
        statuses: dict[str, JobStatus] = {}
        for job in root.iter("job_list"):
            job_id = job.findtext("JB_job_number", "").strip()
            if job_id not in job_ids:
                continue
            native = job.findtext("state", "").strip()
            status = statuses.setdefault(job_id, JobStatus(job_id))
            status.states += [_state(native)] * _count_tasks(job.findtext("tasks", "").strip())
            status.native = native
        return statuses

    def ended_status(self, job_id: str) -> JobStatus | None:
        """How the job ended, from qacct (one record per task); None if
        accounting has no record of it (yet)."""
        try:
            done = self.run_command([*self.accounting_command, job_id], check=False)
        except ClusterError:
            return None
        records = [dict(line.split(None, 1) for line in block.splitlines() if len(line.split(None, 1)) == 2)
                   for block in re.split(r"^=+$", done.stdout, flags=re.MULTILINE)]
        records = [record for record in records if record.get("jobnumber", "").strip() == job_id]
        if not records:
            return None
        status = JobStatus(job_id, native="finished")
        for record in records:
            # 'failed 37  : qmaster enforced h_rt, h_cpu, or h_vmem limit', 'exit_status 137 (Killed)'
            failed = record.get("failed", "0").strip()
            exit_status = (record.get("exit_status", "0").split() or ["0"])[0]
            code = int(exit_status) if exit_status.lstrip("-").isdigit() else None
            failed_code = failed.split()[0] if failed else "0"
            if failed_code != "0" and _LIMIT.search(failed):
                state = JobState.TIMEOUT
            elif failed_code == _DELETED:
                state = JobState.CANCELLED
            elif failed_code != "0" or code:
                state = JobState.FAILED
            else:
                state = JobState.DONE
            status.states.append(state)
            if code:
                status.exit_code = max(status.exit_code or 0, code)
            if failed_code != "0":
                status.reason = failed.split(":", 1)[-1].strip()
        return status

    def output_path(self, job_id: str) -> str:
        return self.output_file.replace("$JOB_ID", job_id).replace("$TASK_ID", "1")


class SGEControllerLauncher(SGELauncher, ControllerLauncher):
    """The controller as a Grid Engine job."""


class SGEEngineSetLauncher(SGELauncher, EngineSetLauncher):
    """``n`` engines as the tasks of one Grid Engine array job."""

    engines_directives = ("#$ -t 1-{n}",)
    output_pattern = "{job_name}-$JOB_ID.$TASK_ID.out"


@hookimpl
def cluster_launcher_register_launchers():
    return [SGEControllerLauncher, SGEEngineSetLauncher]
