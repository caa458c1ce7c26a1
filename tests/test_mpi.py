"""IPython's MPI mode with a real mpiexec (MPICH from PyPI, a dev
dependency): engines as the ranks of one ``mpiexec``, the controller under
``mpiexec``, mpi4py collectives driven from the client, ranks mapped to
engine ids, ``stop`` leaving no process, and the two ways mpiexec goes wrong.
Each test runs the command line as a user would, in a temp
$CLUSTER_LAUNCHER_DIR, and checks processes by PID with psutil."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cluster_launcher import Client
from cluster_launcher.testing.processes import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(180)

CLI = [sys.executable, "-m", "cluster_launcher"]
TIMEOUT = 120
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _mpi_env(env: dict[str, str]) -> dict[str, str]:
    """The test's environment with the venv's bin (MPICH's mpiexec) first on PATH."""
    return {**env, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"}


def _cluster_processes(profile: Path) -> list[psutil.Process]:
    """Every process of the recorded cluster: the launchers' PIDs and all their descendants."""
    state = json.loads((profile / "pid" / "cluster-default.json").read_text())
    pids = [state["controller"]["pid"], *(engines["pid"] for engines in state["engines"])]
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        found += [process, *process.children(recursive=True)]
    return found


def _running(processes: list[psutil.Process]) -> list[str]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return left


ALLREDUCE = "from mpi4py import MPI; total = MPI.COMM_WORLD.allreduce(MPI.COMM_WORLD.rank + 1)"


def test_ipython_mpi_profile_flow_four_ranks_allreduce_and_stop(tmp_path, env):
    """profile create --parallel --profile=mpi; IPython's two lines in its config
    files; start -n 4 --profile=mpi; an allreduce across the ranks; stop."""
    env = _mpi_env(env)
    created = _run(["profile", "create", "--parallel", "--profile=mpi"], env)
    assert created.returncode == 0, created.stderr
    profile = tmp_path / "home" / "profile_mpi"
    with open(profile / "cluster_config.py", "a") as f:
        f.write("\nc.IPClusterEngines.engine_launcher_class = 'MPIEngineSetLauncher'\n")
    with open(profile / "engine_config.py", "a") as f:
        f.write("\nc.MPI.use = 'mpi4py'\n")

    started = _run(["start", "-n", "4", "--profile=mpi", "--daemonize"], env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "mpiexec pid" in started.stdout, started.stdout
    processes = _cluster_processes(profile)
    try:
        with Client(profile_dir=str(profile), timeout=10) as client:
            client.wait_for_engines(4, timeout=60)
            assert sorted(client.mpi_ranks.values()) == [0, 1, 2, 3]
            assert all(info["mpi"]["size"] == 4 for info in client.engines.values())
            assert sorted(client.mpi_engines) == [0, 1, 2, 3]
            rank0 = client[client.mpi_engines[0]]
            assert rank0.apply_sync(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.rank) == [0]
            client[:].execute(ALLREDUCE, block=True)
            assert client[:].pull("total", block=True) == [10, 10, 10, 10]
            engine_pids = [info["pid"] for info in client.engines.values()]
        ranks = [p for p in processes if p.pid in engine_pids]
        assert len(ranks) == 4, "the engines are the ranks under the recorded mpiexec"
        # The record names the ranks too, for a `stop` that finds mpiexec gone.
        (engine_set,) = json.loads((profile / "pid" / "cluster-default.json").read_text())["engines"]
        assert set(engine_pids) <= {pid for pid, _ in engine_set["tree"]}
    finally:
        stopped = _run(["stop", "--profile=mpi"], env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _running(processes) == [], "stop must leave no process of the MPI job"


def test_controller_under_mpiexec_too(tmp_path, env):
    env = _mpi_env(env)
    started = _run(["start", "-n", "2", "--controller=MPI", "--engines=MPI", "--daemonize",
                    "--Engine.mpi=mpi4py"], env)
    assert started.returncode == 0, started.stdout + started.stderr
    profile = tmp_path / "home" / "profile_default"
    processes = _cluster_processes(profile)
    try:
        state = json.loads((profile / "pid" / "cluster-default.json").read_text())
        assert state["controller"]["class"].endswith("MPIControllerLauncher")
        controller = psutil.Process(state["controller"]["pid"])
        assert controller.name() == "mpiexec" or "mpiexec" in controller.cmdline()[0]
        with Client(profile_dir=str(profile), timeout=10) as client:
            client.wait_for_engines(2, timeout=60)
            client[:].execute(ALLREDUCE, block=True)
            assert client[:].pull("total", block=True) == [3, 3]
    finally:
        stopped = _run(["stop"], env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _running(processes) == []


def test_mpiexec_not_found_is_one_line_and_nothing_runs(tmp_path, env):
    started = _run(["start", "-n", "2", "--engines=MPI", "--daemonize",
                    "--MPILauncher.mpi_cmd=['no-such-mpiexec']"], _mpi_env(env))
    assert started.returncode != 0
    lines = started.stderr.strip().splitlines()
    assert lines[0].startswith("cluster-launcher start:") and "'no-such-mpiexec' not found" in lines[0], lines
    assert len(lines) == 1
    assert "c.MPILauncher.mpi_cmd" in lines[0]
    assert "Traceback" not in started.stderr
    # (the env fixture fails the test if anything with tmp_path on its command line still runs)


def test_mpiexec_that_exits_at_once_names_the_command_and_its_output(tmp_path, env):
    started = _run(["start", "-n", "2", "--engines=MPI", "--daemonize",
                    "--MPILauncher.mpi_args=['--no-such-flag']"], _mpi_env(env))
    assert started.returncode != 0
    err = started.stderr
    assert err.startswith("cluster-launcher start: mpiexec of the engines exited with code"), err
    assert "$ mpiexec -n 2 --no-such-flag" in err, err
    assert "no-such-flag" in err.split("$ mpiexec", 1)[1].split("\n", 1)[1], "mpiexec's own complaint is shown"
    assert "Traceback" not in err


def _mpich_segments(processes: list[psutil.Process]) -> set[str]:
    """The /dev/shm files MPICH made for ``processes`` (mapped by them)."""
    paths = set()
    for process in processes:
        try:
            paths |= {m.path for m in process.memory_maps() if m.path.startswith("/dev/shm/mpich_shm_")}
        except psutil.Error:
            pass
    return paths


def test_engines_started_by_hand_under_the_users_own_mpiexec(tmp_path):
    """`mpiexec -n 2 cluster-launcher engine` (inside a batch job, say) works the same."""
    cluster = LocalCluster(tmp_path, n=0)
    cluster.start_controller()
    segments: set[str] = set()
    mpiexec = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "cluster_launcher", "engine",
                                f"--profile-dir={tmp_path}",  # IPython's c.MPI.init_script: MPI set up by hand
                                "--MPI.init_script=from mpi4py import MPI; set_up_by_script = MPI.Is_initialized()"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with Client(profile_dir=str(tmp_path), timeout=10) as client:
            client.wait_for_engines(2, timeout=60)
            assert sorted(client.mpi_ranks.values()) == [0, 1]
            assert client[:].pull("set_up_by_script", block=True) == [True, True]
            tree = psutil.Process(mpiexec.pid).children(recursive=True)
            segments = _mpich_segments(tree)
            victim = next(p for p in tree if p.pid == client.engines[client.mpi_engines[1][0]]["pid"])
            victim.kill()  # one rank dies: that engine is reported gone
            gone = client.mpi_engines[1][0]
            wait_for(lambda: gone not in client.ids, 60, "the dead rank's engine to be unregistered")
    finally:
        tree = [mpiexec_process := psutil.Process(mpiexec.pid), *mpiexec_process.children(recursive=True)] \
            if mpiexec.poll() is None else []
        for process in tree:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=10)
        mpiexec.wait(timeout=10)
        cluster.stop()
        # A rank killed takes MPICH's finalize, which removes its shared-memory segment, with it.
        for path in segments:
            Path(path).unlink(missing_ok=True)


def test_the_px_example_of_the_mpi_page_runs_in_ipython(tmp_path, env):
    page = (Path(__file__).resolve().parents[1] / "docs" / "mpi.md").read_text()
    (block,) = re.findall(r"^```ipython\n(.*?)^```", page, flags=re.S | re.M)
    script = tmp_path / "mpi_px.ipy"
    script.write_text(block)
    done = subprocess.run([sys.executable, "-m", "IPython", "--quick", "--colors=nocolor", str(script)],
                          cwd=tmp_path, env=_mpi_env({**env, "IPYTHONDIR": str(tmp_path / "ipython")}),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    for rank in range(4):
        assert f"rank {rank} of 4: total 10" in done.stdout, done.stdout


OPEN_MPI = shutil.which("mpiexec.openmpi")


def test_open_mpi_as_root_too(tmp_path, env):
    """Debian's Open MPI (installed by .ci/run): as root it runs only when told to,
    which the launcher does out loud; ranks come from Open MPI's environment."""
    if OPEN_MPI is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs openmpi-bin (.ci/run): mpiexec.openmpi should be on PATH")
        pytest.skip("Debian's openmpi-bin is not installed here (.ci/run installs it)")
    started = _run(["start", "-n", "2", "--engines=MPI", "--daemonize", f"--MPILauncher.mpi_cmd=['{OPEN_MPI}']"],
                   _mpi_env(env))
    assert started.returncode == 0, started.stdout + started.stderr
    if os.geteuid() == 0:
        assert "setting OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1" in started.stderr
    profile = tmp_path / "home" / "profile_default"
    processes = _cluster_processes(profile)
    try:
        with Client(profile_dir=str(profile), timeout=10) as client:
            client.wait_for_engines(2, timeout=60)
            assert sorted(client.mpi_ranks.values()) == [0, 1]
            assert {info["mpi"]["size"] for info in client.engines.values()} == {2}
    finally:
        stopped = _run(["stop"], env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _running(processes) == []


def test_stop_leaves_no_rank_even_when_ranks_ignore_sigterm(tmp_path, env):
    """mpiexec ends such ranks itself (MPICH's Hydra kills what its SIGTERM did
    not); whatever it leaves, the launcher kills by PID."""
    env = _mpi_env(env)
    ignore = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    started = _run(["start", "-n", "2", "--engines=MPI", "--daemonize", f"--Engine.startup_command={ignore}",
                    "--MPIEngineSetLauncher.stop_timeout=2"], env)
    assert started.returncode == 0, started.stdout + started.stderr
    profile = tmp_path / "home" / "profile_default"
    with Client(profile_dir=str(profile), timeout=10) as client:
        client.wait_for_engines(2, timeout=60)
    processes = _cluster_processes(profile)
    assert len(processes) >= 4, "mpiexec, its proxy and two ranks (and the controller)"
    stopped = _run(["stop"], env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _running(processes) == []


def test_a_killed_rank_restarts_the_whole_mpiexec_as_one_slot(tmp_path, env):
    """One rank SIGKILLed: mpiexec takes the others down and exits non-zero;
    the foreground start's watcher runs the whole mpiexec again (slot 0,
    same log), and its ranks register as new engines."""
    env = _mpi_env(env)
    profile = tmp_path / "home" / "profile_default"
    proc = subprocess.Popen([*CLI, "start", "-n", "2", "--engines=MPI", "--Cluster.engine_restart_delay=0.2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "cluster ready" in line:
                break
        with Client(profile_dir=str(profile), timeout=10) as client:
            first = set(client.ids)
            os.kill(client.engines[min(first)]["pid"], signal.SIGKILL)
            for line in proc.stdout:
                lines.append(line)
                if "restarted (1 of 3; new engine ids)" in line:
                    break
            wait_for(lambda: len(client.ids) == 2 and not first & set(client.ids), TIMEOUT,
                     "two new ranks to register, the old ones to be gone")
            assert sorted(client[:].apply_sync(lambda: 6 * 7)) == [42, 42]
        processes = _cluster_processes(profile)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=TIMEOUT)
        lines.append(rest)
    said = "".join(lines)
    assert re.search(r"mpiexec of the engines (exited with code \d+|killed by SIG\w+) \(see \S+engines-default\.log\); "
                     r"restart 1 of 3", said), said
    assert "mpiexec of the engines restarted (1 of 3; new engine ids)" in said, said
    assert _running(processes) == []
