"""Base classes of launcher plugins.

A launcher starts one role of a cluster: the controller
(:class:`ControllerLauncher`) or a set of engines (:class:`EngineSetLauncher`).
A launcher must be able to describe itself as a dict (:meth:`Launcher.to_dict`)
so that a later process (``cluster-launcher stop``, ``engines``, ``list``) can
rebuild it (:meth:`Launcher.from_dict`) and stop or poll what it started.

:class:`LocalProcessLauncher` runs one command as a local child process; the
SSH and MPI launchers subclass it (their command is ``ssh host …`` or
``mpiexec …``).  Batch-system launchers submit a job script instead and
record the job id where a local launcher records a PID.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, ClassVar

from traitlets import Dict, Float, Integer, List, Unicode
from traitlets.config import Config, LoggingConfigurable


def python_cmd(subcommand: str) -> list[str]:
    """The command line that runs ``cluster-launcher <subcommand>`` with this Python."""
    return [sys.executable, "-m", "cluster_launcher", subcommand]


def config_args(config: Config, section: str) -> list[str]:
    """``--Section.trait=value`` for the scalar (and list-of-scalar) values of
    ``config[section]``: how options given to ``start`` reach the controller
    and engine processes, which read their own config files too."""
    out = []
    for trait, value in (config.get(section) or {}).items():
        if trait == "cluster_id":
            continue  # passed as --cluster-id
        values = value if isinstance(value, (list, tuple)) else [value]
        if all(isinstance(v, (str, int, float, bool)) for v in values):
            out += [f"--{section}.{trait}={v}" for v in values]
    return out


class Launcher(LoggingConfigurable):
    """Starts and stops one role of a cluster."""

    role: ClassVar[str] = ""  # "controller" or "engines"

    profile_dir = Unicode("", help="The profile directory of the cluster.").tag(config=False)
    cluster_id = Unicode("", help="The id of the cluster within its profile.").tag(config=False)
    environment = Dict(help="Extra environment variables for what the launcher starts.").tag(config=True)
    stop_timeout = Float(5.0, help="Seconds to wait after SIGTERM before SIGKILL.").tag(config=True)

    def start(self, n: int = 1) -> None:
        """Start the role (``n`` engines for an engine set); return once
        what it started is running or submitted, not when it is ready."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop everything this launcher started, by the PID or job id it
        recorded: politely first, then forcibly after ``stop_timeout``."""
        raise NotImplementedError

    def signal(self, sig: int) -> None:
        """Send ``sig`` to what this launcher started (if it still runs)."""
        raise NotImplementedError

    def poll(self) -> int | None:
        """``None`` while running, else an exit code."""
        raise NotImplementedError

    def wait(self, timeout: float) -> int | None:
        """:meth:`poll` until it is not None or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return code

    def exited(self) -> list[tuple[int, str, list[str]]]:
        """``(exit code, log file, last log lines)`` for each process this
        launcher started that has already exited: what ``start`` reports when
        the cluster fails to come up."""
        code = self.poll()
        return [] if code is None else [(code, "", [])]

    def describe(self) -> str:
        """What this launcher started and where its output goes, for one line
        of ``start``'s output (a PID and log file, a job id, …)."""
        return type(self).__name__

    @property
    def cluster_args(self) -> list[str]:
        args = [f"--profile-dir={self.profile_dir}"] if self.profile_dir else []
        return args + ([f"--cluster-id={self.cluster_id}"] if self.cluster_id else [])

    def log_file(self, name: str) -> str:
        """``<profile>/log/<name>-<cluster id>.log`` (the folder made if missing)."""
        log_dir = os.path.join(self.profile_dir or ".", "log")
        os.makedirs(log_dir, exist_ok=True)
        return os.path.join(log_dir, f"{name}-{self.cluster_id or 'default'}.log")

    def to_dict(self) -> dict[str, Any]:
        """What a later process needs to stop or poll what this one started
        (JSON-serializable; ``class`` is the dotted path of the launcher class)."""
        return {"class": f"{type(self).__module__}.{type(self).__name__}",
                "profile_dir": self.profile_dir, "cluster_id": self.cluster_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Launcher:
        """A launcher of this class that polls and stops what ``data``
        (a :meth:`to_dict`, maybe from another process) describes."""
        launcher = cls(profile_dir=data.get("profile_dir", ""), cluster_id=data.get("cluster_id", ""), **kwargs)
        launcher.load_state(data)
        return launcher

    def load_state(self, data: dict[str, Any]) -> None:
        """Restore what :meth:`to_dict` recorded beyond the profile and cluster id."""


class ControllerLauncher(Launcher):
    role: ClassVar[str] = "controller"

    controller_cmd = List(Unicode(), default_value=python_cmd("controller"),
                          help="Command that runs the controller.").tag(config=True)
    controller_args = List(Unicode(), help="Extra command-line arguments for the controller.").tag(config=True)

    @property
    def args(self) -> list[str]:
        return [*self.controller_cmd, *self.cluster_args, *config_args(self.config, "Controller"),
                *self.controller_args]


class EngineSetLauncher(Launcher):
    role: ClassVar[str] = "engines"

    engine_cmd = List(Unicode(), default_value=python_cmd("engine"),
                      help="Command that runs one engine.").tag(config=True)
    engine_args = List(Unicode(), help="Extra command-line arguments for each engine.").tag(config=True)
    n = Integer(0, help="How many engines this set started.").tag(config=False)

    @property
    def args(self) -> list[str]:
        return [*self.engine_cmd, *self.cluster_args, *config_args(self.config, "Engine"), *self.engine_args]

    def running_engines(self) -> int:
        """How many of this set's engines still run (all or none, unless a
        subclass can tell them apart)."""
        return self.n if self.poll() is None else 0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "n": self.n}

    def load_state(self, data: dict[str, Any]) -> None:
        self.n = data.get("n", 0)
