"""The benchmark workloads, run inside ONE environment: ours (cluster-launcher)
or theirs (ipyparallel, in the cached venv made by run.py).

Both clients share an API (Client, ``client[i]``, ``client[:]``,
``load_balanced_view()``, ``apply_async``/``apply_sync``/``map_async``/``push``/
``pull``, ``AsyncResult.get``), so every workload below is written once; only
starting and stopping a cluster differs, and lives in the two adapters.

This file depends on the standard library, numpy and psutil only, because
the ipyparallel venv has no cluster_launcher.  run.py starts it as a script
(``python workloads.py --side ours|theirs --out FILE``) and reads the JSON it
writes: ``{"side", "version", "metrics": {key: number}, "errors": {workload: text}}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy
import psutil

RESULT_TIMEOUT = 300.0  # seconds any single wait may take before the workload counts as failed


# Functions sent to engines.  Defined in this script's __main__, so both
# clients ship them by value.
def noop() -> None:
    return None


def noop1(x: Any) -> None:
    return None


def cheap(x: int) -> int:
    return x * 2 + 1


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does (full run vs --quick)."""

    start_engine_counts: tuple[int, ...]
    start_repeats: int
    tasks: int
    latency_calls: int
    bandwidth_mb: tuple[int, ...]
    bandwidth_repeats: dict[int, int]
    map_items: int
    map_chunksize: int
    memory_tasks: int
    memory_batch: int
    record_limit: int
    engines: int
    db_rounds: int   # interleaved rounds of the per-database throughput runs (median taken)
    db_tasks: int    # tasks stored in SQLiteDB for the size and query rows
    db_queries: int  # repeats of each timed db_query (median taken)
    registration_engines: int  # real engines started at once (registration)
    standin_counts: tuple[int, ...]  # stand-in engines per run (standins)
    standin_processes: int  # processes the stand-ins run in
    idle_periods: int  # heartbeat periods the controller's CPU is measured over (standins)
    hogged_engines: int  # real engines kept through CPU saturation (heartbeats)


FULL = Sizes(start_engine_counts=(2, 4, 8), start_repeats=2, tasks=5000, latency_calls=2000,
             bandwidth_mb=(1, 100), bandwidth_repeats={1: 30, 100: 4}, map_items=100_000,
             map_chunksize=1000, memory_tasks=100_000, memory_batch=1000, record_limit=1000,
             engines=2, db_rounds=3, db_tasks=100_000, db_queries=7, registration_engines=64,
             standin_counts=(100, 500, 1000), standin_processes=4, idle_periods=10, hogged_engines=64)
QUICK = Sizes(start_engine_counts=(2, 4), start_repeats=1, tasks=200, latency_calls=100,
              bandwidth_mb=(1, 10), bandwidth_repeats={1: 3, 10: 2}, map_items=2000,
              map_chunksize=100, memory_tasks=1000, memory_batch=250, record_limit=100,
              engines=2, db_rounds=1, db_tasks=1000, db_queries=3, registration_engines=4,
              standin_counts=(20,), standin_processes=2, idle_periods=2, hogged_engines=4)


# --- adapters: the only side-specific code ----------------------------------------------

class Adapter:
    """Starts/stops a cluster and returns a connected client with all engines up."""

    name = ""
    # Whether SQLiteDB can cap its records (ipyparallel's cannot: it keeps every task).
    sqlite_retention = True
    # Seconds until a finished task's record is certainly in the SQLite file.
    sqlite_commit_delay = 0.0

    def version(self) -> str:
        raise NotImplementedError

    def start(self, n: int, record_limit: int | None = None,
              extra_args: list[str] | None = None) -> tuple[Any, Any]:
        """Start controller + ``n`` engines; return (handle, client) once all are registered.
        ``extra_args`` go on the controller's command line."""
        raise NotImplementedError

    def db_args(self, db_class: str) -> list[str]:
        """Controller arguments selecting the task database ``db_class`` (DictDB, SQLiteDB, NoDB)."""
        raise NotImplementedError

    def stop(self, handle: Any, client: Any) -> None:
        raise NotImplementedError

    def controller_pid(self, handle: Any) -> int:
        raise NotImplementedError


