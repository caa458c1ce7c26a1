"""Benchmark cluster-launcher against ipyparallel on this machine, in one run.

    uv run python benchmarks/run.py              # full run (a few minutes)
    uv run python benchmarks/run.py --quick      # smoke run, tiny sizes
    uv run python benchmarks/run.py --only latency --only bandwidth
    uv run python benchmarks/run.py --ours-only --quick
    uv run python benchmarks/run.py --only scheduler_load --only slurm_start   # on the Slurm test bed

Our side runs with this interpreter; ipyparallel (latest from PyPI, with numpy)
runs the same workloads (workloads.py) in a virtual environment created once
under benchmarks/.venvs/.  Each side runs in its own subprocess with its own
temporary home, so neither sees the other's profiles.  Prints a table (ours,
theirs, ratio, target, pass/fail) and writes the JSON to
benchmarks/results/latest.json.  The Slurm workloads (batch_at_scale.py) run on a
single-node Slurm test bed started for the run, and are skipped, with a line
saying why, where it cannot start.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_DIR = HERE / ".venvs" / "ipyparallel"
DEFAULT_JSON = HERE / "results" / "latest.json"
THEIR_PACKAGES = ["ipyparallel", "numpy", "psutil"]
SIDE_TIMEOUT = {"full": 1800, "quick": 240}  # seconds one side may take before it is killed

sys.path.insert(0, str(HERE))
import batch_at_scale  # noqa: E402
from workloads import FULL, QUICK, WORKLOAD_NAMES, Sizes  # noqa: E402

SLURM_WORKLOAD_NAMES = list(batch_at_scale.WORKLOADS)
ALL_WORKLOAD_NAMES = WORKLOAD_NAMES + SLURM_WORKLOAD_NAMES

# --- the ipyparallel environment --------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def their_environment_works(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import ipyparallel, numpy, psutil"],
                           capture_output=True, timeout=120)
    return probe.returncode == 0


def ensure_their_environment(refresh: bool) -> Path:
    """The python of the cached ipyparallel venv, created (with uv if present) on first use."""
    python = venv_python(VENV_DIR)
    if refresh and VENV_DIR.exists():
        shutil.rmtree(VENV_DIR)
    if their_environment_works(python):
        return python
    print(f"creating {VENV_DIR.relative_to(HERE.parent)} with {' '.join(THEIR_PACKAGES)} ...",
          file=sys.stderr, flush=True)
    VENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if uv:
        steps = [[uv, "venv", "--quiet", "--python", version, str(VENV_DIR)],
                 [uv, "pip", "install", "--quiet", "--python", str(python), *THEIR_PACKAGES]]
    else:
        steps = [[sys.executable, "-m", "venv", str(VENV_DIR)],
                 [str(python), "-m", "pip", "install", "--quiet", *THEIR_PACKAGES]]
    for step in steps:
        subprocess.run(step, check=True, timeout=600)
    if not their_environment_works(python):
        raise SystemExit(f"error: {VENV_DIR}: ipyparallel environment does not import; "
                         "rerun with --refresh-venv")
    return python


# --- running the sides -------------------------------------------------------------------

def run_side(side: str, python: Path | str, quick: bool, only: list[str]) -> dict[str, Any]:
    """Run workloads.py for one side in a subprocess with a throwaway home directory."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as home:
        env = dict(os.environ)
        env["IPYTHONDIR"] = os.path.join(home, "ipython")
        env["CLUSTER_LAUNCHER_DIR"] = os.path.join(home, "cluster-launcher")
        env.pop("VIRTUAL_ENV", None)  # `uv run` sets it; it must not leak into the other venv
        out = os.path.join(home, "report.json")
        command = [str(python), str(HERE / "workloads.py"), "--side", side, "--out", out]
        command += ["--quick"] if quick else []
        for name in only:
            command += ["--only", name]
        print(f"running {side} ...", file=sys.stderr, flush=True)
        try:
            completed = subprocess.run(command, env=env, cwd=home,
                                       timeout=SIDE_TIMEOUT["quick" if quick else "full"])
        except subprocess.TimeoutExpired:
            return {"side": side, "metrics": {}, "errors": {"all": "timed out"}}
        if completed.returncode != 0 or not os.path.exists(out):
            return {"side": side, "metrics": {},
                    "errors": {"all": f"workloads.py exited with {completed.returncode}"}}
        with open(out) as report:
            return json.load(report)


