"""A whole cluster: one controller launcher and engine-set launchers, started
and stopped together (``cluster-launcher start/stop/engines/list``, and
:class:`Cluster` in Python).

Every started cluster is recorded in ``<profile>/pid/cluster-<id>.json``
(mode 0600): each launcher's :meth:`~cluster_launcher.launcher.Launcher.to_dict`,
so any later process can poll and stop what was started, by PID or job id.
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import Config, LoggingConfigurable

from .. import plugins
from ..error import ClusterError, ClusterLauncherError
from ..launcher import Allocation, ControllerLauncher, EngineSetLauncher, Launcher, pid_alive, process_start_token
from ..paths import ensure_profile_dir, profile_dir_for, profile_name
from ..protocol.connection import connection_file
from .adapt import Adaptive, AdaptivePolicy
from .restart import EngineRestarter, RestartPolicy, Supervisor
from .state import read_state, recorded_launcher, state_file, write_state

if TYPE_CHECKING:
    from ..client import Client

LauncherT = TypeVar("LauncherT", bound=Launcher)

DEFAULT_ENGINE_COUNT = 4  # when neither the argument nor the config gives Cluster.n
POLL_INTERVAL = 0.1
CLIENT_SHUTDOWN_TIMEOUT = 5.0  # how long `stop` lets the controller shut engines down before killing


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _new_cluster_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class Cluster(LoggingConfigurable):
    """A controller and engines on this host (or through any launcher
    plugin) with a connected client::

        with Cluster(n=4) as client:
            client[:].apply_sync(os.getpid)

    Each ``Cluster`` gets its own cluster id unless given one, so several
    run side by side in one profile.  A started cluster is stopped at
    interpreter exit if :meth:`stop` was not called.
    """

    n = Integer(None, allow_none=True, min=0, help="Number of engines to start (default: one per CPU for "
                "`cluster-launcher start`, 4 for Cluster() in Python; with adaptive scaling, adapt_minimum).").tag(
        config=True)
    engine_launcher_class = Unicode("Local", help="How engines start: Local, MPI, SSH, PBS, SGE, "
                                    "LSF, Slurm, WindowsHPC, a launcher class name or a dotted "
                                    "path.").tag(config=True)
    controller_launcher_class = Unicode("Local", help="How the controller starts: Local, SSH, "
                                        "MPI, PBS, … (as engine_launcher_class).").tag(config=True)
    delay = Float(0.0, min=0.0, help="Seconds to wait after starting the controller before starting "
                  "engines.").tag(config=True)
    daemonize = Bool(False, help="Detach `start` from the terminal and return once the cluster "
                     "runs, a detached watcher process restarting engines that die.").tag(config=True)
    dry_run = Bool(False, help="Print what `start` would run and submit (commands, job scripts), "
                   "starting nothing.").tag(config=True)
    cluster_id = Unicode("", help="The id of the cluster within its profile.").tag(config=True)
    start_timeout = Float(60.0, min=0.0, help="Seconds `start` waits for the controller and engines to be "
                          "ready.").tag(config=True)
    profile = Unicode("default", help="The profile's name (its folder is profile_<name> in "
                      "$CLUSTER_LAUNCHER_DIR).").tag(config=True)
    profile_dir = Unicode("", help="The profile's folder (overrides profile).").tag(config=True)
    adaptive = Bool(False, help="Scale the engines with the load while `start` (or its --daemonize watcher) runs: "
                    "more while load-balanced tasks wait, fewer once they are idle (`start --adapt`).").tag(
        config=True)
    adapt_minimum = Integer(0, min=0, help="The fewest engines adaptive scaling keeps (`start --min`).").tag(
        config=True)
    adapt_maximum = Integer(64, min=1, help="The most engines adaptive scaling asks for (`start --max`).").tag(
        config=True)
    adapt_interval = Float(5.0, min=0.0, help="Seconds between two decisions of adaptive scaling.").tag(config=True)
    adapt_idle_timeout = Float(60.0, min=0.0, help="Seconds an engine must have been idle before adaptive scaling "
                               "shuts it down.").tag(config=True)
    engine_replace_lead = Float(0.0, min=0.0, help="Seconds before an engine's deadline (its batch job's "
                                "walltime) from which adaptive scaling counts it as leaving and asks for its "
                                "replacement, so the new job queues while the old one still works (0: once it "
                                "drains).  `--adapt --min=N --max=N` keeps N engines across walltimes.").tag(
        config=True)
    adapt_scale_in_wait = Integer(3, min=1, help="Decisions in a row with more engines than needed before adaptive "
                                  "scaling gives any back (so load that comes and goes does not make engines "
                                  "come and go).").tag(config=True)

    engine_restart_limit = Integer(3, min=0, help="How many times an engine process that died (a non-zero exit "
                                   "or a signal; not a shutdown) is started again in its slot, with backoff, "
                                   "before it is given up; 0: never (`start --engine-restart-limit=N`).").tag(
        config=True)
    engine_restart_delay = Float(1.0, min=0.0, help="Seconds before an engine's first restart; doubled for each "
                                 "restart of the same slot after it, up to 30 s.").tag(config=True)

    def __init__(self, n: int | None = None, profile: str | None = None, profile_dir: str | None = None,
                 cluster_id: str | None = None, engine_launcher_class: str | None = None,
                 controller_launcher_class: str | None = None, config: Config | None = None, **traits: Any):
        """Arguments left ``None`` come from ``config`` (``c.Cluster.*``), else
        the defaults: 4 engines, profile 'default', Local launchers and a new
        cluster id.  ``cluster_id=''`` is the profile's default cluster."""
        given = {"n": n, "profile": profile, "profile_dir": profile_dir, "cluster_id": cluster_id,
                 "engine_launcher_class": engine_launcher_class,
                 "controller_launcher_class": controller_launcher_class}
        config = config if config is not None else Config()
        super().__init__(config=config, **{k: v for k, v in given.items() if v is not None}, **traits)
        if self.n is None:
            self.n = self.adapt_minimum if self.adaptive else DEFAULT_ENGINE_COUNT
        if cluster_id is None and "cluster_id" not in (config.get("Cluster") or {}):
            self.cluster_id = _new_cluster_id()
        self.profile_dir = profile_dir_for(self.profile, self.profile_dir)
        self.controller: ControllerLauncher | None = None
        self.engine_sets: list[EngineSetLauncher] = []
        self.started_at = 0.0
        self.reuse = bool((self.config.get("Controller") or {}).get("reuse", False))
        self.report: Callable[[str], None] = self.log.info  # `start` prints these lines instead
        self.warn: Callable[[str], None] = self.log.warning  # `stop` prints what it had to kill instead
        self._client: Client | None = None
        self._stop_registered = False
        self.adapter: Adaptive | None = None
        # Who restarts dead engines: this process ('start' in the foreground, 'python' for the supervisor
        # thread) or the detached watcher of `start --daemonize` ('daemon'); its pid and start token.
        self.watcher: dict[str, Any] = {}
        self.supervisor: Supervisor | None = None

    # --- files ------------------------------------------------------------

    @property
    def state_path(self) -> str:
        return state_file(self.profile_dir, self.cluster_id)

    def connection_files(self) -> list[str]:
        return [connection_file(self.profile_dir, role, self.cluster_id) for role in ("client", "engine")]

    def to_dict(self) -> dict[str, Any]:
        """The record written to :attr:`state_path`."""
        return {"version": 1, "profile": profile_name(self.profile_dir), "profile_dir": self.profile_dir,
                "cluster_id": self.cluster_id, "n": sum(s.n for s in self.engine_sets if hasattr(s, "n")),
                "started": datetime.fromtimestamp(self.started_at).isoformat(timespec="seconds"),
                "start_time": self.started_at, "reuse": self.reuse, "start_pid": os.getpid(),
                "controller": self.controller.to_dict() if self.controller else {},
                "engines": [s.to_dict() for s in self.engine_sets],
                **({"adapt": self.adapter.to_dict()} if self.adapter else {}),
                **({"watcher": self.watcher} if self.watcher else {})}

    def save_state(self) -> None:
        write_state(self.state_path, self.to_dict())

    @classmethod
    def from_state(cls, path: str, config: Config | None = None) -> Cluster:
        """The cluster recorded in ``path``, its launchers able to poll and
        stop what the recording process started."""
        state = read_state(path)
        if state is None:
            raise ClusterError(f"no cluster recorded in {path}")
        cluster = cls(profile_dir=state["profile_dir"], cluster_id=state.get("cluster_id", ""),
                      config=config or Config())
        cluster.started_at = state.get("start_time", 0.0)
        watcher = state.get("watcher")
        cluster.watcher = watcher if isinstance(watcher, dict) else {}
        cluster.reuse = bool(state.get("reuse", False))
        cluster.controller = recorded_launcher(state["controller"], ControllerLauncher, cluster.config)
        cluster.engine_sets = [recorded_launcher(data, EngineSetLauncher, cluster.config)
                               for data in state.get("engines", [])]
        return cluster

    # --- launchers --------------------------------------------------------

    def _make_launcher(self, base: type[LauncherT]) -> LauncherT:
        """A new launcher of the class configured for ``base``'s role (ControllerLauncher or EngineSetLauncher)."""
        role = base.role
        name = self.controller_launcher_class if role == "controller" else self.engine_launcher_class
        cls = plugins.resolve("launcher", name, role=role)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            trait = "controller_launcher_class" if role == "controller" else "engine_launcher_class"
            raise ClusterError(f"Cluster.{trait} = {name!r} is not a {base.__name__}")
        return cls(config=self.config, profile_dir=self.profile_dir, cluster_id=self.cluster_id)

    def use_allocation(self, environ: Mapping[str, str] | None = None) -> Allocation | None:
        """Inside a batch allocation a plugin recognizes in ``environ``
        (default: this process's environment; the ``cluster_launcher_allocation``
        hook), unless ``Cluster.engine_launcher_class`` is configured (config
        file, command line, or set to something else than Local): engines
        through the allocation's launcher, and ``n`` its slots unless
        ``Cluster.n`` is configured.  Returns the allocation it used, or None
        (nothing changed).  The controller's launcher is left as it is."""
        configured = self.config.get("Cluster") or {}
        if "engine_launcher_class" in configured or self.engine_launcher_class != "Local":
            return None
        environ = os.environ if environ is None else environ
        try:
            allocation = plugins.get_plugin_manager().hook.cluster_launcher_allocation(environ=environ)
        except Exception as exc:  # a plugin's bug: said in one line, as every error of start
            raise ClusterError(f"a cluster_launcher_allocation hook failed: {type(exc).__name__}: {exc}") from exc
        if allocation is None:
            return None
        if not isinstance(allocation, Allocation):
            raise ClusterError(f"a cluster_launcher_allocation hook returned {allocation!r}, not an Allocation")
        self.engine_launcher_class = allocation.engine_launcher
        if "n" not in configured:
            self.n = max(1, allocation.slots)
        return allocation

    def check_launchers(self, n: int) -> None:
        """Let the launchers this cluster will use refuse settings that cannot
        work, before anything starts."""
        self._make_launcher(ControllerLauncher).check()
        self._make_launcher(EngineSetLauncher).check(n)

    def dry_run_lines(self, n: int) -> list[str]:
        """What :meth:`start` would run or submit for ``n`` engines, starting nothing."""
        controller = self._make_launcher(ControllerLauncher)
        lines = [f"the controller, with {type(controller).__name__}:", *(f"  {line}" for line in controller.dry_run(1))]
        engines = self._make_launcher(EngineSetLauncher)
        shown = engines.dry_run(n)
        n = engines.n or n  # as start: its own settings may say how many (an SSH engines dict)
        lines.append(f"{n} engine{'s' if n != 1 else ''}, with {type(engines).__name__}:")
        return lines + [f"  {line}" for line in shown]

    def running(self) -> bool:
        """Whether the controller runs."""
        return self.controller is not None and self.controller.poll() is None

    def _check_alive(self, what: str) -> None:
        """Raise a ClusterError naming the log to read if the controller or an engine died."""
        for role, launcher in [("controller", self.controller), *(("engine", s) for s in self.engine_sets)]:
            if launcher is None:
                continue
            for code, log_path, lines in launcher.exited():
                where = f"; see {log_path}" if log_path else ""
                raise ClusterError(f"{launcher.exit_label(role)} exited with code {code} {what}{where}", lines)

    def start_controller(self) -> None:
        """Start the controller and wait for its connection files (fresh ones,
        unless ``c.Controller.reuse``); refuse if this cluster id already runs."""
        ensure_profile_dir(self.profile_dir)
        if self.adaptive and "hwm" not in (self.config.get("TaskScheduler") or {}):
            # New engines get only the tasks still waiting in the controller: one task per engine at a time.
            self.config.TaskScheduler.hwm = 1
        self._clear_stale_record()
        stale = {path: _file_signature(path) for path in self.connection_files()}
        self.started_at = time.time()
        deadline = time.monotonic() + self.start_timeout
        self.controller = self._make_launcher(ControllerLauncher)
        self.controller.start()
        self.save_state()  # recorded at once, so `stop` can clean up a start that went wrong
        self.report(f"controller started ({self.controller.describe()})")
        for path in self.connection_files():
            while _file_signature(path) in (None, stale[path]) and not (self.reuse and stale[path]):
                self.controller.fetch_connection_files()
                if _file_signature(path) not in (None, stale[path]):
                    break
                self._check_alive(f"before writing {path}")
                if time.monotonic() > deadline:
                    raise ClusterError(f"the controller wrote no {path} within Cluster.start_timeout="
                                       f"{self.start_timeout}s; see {self.controller.describe()}")
                time.sleep(POLL_INTERVAL)
        self.report(f"controller ready: {self.connection_files()[0]}")

    def start_engines(self, n: int) -> EngineSetLauncher:
        """Start ``n`` more engines (a new engine-set launcher) and record them.
        The launcher's ``n`` is how many it started: another number when its
        own settings say how many (an SSH ``engines`` dict), or when some of
        its hosts failed (each in ``start_failures``, reported)."""
        launcher = self._make_launcher(EngineSetLauncher)
        if launcher.has_trait("first_index"):  # a trait of some engine-set launchers only
            launcher.set_trait("first_index", sum(s.n for s in self.engine_sets))
        self.engine_sets.append(launcher)
        try:
            launcher.start(n)
        finally:
            self.save_state()
        for line in launcher.start_failures:
            self.warn(line)
        self.report(f"{launcher.n} engine{'s' if launcher.n != 1 else ''} started ({launcher.describe()})")
        return launcher

    def wait_for_engines(self, n: int, timeout: float | None = None) -> None:
        """Wait until ``n`` engines are registered with the controller; a
        ClusterError naming the log to read if a process dies first."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        client, last_error, registered = None, None, -1
        try:
            while True:
                self._check_alive("before the cluster was ready")
                if client is None:
                    try:
                        client = self.new_client(timeout=max(1.0, min(5.0, deadline - time.monotonic())))
                    except ImportError as exc:
                        raise ClusterError(f"cannot wait for engines: {exc}") from None
                    except Exception as exc:  # the controller is not listening yet: try again
                        last_error = exc
                if client is not None:
                    count = len(client.ids)
                    if count != registered:
                        registered = count
                        self.report(f"{count}/{n} engines registered")
                    if count >= n:
                        # Recorded again now that every process runs: a launcher
                        # learns things meanwhile (the ranks under an mpiexec)
                        # that a later `stop` from another process needs.
                        self.save_state()
                        return
                if time.monotonic() > deadline:
                    why = f" ({last_error})" if client is None and last_error else ""
                    raise ClusterError(f"{max(registered, 0)} of {n} engines registered within "
                                       f"{timeout}s{why}; see the logs in {os.path.join(self.profile_dir, 'log')}")
                time.sleep(POLL_INTERVAL)
        finally:
            if client is not None:
                client.close()

    def new_client(self, **kwargs: Any) -> Client:
        from ..client import Client  # zmq and cloudpickle: only when a cluster is really used
        return Client(profile_dir=self.profile_dir, cluster_id=self.cluster_id, **kwargs)

    def _clear_stale_record(self) -> None:
        """Refuse if this cluster id runs; else stop what a dead one left behind."""
        if not os.path.exists(self.state_path):
            return
        try:
            old = Cluster.from_state(self.state_path, self.config)
        except ClusterLauncherError as exc:
            self.log.warning("ignoring %s", exc)
            os.unlink(self.state_path)
            return
        try:
            if old.running():
                flag = f" --cluster-id={self.cluster_id}" if self.cluster_id else ""
                name = self.cluster_id or "default"
                raise ClusterError(f"cluster {name!r} of profile {profile_name(self.profile_dir)!r} "
                                   f"already runs (see {self.state_path}); stop it first (cluster-launcher stop "
                                   f"--profile-dir={self.profile_dir}{flag}) or use another --cluster-id")
            for engines in old.engine_sets:
                engines.stop()
        finally:
            for launcher in [old.controller, *old.engine_sets]:
                if launcher is not None:
                    launcher.close()  # the old controller's poll may have logged in to its host
        os.unlink(self.state_path)

    # --- the Python API ---------------------------------------------------

    def start(self) -> None:
        """Start the controller and ``n`` engines; return once they are all
        registered.  Everything is stopped again if that fails."""
        n = DEFAULT_ENGINE_COUNT if self.n is None else self.n  # None only if set so after __init__
        self.check_launchers(max(n, 1))
        try:
            self.start_controller()
            if self.delay:
                time.sleep(self.delay)
            if n:
                self.wait_for_engines(self.start_engines(n).n)
            if self.adaptive:
                self.adapt()
            if self.engine_restart_limit:
                self.supervisor = Supervisor(self.new_restarter(self.warn), POLL_INTERVAL * 5).start()
                self.watch_from_here("python")
        except BaseException:
            self.stop()
            raise
        if not self._stop_registered:
            atexit.register(self._stop_at_exit)
            self._stop_registered = True

    def connect(self, **kwargs: Any) -> Client:
        """A Client connected to this cluster (closed by :meth:`stop`)."""
        if self._client is None:
            self._client = self.new_client(**kwargs)
        return self._client

    def start_and_connect(self) -> Client:
        """:meth:`start`, then :meth:`connect`."""
        self.start()
        return self.connect()

    def add_engines(self, n: int) -> None:
        """Start ``n`` more engines and wait until they are registered."""
        if not self.running():
            raise ClusterError(f"cluster {self.cluster_id or 'default'!r} is not running; start it first")
        self._make_launcher(EngineSetLauncher).check(n)
        client = self.new_client()
        try:
            before = len(client.ids)
        finally:
            client.close()
        self.wait_for_engines(before + self.start_engines(n).n)

    def adapt(self, minimum: int | None = None, maximum: int | None = None, interval: float | None = None,
              idle_timeout: float | None = None) -> Adaptive:
        """Scale the engines with the load from now on, in a thread, until
        :meth:`stop` (or the returned object's ``stop()``): more engines while
        load-balanced tasks wait, up to ``maximum``; idle ones shut down after
        ``idle_timeout`` seconds, down to ``minimum``.  Unset arguments come
        from ``c.Cluster.adapt_*``."""
        if not self.running():
            raise ClusterError(f"cluster {self.cluster_id or 'default'!r} is not running; start it first")
        if self.adapter is not None:
            self.adapter.stop()
        self.adapter = self.new_adapter(minimum, maximum, interval, idle_timeout).start()
        return self.adapter

    def new_adapter(self, minimum: int | None = None, maximum: int | None = None, interval: float | None = None,
                         idle_timeout: float | None = None) -> Adaptive:
        """The :class:`Adaptive` of this cluster's settings (not started)."""
        engines = self._make_launcher(EngineSetLauncher)
        try:
            policy = AdaptivePolicy(
                minimum=self.adapt_minimum if minimum is None else minimum,
                maximum=self.adapt_maximum if maximum is None else maximum,
                idle_timeout=self.adapt_idle_timeout if idle_timeout is None else idle_timeout,
                scale_in_wait=self.adapt_scale_in_wait, max_queued_jobs=getattr(engines, "max_queued_jobs", 0))
        except ValueError as exc:
            raise ClusterError(f"Cluster.adapt: {exc}") from None
        return Adaptive(self, policy, self.adapt_interval if interval is None else interval, self.engine_replace_lead)

    def new_restarter(self, say: Callable[[str], None], may_restart: Callable[[], bool] = lambda: True,
                      ) -> EngineRestarter:
        """The :class:`EngineRestarter` of this cluster's settings (``engine_restart_*``)."""
        return EngineRestarter(self, RestartPolicy(self.engine_restart_limit, self.engine_restart_delay), say,
                               may_restart)

    def watch_from_here(self, kind: str) -> None:
        """Record this process as the cluster's watcher ('start', 'daemon' or 'python')."""
        self.watcher = {"kind": kind, "pid": os.getpid(), "start_token": process_start_token(os.getpid())}
        self.save_state()

    def watcher_running(self) -> bool:
        """Whether the recorded watcher process still runs (for `list`)."""
        pid, token = int(self.watcher.get("pid", 0)), str(self.watcher.get("start_token", ""))
        return bool(self.watcher) and pid_alive(pid, token)

    def forget_ended_engine_sets(self) -> None:
        """Drop from the record the engine sets of which nothing runs or waits
        any more (those adaptive scaling gave back), so the record stays small."""
        ended = [s for s in self.engine_sets if s.active_engines() == 0 and s.poll() is not None]
        if ended:
            self.engine_sets = [s for s in self.engine_sets if s not in ended]
            for engine_set in ended:
                engine_set.close()
            self.save_state()

    def stop(self) -> list[str]:
        """Stop engines and controller: a shutdown request through the
        controller when it answers, then by PID (SIGTERM, SIGKILL after each
        launcher's ``stop_timeout``) whatever is left.  Returns once every
        process it stopped has exited, with one line (also given to
        :attr:`warn`) per process it had to kill.  Removes the record, and the
        connection files unless the controller reuses them."""
        self._unregister_stop()
        if self.supervisor is not None:  # first, as adapting: it would restart the engines being stopped
            self.supervisor.stop()
            self.supervisor = None
        if self.adapter is not None:  # first: it would start engines while they are being stopped
            self.adapter.stop()
        if self.controller is None:
            return []  # nothing started (e.g. refused because this cluster id runs): touch nothing
        try:
            plugins.get_plugin_manager().hook.cluster_launcher_cluster_stopping(
                profile_dir=self.profile_dir, cluster_id=self.cluster_id)
        except Exception as exc:  # a plugin's hook must not keep the cluster running
            self.log.warning("a cluster_launcher_cluster_stopping hook failed: %s", exc)
        if self._client is not None:
            self._close_quietly(self._client)
            self._client = None
        if self.running():
            self._request_shutdown()
        killed: list[str] = []
        for launcher in [*self.engine_sets, self.controller]:
            if launcher is not None:
                launcher.stop()
                killed += launcher.killed
        for line in killed:
            self.warn(line)
        curve_key = connection_file(self.profile_dir, "curve", self.cluster_id)
        for path in [self.state_path] + ([] if self.reuse else [*self.connection_files(), curve_key]):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return killed

    def _request_shutdown(self) -> None:
        """Ask the controller to stop the engines and itself, and give them
        CLIENT_SHUTDOWN_TIMEOUT seconds; in a thread, so an unresponsive
        controller cannot hang `stop`."""
        def shutdown() -> None:
            try:
                client = self.new_client(timeout=CLIENT_SHUTDOWN_TIMEOUT)
                try:
                    client.shutdown(hub=True)
                finally:
                    self._close_quietly(client)
            except Exception as exc:
                self.log.debug("shutdown through the controller failed: %s", exc)

        worker = threading.Thread(target=shutdown, name="cluster-shutdown", daemon=True)
        worker.start()
        deadline = time.monotonic() + CLIENT_SHUTDOWN_TIMEOUT
        worker.join(CLIENT_SHUTDOWN_TIMEOUT)
        # Engine sets of which nothing runs (batch jobs still queued) have nothing to wait for: stop deletes them.
        launchers: list[Launcher] = [engines for engines in self.engine_sets if engines.running_engines()]
        for launcher in [*launchers, *([self.controller] if self.controller else [])]:
            launcher.wait(max(0.0, deadline - time.monotonic()))

    @staticmethod
    def _close_quietly(client: Client) -> None:
        try:
            client.close()
        except Exception:
            pass

    def _stop_at_exit(self) -> None:
        self._stop_registered = False
        self.stop()

    def _unregister_stop(self) -> None:
        if self._stop_registered:
            atexit.unregister(self._stop_at_exit)
            self._stop_registered = False

    def __enter__(self) -> Client:
        return self.start_and_connect()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