def _descendant_matching(word: str) -> int:
    """PID of the first descendant of this process whose command line names ``word``."""
    for child in psutil.Process().children(recursive=True):
        try:
            if any(word in part for part in child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    raise RuntimeError(f"no child process with {word!r} in its command line")


class OursAdapter(Adapter):
    name = "ours"

    def version(self) -> str:
        import cluster_launcher
        return cluster_launcher.__version__

    def start(self, n: int, record_limit: int | None = None,
              extra_args: list[str] | None = None) -> tuple[Any, Any]:
        from traitlets.config import Config

        import cluster_launcher
        config = Config()
        config.Cluster.start_timeout = RESULT_TIMEOUT  # 64 engines starting at once on 2 cores take a while
        # The controller's own command line, as a user would set it.
        args = [f"--DictDB.record_limit={record_limit}"] if record_limit is not None else []
        args += extra_args or []
        if args:
            config.ControllerLauncher.controller_args = args
        cluster = cluster_launcher.Cluster(n=n, config=config)
        client = cluster.__enter__()
        return cluster, client

    def stop(self, handle: Any, client: Any) -> None:
        handle.__exit__(None, None, None)

    def db_args(self, db_class: str) -> list[str]:
        return [f"--Controller.db_class={db_class}"]

    def controller_pid(self, handle: Any) -> int:
        pid = getattr(handle.controller, "pid", 0)
        return pid if pid > 0 else _descendant_matching("controller")


class TheirsAdapter(Adapter):
    """ipyparallel with its default configuration (only the DB record limit is set for the
    memory workload, as on our side)."""

    name = "theirs"
    sqlite_retention = False
    # ipyparallel's SQLiteDB commits every 2 s (a PeriodicCallback), not per task.
    sqlite_commit_delay = 2.5

    def version(self) -> str:
        import ipyparallel
        return ipyparallel.__version__

    def start(self, n: int, record_limit: int | None = None,
              extra_args: list[str] | None = None) -> tuple[Any, Any]:
        import ipyparallel
        args = [f"--DictDB.record_limit={record_limit}"] if record_limit is not None else []
        args += extra_args or []
        # engine_timeout as our start_timeout: 64 engines starting at once on 2 cores take more than its 60 s.
        cluster = ipyparallel.Cluster(n=n, controller_args=args, log_level=logging.WARNING,
                                      engine_timeout=int(RESULT_TIMEOUT))
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(n, timeout=RESULT_TIMEOUT)
        return cluster, client

    def stop(self, handle: Any, client: Any) -> None:
        client.close()
        handle.stop_cluster_sync()

    def controller_pid(self, handle: Any) -> int:
        return handle.controller.pid

    def db_args(self, db_class: str) -> list[str]:
        # ipyparallel 8/9: the option lives on IPController (HubFactory before 7).
        return [f"--IPController.db_class={db_class}"]


ADAPTERS: dict[str, Callable[[], Adapter]] = {"ours": OursAdapter, "theirs": TheirsAdapter}


# --- helpers -----------------------------------------------------------------------------

def ready_to_run_code(client: Any) -> None:
    """Block until every engine has run a function (the 'ready' point of a start)."""
    client[:].apply_sync(noop)


def wait_all(async_results: list[Any]) -> None:
    for ar in async_results:
        ar.get(timeout=RESULT_TIMEOUT)


def forget_local_results(client: Any) -> None:
    """Drop the client's cache of finished results so long runs measure the controller,
    not a growing client (ipyparallel's purge_local_results; a no-op if absent)."""
    purge = getattr(client, "purge_local_results", None)
    if purge is not None:
        try:
            purge("all")
        except Exception:  # pending results cannot be purged; nothing else to do
            pass
    gc.collect()


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(RSS of ``pid`` alone, RSS of ``pid`` and all its descendants) in MB."""
    root = psutil.Process(pid)
    own = root.memory_info().rss
    total = own
    for child in root.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return own / 1e6, total / 1e6


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# --- workloads ---------------------------------------------------------------------------
# Each takes (adapter, sizes, shared client or None) and returns {metric_key: value}.

def workload_start(adapter: Adapter, sizes: Sizes, _client: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for n in sizes.start_engine_counts:
        starts, stops = [], []
        repeats = sizes.start_repeats if n <= 4 else max(1, sizes.start_repeats - 1)
        for _ in range(repeats):
            began = time.perf_counter()
            handle, client = adapter.start(n)
            try:
                ready_to_run_code(client)
                starts.append(time.perf_counter() - began)
            finally:
                began = time.perf_counter()
                adapter.stop(handle, client)
                stops.append(time.perf_counter() - began)
        metrics[f"start_{n}_s"] = statistics.median(starts)
        metrics[f"start_{n}_min_s"] = min(starts)
        metrics[f"stop_{n}_s"] = statistics.median(stops)
    return metrics


def workload_throughput(adapter: Adapter, sizes: Sizes, client: Any) -> dict[str, float]:
    view = client.load_balanced_view()
    wait_all([view.apply_async(noop) for _ in range(20)])  # warm up
    forget_local_results(client)

    began = time.perf_counter()
    wait_all([view.apply_async(lambda: None) for _ in range(sizes.tasks)])
    apply_rate = sizes.tasks / (time.perf_counter() - began)
    forget_local_results(client)

    began = time.perf_counter()
    view.map_async(noop1, range(sizes.tasks)).get(timeout=RESULT_TIMEOUT)
    map_rate = sizes.tasks / (time.perf_counter() - began)
    forget_local_results(client)
    return {"lb_apply_tasks_per_s": apply_rate, "lb_map_noop_tasks_per_s": map_rate}


def workload_latency(adapter: Adapter, sizes: Sizes, client: Any) -> dict[str, float]:
    view = client[client.ids[0]]
    for _ in range(20):  # warm up
        view.apply_sync(noop)
    samples = []
    for _ in range(sizes.latency_calls):
        began = time.perf_counter()
        view.apply_sync(noop)
        samples.append(time.perf_counter() - began)
    forget_local_results(client)
    return {"latency_median_ms": statistics.median(samples) * 1e3,
            "latency_p99_ms": percentile(samples, 0.99) * 1e3}


def workload_bandwidth(adapter: Adapter, sizes: Sizes, client: Any) -> dict[str, float]:
    view = client[client.ids[0]]
    metrics: dict[str, float] = {}
    for mb in sizes.bandwidth_mb:
        array = numpy.random.default_rng(0).integers(0, 255, size=mb * 1_000_000, dtype=numpy.uint8)
        pushes, pulls = [], []
        for _ in range(sizes.bandwidth_repeats[mb]):
            began = time.perf_counter()
            view.push({"bench_array": array}, block=True)
            pushes.append(time.perf_counter() - began)
            began = time.perf_counter()
            back = view.pull("bench_array", block=True)
            pulls.append(time.perf_counter() - began)
            if back.nbytes != array.nbytes:
                raise RuntimeError(f"pulled {back.nbytes} bytes, pushed {array.nbytes}")
            del back
            forget_local_results(client)
        push, pull = statistics.median(pushes), statistics.median(pulls)
        metrics[f"push_{mb}mb_mb_per_s"] = mb / push
        metrics[f"pull_{mb}mb_mb_per_s"] = mb / pull
        metrics[f"pushpull_{mb}mb_s"] = push + pull
    return metrics


def workload_map(adapter: Adapter, sizes: Sizes, client: Any) -> dict[str, float]:
    items = range(sizes.map_items)
    lview = client.load_balanced_view()
    began = time.perf_counter()
    result = lview.map_async(cheap, items, chunksize=sizes.map_chunksize).get(timeout=RESULT_TIMEOUT)
    lb_rate = sizes.map_items / (time.perf_counter() - began)
    if len(list(result)) != sizes.map_items:
        raise RuntimeError("load-balanced map returned the wrong number of items")
    forget_local_results(client)

    began = time.perf_counter()
    result = client[:].map_sync(cheap, items)
    direct_rate = sizes.map_items / (time.perf_counter() - began)
    if len(list(result)) != sizes.map_items:
        raise RuntimeError("direct map returned the wrong number of items")
    forget_local_results(client)
    return {"map_lb_chunked_items_per_s": lb_rate, "map_direct_items_per_s": direct_rate}


def workload_memory(adapter: Adapter, sizes: Sizes, _client: Any) -> dict[str, float]:
    handle, client = adapter.start(sizes.engines, record_limit=sizes.record_limit)
    try:
        ready_to_run_code(client)
        pid = adapter.controller_pid(handle)
        view = client.load_balanced_view()
        metrics: dict[str, float] = {}

        def record(label: str) -> None:
            own, tree = tree_rss_mb(pid)
            metrics[f"mem_{label}_mb"] = own
            metrics[f"mem_{label}_tree_mb"] = tree

        record("0")
        done = 0
        half = sizes.memory_tasks // 2
        while done < sizes.memory_tasks:
            batch = min(sizes.memory_batch, sizes.memory_tasks - done)
            wait_all([view.apply_async(noop) for _ in range(batch)])
            forget_local_results(client)
            done += batch
            if done == half:
                record("half")
        record("full")
        metrics["memory_tasks"] = sizes.memory_tasks
        return metrics
    finally:
        adapter.stop(handle, client)


DB_CLASSES = {"DictDB": "dict", "SQLiteDB": "sqlite", "NoDB": "nodb"}  # class -> metric key part
SQLITE_FILENAME = "tasks.db"  # the default on both sides; set explicitly so the size is found


def sqlite_args(adapter: Adapter, location: str, record_limit: int = 0) -> list[str]:
    """SQLiteDB in ``location`` (a throwaway folder, so each run starts from an empty file)."""
    args = adapter.db_args("SQLiteDB")
    args += [f"--SQLiteDB.location={location}", f"--SQLiteDB.filename={SQLITE_FILENAME}"]
    if record_limit:
        args.append(f"--SQLiteDB.record_limit={record_limit}")
    return args


def sqlite_file_mb(location: str) -> float:
    """Size of the SQLite file plus its write-ahead log (what the disk holds right now)."""
    total = 0
    for suffix in ("", "-wal"):
        path = os.path.join(location, SQLITE_FILENAME + suffix)
        if os.path.exists(path):
            total += os.path.getsize(path)
    if total == 0:
        raise RuntimeError(f"no SQLite file {SQLITE_FILENAME!r} in {location}")
    return total / 1e6


def lb_noop_rate(client: Any, tasks: int) -> float:
    """Tasks/s of ``tasks`` load-balanced no-op apply_async calls (as the throughput workload)."""
    view = client.load_balanced_view()
    wait_all([view.apply_async(noop) for _ in range(20)])  # warm up
    forget_local_results(client)
    began = time.perf_counter()
    wait_all([view.apply_async(lambda: None) for _ in range(tasks)])
    rate = tasks / (time.perf_counter() - began)
    forget_local_results(client)
    return rate


def fill_sqlite(adapter: Adapter, sizes: Sizes, record_limit: int, metrics: dict[str, float],
                label: str, then: Callable[[Any, list[str], str], None] | None = None) -> None:
    """Run ``sizes.db_tasks`` no-op tasks (as the memory workload) on a controller with SQLiteDB;
    record its RSS and file size as ``db_{label}_rss_mb`` / ``db_{label}_file_mb``, then call
    ``then(client, msg_ids spread over the history, msg_id of the task ~1% from the end)``."""
    with tempfile.TemporaryDirectory(prefix="bench-db-") as location:
        handle, client = adapter.start(sizes.engines, extra_args=sqlite_args(adapter, location, record_limit))
        try:
            ready_to_run_code(client)
            pid = adapter.controller_pid(handle)
            view = client.load_balanced_view()
            stride = max(1, sizes.db_tasks // 100)
            marker_index = sizes.db_tasks - max(1, sizes.db_tasks // 100)
            spread: list[str] = []
            marker = ""
            done = 0
            while done < sizes.db_tasks:
                batch = min(sizes.memory_batch, sizes.db_tasks - done)
                results = [view.apply_async(noop) for _ in range(batch)]
                for index in range(done, done + batch):
                    if index % stride == 0:
                        spread.append(results[index - done].msg_ids[0])
                    if index == marker_index:
                        marker = results[index - done].msg_ids[0]
                wait_all(results)
                del results
                forget_local_results(client)
                done += batch
            time.sleep(adapter.sqlite_commit_delay)
            metrics[f"db_{label}_rss_mb"] = tree_rss_mb(pid)[0]
            metrics[f"db_{label}_file_mb"] = sqlite_file_mb(location)
            if then is not None:
                then(client, spread, marker)
        finally:
            adapter.stop(handle, client)


def workload_databases(adapter: Adapter, sizes: Sizes, _client: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}

    # 1. Throughput per database.  The three run interleaved, round after round, so a
    # burst of load on the machine hits all of them rather than one.
    rates: dict[str, list[float]] = {db: [] for db in DB_CLASSES}
    for _ in range(sizes.db_rounds):
        for db_class in DB_CLASSES:
            with tempfile.TemporaryDirectory(prefix="bench-db-") as location:
                args = sqlite_args(adapter, location) if db_class == "SQLiteDB" else adapter.db_args(db_class)
                handle, client = adapter.start(sizes.engines, extra_args=args)
                try:
                    ready_to_run_code(client)
                    rates[db_class].append(lb_noop_rate(client, sizes.tasks))
                finally:
                    adapter.stop(handle, client)
    for db_class, key in DB_CLASSES.items():
        metrics[f"db_{key}_apply_tasks_per_s"] = statistics.median(rates[db_class])
    # Per round, not of the medians: the two runs of a round saw the same machine.
    metrics["db_sqlite_pct_of_dict"] = 100 * statistics.median(
        sqlite / dict_ for sqlite, dict_ in zip(rates["SQLiteDB"], rates["DictDB"], strict=True))

    # 2 and 3. Size after db_tasks tasks without retention, and queries on those records.
    def time_queries(client: Any, spread: list[str], marker: str) -> None:
        found = client.db_query({"msg_id": marker}, keys=["msg_id", "completed"])
        since = found[0]["completed"]
        recent: list[float] = []
        picked: list[float] = []
        for _ in range(sizes.db_queries):
            began = time.perf_counter()
            records = client.db_query({"completed": {"$gt": since}}, keys=["msg_id", "completed"])
            recent.append(time.perf_counter() - began)
            began = time.perf_counter()
            full = client.db_query({"msg_id": {"$in": spread}})
            picked.append(time.perf_counter() - began)
        # Checked so a query that quietly matches nothing cannot pass as fast.
        if not records or len(full) != len(spread):
            raise RuntimeError(f"db_query found {len(records)} recent and {len(full)}/{len(spread)} picked records")
        metrics["db_query_recent_ms"] = statistics.median(recent) * 1e3
        metrics["db_query_recent_records"] = len(records)
        metrics["db_query_in_ms"] = statistics.median(picked) * 1e3
        metrics["db_query_in_records"] = len(full)

    fill_sqlite(adapter, sizes, 0, metrics, "sqlite_all", then=time_queries)
    if adapter.sqlite_retention:
        fill_sqlite(adapter, sizes, sizes.record_limit, metrics, "sqlite_limited")
    metrics["db_tasks"] = sizes.db_tasks
    return metrics


def workload_registration(adapter: Adapter, sizes: Sizes, _client: Any) -> dict[str, float]:
    """Real engines started at once: from the start until every one is registered and has run a
    no-op; the controller's RSS and open files then."""
    n = sizes.registration_engines
    began = time.perf_counter()
    handle, client = adapter.start(n)
    try:
        ready_to_run_code(client)
        elapsed = time.perf_counter() - began
        controller = psutil.Process(adapter.controller_pid(handle))
        return {f"register_{n}_real_s": elapsed, f"register_{n}_real_rss_mb": controller.memory_info().rss / 1e6,
                f"register_{n}_real_fds": controller.num_fds()}
    finally:
        adapter.stop(handle, client)


def controller_cpu_ms_per_period(controller: psutil.Process, periods: int, period: float = 1.0) -> float:
    """The controller's CPU time (user + system) per heartbeat period, over ``periods`` periods."""
    before = controller.cpu_times()
    time.sleep(periods * period)
    after = controller.cpu_times()
    return 1e3 * ((after.user - before.user) + (after.system - before.system)) / periods


def workload_standins(adapter: Adapter, sizes: Sizes, _client: Any) -> dict[str, float]:
    """Stand-in engines (cluster_launcher.testing.standin, ours only) registering at once: the time until
    each has run a no-op, then the controller's RSS, open files and CPU per heartbeat period."""
    if adapter.name != "ours":
        return {}
    from cluster_launcher import Client
    from cluster_launcher.testing.processes import LocalCluster
    from cluster_launcher.testing.standin import StandInEngines

    metrics: dict[str, float] = {}
    for n in sizes.standin_counts:
        with tempfile.TemporaryDirectory(prefix="bench-standins-") as profile:
            cluster = LocalCluster(profile, n=0)
            controller = psutil.Process(cluster.start_controller().pid)
            try:
                client = Client(profile_dir=profile, timeout=30)
                try:
                    if "standins_0_rss_mb" not in metrics:  # the controller alone, once
                        metrics["standins_0_cpu_ms_per_period"] = controller_cpu_ms_per_period(
                            controller, sizes.idle_periods)
                        metrics["standins_0_rss_mb"] = controller.memory_info().rss / 1e6
                        metrics["standins_0_fds"] = controller.num_fds()
                    began = time.perf_counter()
                    with StandInEngines(profile, n=n, processes=sizes.standin_processes, timeout=RESULT_TIMEOUT):
                        client.wait_for_engines(n, timeout=RESULT_TIMEOUT)
                        results = client[:].apply_sync(noop)
                        metrics[f"standins_{n}_s"] = time.perf_counter() - began
                        if results != [None] * n:
                            raise RuntimeError(f"{n} stand-ins answered {len(results)} no-ops")
                        forget_local_results(client)
                        metrics[f"standins_{n}_rss_mb"] = controller.memory_info().rss / 1e6
                        metrics[f"standins_{n}_fds"] = controller.num_fds()
                        metrics[f"standins_{n}_cpu_ms_per_period"] = controller_cpu_ms_per_period(
                            controller, sizes.idle_periods)
                finally:
                    client.close()
            finally:
                cluster.stop()
    return metrics


HOG = "while True:\n    pass\n"


def workload_heartbeats(adapter: Adapter, sizes: Sizes, _client: Any) -> dict[str, float]:
    """Real engines with a 0.1 s heartbeat, 10 misses allowed, while twice as many busy loops as cores
    saturate the machine and each engine sleeps 5 s: how many engines the controller still has."""
    if adapter.name != "ours":
        return {}
    import subprocess

    n = sizes.hogged_engines
    handle, client = adapter.start(n, extra_args=["--Controller.heartbeat_period=0.1",
                                                  "--Controller.heartbeat_max_misses=10"])
    hogs: list[subprocess.Popen] = []
    try:
        ready_to_run_code(client)
        hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2 * (os.cpu_count() or 2))]
        client[:].apply_sync(time.sleep, 5.0)
        return {f"hb_alive_{n}": len(client.ids)}
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        adapter.stop(handle, client)