def run_zmq_baseline(sizes: Sizes) -> dict[str, float]:
    repeats = ",".join(str(sizes.bandwidth_repeats[mb]) for mb in sizes.bandwidth_mb)
    command = [sys.executable, str(HERE / "zmq_baseline.py"),
               "--sizes", ",".join(map(str, sizes.bandwidth_mb)), "--repeats", repeats]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if completed.returncode != 0:
        print(completed.stderr, file=sys.stderr)
        return {}
    return json.loads(completed.stdout)


def our_version() -> str:
    import cluster_launcher
    return cluster_launcher.__version__


def their_version(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "import ipyparallel; print(ipyparallel.__version__)"],
                          capture_output=True, text=True, timeout=120)
    return done.stdout.strip() or "?"


# --- the table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of the table: a metric, which way is better, and its target."""

    workload: str           # the --only name that produces it
    label: str
    key: str                # metric key in the workloads' JSON
    unit: str
    higher_is_better: bool
    target: str = "report"  # shown as is
    # (ours, theirs, baseline metrics) -> pass?  Returns None when what it
    # compares with was not measured; check None: no target, nothing to pass.
    check: Callable[[float, float | None, dict[str, float]], bool | None] | None = None


def at_least_twice_theirs(higher: bool) -> Callable[[float, float | None, dict], bool | None]:
    def check(ours: float, theirs: float | None, _: dict) -> bool | None:
        if theirs is None:
            return None
        return ours >= 2 * theirs if higher else ours * 2 <= theirs
    return check


