"""Start cluster-launcher engines as HTCondor jobs.

    c.Cluster.engine_launcher_class = 'Condor'
    c.CondorEngineSetLauncher.submit_extra = {'request_memory': '2GB'}

``start(n)`` writes a submit description queueing ``n`` engine jobs, hands
it to ``condor_submit`` and keeps the cluster id it prints; ``stop()`` runs
``condor_rm`` on that id.  The profile directory must be on a filesystem the
execute hosts share, as with every batch launcher.
"""

from __future__ import annotations

import os
import re
import subprocess

from traitlets import Dict, Float, List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.error import ClusterLauncherError
from cluster_launcher.launcher import EngineSetLauncher

# condor_submit ends with e.g. "4 job(s) submitted to cluster 42."
SUBMITTED = re.compile(r"^\s*(\d+) job\(s\) submitted to cluster (\d+)\.", re.MULTILINE)


def parse_cluster_id(output: str) -> str:
    """The cluster id in ``condor_submit``'s output (raises if there is none)."""
    match = SUBMITTED.search(output)
    if not match:
        raise ClusterLauncherError(f"condor_submit printed no cluster id: {' '.join(output.split())}")
    return match.group(2)


def quote_arguments(words: list[str]) -> str:
    """Words in the submit language's quoted form: the whole list in double
    quotes, each word in single quotes, quote characters doubled."""
    quoted = ("'" + w.replace("'", "''").replace('"', '""') + "'" for w in words)
    return '"' + " ".join(quoted) + '"'


class CondorEngineSetLauncher(EngineSetLauncher):
    """``n`` engines as one HTCondor job cluster."""

    submit_command = List(Unicode(), ["condor_submit"], help="Command that submits a submit file.").tag(config=True)
    delete_command = List(Unicode(), ["condor_rm"], help="Command that removes a job cluster.").tag(config=True)
    submit_extra = Dict(value_trait=Unicode(), help="More submit-description commands, e.g. "
                        "{'request_memory': '2GB', 'requirements': 'OpSys == \"LINUX\"'}.").tag(config=True)
    command_timeout = Float(60.0, help="Seconds to wait for condor_submit or condor_rm.").tag(config=True)
    # Tagged state: recorded by to_dict() (with the inherited n, profile_dir and
    # cluster_id), so a later `cluster-launcher stop` knows what to condor_rm.
    job_id = Unicode("", help="The HTCondor cluster id of the submitted engines.").tag(config=False, state=True)

    @property
    def submit_file(self) -> str:
        return os.path.join(self.profile_dir or ".", f"condor-engines-{self.cluster_id or 'default'}.submit")

    def submit_description(self, n: int) -> str:
        """The submit description that queues ``n`` engines."""
        executable, *arguments = self.args
        log = self.log_file("engine").removesuffix(".log")
        commands = {
            "universe": "vanilla",
            "executable": executable,
            "arguments": quote_arguments(arguments),
            "transfer_executable": "false",  # the engine's Python is already on every host
            "initialdir": os.path.abspath(self.profile_dir or "."),
            "output": f"{log}-$(Process).out", "error": f"{log}-$(Process).err", "log": f"{log}.condor",
            **({"environment": quote_arguments([f"{k}={v}" for k, v in self.environment.items()])}
               if self.environment else {}),
            **self.submit_extra,
        }
        return "".join(f"{key} = {value}\n" for key, value in commands.items()) + f"queue {n}\n"

    def _run(self, command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.command_timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterLauncherError(f"{command[0]} failed: {exc}") from None
        if done.returncode:
            said = " ".join((done.stderr or done.stdout).split())
            raise ClusterLauncherError(f"{' '.join(command)} exited {done.returncode}: {said}")
        return done.stdout

    def start(self, n: int = 1) -> None:
        if self.job_id:
            raise ClusterLauncherError(f"CondorEngineSetLauncher already submitted cluster {self.job_id}")
        with open(self.submit_file, "w") as f:
            f.write(self.submit_description(n))
        self.job_id = parse_cluster_id(self._run([*self.submit_command, self.submit_file]))
        self.n = n
        self.log.info("submitted %d engines as HTCondor cluster %s", n, self.job_id)

    def stop(self) -> None:
        if self.job_id:
            self._run([*self.delete_command, self.job_id])

    def signal(self, sig: int) -> None:
        self.stop()  # HTCondor delivers no arbitrary signal to a job; removing it is what callers want

    def poll(self) -> int | None:
        # condor_q prints one line per job of the cluster still queued or running.
        left = self._run(["condor_q", self.job_id, "-af", "ProcId"]) if self.job_id else ""
        return None if left.strip() else 0


@hookimpl
def cluster_launcher_register_launchers():
    return [CondorEngineSetLauncher]
