"""The controller and engines as Windows HPC Server (HPC Pack) jobs: ``job
submit /jobfile:`` submits a job description (XML, in the form IPython 0.13
wrote), ``job view`` tells its state, ``job cancel`` deletes it.

``start --engines=WindowsHPC -n 8`` submits one job of 8 tasks, each task
one engine.  The job description is built from the settings, not from a
template: ``batch_template`` does not apply here (IPython had none either).

The engines read the controller's connection file in the profile folder,
which must be on a share the compute nodes see, as IPython's launchers
needed.  ``connection_in_job`` puts it in each task's environment instead,
for nodes without that share; HPC Pack shows a task's environment variables
to the cluster's other users, key included, so it is off unless you choose
it.
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from traitlets import List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.error import ConfigError
from cluster_launcher.launcher import BatchSystemLauncher, ControllerLauncher, EngineSetLauncher, JobState, JobStatus
from cluster_launcher.protocol.connection import ENGINE_CONNECTION_ENV

NAMESPACE = "http://schemas.microsoft.com/HPCS2008/scheduler/"
# `job view`'s State, by what it means here.
STATES = {
    **dict.fromkeys(["Configuring", "Submitted", "Validating", "ExternalValidation", "Queued"], JobState.PENDING),
    **dict.fromkeys(["Running", "Finishing", "Canceling"], JobState.RUNNING),
    "Finished": JobState.DONE,
    "Failed": JobState.FAILED,
    "Canceled": JobState.CANCELLED,
}
_STATE_LINE = re.compile(r"^State\W*(\w+)", re.MULTILINE)


class WindowsHPCLauncher(BatchSystemLauncher):
    """What the Windows HPC launchers share (IPython's ``WindowsHPCLauncher`` settings)."""

    system = "WindowsHPC"
    script_suffix = ".xml"
    status_per_job = True  # `job view` takes one id
    status_per_engine = False  # and tells the job's state, not its tasks
    has_arrays = False  # a job of n tasks, whatever n
    job_is_private = False  # other users see a task's environment (job view, task view)

    scheduler = Unicode("", help="The head node to submit to (/scheduler:NAME); empty: the CCP_SCHEDULER "
                        "environment variable's, as for the job command itself.").tag(config=True, state=True)
    job_cmd = Unicode("job", help="The HPC Pack job command (IPython's WindowsHPCLauncher.job_cmd).").tag(
        config=True)
    submit_command = List(Unicode(), help="Unset: [job_cmd, 'submit'] (/jobfile: and /scheduler: are "
                          "added).").tag(config=True, state=True)
    delete_command = List(Unicode(), help="Unset: [job_cmd, 'cancel'].").tag(config=True)
    status_command = List(Unicode(), help="Unset: [job_cmd, 'view'].").tag(config=True)

    def _job(self, configured: Sequence[str], verb: str) -> list[str]:
        return list(configured) or [self.job_cmd, verb]

    def _scheduler(self) -> list[str]:
        return [f"/scheduler:{self.scheduler}"] if self.scheduler else []

    def submit_argv(self, script_path: str, script: str) -> list[str]:
        return [*self._job(self.submit_command, "submit"), f"/jobfile:{script_path}", *self._scheduler()]

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return [*self._job(self.status_command, "view"), *job_ids, *self._scheduler()]

    def delete_argvs(self, job_ids: Sequence[str]) -> list[list[str]]:
        return [[*self._job(self.delete_command, "cancel"), job_id, *self._scheduler()] for job_id in job_ids]

    def parse_states(self, output: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        match = _STATE_LINE.search(output)
        if not match or len(job_ids) != 1:
            return {}
        native = match.group(1)
        return {job_ids[0]: JobStatus(job_ids[0], [STATES.get(native, JobState.RUNNING)], native)}

    # --- the job description ---------------------------------------------------------------------

    def job_script_text(self, n: int, dry_run: bool = False) -> str:
        if self.batch_template or self.batch_template_file:
            raise ConfigError(f"{type(self).__name__}.batch_template: Windows HPC jobs are described in XML built "
                              "from the launcher's settings (job_name, queue as the job template, "
                              "job_extra_directives as more job attributes), not from a template")
        connection = self.engine_connection(dry_run)
        tasks = n if self.role == "engines" else 1
        job = ET.Element("Job", {
            "Version": "2.000", "Name": self.default_job_name(), "UnitType": "Core",
            "MinCores": "1", "MaxCores": str(tasks), "RunUntilCanceled": "false", "IsExclusive": "false",
            "JobType": "Batch", "Priority": "Normal", "Project": "cluster-launcher", "xmlns": NAMESPACE,
            **({"JobTemplate": self.queue} if self.queue else {}),
            **({"RuntimeSeconds": str(self.walltime_limit())} if self.walltime else {}),
            **dict(extra.split("=", 1) for extra in self.job_extra_directives if "=" in extra),
        })
        ET.SubElement(job, "Dependencies")
        task_list = ET.SubElement(job, "Tasks")
        kind = "engine" if self.role == "engines" else "controller"
        for index in range(tasks):
            task = ET.SubElement(task_list, "Task", {
                "Version": "2.000", "Name": f"{kind}-{index}", "MinCores": "1", "MaxCores": "1",
                "CommandLine": subprocess.list2cmdline([*self.args, *self.captured_output_args()]),
                "WorkDirectory": self.profile_dir, "IsRerunnable": "false",
                "StdOutFilePath": self.task_output(index), "StdErrFilePath": self.task_output(index),
                "IsParametric": "false", "UnitType": "Core"})
            variables = ET.SubElement(task, "EnvironmentVariables")
            environment = dict(self.environment)
            if connection is not None:
                environment[ENGINE_CONNECTION_ENV] = connection
            for name, value in environment.items():
                variable = ET.SubElement(variables, "Variable")
                ET.SubElement(variable, "Name").text = name
                ET.SubElement(variable, "Value").text = value
        ET.indent(job)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(job, encoding="unicode") + "\n"

    def task_output(self, index: int) -> str:
        """Task ``index``'s output file: relative paths are the WorkDirectory's (the profile folder)."""
        return os.path.join(self.output_dir or "log", f"{self.default_job_name()}-{index}.out")

    def output_location(self) -> str:
        return os.path.join(self.profile_dir or ".", self.task_output(0))



class WindowsHPCControllerLauncher(WindowsHPCLauncher, ControllerLauncher):
    """The controller as a one-task Windows HPC job."""


class WindowsHPCEngineSetLauncher(WindowsHPCLauncher, EngineSetLauncher):
    """``n`` engines as the ``n`` tasks of one Windows HPC job."""


@hookimpl
def cluster_launcher_register_launchers():
    return [WindowsHPCControllerLauncher, WindowsHPCEngineSetLauncher]
