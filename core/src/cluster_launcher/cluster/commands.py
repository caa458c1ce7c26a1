"""The command line of a whole cluster: ``cluster-launcher start``, ``stop``,
``engines`` and ``list``."""

from __future__ import annotations

import glob
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

from traitlets.config import Config

from ..error import ClusterError, ClusterLauncherError
from ..launcher import EngineSetLauncher, config_args
from ..paths import home_dir, profile_name
from .cluster import POLL_INTERVAL, Cluster
from .restart import EngineRestarter
from .state import read_state, recorded_launcher, state_file, write_state

# Set in the environment of the watcher process `start --daemonize` spawns: that process is the start itself,
# detached, and it stays to watch the cluster once it is ready.
WATCHER_ENV = "CLUSTER_LAUNCHER_WATCHER"
WATCHER_STOP_TIMEOUT = 10.0  # seconds `stop` gives the watcher to leave after SIGTERM before SIGKILL


class _Signalled(Exception):
    """SIGINT or SIGTERM arrived while `start` ran."""


def _say(message: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {message}", flush=True)


def _fail(command: str, exc: ClusterLauncherError) -> int:
    print(f"cluster-launcher {command}: {exc}", file=sys.stderr, flush=True)
    lines = getattr(exc, "log_lines", [])
    if lines:
        print("last lines of the log:", file=sys.stderr)
        for line in lines:
            print(f"  | {line}", file=sys.stderr)
    sys.stderr.flush()
    return 1


def _cli_cluster(config: Config, profile_dir: str) -> Cluster:
    """The cluster the command line means: ``c.Cluster.cluster_id``, else the
    profile's default cluster (not a new id, as in Python)."""
    cluster_id = None if "cluster_id" in (config.get("Cluster") or {}) else ""
    return Cluster(profile_dir=profile_dir, cluster_id=cluster_id, config=config)


def _on_signals(handler: Any) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _raise_signalled(signum: int, frame: Any) -> None:
    raise _Signalled(signal.Signals(signum).name)


def start_main(config: Config, profile_dir: str, command_line: list[str] | None = None) -> int:
    """``cluster-launcher start``: the controller, then ``c.Cluster.n`` engines
    (default: one per CPU).  Stay until SIGINT/SIGTERM or the controller
    exits, restarting engines that die, then stop everything.  With
    ``c.Cluster.daemonize`` all this runs in a detached watcher process, and
    this one returns 0 once every engine is registered; ``command_line``
    (the ``--Class.option=value`` overrides it was given) is handed to the
    watcher."""
    try:
        cluster = _cli_cluster(config, profile_dir)
    except ClusterLauncherError as exc:
        return _fail("start", exc)
    watcher = os.environ.get(WATCHER_ENV) == "1"
    if cluster.daemonize and not cluster.dry_run and not watcher:
        return _start_watcher(cluster, command_line)
    try:  # inside a batch job, with no engine launcher configured: engines across its allocation
        allocation = cluster.use_allocation()
    except ClusterLauncherError as exc:
        return _fail("start", exc)
    # c.Cluster.n (Cluster() has made a configured None its own default), else: with --adapt its minimum (the
    # rest come with the load), else the allocation's slots (use_allocation set them), else one engine per CPU.
    chosen = cluster.n if "n" in (config.get("Cluster") or {}) else None
    if cluster.adaptive:  # with --daemonize, the watcher process makes the decisions
        n = chosen if chosen is not None else cluster.adapt_minimum
    else:
        if chosen is None and allocation is not None:
            chosen = cluster.n
        n = chosen if chosen is not None else (os.cpu_count() or 1)
    cluster.n = n
    cluster.report = cluster.warn = _say
    if allocation is not None:
        inside = (f"inside {allocation}: {n} engine{'s' if n != 1 else ''} through {cluster.engine_launcher_class} "
                  "(--engines=Local starts them on this node instead)")
        if cluster.dry_run:
            print(inside, flush=True)
        else:
            _say(inside)
    previous = _on_signals(_raise_signalled)
    ready = False
    if cluster.dry_run:
        try:  # not check_launchers: a dry run is also for a host without the batch system's commands
            print("\n".join(cluster.dry_run_lines(max(n, 1))), flush=True)
        except ClusterLauncherError as exc:
            return _fail("start", exc)
        return 0
    try:
        try:
            cluster.check_launchers(max(n, 1))
            adapter = cluster.new_adapter() if cluster.adaptive else None
            cluster.start_controller()
            if cluster.delay:
                time.sleep(cluster.delay)
            if n:
                n = cluster.start_engines(n).n
                cluster.wait_for_engines(n)
            cluster.adapter = adapter
            ready = True
            how = f"--profile-dir={cluster.profile_dir}"
            how += f" --cluster-id={cluster.cluster_id}" if cluster.cluster_id else ""
            cluster.watch_from_here("daemon" if watcher else "start")
            if watcher:
                _say(f"cluster ready with {n} engines; stop it with: cluster-launcher stop {how}")
            else:  # still inside the try: a Ctrl-C while this prints must clean up too
                _say(f"cluster ready with {n} engines; Ctrl-C (or cluster-launcher stop {how}) stops it")
            if adapter is not None:
                policy = adapter.policy
                _say(f"adapting between {policy.minimum} and {policy.maximum} engines, deciding every "
                     f"{adapter.interval:g}s (engines idle for {policy.idle_timeout:g}s are shut down)")
            if watcher:
                _detach_output(cluster)
        except (ClusterLauncherError, _Signalled) as exc:
            if ready:  # signalled while announcing: as in _supervise
                return _stop_on_signal(cluster, exc)
            _on_signals(signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
            if isinstance(exc, _Signalled):
                _say(f"{exc}: stopping the cluster")
            cluster.stop()
            return 1 if isinstance(exc, _Signalled) else _fail("start", exc)
        except Exception:
            # Not an error we foresaw (a bug, ours or a library's): what started is stopped all the same,
            # then the traceback shows.
            _on_signals(signal.SIG_IGN)
            cluster.stop()
            raise
        return _supervise(cluster, daemon=watcher)
    finally:
        _restore_signals(previous)


def _start_watcher(cluster: Cluster, command_line: list[str] | None) -> int:
    """``start --daemonize``: run this very start in a detached process (its
    own session, the watcher), relay what it says until the cluster is ready
    (its output then goes to its log), and return its verdict: 0 once it
    watches a ready cluster, its exit code if the start failed."""
    sections = ("Cluster", "Controller", "Engine", "TaskScheduler")
    overrides = command_line if command_line is not None else [
        arg for section in sections for arg in config_args(cluster.config, section)]
    args = [sys.executable, "-m", "cluster_launcher", "start", f"--profile-dir={cluster.profile_dir}", *overrides]
    watcher = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, WATCHER_ENV: "1"}, start_new_session=True)
    assert watcher.stdout is not None and watcher.stderr is not None
    outputs = {watcher.stdout: sys.stdout, watcher.stderr: sys.stderr}
    previous = _on_signals(_raise_signalled)
    signalled = False
    try:
        with selectors.DefaultSelector() as selector:
            for pipe in outputs:
                selector.register(pipe, selectors.EVENT_READ)
            while selector.get_map():  # until the watcher closes both: ready (output now to its log), or gone
                try:
                    for key, _ in selector.select():
                        data = os.read(key.fd, 65536)
                        if not data:
                            selector.unregister(key.fileobj)
                            continue
                        out = outputs[key.fileobj]  # type: ignore[index]
                        if hasattr(out, "buffer"):
                            out.buffer.write(data)
                        else:  # a text stream without bytes beneath (output captured in-process)
                            out.write(data.decode(errors="replace"))
                        out.flush()
                except _Signalled:  # Ctrl-C while it starts: it stops what it started, and says so
                    signalled = True
                    watcher.send_signal(signal.SIGTERM)
                    _on_signals(signal.SIG_IGN)
    finally:
        _restore_signals(previous)
        for pipe in outputs:
            pipe.close()
    if not signalled and _recorded_watcher_pid(cluster.state_path) == watcher.pid:
        return 0  # it recorded itself as the watcher of the ready cluster, then detached its output
    try:  # it failed (and stopped what it started) or was signalled: its pipes close as it exits
        code = watcher.wait(WATCHER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        code = 1
    return 1 if signalled else code or 0


def _recorded_watcher_pid(path: str) -> int:
    try:
        state = read_state(path) or {}
    except ClusterLauncherError:
        return 0
    watcher = state.get("watcher")
    return int(watcher.get("pid", 0)) if isinstance(watcher, dict) else 0


def _detach_output(cluster: Cluster) -> None:
    """The watcher of ``start --daemonize``, once the cluster is ready: its
    output from now on to ``<profile>/log/watcher-<id>.log`` (appended), which
    also tells the ``start`` that spawned it (reading the other end) that it
    may return."""
    log_dir = os.path.join(cluster.profile_dir, "log")
    os.makedirs(log_dir, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(os.path.join(log_dir, f"watcher-{cluster.cluster_id or 'default'}.log"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, sys.stdout.fileno())
    os.dup2(fd, sys.stderr.fileno())
    os.close(fd)


def _supervise(cluster: Cluster, daemon: bool = False) -> int:
    """Stay until a signal or the controller's exit, restarting dead engines
    and making adaptive scaling's decisions if it is on.  The foreground
    ``start`` then stops the cluster; the watcher of ``start --daemonize``
    (``daemon``) only leaves, the cluster as it is."""
    reported: set[tuple[int, str]] = set()
    next_decision = time.monotonic()
    restarter = cluster.new_restarter(_say, lambda: not _stop_requested(cluster.state_path)) \
        if cluster.engine_restart_limit else None
    try:
        while cluster.running():
            if cluster.adapter is not None and time.monotonic() >= next_decision:
                _adapt_step(cluster)
                next_decision = time.monotonic() + cluster.adapter.interval
            if restarter is not None:
                _restart_step(restarter)
            for engines in cluster.engine_sets:
                for code, log_path, _ in engines.exited():
                    if code == 0 and cluster.adapter is not None:
                        continue  # engines given back by adaptive scaling (or at their walltime) end so
                    if code != 0 and restarter is not None and engines.can_restart:
                        continue  # the restarter says it
                    if (code, log_path) not in reported:
                        reported.add((code, log_path))
                        what = engines.exit_label("engine")
                        _say(f"{'an engine' if what == 'engine' else what} exited with code {code}"
                             + (f"; see {log_path}" if log_path else ""))
            time.sleep(POLL_INTERVAL * 2)
            _adopt_recorded_engines(cluster)
    except _Signalled as exc:
        if daemon:  # `cluster-launcher stop` stops the watcher first, then the cluster itself
            _say(f"{exc}: the watcher leaves; the cluster runs on, nothing restarts its engines")
            return 0
        return _stop_on_signal(cluster, exc)
    _on_signals(signal.SIG_IGN)
    _adopt_recorded_engines(cluster)
    if daemon:
        _say("the controller exited: the watcher leaves (cluster-launcher stop cleans up)")
        return 0
    if _stop_requested(cluster.state_path):
        cluster.stop()  # whatever `cluster-launcher stop` has not reached yet
        _say("cluster stopped (by cluster-launcher stop)")
        return 0
    exited = cluster.controller.exited() if cluster.controller else []
    code, log_path, lines = (exited or [(0, "", [])])[0]
    cluster.stop()
    if code == 0:  # a client shut it down
        _say("the controller exited; engines stopped")
        return 0
    return _fail("start", ClusterError(f"the controller exited with code {code}; stopped the engines"
                                       + (f"; see {log_path}" if log_path else ""), lines))


def _adapt_step(cluster: Cluster) -> None:
    assert cluster.adapter is not None
    try:
        decision = cluster.adapter.step()
    except (ClusterLauncherError, OSError) as exc:  # a busy scheduler, a slow controller: the next step tries again
        _say(f"adapt: {exc}")
        return
    except _Signalled:
        raise  # Ctrl-C during a decision: _supervise stops the cluster
    except Exception as exc:  # a bug of ours must not take the running cluster down: said, then tried again
        _say(f"adapt: unexpected {type(exc).__name__}: {exc}")
        cluster.log.debug("adapt step failed", exc_info=True)
        return
    if decision.acts:
        _say(f"adapt: {decision.reason}")


def _restart_step(restarter: EngineRestarter) -> None:
    # SIGINT/SIGTERM wait until the step is done: one arriving between starting an engine and recording it
    # would leave that engine running where no `stop` finds it.
    deferred: list[int] = []
    previous = _on_signals(lambda signum, frame: deferred.append(signum))
    try:
        restarter.step()
    except Exception as exc:  # as an adapt step: said, tried again, the running cluster kept
        _say(f"engine restarts: unexpected {type(exc).__name__}: {exc}")
        restarter.cluster.log.debug("restart step failed", exc_info=True)
    finally:
        _restore_signals(previous)
    if deferred:
        raise _Signalled(signal.Signals(deferred[0]).name)


def _stop_on_signal(cluster: Cluster, signalled: Exception) -> int:
    _on_signals(signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
    _adopt_recorded_engines(cluster)
    _say(f"{signalled}: stopping {sum(s.running_engines() for s in cluster.engine_sets)} engines, then the controller")
    cluster.stop()
    _say("cluster stopped")
    return 0


def _stop_requested(path: str) -> bool:
    """Whether `cluster-launcher stop` is stopping (or has stopped) this cluster."""
    try:
        state = read_state(path)
    except ClusterLauncherError:
        return False
    return state is None or bool(state.get("stopping"))


def _adopt_recorded_engines(cluster: Cluster) -> None:
    """Take on the engine sets `cluster-launcher engines` added to the record,
    so stopping the foreground cluster stops them too."""
    try:
        state = read_state(cluster.state_path)
    except ClusterLauncherError:
        return
    if state is None:
        return
    ours = len(cluster.engine_sets)
    for data in state.get("engines", [])[ours:]:
        try:
            cluster.engine_sets.append(recorded_launcher(data, EngineSetLauncher, cluster.config))
        except ClusterLauncherError as exc:
            cluster.log.warning("cannot adopt engines recorded in %s: %s", cluster.state_path, exc)


def _recorded_cluster(command: str, config: Config, profile_dir: str) -> Cluster | int:
    cluster_id = _cli_cluster(config, profile_dir).cluster_id
    path = state_file(profile_dir, cluster_id)
    if not os.path.exists(path):
        flag = f" --cluster-id={cluster_id}" if cluster_id else ""
        print(f"cluster-launcher {command}: no cluster{flag} recorded in profile {profile_name(profile_dir)!r} "
              f"({path} does not exist); see cluster-launcher list", file=sys.stderr, flush=True)
        return 1
    try:
        return Cluster.from_state(path, config)
    except ClusterLauncherError as exc:
        return _fail(command, exc)


def stop_main(config: Config, profile_dir: str) -> int:
    """``cluster-launcher stop``: stop the recorded cluster (engines added by
    ``engines`` included) and remove its record."""
    cluster = _recorded_cluster("stop", config, profile_dir)
    if isinstance(cluster, int):
        return cluster
    state = read_state(cluster.state_path) or {}
    write_state(cluster.state_path, {**state, "stopping": True})  # a foreground `start` exits quietly
    cluster.warn = _say
    if _stop_daemon_watcher(cluster):
        try:  # read again: with the engines the watcher restarted up to now
            cluster = Cluster.from_state(cluster.state_path, config)
        except ClusterLauncherError as exc:
            return _fail("stop", exc)
    was_running = cluster.running()
    engines = sum(s.running_engines() for s in cluster.engine_sets)
    cluster.warn = _say
    cluster.stop()  # returns once every process it stopped has exited
    what = f"{engines} engines and the controller" if was_running else "the leftovers of a dead cluster"
    _say(f"stopped cluster {cluster.cluster_id or 'default'!r} of profile {profile_name(profile_dir)!r} ({what})")
    return 0


def _stop_daemon_watcher(cluster: Cluster) -> bool:
    """Stop the watcher of ``start --daemonize`` (SIGTERM, SIGKILL after
    WATCHER_STOP_TIMEOUT), by its recorded PID, before its engines: it must
    not restart what is being stopped.  Whether there was one running."""
    if cluster.watcher.get("kind") != "daemon" or not cluster.watcher_running():
        return False
    pid = int(cluster.watcher["pid"])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + WATCHER_STOP_TIMEOUT
        while cluster.watcher_running() and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL / 2)
        if not cluster.watcher_running():
            return True
        if sig == signal.SIGTERM:
            cluster.warn(f"the watcher (pid {pid}) ignored SIGTERM for {WATCHER_STOP_TIMEOUT:g}s: killing it")
    return True


def engines_main(config: Config, profile_dir: str, n: int | None) -> int:
    """``cluster-launcher engines --n=N``: add ``n`` engines (default: one per
    CPU) to the running cluster; ``stop`` stops them with the rest."""
    cluster = _recorded_cluster("engines", config, profile_dir)
    if isinstance(cluster, int):
        return cluster
    n = (os.cpu_count() or 1) if n is None else n
    if n < 1:
        return _fail("engines", ClusterError(f"--n={n}: the number of engines to add must be at least 1"))
    cluster.report = _say
    sets_before = len(cluster.engine_sets)
    previous = _on_signals(_raise_signalled)
    try:
        cluster.add_engines(n)
    except (ClusterLauncherError, _Signalled) as exc:
        _on_signals(signal.SIG_IGN)
        for engines in cluster.engine_sets[sets_before:]:  # only the ones this command started
            engines.stop()
        return _fail("engines", exc if isinstance(exc, ClusterLauncherError) else ClusterError(f"{exc}: stopped"))
    finally:
        _restore_signals(previous)
    return 0


def list_main(config: Config, profile_dir: str) -> int:
    """``cluster-launcher list``: every cluster recorded in every profile."""
    records = os.path.join("pid", "cluster-*.json")
    paths = sorted(set(glob.glob(os.path.join(glob.escape(home_dir()), "profile_*", records)))
                   | set(glob.glob(os.path.join(glob.escape(profile_dir), records))))
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []  # below the table: each running cluster's watcher, each engine slot given up
    for path in paths:
        try:
            cluster = Cluster.from_state(path, config)
        except ClusterLauncherError as exc:
            print(f"cluster-launcher list: {exc}", file=sys.stderr)
            continue
        running = cluster.running()
        engines = sum(s.running_engines() for s in cluster.engine_sets) if running else 0
        pid = cluster.controller.to_dict().get("pid", "") if cluster.controller else ""
        jobs = [line for launcher in [cluster.controller, *cluster.engine_sets]
                if launcher is not None and (line := launcher.status_line())]
        adapt = (read_state(path) or {}).get("adapt") if running else None
        adapting = f"{adapt['minimum']}-{adapt['maximum']}: {adapt['last']} ({adapt['at']})" \
            if isinstance(adapt, dict) and {"minimum", "maximum", "last", "at"} <= set(adapt) else "-"
        name = f"{profile_name(cluster.profile_dir)}/{cluster.cluster_id or 'default'}"
        lost = [line for engine_set in cluster.engine_sets for line in engine_set.given_up.values()]
        restarts = sum(sum(engine_set.restarts.values()) for engine_set in cluster.engine_sets)
        restarted = f"{restarts}" + (f" ({len(lost)} given up)" if lost else "") if restarts or lost else "-"
        if running and cluster.watcher:
            notes.append(f"{name}: {_watcher_note(cluster)}")
        notes += [f"{name}: {line}" for line in lost]
        rows.append((profile_name(cluster.profile_dir), cluster.cluster_id or "default",
                     "running" if running else "stopped", str(engines), str(pid or "-"), "; ".join(jobs) or "-",
                     restarted, adapting))
    if not rows:
        print(f"no clusters recorded (in {home_dir()})")
        return 0
    header: tuple[str, ...] = ("PROFILE", "CLUSTER-ID", "STATUS", "ENGINES", "CONTROLLER-PID", "JOBS", "RESTARTS",
                               "ADAPT")
    for column in ("ADAPT", "RESTARTS"):  # only when a cluster adapts, or had an engine restarted
        i = header.index(column)
        if all(row[i] == "-" for row in rows):
            header, rows = header[:i] + header[i + 1:], [row[:i] + row[i + 1:] for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for line in notes:
        print(line)
    return 0


def _watcher_note(cluster: Cluster) -> str:
    """Who restarts the cluster's dead engines: 'watcher: start pid 123' (the
    foreground start), 'daemon' (start --daemonize's watcher), 'python' (a
    Cluster's supervisor thread), or that it is not running any more."""
    kind, pid = cluster.watcher.get("kind", "?"), cluster.watcher.get("pid", "?")
    if cluster.watcher_running():
        return f"watcher: {kind} pid {pid}"
    return f"watcher: not running ({kind} pid {pid} is gone): nothing restarts engines that die"
