"""The benchmark harness runs end to end on our side (``--ours-only --quick``)
and prints its table.  No timing is asserted: speed is what the benchmark
reports, not what a test checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"
# Every workload but the Slurm ones (test_quick_slurm_scheduler_load): the quick run stays well within its timeout.
PLAIN_WORKLOADS = [f"--only={name}" for name in
                   ("start", "throughput", "latency", "bandwidth", "map", "memory", "databases")]


@pytest.mark.timeout(90)
def test_quick_run_of_our_side_prints_the_table(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(RUN), "--ours-only", "--quick", "--json", str(results), *PLAIN_WORKLOADS],
        capture_output=True, text=True, timeout=80, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    header = out.splitlines()[0].split()
    assert header == ["workload", "unit", "ours", "theirs", "ratio", "target", "result"], out
    for label in ("local start, 4 engines ready", "LB apply_async no-op", "apply_sync round trip",
                  "push+pull", "raw pyzmq round trip", "LB map chunked", "controller RSS",
                  "SQLiteDB throughput as % of DictDB", "SQLite file+WAL", "db_query msg_id $in"):
        assert label in out, f"{label!r} missing from the table:\n{out}"

    report = json.loads(results.read_text())
    assert report["theirs"] is None
    assert report["ours"]["errors"] == {}, report["ours"]["errors"]
    measured = {row["key"]: row["ours"] for row in report["table"]}
    # Every row has a positive number from our side: each workload really ran.
    missing = [key for key, value in measured.items() if not (value and value > 0)]
    assert not missing, f"no measurement for {missing}:\n{out}"


@pytest.mark.timeout(90)
def test_quick_run_of_the_scale_workloads(tmp_path: Path) -> None:
    """Registration of real engines and of stand-ins (20): each row measured.  (The heartbeats workload is
    tests/test_scale.py's hog test at 64 engines: not run here again.)"""
    results = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(RUN), "--ours-only", "--quick", "--json", str(results), "--only=registration",
         "--only=standins"], capture_output=True, text=True, timeout=80, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(results.read_text())
    assert report["ours"]["errors"] == {}, report["ours"]["errors"]
    measured = {row["key"]: row["ours"] for row in report["table"]}
    assert measured["standins_20_fds"] > measured["standins_0_fds"], completed.stdout
    # CPU per period may round to 0 ms for an idle controller; every other row has a positive number.
    missing = [key for key, value in measured.items() if not (value and value > 0) and "cpu" not in key]
    assert not missing, f"no measurement for {missing}:\n{completed.stdout}"


def test_unknown_workload_is_refused_in_one_line(tmp_path: Path) -> None:
    completed = subprocess.run([sys.executable, str(RUN), "--only", "nosuch"],
                               capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert completed.returncode == 2
    assert "--only" in completed.stderr and "nosuch" in completed.stderr


@pytest.mark.timeout(90)
def test_quick_slurm_scheduler_load_counts_the_commands(tmp_path: Path) -> None:
    """On the single-node Slurm bed: 4 held engines as one array, then one job each; the counting
    wrappers saw the submissions, the polls and the stop."""
    from cluster_launcher.testing.batchbeds import require

    require("slurm")  # skips here without the bed; fails under CI, which installs it
    results = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(RUN), "--ours-only", "--quick", "--only", "scheduler_load", "--json", str(results)],
        capture_output=True, text=True, timeout=80, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Slurm cmds/min running, 4 engines, arrays" in completed.stdout, completed.stdout
    report = json.loads(results.read_text())
    assert report["ours"]["errors"] == {}, report["ours"]["errors"]
    metrics = report["ours"]["metrics"]
    assert metrics["load_arrays_submits"] == 1 and metrics["load_per_engine_submits"] == 4, metrics
    for variant in ("arrays", "per_engine"):
        assert metrics[f"load_{variant}_waiting_squeue"] >= 1, metrics
        assert metrics[f"load_{variant}_stop_scancel"] == 1, metrics