# Workloads that share one running cluster, then those that start their own.
SHARED = {"throughput": workload_throughput, "latency": workload_latency,
          "bandwidth": workload_bandwidth, "map": workload_map}
OWN_CLUSTER = {"start": workload_start, "memory": workload_memory, "databases": workload_databases,
               "registration": workload_registration, "standins": workload_standins,
               "heartbeats": workload_heartbeats}
WORKLOAD_NAMES = list(SHARED) + list(OWN_CLUSTER)


def run(side: str, sizes: Sizes, only: list[str]) -> dict[str, Any]:
    adapter = ADAPTERS[side]()
    report: dict[str, Any] = {"side": side, "version": adapter.version(), "metrics": {},
                              "errors": {}, "seconds": {}}
    wanted = [name for name in WORKLOAD_NAMES if not only or name in only]

    def attempt(name: str, function: Callable, client: Any) -> None:
        began = time.perf_counter()
        try:
            report["metrics"].update(function(adapter, sizes, client))
        except Exception as exc:
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        report["seconds"][name] = round(time.perf_counter() - began, 2)

    shared = [name for name in wanted if name in SHARED]
    if shared:
        try:
            handle, client = adapter.start(sizes.engines)
        except Exception as exc:
            for name in shared:
                report["errors"][name] = f"cluster start failed: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        else:
            try:
                ready_to_run_code(client)
                for name in shared:
                    attempt(name, SHARED[name], client)
            finally:
                adapter.stop(handle, client)
    for name in wanted:
        if name in OWN_CLUSTER:
            attempt(name, OWN_CLUSTER[name], None)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=sorted(ADAPTERS), required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", default=[], choices=WORKLOAD_NAMES)
    parser.add_argument("--out", required=True, help="where to write the JSON report")
    args = parser.parse_args(argv)
    report = run(args.side, QUICK if args.quick else FULL, args.only)
    with open(args.out, "w") as out:
        json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
