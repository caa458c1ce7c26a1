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
import statistics
import sys
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


FULL = Sizes(start_engine_counts=(2, 4, 8), start_repeats=2, tasks=5000, latency_calls=2000,
             bandwidth_mb=(1, 100), bandwidth_repeats={1: 30, 100: 4}, map_items=100_000,
             map_chunksize=1000, memory_tasks=100_000, memory_batch=1000, record_limit=1000,
             engines=2)
QUICK = Sizes(start_engine_counts=(2, 4), start_repeats=1, tasks=200, latency_calls=100,
              bandwidth_mb=(1, 10), bandwidth_repeats={1: 3, 10: 2}, map_items=2000,
              map_chunksize=100, memory_tasks=1000, memory_batch=250, record_limit=100,
              engines=2)


# --- adapters: the only side-specific code ----------------------------------------------

class Adapter:
    """Starts/stops a cluster and returns a connected client with all engines up."""

    name = ""

    def version(self) -> str:
        raise NotImplementedError

    def start(self, n: int, record_limit: int | None = None) -> tuple[Any, Any]:
        """Start controller + ``n`` engines; return (handle, client) once all are registered."""
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

    def start(self, n: int, record_limit: int | None = None) -> tuple[Any, Any]:
        from traitlets.config import Config

        import cluster_launcher
        config = Config()
        if record_limit is not None:
            # The controller's own command line, as a user would set it.
            config.ControllerLauncher.controller_args = [f"--DictDB.record_limit={record_limit}"]
        cluster = cluster_launcher.Cluster(n=n, config=config)
        client = cluster.__enter__()
        return cluster, client

    def stop(self, handle: Any, client: Any) -> None:
        handle.__exit__(None, None, None)

    def controller_pid(self, handle: Any) -> int:
        pid = getattr(handle.controller, "pid", 0)
        return pid if pid > 0 else _descendant_matching("controller")


class TheirsAdapter(Adapter):
    """ipyparallel with its default configuration (only the DB record limit is set for the
    memory workload, as on our side)."""

    name = "theirs"

    def version(self) -> str:
        import ipyparallel
        return ipyparallel.__version__

    def start(self, n: int, record_limit: int | None = None) -> tuple[Any, Any]:
        import ipyparallel
        args = [f"--DictDB.record_limit={record_limit}"] if record_limit is not None else []
        cluster = ipyparallel.Cluster(n=n, controller_args=args, log_level=logging.WARNING)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(n, timeout=RESULT_TIMEOUT)
        return cluster, client

    def stop(self, handle: Any, client: Any) -> None:
        client.close()
        handle.stop_cluster_sync()

    def controller_pid(self, handle: Any) -> int:
        return handle.controller.pid


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


# Workloads that share one running cluster, then those that start their own.
SHARED = {"throughput": workload_throughput, "latency": workload_latency,
          "bandwidth": workload_bandwidth, "map": workload_map}
OWN_CLUSTER = {"start": workload_start, "memory": workload_memory}
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
