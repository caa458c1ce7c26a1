"""LSF and Windows HPC end to end, where neither can be installed: the
launchers submit, poll and stop through fake `bsub`/`bjobs`/`bkill` and
`job` commands on PATH (cluster_launcher.testing.fake_batch) that print what
the real ones print (batch_samples, each sample's source cited) and run the
jobs as local processes.  Real controllers and engines; a cluster's engines
run code; `stop` leaves no job running and no process behind (by PID)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from traitlets.config import Config

from cluster_launcher import Client, Cluster
from cluster_launcher.cluster import state_file
from cluster_launcher.testing import fake_batch
from cluster_launcher.testing.processes import wait_for

pytestmark = pytest.mark.timeout(180)

CLI = [sys.executable, "-m", "cluster_launcher"]
SYSTEMS = {"LSF": "lsf", "WindowsHPC": "winhpc"}


def run(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(params=list(SYSTEMS))
def batch(request, env, tmp_path):
    """(launcher name, environment with the system's fake commands first on PATH, the fakes' folder)."""
    name = request.param
    folder = tmp_path / "fake"
    env = {**env, **fake_batch.install_fake_commands(SYSTEMS[name], folder, kill_grace=2.0)}
    yield name, env, folder
    left = fake_batch.stop_all(folder)
    assert not left, f"the test left {name} jobs running: pids {left}"


def _record(env: dict) -> dict:
    return json.loads(Path(state_file(str(Path(env["CLUSTER_LAUNCHER_DIR"]) / "profile_default"))).read_text())


def test_engines_run_code_list_shows_the_job_and_stop_leaves_nothing(batch, monkeypatch):
    name, env, folder = batch
    started = run(["start", f"--engines={name}", "-n", "3", "--daemonize", f"--{name}Launcher.poll_interval=0.5"],
                  env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert re.search(rf"3 engines started \({name} job 1001, script \S+, output \S+\)", started.stdout), started.stdout
    record = _record(env)["engines"][0]
    assert record["job_ids"] == ["1001"] and record["n"] == 3

    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", env["CLUSTER_LAUNCHER_DIR"])
    with Client(timeout=10) as client:
        client.wait_for_engines(3, timeout=30)
        assert sorted(client[:].apply_sync(lambda: 6 * 7)) == [42] * 3
    listed = run(["list"], env)
    assert re.search(rf"default\s+default\s+running\s+3\s+\d+\s+{name} job 1001 (RUN|Running)$", listed.stdout,
                     re.M), listed.stdout

    stopped = run(["stop"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert fake_batch.live_pids(folder) == []


def test_a_job_deleted_behind_the_clusters_back_is_reported_with_the_schedulers_reason(batch, monkeypatch):
    name, env, folder = batch
    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", env["CLUSTER_LAUNCHER_DIR"])
    monkeypatch.setenv("PATH", env["PATH"])
    config = Config()
    config.Cluster.engine_launcher_class = name
    config[f"{name}Launcher"].poll_interval = 0.2
    cluster = Cluster(n=2, config=config)
    with cluster as client:
        assert len(client.ids) == 2
        cancel = ["bkill", "1001"] if name == "LSF" else ["job", "cancel", "1001"]
        subprocess.run(cancel, env=env, check=True, capture_output=True, timeout=30)
        (engines,) = cluster.engine_sets
        wait_for(lambda: engines.poll() is not None, 30, f"the launcher to see {name} job 1001 end")
        ((code, output, lines),) = engines.exited()
    expected = {"LSF": "LSF job 1001: EXIT (TERM_OWNER: job killed by owner)",
                "WindowsHPC": "WindowsHPC job 1001: Canceled"}[name]
    assert lines[0] == expected
    assert engines.exit_label("engine") == f"{name} job 1001 of the engines ({expected.split(': ', 1)[1]})"
    assert fake_batch.live_pids(folder) == []


def test_a_failed_engine_job_is_resubmitted_in_its_slot(env, tmp_path, monkeypatch):
    """An engine killed inside its job ends the job failed (its exit code):
    Cluster's supervisor thread submits it again, same size, in the same slot."""
    folder = tmp_path / "fake"
    env = {**env, **fake_batch.install_fake_commands("lsf", folder, kill_grace=2.0)}
    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", env["CLUSTER_LAUNCHER_DIR"])
    monkeypatch.setenv("PATH", env["PATH"])
    config = Config()
    config.Cluster.engine_launcher_class = "LSF"
    config.Cluster.engine_restart_delay = 0.2
    config.LSFLauncher.poll_interval = 0.2
    cluster = Cluster(n=1, config=config)
    said: list[str] = []
    cluster.warn = said.append
    try:
        with cluster as client:
            (engines,) = cluster.engine_sets
            (first_job,) = engines.job_ids
            (old_id,) = client.ids
            psutil.Process(client.engines[old_id]["pid"]).kill()
            wait_for(lambda: engines.restarts == {"0": 1}, 60, f"the job to be resubmitted; said: {said}")
            assert engines.job_ids != [first_job] and engines.job_sizes == [1] and engines.n == 1
            assert any(f"LSF job {first_job} (engine slot 0) exited with code" in line for line in said), said
            wait_for(lambda: len(client.ids) == 1 and client.ids != [old_id], 60,
                     "the resubmitted job's engine to register, the dead one to be gone")
            assert client[:].apply_sync(lambda: 6 * 7) == [42]
    finally:
        left = fake_batch.stop_all(folder)
    assert not left, f"the test left LSF jobs running: pids {left}"
