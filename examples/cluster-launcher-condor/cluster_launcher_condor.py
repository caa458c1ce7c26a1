"""Start cluster-launcher engines as HTCondor jobs: a batch-system plugin
written the way the builtin ones are, as a third party would, installed
with ``pip install cluster-launcher-condor``.

    c.Cluster.engine_launcher_class = 'Condor'
    c.CondorLauncher.submit_extra = {'request_memory': '2GB'}

``start(n)`` hands ``condor_submit`` a submit description queueing ``n``
engine jobs (on its stdin) and records the cluster id it prints;
``condor_q`` tells their states, ``condor_history`` how those that left the
queue ended, ``condor_rm`` removes them.  The engines' connection file goes
to each job with HTCondor's file transfer (``transfer_input_files``), so no
shared filesystem is needed: not in the job's ``environment``, which is
part of its ClassAd, which any user of the pool may read (``condor_q -l``).
Everything else (the template and its keys, polling, ``stop``, the dry run,
the record a later ``stop`` reads) is
:class:`cluster_launcher.launcher.BatchSystemLauncher`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from traitlets import Dict, List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.launcher import BatchSystemLauncher, EngineSetLauncher, JobState, JobStatus
from cluster_launcher.protocol.connection import connection_file

# condor_q's JobStatus codes.  A held job (5) waits for someone to release it, usually after an error
# (an output file it cannot open, a missing executable): reported as failed, with its HoldReason.
STATES = {1: JobState.PENDING, 2: JobState.RUNNING, 3: JobState.CANCELLED, 4: JobState.DONE,
          5: JobState.FAILED, 6: JobState.RUNNING, 7: JobState.PENDING}
NATIVE = {1: "Idle", 2: "Running", 3: "Removed", 4: "Completed", 5: "Held", 6: "Transferring Output",
          7: "Suspended"}
# `-af:t` prints one line a job (process), its attributes separated by tabs ('undefined' for one it lacks).
FIELDS = ["ClusterId", "ProcId", "JobStatus", "ExitCode", "HoldReason", "RemoveReason"]
SEPARATOR = "\t"


def quote_arguments(words: Sequence[str]) -> str:
    """Words in the submit language's quoted form: the whole list in double
    quotes, each word in single quotes, quote characters doubled."""
    quoted = ("'" + w.replace("'", "''").replace('"', '""') + "'" for w in words)
    return '"' + " ".join(quoted) + '"'


class CondorLauncher(BatchSystemLauncher):
    """What an HTCondor launcher is, for BatchSystemLauncher: its commands and
    the job id they print, its submit description, its states."""

    system = "Condor"
    script_suffix = ".submit"
    submit_on_stdin = True  # so the submit file need not be readable by the schedd's side
    output_pattern = "{job_name}-$(Cluster).$(Process).out"
    default_template = (
        "universe = vanilla\n"
        "executable = {executable}\n"
        "arguments = {arguments}\n"
        "transfer_executable = false\n"
        "should_transfer_files = yes\n"
        "transfer_input_files = {connection_file}\n"
        "initialdir = {initialdir}\n"
        "output = {output}\n"
        "error = {output}\n"
        "stream_output = true\n"
        "stream_error = true\n"
        "log = {condor_log}\n"
        "{environment}"
        "{extra}"
        "queue {n}\n")

    submit_command = List(Unicode(), ["condor_submit", "-terse"], help="Submits a submit description (on "
                          "its stdin).").tag(config=True)
    delete_command = List(Unicode(), ["condor_rm"], help="Removes job clusters.").tag(config=True)
    status_command = List(Unicode(), ["condor_q"], help="Tells the states of queued jobs (the cluster ids, "
                          "then the attributes asked for, are added).").tag(config=True)
    history_command = List(Unicode(), ["condor_history"], help="Tells how jobs that left the queue ended (a "
                           "cluster id, then the attributes asked for, are added).").tag(config=True, state=True)
    # condor_submit -terse prints '4.0 - 4.3': the cluster id is what comes before the first dot.
    job_id_regexp = Unicode(r"^(\d+)\.\d+", help="The cluster id in condor_submit's output.").tag(config=True)
    submit_extra = Dict(value_trait=Unicode(), help="More submit-description commands, e.g. "
                        "{'request_memory': '2GB', 'requirements': 'OpSys == \"LINUX\"'}.").tag(config=True)
    initialdir = Unicode("", help="The jobs' working folder, where their output goes; it must be writable by "
                         "the jobs (default: the profile's log folder).").tag(config=True)

    def job_folder(self) -> str:
        return self.initialdir or os.path.join(self.profile_dir or ".", "log")

    def output_location(self) -> str:
        return os.path.join(self.job_folder(), self.output_pattern.format(job_name=self.default_job_name()))

    def template_values(self, n: int) -> dict[str, Any]:
        # The connection file lands in the job's scratch folder, its working folder: --file names it there.
        sent = os.path.abspath(connection_file(self.profile_dir, "engine", self.cluster_id))
        executable, *arguments = [*self.args, f"--file={os.path.basename(sent)}", *self.captured_output_args()]
        extra = "".join(f"{key} = {value}\n" for key, value in self.submit_extra.items())
        environment = "" if not self.environment else \
            f"environment = {quote_arguments([f'{k}={v}' for k, v in self.environment.items()])}\n"
        condor_log = os.path.join(self.job_folder(), f"{self.default_job_name()}.condor.log")
        return {**super().template_values(n), "executable": executable, "arguments": quote_arguments(arguments),
                "connection_file": sent, "initialdir": os.path.abspath(self.job_folder()),
                "condor_log": condor_log, "environment": environment, "extra": extra}

    def engine_connection(self, dry_run: bool) -> str | None:
        return None  # transferred as a file (template_values), not written into the description

    def embed_exports(self, script: str, exports: dict[str, str]) -> str:
        return script  # `environment` is a line of the description (template_values)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        # The ids first: after -af, a word is one more attribute to print.
        return [*self.status_command, *job_ids, "-af:t", *FIELDS]

    def parse_states(self, output: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        statuses: dict[str, JobStatus] = {}
        for line in output.splitlines():
            fields = line.split(SEPARATOR)
            if len(fields) != len(FIELDS) or fields[0] not in job_ids or not fields[2].isdigit():
                continue
            cluster, _, code, exit_code, hold_reason, remove_reason = fields
            status = statuses.setdefault(cluster, JobStatus(cluster))
            status.states.append(STATES.get(int(code), JobState.PENDING))
            status.native = NATIVE.get(int(code), code)
            reason = hold_reason if int(code) == 5 else remove_reason if int(code) == 3 else ""
            status.reason = "" if reason == "undefined" else reason
            if exit_code.lstrip("-").isdigit() and int(exit_code) != 0:
                status.exit_code = max(status.exit_code or 0, int(exit_code))
                if status.states[-1] is JobState.DONE:
                    status.states[-1] = JobState.FAILED
        return statuses

    def ended_status(self, job_id: str) -> JobStatus | None:
        done = self.run_command([*self.history_command, job_id, "-af:t", *FIELDS], check=False)
        return self.parse_states(done.stdout, [job_id]).get(job_id)


class CondorEngineSetLauncher(CondorLauncher, EngineSetLauncher):
    """``n`` engines as the ``n`` jobs of one HTCondor cluster."""


@hookimpl
def cluster_launcher_register_launchers():
    return [CondorEngineSetLauncher]
