"""`cluster-launcher start` inside a batch allocation (docs/batch.md, "One
allocation: your own job script"): the page's Slurm job script submitted
with sbatch to a real Slurm (cluster_launcher.testing.batchbeds.SlurmBed),
its engines one srun job step; a PBS job's node file given to the real
MPICH mpiexec; and what `start --dry-run` says inside a Slurm job."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_launcher import Client
from cluster_launcher.testing.processes import running_with, wait_for

pytestmark = pytest.mark.timeout(240)

CLI = [sys.executable, "-m", "cluster_launcher"]
BIN = os.path.dirname(sys.executable)  # this venv's: cluster-launcher, python, MPICH's mpiexec
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "batch.md"
# What the page's job script runs between start and stop: the client, reporting where each engine runs.
ANALYSIS = '''\
import json
from cluster_launcher import Client

def where():
    import os
    return {name: os.environ.get(name) for name in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID")}

with Client(timeout=30) as client:
    client.wait_for_engines(3, timeout=60)
    with open("engines.json", "w") as f:
        json.dump({"ids": client.ids, "engines": client[:].apply_sync(where)}, f)
'''
SLURM_JOB = {"SLURM_JOB_ID": "42", "SLURM_JOBID": "42", "SLURM_JOB_NODELIST": "node[17-18]", "SLURM_NTASKS": "8",
             "SLURM_JOB_CPUS_PER_NODE": "4(x2)"}


def _doc_block(first_lines: str) -> str:
    """The fenced block of docs/batch.md that starts with ``first_lines``."""
    blocks = re.findall(r"^```\w*\n(.*?)^```", DOCS_PAGE.read_text(), re.S | re.M)
    return next(block for block in blocks if block.startswith(first_lines))


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def _without_allocation(env: dict[str, str]) -> dict[str, str]:
    """``env`` less any batch job's variables (a test run inside an allocation of its own)."""
    return {k: v for k, v in env.items() if not k.startswith(("SLURM_", "PBS_")) or k == "SLURM_CONF"}


def test_the_pages_job_script_runs_the_engines_as_one_srun_step(slurm_bed, env, tmp_path):
    environ = {**_without_allocation(env), **slurm_bed.env(), "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}
    script = tmp_path / "job.sh"
    script.write_text(_doc_block("#!/bin/sh\n#SBATCH --ntasks=3\n"))
    (tmp_path / "my_analysis.py").write_text(ANALYSIS)
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], env=environ, cwd=tmp_path, capture_output=True,
                               text=True, timeout=60, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        wait_for(lambda: job_id not in slurm_bed.jobs(), 150, f"Slurm job {job_id} to end")
    finally:
        if slurm_bed.jobs():
            slurm_bed.cancel_all()
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert f"inside Slurm job {job_id} (1 node, 3 tasks): 3 engines through Srun" in output, output
    assert re.search(r"3 engines started \(srun pid \d+ with 3 tasks, log \S+\)", output), output
    assert "stopped cluster 'default' of profile 'default' (3 engines and the controller)" in output, output
    found = json.loads((tmp_path / "engines.json").read_text())
    assert found["ids"] == [0, 1, 2]
    engines = found["engines"]
    assert {engine["SLURM_JOB_ID"] for engine in engines} == {job_id}
    (step,) = {engine["SLURM_STEP_ID"] for engine in engines}  # one job step, not the batch step
    assert step.isdigit(), engines
    assert sorted(engine["SLURM_PROCID"] for engine in engines) == ["0", "1", "2"]
    assert slurm_bed.jobs() == []
    wait_for(lambda: not running_with(environ["CLUSTER_LAUNCHER_DIR"]), 30, "the cluster's processes to end")
    assert not list(Path(environ["CLUSTER_LAUNCHER_DIR"]).glob("profile_default/pid/cluster-*.json"))


def test_inside_a_pbs_job_the_engines_are_mpich_ranks_on_the_node_file(env, tmp_path, monkeypatch):
    nodes = tmp_path / "nodes"
    nodes.write_text(f"{socket.gethostname()}\n" * 2)
    environ = {**_without_allocation(env), "PBS_NODEFILE": str(nodes), "PBS_JOBID": "17.head",
               "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}  # MPICH's mpiexec first, not a Slurm wrapper
    started = _run(["start", "--daemonize"], environ)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "inside PBS job 17.head (1 node, 2 tasks): 2 engines through MPI" in started.stdout, started.stdout
        assert re.search(r"2 engines started \(mpiexec pid \d+ with 2 ranks", started.stdout), started.stdout
        state = next(Path(environ["CLUSTER_LAUNCHER_DIR"]).glob("profile_default/pid/cluster-*.json"))
        (engines,) = json.loads(state.read_text())["engines"]
        assert engines["mpi_flavor"] == "mpich"
        monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", environ["CLUSTER_LAUNCHER_DIR"])
        with Client(timeout=10) as client:
            client.wait_for_engines(2, timeout=60)
            ranks = client[:].apply_sync(lambda: __import__("os").environ.get("PMI_RANK"))
        assert sorted(ranks) == ["0", "1"]
        log = Path(environ["CLUSTER_LAUNCHER_DIR"]) / "profile_default" / "log" / "engines-default.log"
        assert f" -n 2 -f {nodes} " in log.read_text().splitlines()[0]
    finally:
        stopped = _run(["stop"], environ)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: not running_with(environ["CLUSTER_LAUNCHER_DIR"]), 30, "the cluster's processes to end")


def test_dry_run_inside_a_slurm_job_says_so_and_shows_srun(env):
    environ = {**_without_allocation(env), **SLURM_JOB}
    shown = _run(["start", "--dry-run"], environ)
    assert shown.returncode == 0, shown.stderr
    first, *rest = shown.stdout.splitlines()
    assert first == ("inside Slurm job 42 (2 nodes, 8 tasks): 8 engines through Srun "
                     "(--engines=Local starts them on this node instead)")
    assert rest[0] == "the controller, with LocalControllerLauncher:"
    assert "8 engines, with SrunEngineSetLauncher:" in rest
    assert any(line.startswith("  $ srun --ntasks=8 --overlap --kill-on-bad-exit=0 ") for line in rest), rest


def test_n_and_an_explicit_launcher_win_inside_a_slurm_job(env):
    environ = {**_without_allocation(env), **SLURM_JOB}
    fewer = _run(["start", "--dry-run", "-n", "2"], environ)
    assert fewer.stdout.startswith("inside Slurm job 42 (2 nodes, 8 tasks): 2 engines through Srun"), fewer.stdout
    assert "  $ srun --ntasks=2 " in fewer.stdout
    local = _run(["start", "--dry-run", "-n", "2", "--engines=Local"], environ)
    assert local.returncode == 0, local.stderr
    assert "inside" not in local.stdout and "2 engines, with LocalEngineSetLauncher:" in local.stdout