def rows_for(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    for n in sizes.start_engine_counts:
        if n == 4:
            rows.append(Row("start", "local start, 4 engines ready", "start_4_s", "s", False,
                            "ours < 2 s", lambda ours, theirs, base: ours < 2.0))
        else:
            rows.append(Row("start", f"cluster start, {n} engines ready", f"start_{n}_s", "s", False))
    rows += [
        Row("throughput", f"LB apply_async no-op x{sizes.tasks}", "lb_apply_tasks_per_s", "tasks/s",
            True, ">= 2x theirs", at_least_twice_theirs(True)),
        Row("throughput", f"LB map no-op over {sizes.tasks}", "lb_map_noop_tasks_per_s", "tasks/s",
            True, ">= 2x theirs", at_least_twice_theirs(True)),
        Row("latency", f"apply_sync round trip, median of {sizes.latency_calls}",
            "latency_median_ms", "ms", False, ">= 2x better", at_least_twice_theirs(False)),
        Row("latency", f"apply_sync round trip, p99 of {sizes.latency_calls}",
            "latency_p99_ms", "ms", False, ">= 2x better", at_least_twice_theirs(False)),
    ]
    for mb in sizes.bandwidth_mb:
        rows += [Row("bandwidth", f"push {mb} MB array", f"push_{mb}mb_mb_per_s", "MB/s", True),
                 Row("bandwidth", f"pull {mb} MB array", f"pull_{mb}mb_mb_per_s", "MB/s", True)]
    big = max(sizes.bandwidth_mb)
    rows += [
        Row("bandwidth", f"push+pull {big} MB, time", f"pushpull_{big}mb_s", "s", False,
            "<= 1.5x raw zmq",
            lambda ours, theirs, base: ours <= 1.5 * base[f"zmq_roundtrip_{big}mb_s"]),
        Row("bandwidth", f"raw pyzmq round trip {big} MB", f"zmq_roundtrip_{big}mb_s", "s", False,
            "baseline"),
        Row("map", f"LB map chunked ({sizes.map_items} items, chunk {sizes.map_chunksize})",
            "map_lb_chunked_items_per_s", "items/s", True),
        Row("map", f"direct map ({sizes.map_items} items)", "map_direct_items_per_s", "items/s",
            True),
        Row("memory", "controller RSS, 0 tasks", "mem_0_mb", "MB", False),
        Row("memory", f"controller RSS, {sizes.memory_tasks // 2} tasks", "mem_half_mb", "MB", False),
        Row("memory", f"controller RSS, {sizes.memory_tasks} tasks", "mem_full_mb", "MB", False,
            "ours <= 1.2x ours@half",
            lambda ours, theirs, base: ours <= 1.2 * base["ours_mem_half_mb"]),
    ]
    rows += database_rows(sizes)
    rows += scale_rows(sizes)
    rows += slurm_rows(batch_at_scale.QUICK if sizes is QUICK else batch_at_scale.FULL)
    return rows


def slurm_rows(sizes: batch_at_scale.SlurmSizes) -> list[Row]:
    """The rows of the Slurm workloads (batch_at_scale.py): counts and times, lower is better."""
    steady = 60 / 5  # one squeue per poll_interval (5 s), whatever the number of engines

    def at_most_steady(ours: float, theirs: float | None, _: dict) -> bool:
        return ours <= steady

    rows = []
    for workload, label, key, unit in batch_at_scale.row_specs(sizes):
        # A window shorter than a few poll periods scales its one squeue to more than 12 a minute:
        # only the full run's windows say anything about the rate.
        if "running_per_min" in key and sizes.window >= 6 * 5:
            rows.append(Row(workload, label, key, unit, False, f"ours <= {steady:g}/min", at_most_steady))
        else:
            rows.append(Row(workload, label, key, unit, False))
    return rows


def scale_rows(sizes: Sizes) -> list[Row]:
    """Registration at scale: real engines on both sides, stand-ins and heartbeats under load ours only."""
    n = sizes.registration_engines
    rows = [Row("registration", f"{n} real engines registered, each ran a no-op", f"register_{n}_real_s", "s", False),
            Row("registration", f"controller RSS, {n} real engines", f"register_{n}_real_rss_mb", "MB", False),
            Row("registration", f"controller open files, {n} real engines", f"register_{n}_real_fds", "fds",
                False)]
    for count in (0, *sizes.standin_counts):
        if count:
            rows.append(Row("standins", f"{count} stand-in engines registered, each ran a no-op",
                            f"standins_{count}_s", "s", False))
        rows += [Row("standins", f"controller RSS, {count} stand-ins", f"standins_{count}_rss_mb", "MB", False),
                 Row("standins", f"controller open files, {count} stand-ins", f"standins_{count}_fds", "fds", False),
                 Row("standins", f"controller CPU per 1 s heartbeat period, {count} stand-ins",
                     f"standins_{count}_cpu_ms_per_period", "ms", False)]
    hogged = sizes.hogged_engines

    def all_alive(ours: float, theirs: float | None, _: dict) -> bool:
        return ours == hogged

    rows.append(Row("heartbeats", f"engines kept of {hogged}, 0.1 s heartbeat, cores saturated",
                    f"hb_alive_{hogged}", "engines", True, f"all {hogged}", all_alive))
    return rows


def database_rows(sizes: Sizes) -> list[Row]:
    """The task-database rows: throughput per database, SQLite's size and its queries."""
    n = sizes.db_tasks
    limited = f"record_limit={sizes.record_limit}"
    return [
        Row("databases", f"LB apply_async no-op x{sizes.tasks}, DictDB", "db_dict_apply_tasks_per_s",
            "tasks/s", True),
        Row("databases", f"LB apply_async no-op x{sizes.tasks}, SQLiteDB", "db_sqlite_apply_tasks_per_s",
            "tasks/s", True),
        Row("databases", f"LB apply_async no-op x{sizes.tasks}, NoDB", "db_nodb_apply_tasks_per_s",
            "tasks/s", True),
        Row("databases", "SQLiteDB throughput as % of DictDB", "db_sqlite_pct_of_dict", "%", True,
            ">= 75%", lambda ours, theirs, base: ours >= 75.0),
        Row("databases", f"controller RSS, {n} tasks, SQLiteDB", "db_sqlite_all_rss_mb", "MB", False),
        Row("databases", f"SQLite file+WAL, {n} tasks", "db_sqlite_all_file_mb", "MB", False),
        Row("databases", f"controller RSS, {n} tasks, SQLiteDB {limited}", "db_sqlite_limited_rss_mb",
            "MB", False),
        Row("databases", f"SQLite file+WAL, {n} tasks, {limited}", "db_sqlite_limited_file_mb", "MB", False),
        Row("databases", f"db_query completed > t (~{max(1, n // 100)} of {n})", "db_query_recent_ms", "ms",
            False, "ours < 50 ms", lambda ours, theirs, base: ours < 50.0),
        Row("databases", f"db_query msg_id $in 100 ids (of {n})", "db_query_in_ms", "ms", False,
            "ours < 50 ms", lambda ours, theirs, base: ours < 50.0),
    ]


def format_number(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def build_table(sizes: Sizes, ours: dict, theirs: dict | None, baseline: dict[str, float],
                only: list[str]) -> list[dict[str, Any]]:
    """The table as a list of dicts (also what goes into the JSON)."""
    ours_metrics = ours.get("metrics", {})
    their_metrics = (theirs or {}).get("metrics", {})
    # Baseline-like values the checks may use: raw zmq and our own other rows.
    context = dict(baseline)
    context.update({f"ours_{key}": value for key, value in ours_metrics.items()})
    table = []
    for row in rows_for(sizes):
        if only and row.workload not in only:
            continue
        if row.key.startswith("zmq_"):
            our_value, their_value = baseline.get(row.key), None
        else:
            our_value, their_value = ours_metrics.get(row.key), their_metrics.get(row.key)
        ratio = None
        if our_value and their_value:
            ratio = our_value / their_value if row.higher_is_better else their_value / our_value
        if row.check is None:
            verdict = "-"
        elif our_value is None:
            verdict = "ERROR"
        else:
            try:
                passed = row.check(our_value, their_value, context)
            except KeyError:  # the baseline it compares with was not measured
                passed = None
            verdict = "n/a" if passed is None else "pass" if passed else "FAIL"
        table.append({"workload": row.workload, "label": row.label, "unit": row.unit,
                      "key": row.key, "ours": our_value, "theirs": their_value, "ratio": ratio,
                      "target": row.target, "result": verdict})
    return table


def render(table: list[dict[str, Any]], ours: dict, theirs: dict | None, notes: list[str] = ()) -> str:
    headers = ["workload", "unit", "ours", "theirs", "ratio", "target", "result"]
    lines = [[entry["label"], entry["unit"], format_number(entry["ours"]),
              format_number(entry["theirs"]),
              "-" if entry["ratio"] is None else f"{entry['ratio']:.2f}x",
              entry["target"], entry["result"]] for entry in table]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *lines, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(cell).ljust(width) if i in (0, 1, 5, 6) else str(cell).rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(headers), line(["-" * width for width in widths])]
    out += [line(cells) for cells in lines]
    out.append("ratio: how many times better ours is (>1: ours better, for times and rates alike)")
    for report in (ours, theirs):
        if report:
            for workload, error in report.get("errors", {}).items():
                out.append(f"{report['side']} {workload}: {error}")
    out += [f"note: {note}" for note in notes]
    return "\n".join(out)


def machine_description() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "date": datetime.datetime.now().isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke run)")
    parser.add_argument("--only", action="append", default=[], choices=ALL_WORKLOAD_NAMES,
                        metavar="NAME", help=f"run only this workload (repeatable): "
                        f"{', '.join(ALL_WORKLOAD_NAMES)}")
    parser.add_argument("--ours-only", action="store_true", help="skip ipyparallel")
    parser.add_argument("--refresh-venv", action="store_true",
                        help="recreate the cached ipyparallel environment (latest release)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL

    plain = [name for name in args.only if name in WORKLOAD_NAMES]
    slurm = [name for name in args.only if name in SLURM_WORKLOAD_NAMES] if args.only else SLURM_WORKLOAD_NAMES
    their_python = None if args.ours_only else ensure_their_environment(args.refresh_venv)
    run_plain = not args.only or bool(plain)
    theirs = None
    if their_python is not None:
        theirs = run_side("theirs", their_python, args.quick, plain) if run_plain else \
            {"side": "theirs", "metrics": {}, "errors": {}, "version": their_version(their_python)}
    ours = run_side("ours", sys.executable, args.quick, plain) if run_plain else \
        {"side": "ours", "metrics": {}, "errors": {}}
    if ours.get("version", "?") == "?":
        ours["version"] = our_version()
    notes: list[str] = []
    slurm_ours: dict[str, Any] = {}
    if slurm:
        slurm_ours, slurm_theirs, notes = batch_at_scale.run_slurm(slurm, args.quick, their_python)
        for report, found in ((ours, slurm_ours), (theirs, slurm_theirs)):
            if report is not None and found is not None:
                report["metrics"].update(found["metrics"])
                report["errors"].update(found["errors"])
    baseline = run_zmq_baseline(sizes) if not args.only or "bandwidth" in args.only else {}

    table = build_table(sizes, ours, theirs, baseline, args.only)
    if slurm and slurm_ours.get("skipped"):  # the line saying why is in the notes
        table = [entry for entry in table if entry["workload"] not in slurm]
    print(render(table, ours, theirs, notes))
    print(f"ours: cluster-launcher {ours.get('version', '?')}; theirs: "
          + (f"ipyparallel {theirs.get('version', '?')}" if theirs else "not run"))

    result = {"machine": machine_description(), "quick": args.quick, "table": table,
              "ours": ours, "theirs": theirs, "zmq_baseline": baseline, "notes": notes}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
