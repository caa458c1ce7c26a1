"""Batch at scale on the real single-node Slurm (cluster_launcher.testing.batchbeds):
engines as one job array, one ``squeue`` per poll for every job of a
cluster (a wrapper counts the calls), and adaptive scaling that does not
over-submit while the queue holds its jobs (``--hold``, then ``scontrol
release``), then gives the engines back."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from cluster_launcher_slurm import SlurmEngineSetLauncher
from traitlets.config import Config

from cluster_launcher import Cluster
from cluster_launcher.testing.processes import running_with, wait_for, wait_for_gate

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def slurm(slurm_bed, env, tmp_path, monkeypatch):
    """This process as a Slurm user of the bed, with ``squeue`` wrapped so
    that each call adds a line to ``tmp_path/squeue-calls``."""
    environ = {**env, **slurm_bed.env()}
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    calls = tmp_path / "squeue-calls"
    real = subprocess.run(["which", "squeue"], env=environ, capture_output=True, text=True, check=True).stdout.strip()
    wrapper = wrappers / "squeue"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    environ["PATH"] = f"{wrappers}{os.pathsep}{environ['PATH']}"
    for name in ("CLUSTER_LAUNCHER_DIR", "PATH", "SLURM_CONF"):
        monkeypatch.setenv(name, environ[name])
    yield slurm_bed, calls
    try:  # a cancelled job stays listed (COMPLETING) while its processes are taken down
        wait_for(lambda: not slurm_bed.jobs(), 30, "the Slurm queue to be empty")
    except AssertionError:
        pass  # said below, with the jobs left
    left = slurm_bed.jobs()
    if left:
        slurm_bed.cancel_all()
    assert not left, f"the test left Slurm jobs in the queue: {left}"
    wait_for(lambda: not running_with(environ["CLUSTER_LAUNCHER_DIR"]), 30, "the jobs' processes to end")


def _squeue_calls(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def _config(**slurm: object) -> Config:
    config = Config()
    config.Cluster.engine_launcher_class = "Slurm"
    config.Cluster.start_timeout = 120
    for name, value in {"poll_interval": 0.5, "submit_interval": 0, **slurm}.items():
        config.SlurmLauncher[name] = value
    return config


def test_eight_engines_are_one_array_job_of_eight_tasks_that_all_register(slurm):
    bed, _ = slurm
    cluster = Cluster(n=8, config=_config())
    with cluster as client:
        ((job_id,),) = [engines.job_ids for engines in cluster.engine_sets]
        tasks = bed.run("squeue", "--noheader", "--array", f"--jobs={job_id}", "--format=%F %K %T").stdout.split("\n")
        listed = sorted(line.split()[1] for line in tasks if line.strip())
        assert listed == [str(i) for i in range(1, 9)], tasks  # one array job id, tasks 1..8
        assert len(client.ids) == 8
        hosts = client[:].apply_sync(lambda: (os.environ["SLURM_ARRAY_JOB_ID"], os.environ["SLURM_ARRAY_TASK_ID"]))
        assert {job for job, _ in hosts} == {job_id} and sorted(int(task) for _, task in hosts) == list(range(1, 9))
    wait_for(lambda: bed.jobs() == [], 60, "scancel of the array to empty the queue")


def test_one_squeue_per_poll_for_the_controller_job_and_every_engine_set(slurm):
    """A controller job and three engine sets: each poll of all four launchers is one squeue call."""
    bed, calls = slurm
    config = _config(poll_interval=600)  # no launcher asks by itself during the test: the polls below do
    config.Cluster.controller_launcher_class = "Slurm"
    cluster = Cluster(n=1, config=config)
    with cluster:
        cluster.add_engines(1)
        cluster.add_engines(1)
        launchers = [cluster.controller, *cluster.engine_sets]
        assert len(launchers) == 4 and len({job for launcher in launchers for job in launcher.job_ids}) == 4
        before = len(_squeue_calls(calls))
        polls = 5
        for _ in range(polls):
            cluster.engine_sets[0].job_states(fresh=True)  # asks squeue now, about every job of the cluster
            assert all(launcher.poll() is None for launcher in launchers)  # the others read that answer
        made = _squeue_calls(calls)[before:]
        assert len(made) == polls, made
        assert all(len(call.split("--jobs=")[1].split(",")) == 4 for call in made), made
    wait_for(lambda: bed.jobs() == [], 60, "the queue to be empty")


def test_adapt_does_not_over_submit_while_the_queue_holds_its_jobs(slurm, make_gate):
    """Every job is submitted held (--hold): the queue is 'slow'.  Decision after decision, the one array
    asked for is counted and nothing more is submitted; once released, its engines register and take the
    tasks; then, idle, they are given back and the queue empties."""
    bed, calls = slurm
    config = _config(job_extra_directives=["--hold"])
    cluster = Cluster(n=0, config=config, adaptive=True, adapt_minimum=0, adapt_maximum=4, adapt_interval=3600,
                      adapt_idle_timeout=0, adapt_scale_in_wait=2)
    with cluster as client:
        adapter = cluster.adapter
        adapter.stop()  # its thread: this test takes each decision itself
        view = client.load_balanced_view()
        gate = make_gate()
        held = view.map_async(_task_id_after_gate, [gate.path] * 4)
        wait_for(lambda: client.queue_status()["unassigned"] == 4, 30, "the 4 tasks to wait in the controller")
        first = adapter.step()
        assert first.start == 4, first.reason
        ((job_id,),) = [s.job_ids for s in cluster.engine_sets]
        for _ in range(5):
            later = adapter.step()
            assert not later.acts and "steady at 4" in later.reason and "4 asked for" in later.reason, later.reason
        assert len(cluster.engine_sets) == 1 and len(bed.jobs()) == 4  # still the one array, its 4 tasks held
        bed.run("scontrol", "release", job_id)
        wait_for(lambda: len(client.ids) == 4, 120, "the released engines to register")
        gate.open()
        held.get(timeout=60)
        wait_for(lambda: (adapter.step(), not client.ids)[1], 60, "the idle engines to be given back")
        assert [len(d.retire) for d in adapter.acted if d.retire] == [4]
        wait_for(lambda: bed.jobs() == [], 60, "the array tasks to end")
        assert cluster.engine_sets[0].job_states(fresh=True)[job_id].state.value in ("done", "gone")
        adapter.step()
        assert cluster.engine_sets == []  # the ended array is forgotten
    assert any("--jobs=" in call for call in _squeue_calls(calls))


def _task_id_after_gate(path: str) -> str:
    """Run on an engine: wait at the gate, then say which array task ran it."""
    wait_for_gate(path, timeout=120)
    return os.environ.get("SLURM_ARRAY_TASK_ID", "")


def test_a_job_of_ours_is_found_by_name_after_a_submit_that_timed_out(slurm):
    """What a launcher does before submitting again after sbatch timed out: squeue --name."""
    bed, _ = slurm
    job_id = bed.run("sbatch", "--parsable", "--hold", "--job-name=cluster-launcher-engines-adopt",
                     "--wrap=sleep 600").stdout.strip()
    try:
        launcher = SlurmEngineSetLauncher()
        assert launcher.submitted_jobs_named("cluster-launcher-engines-adopt") == [job_id]
        assert launcher.submitted_jobs_named("cluster-launcher-engines-other") == []
    finally:
        bed.run("scancel", job_id)
    wait_for(lambda: bed.jobs() == [], 60, "the held job to be cancelled")
