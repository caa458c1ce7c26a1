"""Every hook a cluster-launcher plugin can implement.

A plugin is a module (or object) registered under the ``cluster_launcher``
entry-point group.  It implements any of the hooks below with the
:data:`hookimpl` marker::

    from cluster_launcher import hookimpl
    from cluster_launcher.launcher import EngineSetLauncher

    class CondorEngineSetLauncher(EngineSetLauncher):
        ...

    @hookimpl
    def cluster_launcher_register_launchers():
        return [CondorEngineSetLauncher]

The four *register* hooks are called once per process, when the plugin
registry is first needed (:func:`cluster_launcher.plugins.get_registry`);
every plugin's answers are gathered and indexed by short name.
:func:`cluster_launcher_allocation` is a question ``start`` asks: the first
plugin to answer it says which batch allocation ``start`` runs inside.  The
*lifecycle* hooks are called by the running controller, engines and cluster
as events happen; their return values are ignored and an exception in one is
logged, never allowed to take the controller down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .cli import Commands
    from .db import BaseDB
    from .launcher import Allocation, Launcher
    from .scheduler import Scheduler
    from .transport import Transport

PROJECT = "cluster_launcher"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration: what a plugin provides --------------------------------


@hookspec
def cluster_launcher_register_launchers() -> list[type[Launcher]]:
    """Return the launcher classes this plugin provides.

    Each class subclasses :class:`cluster_launcher.launcher.ControllerLauncher`
    or :class:`cluster_launcher.launcher.EngineSetLauncher` (its ``role``
    says which).  It is registered under its class name, and the short name
    users type (``'SSH'``) is the class name less ``EngineSetLauncher`` or
    ``ControllerLauncher``.  Two plugins registering the same class name is
    an error naming both.
    """


@hookspec
def cluster_launcher_register_dbs() -> list[type[BaseDB]]:
    """Return the task-database classes this plugin provides.

    Each subclasses :class:`cluster_launcher.db.BaseDB` and is registered
    under its class name (``'SQLiteDB'``), selected by
    ``c.Controller.db_class``.
    """


@hookspec
def cluster_launcher_register_schedulers() -> list[type[Scheduler]]:
    """Return the task-scheduler classes this plugin provides.

    Each subclasses :class:`cluster_launcher.scheduler.Scheduler` and is
    registered under its ``name`` attribute (``'leastload'``), selected by
    ``c.Scheduler.scheme_name``.
    """


@hookspec
def cluster_launcher_register_transports() -> list[type[Transport]]:
    """Return the connection-file transport classes this plugin provides.

    Each subclasses :class:`cluster_launcher.transport.Transport` and is
    registered under its ``name`` attribute (``'file'``).  A transport moves
    the controller's connection files to the hosts where engines or clients
    run.
    """


@hookspec
def cluster_launcher_register_commands(commands: Commands) -> None:
    """Add subcommands to the ``cluster-launcher`` command line.

    Called once while the CLI parser is built, with a
    :class:`cluster_launcher.cli.Commands`.  A plugin calls
    ``commands.add(name, handler, help=...)`` for each of its subcommands and
    adds the subcommand's arguments to the ``argparse.ArgumentParser`` that
    returns.  ``handler(args)`` runs the subcommand with the parsed
    ``argparse.Namespace`` and returns the process exit code.  A usage error
    prints as every error of the command line does (one line, exit 2); a
    name that is already a subcommand is a PluginError.
    """


# --- questions: what a plugin may answer ----------------------------------


@hookspec(firstresult=True)
def cluster_launcher_allocation(environ: Mapping[str, str]) -> Allocation | None:
    """Return the batch allocation ``environ`` (the environment of
    ``cluster-launcher start``) runs inside, or None if it is not one this
    plugin knows.

    A plugin that knows a batch system reads the variables the system gives
    a job (Slurm's ``SLURM_JOB_ID``, PBS's ``PBS_NODEFILE``) and returns a
    :class:`cluster_launcher.launcher.Allocation`: the system, the job id,
    the short name of the engine launcher that starts engines across the
    allocation (``'Srun'``, ``'MPI'``), how many engines fit (``slots``) and
    its host names.  When ``Cluster.engine_launcher_class`` is configured
    nowhere, ``start`` then starts the engines with that launcher, ``slots``
    of them unless ``-n`` says otherwise; the controller stays where
    ``start`` runs.  The first plugin to answer wins (``tryfirst=True`` on a
    hookimpl puts it ahead); called once per ``start``.
    """


# --- lifecycle: what a plugin may react to --------------------------------


@hookspec
def cluster_launcher_controller_started(connection_info: dict[str, Any], profile_dir: str) -> None:
    """Called in the controller process once it listens and has written its
    connection files.  ``connection_info`` is the client connection file's
    content (the key included: treat it as a secret)."""


@hookspec
def cluster_launcher_engine_registered(engine_id: int, info: dict[str, Any]) -> None:
    """Called in the controller process when an engine has registered.
    ``info`` holds its ``uuid``, ``hostname``, ``pid`` and ``domain`` (who can
    read its shared-memory files, :func:`cluster_launcher.protocol.bulk.domain`)."""


@hookspec
def cluster_launcher_engine_unregistered(engine_id: int, reason: str) -> None:
    """Called in the controller process when an engine leaves: ``reason`` is
    ``'shutdown'`` for a clean exit, ``'heartbeat'`` when it stopped
    answering."""


@hookspec
def cluster_launcher_cluster_stopping(profile_dir: str, cluster_id: str) -> None:
    """Called in the process running ``cluster-launcher stop`` (or leaving a
    :class:`cluster_launcher.Cluster` context) before the engines and the
    controller are stopped."""
