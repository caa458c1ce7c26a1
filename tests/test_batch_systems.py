"""The batch launchers for real: Slurm (Debian's slurm-wlm + munge), PBS
through Slurm's own Torque wrappers (qsub/qstat/qdel), and Grid Engine, each
a single-node system started by the session's fixtures
(cluster_launcher.testing.batchbeds, installed by .ci/install-batch-systems).

Real controllers and engines: the engines run code; `list` shows the jobs;
a job that dies is reported with what the scheduler says; `stop` leaves the
queue empty (the bed's own job list, asked of the scheduler).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_launcher_sge import SGEEngineSetLauncher
from cluster_launcher_slurm import SlurmEngineSetLauncher
from traitlets.config import Config

from cluster_launcher import Client, Cluster
from cluster_launcher.launcher import BatchSystemLauncher, JobState
from cluster_launcher.paths import ensure_profile_dir
from cluster_launcher.protocol.connection import connection_file, write_private_json
from cluster_launcher.testing.processes import running_with, wait_for

pytestmark = pytest.mark.timeout(240)

CLI = [sys.executable, "-m", "cluster_launcher"]
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "batch.md"
# Launcher name -> (the bed fixture, its method giving the environment that selects it).
SYSTEMS = {"Slurm": ("slurm_bed", "env"), "PBS": ("slurm_bed", "pbs_env"), "SGE": ("sge_bed", "env")}
DELETE = {"Slurm": ["scancel"], "PBS": ["qdel"], "SGE": ["qdel"]}


def run(args: list[str], env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(params=list(SYSTEMS))
def system(request, env):
    """(launcher name, its bed, the environment of a user of that system)."""
    name = request.param
    fixture, env_method = SYSTEMS[name]
    bed = request.getfixturevalue(fixture)
    environ = {**env, **getattr(bed, env_method)()}
    yield name, bed, environ
    # A job that ended may still be listed for a moment while its processes are taken down (Slurm's
    # COMPLETING, which its Torque wrappers' qstat already calls C): a leaked job stays.
    try:
        wait_for(lambda: not bed.jobs(), 30, f"the {name} queue to be empty")
    except AssertionError:
        pass  # said below, with the jobs left
    left = bed.jobs()
    if left:
        bed.cancel_all()  # so one failure does not fail the tests after it
    assert not left, f"the test left {name} jobs in the queue: {left}"
    # A job the scheduler says ended may still be taking its processes down.
    wait_for(lambda: not running_with(environ["CLUSTER_LAUNCHER_DIR"]), 30, f"the {name} jobs' processes to end")


def _in_this_process(monkeypatch: pytest.MonkeyPatch, environ: dict) -> None:
    for name in ("CLUSTER_LAUNCHER_DIR", "PATH", "SLURM_CONF", "SGE_ROOT", "SGE_CELL", "SGE_QMASTER_PORT",
                 "SGE_EXECD_PORT"):
        if name in environ:
            monkeypatch.setenv(name, environ[name])


@pytest.mark.parametrize("controller", ["Local", "batch"])
def test_engines_run_code_list_shows_the_jobs_and_stop_empties_the_queue(system, controller, monkeypatch):
    name, bed, environ = system
    flags = [f"--engines={name}", f"--{name}Launcher.poll_interval=0.5"]
    if controller == "batch":
        flags.append(f"--controller={name}")
    started = run(["start", "-n", "4", "--daemonize", *flags], environ)
    assert started.returncode == 0, started.stdout + started.stderr
    assert re.search(rf"4 engines started \({name} job \d+, script \S+, output \S+\)", started.stdout), started.stdout
    assert len(bed.jobs()) >= 1

    _in_this_process(monkeypatch, environ)
    with Client(timeout=10) as client:
        client.wait_for_engines(4, timeout=60)
        assert sorted(client[:].apply_sync(lambda: 6 * 7)) == [42] * 4
    listed = run(["list"], environ)
    jobs = rf"{name} job \d+ (RUNNING|R|r)"
    expected = rf"{jobs}; {jobs}" if controller == "batch" else jobs
    assert re.search(rf"^default\s+default\s+running\s+4\s+\S+\s+{expected}$", listed.stdout, re.M), listed.stdout

    stopped = run(["stop"], environ)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: bed.jobs() == [], 60, f"the {name} queue to be empty")


def test_a_job_deleted_behind_the_clusters_back_is_reported_with_the_schedulers_word(system, monkeypatch):
    name, bed, environ = system
    _in_this_process(monkeypatch, environ)
    config = Config()
    config.Cluster.engine_launcher_class = name
    config[f"{name}Launcher"].poll_interval = 0.2
    cluster = Cluster(n=2, config=config)
    with cluster as client:
        assert len(client.ids) == 2
        (engines,) = cluster.engine_sets
        (job_id,) = engines.job_ids
        subprocess.run([*DELETE[name], job_id], env=environ, check=True, capture_output=True, timeout=60)
        wait_for(lambda: engines.poll() is not None, 60, f"the launcher to see {name} job {job_id} end")
        ((code, output, lines),) = engines.exited()
        said = {"Slurm": "CANCELLED", "PBS": "C", "SGE": "finished"}[name]  # what each scheduler tells
        assert lines[0].startswith(f"{name} job {job_id}: {said}"), lines
        wait_for(lambda: not client.ids, 60, "the controller to see the engines gone")


def test_engines_that_fail_at_start_are_reported_with_their_output_and_nothing_stays_queued(system):
    name, bed, environ = system
    failed = run(["start", "-n", "2", "--daemonize", f"--engines={name}", f"--{name}Launcher.poll_interval=0.5",
                  "--Engine.startup_command=raise SystemExit('no numpy here')"], environ)
    assert failed.returncode == 1
    first, *rest = failed.stderr.splitlines()
    assert re.match(rf"cluster-launcher start: {name} job \d+ of the engines \(.*\) exited with code \d+ before the "
                    "cluster was ready; see ", first), failed.stderr
    assert any("no numpy here" in line for line in rest), failed.stderr  # the job's own output


def _job_launcher(cls: type[BatchSystemLauncher], profile: Path, **traits) -> BatchSystemLauncher:
    """A ``cls`` for a profile holding a stand-in engine connection file."""
    ensure_profile_dir(str(profile))  # its log folder, where the job's output goes
    write_private_json(connection_file(str(profile), "engine", "c1"), {"key": "k3y", "location": "127.0.0.1"})
    return cls(profile_dir=str(profile), cluster_id="c1", **traits)


def test_sge_walltime_kill_is_reported_as_a_timeout(sge_bed, env, tmp_path, monkeypatch):
    """h_rt: Grid Engine kills the job within seconds of its limit, and qacct says why; the job
    ended, it did not fail."""
    _in_this_process(monkeypatch, {**env, **sge_bed.env()})
    engines = _job_launcher(SGEEngineSetLauncher, tmp_path / "profile", poll_interval=0.2, walltime="0:0:3",
                            batch_template="{header}\nsleep 600\n")
    engines.start(1)
    try:
        wait_for(lambda: engines.poll() is not None, 90, "Grid Engine to enforce h_rt")
        ((code, _, lines),) = engines.exited()
        assert code == 0  # killed (137) at its walltime: an end foreseen, not a failure
        assert re.match(r"SGE job \d+: finished \(qmaster enforced h_rt.*\): it reached its walltime \(0:0:3\); "
                        "ended, not failed$", lines[0]), lines
        assert engines.job_states()[engines.job_ids[0]].state.value == "timeout"
    finally:
        engines.stop()
    assert sge_bed.jobs() == []


def test_a_job_slurm_does_not_know_is_gone_and_a_slurm_that_does_not_answer_ends_nothing(slurm_bed, env, tmp_path,
                                                                                          monkeypatch, caplog):
    _in_this_process(monkeypatch, {**env, **slurm_bed.env()})
    forgotten = _job_launcher(SlurmEngineSetLauncher, tmp_path / "profile", poll_interval=0)
    forgotten.job_ids = ["999999"]  # squeue: "slurm_load_jobs error: Invalid job id specified", code 1
    assert forgotten.job_states()["999999"].state is JobState.GONE
    # The bed's configuration but for slurmctld's port, where nothing listens: "slurm_load_jobs error:
    # Unable to contact slurm controller (connect failure)", code 1.
    unreachable = tmp_path / "slurm.conf"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        unreachable.write_text(re.sub(r"(?m)^SlurmctldPort=\d+$", f"SlurmctldPort={port}", slurm_bed.conf.read_text()))
        assert f"\nSlurmctldPort={port}\n" in unreachable.read_text()
        monkeypatch.setenv("SLURM_CONF", str(unreachable))
        unanswered = _job_launcher(SlurmEngineSetLauncher, tmp_path / "profile", poll_interval=0)
        unanswered.job_ids = ["999999"]
        assert unanswered.job_states()["999999"].state is JobState.PENDING and unanswered.poll() is None
    assert "cannot ask Slurm for the state of job(s) 999999: `squeue" in caplog.text
    assert "Unable to contact slurm controller" in caplog.text


def test_dry_run_prints_and_submits_nothing(system):
    name, bed, environ = system
    shown = run(["start", "-n", "3", f"--engines={name}", f"--controller={name}", "--dry-run"], environ)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"the controller, with {name}ControllerLauncher:\n")
    assert f"3 engines, with {name}EngineSetLauncher:\n" in shown.stdout
    assert bed.jobs() == []
    assert not os.path.exists(Path(environ["CLUSTER_LAUNCHER_DIR"]) / "profile_default" / "batch")


def _doc_block(first_line: str) -> str:
    """The fenced block of docs/batch.md that starts with ``first_line``."""
    blocks = re.findall(r"^```\w*\n(.*?)^```", DOCS_PAGE.read_text(), re.S | re.M)
    return next(block for block in blocks if block.startswith(first_line))


def test_ipythons_pbs_walkthrough(slurm_bed, env, tmp_path, monkeypatch):
    """docs/batch.md's PBS walkthrough as it stands, through Slurm's PBS wrappers: IPython's config
    lines, its template with {n//4} and {queue} and an mpiexec of {n} engines, the controller as a job."""
    environ = {**env, **slurm_bed.pbs_env()}
    created = run(["profile", "create", "--parallel", "--profile=pbs"], environ)
    assert created.returncode == 0, created.stderr
    profile = Path(environ["CLUSTER_LAUNCHER_DIR"]) / "profile_pbs"
    config = _doc_block("# profile_pbs/cluster_config.py")
    config = config.replace("'veryshort.q'", "'debug'").replace("c.IPClusterEngines.n = 64", "c.IPClusterEngines.n = 4")
    with open(profile / "cluster_config.py", "a") as f:
        f.write(config + "c.PBSLauncher.poll_interval = 0.5\n")
    (profile / "pbs.engine.template").write_text(_doc_block("#PBS -N ipython\n#PBS -j oe\n#PBS -l walltime=00:10:00\n"
                                                            "#PBS -l nodes={n//4}"))
    (profile / "pbs.controller.template").write_text(_doc_block("#PBS -N ipython\n#PBS -j oe\n"
                                                                "#PBS -l walltime=00:10:00\n#PBS -l nodes=1:ppn=4"))
    started = subprocess.run([*CLI, "start", "--profile=pbs", "--daemonize"], env=environ, capture_output=True,
                             text=True, timeout=180, cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert re.search(r"controller started \(PBS job \d+", started.stdout), started.stdout
        assert "cluster ready with 4 engines" in started.stdout
        script = (profile / "batch" / "pbs-engines-default.sh").read_text()
        assert "#PBS -l nodes=1:ppn=4\n#PBS -q debug\n" in script and "mpiexec -n 4 cluster-launcher engine" in script
        _in_this_process(monkeypatch, environ)
        with Client(profile="pbs", timeout=10) as client:
            client.wait_for_engines(4, timeout=60)
            assert sorted(client[:].apply_sync(lambda: 2 + 2)) == [4] * 4
    finally:
        stopped = run(["stop", "--profile=pbs"], environ)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: slurm_bed.jobs() == [], 60, "the queue to be empty")
    wait_for(lambda: not running_with(environ["CLUSTER_LAUNCHER_DIR"]), 30, "the jobs' processes to end")


@pytest.mark.timeout(300)
def test_slurm_engines_drain_before_their_walltime_and_the_job_ends_rather_than_fails(slurm_bed, env, monkeypatch):
    """--time=00:01:00 and --signal=B:USR1@20: the engine learns its deadline from the job
    script, drains (at SIGUSR1, or Engine.drain_margin seconds before the deadline, whichever
    comes first: Slurm 22.05 looks at time limits only every 30 s) and exits 0 before Slurm's
    kill; the job is COMPLETED, and the launcher reports it ended with code 0."""
    environ = {**env, **slurm_bed.env()}
    _in_this_process(monkeypatch, environ)
    config = Config()
    config.Cluster.engine_launcher_class = "Slurm"
    config.SlurmLauncher.poll_interval = 0.5
    config.SlurmEngineSetLauncher.walltime = "00:01:00"
    config.SlurmEngineSetLauncher.walltime_signal = 20
    config.Engine.drain_margin = 15
    cluster = Cluster(n=1, config=config)
    with cluster as client:
        (engines,) = cluster.engine_sets
        (job_id,) = engines.job_ids
        script = Path(engines.job_script).read_text()
        assert "#SBATCH --time=00:01:00\n#SBATCH --signal=B:USR1@20\n" in script, script
        assert f"\nexec {sys.executable} -m cluster_launcher engine " in script, script  # the engine is the batch shell
        (engine_id,) = client.ids
        left = client.queue_status()[engine_id]["deadline"] - time.time()
        assert 0 < left <= 61, left
        assert client[engine_id].apply_sync(lambda: 6 * 7) == 42
        wait_for(lambda: engines.poll() is not None, 150, f"Slurm job {job_id} to end")
        ((code, output, lines),) = engines.exited()
        # COMPLETED, not TIMEOUT: the engine left before the kill.
        assert (code, lines[0]) == (0, f"Slurm job {job_id}: COMPLETED"), lines
        wait_for(lambda: not client.ids, 30, "the drained engine to leave client.ids")
        said = Path(output).read_text()
        assert re.search(r"draining: (SIGUSR1|\d+ s before the job's walltime)", said), said
        assert "Traceback" not in said, said
    assert slurm_bed.jobs() == []


@pytest.mark.timeout(240)
def test_grid_engine_signals_its_engines_at_the_soft_limit_and_they_drain_before_h_rt(sge_bed, env, monkeypatch):
    """walltime 0:1:0 with walltime_signal=45: s_rt=0:0:15 makes Grid Engine send SIGUSR1 some 45 s
    before h_rt's kill (and before the deadline the script exports, less drain_margin): the engine,
    the job's shell, drains on that signal, and the job ends with exit status 0."""
    environ = {**env, **sge_bed.env()}
    _in_this_process(monkeypatch, environ)
    config = Config()
    config.Cluster.engine_launcher_class = "SGE"
    config.SGELauncher.poll_interval = 0.5
    config.SGEEngineSetLauncher.walltime = "0:1:0"
    config.SGEEngineSetLauncher.walltime_signal = 45
    config.Engine.drain_margin = 5
    cluster = Cluster(n=1, config=config)
    with cluster as client:
        (engines,) = cluster.engine_sets
        script = Path(engines.job_script).read_text()
        assert "#$ -l h_rt=0:1:0\n#$ -l s_rt=0:00:15\n" in script, script
        assert client[:].apply_sync(lambda: 6 * 7) == [42]
        wait_for(lambda: engines.poll() is not None, 120, "the Grid Engine job to end")
        ((code, output, lines),) = engines.exited()
        assert code == 0 and lines[0].startswith(f"SGE job {engines.job_ids[0]}: finished"), lines
        said = Path(output).read_text()
        assert "draining: SIGUSR1" in said, said
        assert "Traceback" not in said, said
        wait_for(lambda: not client.ids, 30, "the drained engine to leave client.ids")
    assert sge_bed.jobs() == []


def test_a_slurm_job_whose_engine_was_killed_is_resubmitted(slurm_bed, env, monkeypatch):
    """The engine SIGKILLed inside its job: Slurm ends the job FAILED, and
    Cluster's supervisor thread submits it again in its slot."""
    environ = {**env, **slurm_bed.env()}
    _in_this_process(monkeypatch, environ)
    config = Config()
    config.Cluster.engine_launcher_class = "Slurm"
    config.Cluster.engine_restart_delay = 0.2
    config.SlurmLauncher.poll_interval = 0.2
    cluster = Cluster(n=1, config=config)
    said: list[str] = []
    cluster.warn = said.append
    with cluster as client:
        (engines,) = cluster.engine_sets
        (first_job,) = engines.job_ids
        (old_id,) = client.ids
        os.kill(client.engines[old_id]["pid"], 9)
        wait_for(lambda: engines.restarts == {"0": 1}, 120, f"Slurm job {first_job} to be resubmitted; said: {said}")
        assert engines.job_ids != [first_job] and engines.job_sizes == [1]
        assert any(f"Slurm job {first_job} (engine slot 0)" in line for line in said), said
        wait_for(lambda: len(client.ids) == 1 and client.ids != [old_id], 120,
                 "the resubmitted job's engine to register, the dead one to be gone")
        assert client[:].apply_sync(lambda: 6 * 7) == [42]
    wait_for(lambda: not slurm_bed.jobs(), 60, "the Slurm queue to be empty")
