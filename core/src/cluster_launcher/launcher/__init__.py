"""Launchers: how each role of a cluster is started and stopped.

:mod:`.base` holds the classes every launcher plugin subclasses
(:class:`Launcher`, :class:`ControllerLauncher`, :class:`EngineSetLauncher`);
:mod:`.process` the local child process that the local and MPI
launchers build on; :mod:`.batch` the base of batch-system launchers
(:class:`BatchSystemLauncher`: a job script submitted, its job id recorded);
:mod:`.allocation` what a batch allocation ``start`` runs inside holds
(:class:`Allocation`, the answer of the ``cluster_launcher_allocation`` hook).
"""

from .allocation import Allocation
from .base import ControllerLauncher, DeadEngine, EngineSetLauncher, Launcher, config_args, python_cmd
from .batch import BatchSystemLauncher, EvalFormatter, JobState, JobStatus, walltime_seconds
from .process import (
    LocalProcessLauncher,
    WrappedEngineSetLauncher,
    WrapperLauncher,
    pid_alive,
    process_start_token,
    tail,
)

__all__ = ["Allocation", "BatchSystemLauncher", "ControllerLauncher", "DeadEngine", "EngineSetLauncher",
           "EvalFormatter", "JobState", "JobStatus", "Launcher", "LocalProcessLauncher", "WrappedEngineSetLauncher",
           "WrapperLauncher", "config_args", "pid_alive", "process_start_token",
           "python_cmd", "tail", "walltime_seconds"]
