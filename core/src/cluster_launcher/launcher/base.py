"""Base classes of launcher plugins.

A launcher starts one role of a cluster: the controller
(:class:`ControllerLauncher`) or a set of engines (:class:`EngineSetLauncher`).
A launcher must be able to describe itself as a dict (:meth:`Launcher.to_dict`)
so that a later process (``cluster-launcher stop``, ``engines``, ``list``) can
rebuild it (:meth:`Launcher.from_dict`) and stop or poll what it started.

That state is declared once, on the traits themselves: a trait tagged
``state`` is recorded by ``to_dict`` and restored by ``from_dict``, under its
own name (``.tag(state=True)``) or under the key the tag names
(``log_path = Unicode().tag(state="log")`` keeps the record's ``"log"`` key).
A launcher held by a state trait (``Instance(SomeLauncher)`` or
``List(Instance(SomeLauncher))``: the engines of a set) is recorded as its own
``to_dict`` and rebuilt as the class the trait declares, a child of the
launcher holding it (:meth:`Launcher.child_launcher`).  No launcher writes
``to_dict``/``load_state`` by hand, so none can forget a field.

:class:`LocalProcessLauncher` runs one command as a local child process; the
SSH and MPI launchers subclass it (their command is ``ssh host …`` or
``mpiexec …``).  Batch-system launchers submit a job script instead and
record the job id where a local launcher records a PID.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard, TypeVar

from traitlets import Dict, Float, Instance, Integer, List, TraitType, Unicode
from traitlets.config import Config, LoggingConfigurable

L = TypeVar("L", bound="Launcher")


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

    profile_dir = Unicode("", help="The profile directory of the cluster.").tag(config=False, state=True)
    cluster_id = Unicode("", help="The id of the cluster within its profile.").tag(config=False, state=True)
    environment = Dict(help="Extra environment variables for what the launcher starts.").tag(config=True)
    stop_timeout = Float(5.0, min=0.0, help="Seconds to wait after SIGTERM before SIGKILL.").tag(config=True)
    # What the last stop had to kill, one line each ('engine 3 (pid 123) ignored SIGTERM for 5s: killed'),
    # for `cluster-launcher stop` to report.  Not a trait: nothing a later process needs from the record.
    killed: tuple[str, ...] = ()
    # What the last start could not start while the rest did, one line each ('host3: 2 engines not
    # started: cannot reach SSH server ...'), for `cluster-launcher start` to report.
    start_failures: tuple[str, ...] = ()

    def start(self, n: int = 1) -> None:
        """Start the role (``n`` engines for an engine set); return once
        what it started is running or submitted, not when it is ready."""
        raise NotImplementedError

    def check(self, n: int = 1) -> None:
        """Refuse, with a one-line ClusterLauncherError naming the setting,
        settings that cannot work (``n``: the engines to be started): ``start``
        asks each launcher it will use before it starts anything."""

    def stop(self) -> None:
        """Stop everything this launcher started, by the PID or job id it
        recorded: politely first, then forcibly after ``stop_timeout``."""
        raise NotImplementedError

    def signal(self, sig: int) -> None:
        """Send ``sig`` to what this launcher started (if it still runs)."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what this launcher holds open to poll or stop what it
        started (an SSH connection), leaving that running; a later poll opens
        it again.  ``stop`` does this itself."""

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

    def dry_run(self, n: int = 1) -> list[str]:
        """What :meth:`start` would do, doing nothing: the lines ``start
        --dry-run`` prints (the command it would run, a job script)."""
        args = getattr(self, "args", None)
        return [f"$ {shlex.join(args)}"] if args else [f"({type(self).__name__} cannot tell what it would run)"]

    def status_line(self) -> str:
        """What ``list`` shows of what this launcher started: ''  for local
        processes (their PIDs have a column), a batch job's id and state."""
        return ""

    def exit_label(self, role: str) -> str:
        """What exited, in the error ``start`` reports when a process of this
        launcher exits early ('engine'; 'mpiexec of the engines' when the
        process is a wrapper around them)."""
        return role

    def captured_output_args(self) -> list[str]:
        """The flags telling the started controller or engine that the launcher
        captures its stderr into a log file, so it writes no log file of its own."""
        section = {"controller": "Controller", "engines": "Engine"}.get(self.role)
        return [f"--{section}.log_to_file=False"] if section else []

    def name_from_log(self, log_path: str, default: str) -> str:
        """'engine 3', 'controller': what a process is, from the name of the log
        file it writes to (which a record keeps, while a ``log_name`` set by the
        launcher that started it is not), else ``default``."""
        suffix = f"-{self.cluster_id or 'default'}.log"
        base = os.path.basename(log_path)
        name = base[:-len(suffix)] if base.endswith(suffix) and len(base) > len(suffix) else default
        return name.replace("-", " ")

    @property
    def cluster_args(self) -> list[str]:
        args = [f"--profile-dir={self.profile_dir}"] if self.profile_dir else []
        return args + ([f"--cluster-id={self.cluster_id}"] if self.cluster_id else [])

    def log_file(self, name: str) -> str:
        """``<profile>/log/<name>-<cluster id>.log`` (the folder made if missing)."""
        log_dir = os.path.join(self.profile_dir or ".", "log")
        os.makedirs(log_dir, exist_ok=True)
        return os.path.join(log_dir, f"{name}-{self.cluster_id or 'default'}.log")

    @classmethod
    def state_traits(cls) -> dict[str, TraitType[Any, Any]]:
        """The traits tagged ``state`` (by trait name): what :meth:`to_dict`
        records.  Those holding launchers come last: restored after the rest,
        the children rebuilt from them get this launcher's restored profile and
        cluster id (and sit at the end of the record, easier to read)."""
        tagged = cls.class_traits(state=bool)  # the tag is True or the record's key
        return dict(sorted(tagged.items(), key=lambda item: _holds_launchers(item[1])))

    def to_dict(self) -> dict[str, Any]:
        """What a later process needs to stop or poll what this one started:
        every state trait (JSON-serializable; ``class`` is the dotted path of
        the launcher class)."""
        record: dict[str, Any] = {"class": f"{type(self).__module__}.{type(self).__name__}"}
        for name, trait in self.state_traits().items():
            record[_record_key(name, trait)] = _recorded(getattr(self, name))
        return record

    @classmethod
    def from_dict(cls: type[L], data: dict[str, Any], **kwargs: Any) -> L:
        """A launcher of this class that polls and stops what ``data``
        (a :meth:`to_dict`, maybe from another process) describes; ``kwargs``
        (``config=``, ``parent=``) go to the constructor."""
        launcher = cls(**kwargs)
        launcher.load_state(data)
        return launcher

    def load_state(self, data: dict[str, Any]) -> None:
        """Restore every state trait :meth:`to_dict` recorded in ``data``; one
        the record lacks (written by an older version) keeps its default."""
        for name, trait in self.state_traits().items():
            key = _record_key(name, trait)
            if key in data:
                setattr(self, name, self._restored(trait, data[key]))

    def _restored(self, trait: TraitType[Any, Any] | None, value: Any) -> Any:
        """``value`` as recorded, with each launcher in it rebuilt from its dict."""
        klass = trait.klass if isinstance(trait, Instance) else None
        if _is_launcher_class(klass) and isinstance(value, dict):
            return klass.from_dict(value, **self._child_settings(klass))
        if isinstance(trait, List) and isinstance(value, list):
            return [self._restored(trait._trait, item) for item in value]  # _trait: the element trait
        return value

    def _child_settings(self, cls: type[Launcher]) -> dict[str, Any]:
        """The constructor arguments of a ``cls`` launcher that belongs to this
        one: this launcher as parent (so it reads the same config), its
        profile and cluster id, and its values of the configurable traits both
        classes declare (commands, environment, stop_timeout)."""
        own = self.traits(config=True)
        shared = {name: getattr(self, name) for name in cls.class_traits(config=True) if name in own}
        return {"parent": self, "profile_dir": self.profile_dir, "cluster_id": self.cluster_id, **shared}

    def child_launcher(self, cls: type[L], **traits: Any) -> L:
        """A new ``cls`` launcher that belongs to this one (one engine of a set):
        built as :meth:`load_state` rebuilds a recorded child, plus ``traits``."""
        return cls(**{**self._child_settings(cls), **traits})


