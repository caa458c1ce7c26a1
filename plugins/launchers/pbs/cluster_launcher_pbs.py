"""The controller and engines as PBS/Torque jobs: ``qsub`` submits, ``qstat
-f`` tells their states, ``qdel`` deletes them.

``start --engines=PBS -n 8`` submits one job array of 8 sub-jobs, ``-t 1-8``
(Torque; ``c.PBSLauncher.array_option = '-J'`` for PBS Pro and OpenPBS), each
running one engine: IPython's way.

The job script's ``#PBS`` lines are also given to qsub on its command line
(where PBS lets them override the script's, so nothing changes for a real
PBS): qsub work-alikes that do not read ``#PBS`` lines, such as Slurm's
Torque wrappers, then honour them too.  Such a work-alike may also give each
sub-job an id of its own (Slurm's does), so the launcher knows its jobs by
name as well as by the id qsub printed: the default job name carries a
token of its own, and every job of that name is polled and deleted.
"""

from __future__ import annotations

import getpass
import re
import secrets
import shlex
from collections.abc import Sequence
from typing import Any

from traitlets import List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.launcher import BatchSystemLauncher, ControllerLauncher, EngineSetLauncher, JobState, JobStatus

# qstat's job_state, by what it means here (C and F are refined by exit_status when qstat tells it).
STATES = {
    **dict.fromkeys("QHWTSU", JobState.PENDING),  # U: Slurm's wrapper, for a state it cannot map
    **dict.fromkeys("REB", JobState.RUNNING),  # E: exiting; B: an array that has begun (PBS Pro)
    **dict.fromkeys("CFX", JobState.DONE),  # completed, finished (PBS Pro), sub-job finished
}
_JOB_ID = re.compile(r"^Job Id:\s*(\S+)", re.MULTILINE)
_ATTRIBUTE = re.compile(r"^\s+(\w[\w.]*) = (.*)$")


class PBSLauncher(BatchSystemLauncher):
    """What PBS's launchers share (IPython's ``PBSLauncher`` settings)."""

    system = "PBS"
    directive = "#PBS"
    queue_directive = "#PBS -q {queue}"
    walltime_directive = "#PBS -l walltime={walltime}"
    name_directives = ("#PBS -N {job_name}", "#PBS -o {output}", "#PBS -j oe", "#PBS -V")
    output_pattern = "{job_name}.out"
    # qstat about a job it no longer keeps: "qstat: Unknown Job Id 1234.server", code 153.
    unknown_job_markers = ("Unknown Job Id",)
    # qsub when the server is busy or down ("Connection refused", "cannot connect to server").
    transient_submit_markers = ("cannot connect to server", "Connection refused", "Resource temporarily unavailable",
                                "Socket timed out", "Unable to contact slurm controller")

    submit_command = List(Unicode(), ["qsub"], help="The PBS submit command.").tag(config=True)
    delete_command = List(Unicode(), ["qdel"], help="The PBS delete command.").tag(config=True)
    status_command = List(Unicode(), ["qstat", "-f"], help="The PBS status command (the job ids are "
                          "added).").tag(config=True)
    job_id_regexp = Unicode(r"(\d+(?:\[\])?)", help="The job id in qsub's output ('1234.server', an array's "
                            "'1234[].server').").tag(config=True)
    array_option = Unicode("-t", help="The qsub option of job arrays: '-t' (Torque), '-J' (PBS Pro, "
                           "OpenPBS).").tag(config=True)
    name_token = Unicode("", help="What makes this launcher's job name its own.").tag(config=False, state=True)
    member_ids = List(Unicode(), help="The ids of every job of that name seen (sub-jobs a qsub work-alike "
                      "gave ids of their own).").tag(config=False, state=True)

    def default_job_name(self) -> str:
        if self.job_name:
            return self.job_name
        if not self.name_token:
            self.name_token = secrets.token_hex(3)
        return f"{super().default_job_name()}-{self.name_token}"

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return list(self.status_command)  # every job: sub-jobs are found by name

    def delete_argvs(self, job_ids: Sequence[str]) -> list[list[str]]:
        return [[*self.delete_command, *dict.fromkeys([*job_ids, *self.member_ids])]]

    def template_values(self, n: int) -> dict[str, Any]:
        # Torque throttles an array in its range (-t 1-8%2); PBS Pro, whose -J takes none, by an attribute.
        throttle = f"%{self.array_throttle}" if self.array_throttle and self.array_option == "-t" else ""
        return {**super().template_values(n), "array_option": self.array_option, "throttle": throttle}

    def header_template(self) -> str:
        header = super().header_template()
        if self.role == "engines" and self.array_throttle and self.array_option == "-J":
            header += "\n#PBS -W max_run_subjobs={array_throttle}"
        return header

    def submit_argv(self, script_path: str, script: str) -> list[str]:
        # As qsub reads them: the directives before the first command, a comment after one ignored.
        options = []
        for line in script.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                break
            if line.startswith(self.directive + " "):
                options += shlex.split(line[len(self.directive):], comments=True)
        return [*self.submit_command, *options, script_path]

    def parse_states(self, output: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Each job of ``job_ids``, with the jobs of its name (sub-jobs) as its tasks."""
        statuses: dict[str, JobStatus] = {}
        # Jobs are adopted by name only when the name is this launcher's own (its token in it), and
        # only the user's own: a name you chose ('ipython') may be anyone's, and qstat lists every user's.
        name = "" if self.job_name else self.default_job_name()
        user = getpass.getuser()
        blocks = _JOB_ID.split(output)[1:]  # [id, attributes, id, attributes, ...]
        for full_id, body in zip(blocks[::2], blocks[1::2], strict=True):
            attributes = dict(match.groups() for line in body.splitlines() if (match := _ATTRIBUTE.match(line)))
            job_id = full_id.split(".")[0]
            if job_id in job_ids:
                owner = job_id
            elif name and attributes.get("Job_Name", "").strip() == name and job_ids and \
                    attributes.get("Job_Owner", user).strip().split("@")[0] == user:
                owner = job_ids[0]
                if job_id not in self.member_ids:
                    self.member_ids = [*self.member_ids, job_id]
            else:
                continue
            native = attributes.get("job_state", "").strip()
            state = STATES.get(native, JobState.RUNNING)
            exit_status = attributes.get("exit_status", attributes.get("Exit_status", "")).strip()
            status = statuses.setdefault(owner, JobStatus(owner))
            if state is JobState.DONE and exit_status.lstrip("-").isdigit() and int(exit_status) != 0:
                state = JobState.FAILED
                status.exit_code = max(status.exit_code or 0, int(exit_status))
            status.states.append(state)
            status.native, status.reason = native, attributes.get("comment", "").strip()
        return statuses


class PBSControllerLauncher(PBSLauncher, ControllerLauncher):
    """The controller as a PBS job."""


class PBSEngineSetLauncher(PBSLauncher, EngineSetLauncher):
    """``n`` engines as the sub-jobs of one PBS job array."""

    engines_directives = ("#PBS {array_option} 1-{n}{throttle}",)


@hookimpl
def cluster_launcher_register_launchers():
    return [PBSControllerLauncher, PBSEngineSetLauncher]
