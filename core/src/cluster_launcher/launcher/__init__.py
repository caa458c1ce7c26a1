"""Launchers: how each role of a cluster is started and stopped.

:mod:`.base` holds the classes every launcher plugin subclasses
(:class:`Launcher`, :class:`ControllerLauncher`, :class:`EngineSetLauncher`);
:mod:`.process` the local child process that the local, SSH and MPI
launchers build on.  Batch-system launchers will subclass a
``BatchSystemLauncher`` base, to be added here with the first of them
(docs/launchers.md).
"""

from .base import ControllerLauncher, EngineSetLauncher, Launcher, config_args, python_cmd
from .process import LocalProcessLauncher, pid_alive, process_start_token, tail

__all__ = ["ControllerLauncher", "EngineSetLauncher", "Launcher", "LocalProcessLauncher", "config_args",
           "pid_alive", "process_start_token", "python_cmd", "tail"]