def _record_key(name: str, trait: TraitType[Any, Any]) -> str:
    """The record's key for state trait ``name``: the name, or the key its tag gives."""
    tag = trait.metadata.get("state")
    return tag if isinstance(tag, str) else name


def _is_launcher_class(klass: object) -> TypeGuard[type[Launcher]]:
    return isinstance(klass, type) and issubclass(klass, Launcher)


def _holds_launchers(trait: TraitType[Any, Any] | None) -> bool:
    """Whether ``trait`` is an ``Instance`` of a launcher class, or a ``List`` of them."""
    if isinstance(trait, List):
        return _holds_launchers(trait._trait)
    return isinstance(trait, Instance) and _is_launcher_class(trait.klass)


def _recorded(value: Any) -> Any:
    """``value`` for the JSON record: launchers as their :meth:`Launcher.to_dict`,
    containers copied so the record never aliases a trait."""
    if isinstance(value, Launcher):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_recorded(item) for item in value]
    if isinstance(value, dict):
        return {key: _recorded(item) for key, item in value.items()}
    return value


class ControllerLauncher(Launcher):
    role: ClassVar[str] = "controller"

    controller_cmd = List(Unicode(), default_value=python_cmd("controller"),
                          help="Command that runs the controller.").tag(config=True)
    controller_args = List(Unicode(), help="Extra command-line arguments for the controller.").tag(config=True)

    @property
    def args(self) -> list[str]:
        return [*self.controller_cmd, *self.cluster_args, *config_args(self.config, "Controller"),
                *config_args(self.config, "TaskScheduler"), *self.controller_args]

    def fetch_connection_files(self) -> None:
        """Bring the connection files of a controller that runs on another host
        into this host's profile (called again and again while ``start`` waits
        for them: fetch what is there, return at once).  A controller of this
        host writes them there itself: nothing to do."""


@dataclass(frozen=True)
class DeadEngine:
    """One engine of a set whose process ended with a failure (a non-zero
    exit code, or a signal as a negative code): what a watcher may restart
    (:meth:`EngineSetLauncher.restart_engine`)."""

    slot: int  # which engine of the set: the same slot after a restart
    code: int
    log_path: str  # the log its output went to (a restarted engine appends to it)
    label: str  # what it is, for messages: 'engine slot 3', 'mpiexec of the engines'


class EngineSetLauncher(Launcher):
    role: ClassVar[str] = "engines"

    engine_cmd = List(Unicode(), default_value=python_cmd("engine"),
                      help="Command that runs one engine.").tag(config=True)
    engine_args = List(Unicode(), help="Extra command-line arguments for each engine.").tag(config=True)
    n = Integer(0, help="How many engines this set started.").tag(config=False, state=True)
    # Kept in the record so that `list`, `stop` and a later watcher see them (keys: slots, as strings for JSON).
    restarts = Dict(value_trait=Integer(), help="Slot -> how many times its engine was restarted.").tag(
        config=False, state=True)
    given_up = Dict(value_trait=Unicode(), help="Slot -> why its engine is not restarted again (the one line "
                    "logged when it was given up).").tag(config=False, state=True)

    @property
    def args(self) -> list[str]:
        return [*self.engine_cmd, *self.cluster_args, *config_args(self.config, "Engine"), *self.engine_args]

    # --- restarting one engine (self-healing engine sets) -------------------------------------------------
    # A launcher that can start one engine again on its own says so by overriding both methods; the rest
    # report no dead engines, so nothing restarts them.

    @property
    def can_restart(self) -> bool:
        """Whether this launcher can start one of its engines again."""
        return type(self).restart_engine is not EngineSetLauncher.restart_engine

    def dead_engines(self) -> list[DeadEngine]:
        """The engines of this set that died (a non-zero exit code, or killed
        by a signal) and have not been restarted nor given up since; exit 0
        (a shutdown, a drain at walltime, adaptive scaling) is not a death."""
        return []

    def restart_engine(self, slot: int) -> None:
        """Start the engine of ``slot`` again (a new engine to the controller,
        the same slot and log file), and count it in :attr:`restarts`."""
        raise NotImplementedError(f"{type(self).__name__} cannot restart one engine")

    def count_restart(self, slot: int) -> None:
        self.restarts = {**self.restarts, str(slot): self.restarts.get(str(slot), 0) + 1}

    def running_engines(self) -> int:
        """How many of this set's engines still run (all or none, unless a
        subclass can tell them apart)."""
        return self.n if self.poll() is None else 0

    def active_engines(self) -> int:
        """How many of this set's engines were asked for and have not ended:
        running, starting, or waiting in a batch queue."""
        return self.running_engines()

    def queued_jobs(self) -> int:
        """How many of this set's jobs wait in a batch queue (none elsewhere)."""
        return 0

    def cancel_queued(self, engines: int) -> int:
        """Cancel requests for at most ``engines`` engines not started yet;
        how many were cancelled (none where nothing waits in a queue)."""
        return 0
