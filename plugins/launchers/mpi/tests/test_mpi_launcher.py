"""The MPI launchers without starting a cluster: the command lines they build
from IPython's settings, how they tell MPI implementations apart, and their
errors.  The real mpiexec runs in tests/test_mpi.py."""

from __future__ import annotations

import logging
import os
import stat
import sys
import time

import psutil
import pytest
from cluster_launcher_mpi import OPENMPI_ROOT_ENVIRONMENT, MPIControllerLauncher, MPIEngineSetLauncher
from traitlets.config import Config

from cluster_launcher import plugins
from cluster_launcher.config import build_config
from cluster_launcher.error import ClusterLauncherError


def _fake_mpiexec(folder, version_text: str) -> str:
    """An `mpiexec` that prints ``version_text`` for --version (as Open MPI's or MPICH's does)."""
    path = folder / "mpiexec"
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{version_text}\nEOF\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_engine_set_command_is_one_mpiexec_with_n_ranks():
    config = Config()
    config.MPILauncher.mpi_cmd = ["mpirun"]
    config.MPILauncher.mpi_args = ["-hosts", "node1,node2"]
    config.MPIEngineSetLauncher.engine_args = ["--log-level=DEBUG"]
    launcher = MPIEngineSetLauncher(config=config, profile_dir="/p", cluster_id="c1")
    launcher.n = 4
    assert launcher.args == ["mpirun", "-n", "4", "-hosts", "node1,node2", sys.executable, "-m",
                             "cluster_launcher", "engine", "--profile-dir=/p", "--cluster-id=c1", "--log-level=DEBUG"]


def test_controller_command_is_one_rank():
    launcher = MPIControllerLauncher(profile_dir="/p", controller_args=["--reuse"])
    assert launcher.args[:3] == ["mpiexec", "-n", "1"]
    assert launcher.args[3:] == [sys.executable, "-m", "cluster_launcher", "controller", "--profile-dir=/p", "--reuse"]


@pytest.mark.parametrize("name", ["MPI", "mpi", "MPIEngineSetLauncher", "MPIExecEngineSetLauncher",
                                  "IPython.parallel.apps.launcher.MPIEngineSetLauncher",
                                  "IPython.parallel.apps.launcher.MPIExecEngineSetLauncher"])
def test_names_users_write_resolve(name):
    assert plugins.resolve("launcher", name, "engines") is MPIEngineSetLauncher
    assert plugins.resolve("launcher", name.replace("EngineSet", "Controller"), "controller") is MPIControllerLauncher


def test_ipython_config_lines_reach_the_launcher(tmp_path):
    (tmp_path / "cluster_config.py").write_text(
        "c = get_config()\n"
        "c.IPClusterEngines.engine_launcher_class = 'MPIEngineSetLauncher'\n"
        "c.MPILauncher.mpi_cmd = ['mpirun']\n"
        "c.MPIExecLauncher.mpi_args = ['--oversubscribe']\n")  # the 0.11 name of the section
    (tmp_path / "engine_config.py").write_text("c = get_config()\nc.MPI.use = 'mpi4py'\n"
                                               "c.MPI.init_script = 'from mpi4py import MPI'\n")
    cluster = build_config("cluster", str(tmp_path))
    launcher = plugins.resolve("launcher", cluster.Cluster.engine_launcher_class, "engines")(config=cluster)
    assert (launcher.mpi_cmd, launcher.mpi_args) == (["mpirun"], ["--oversubscribe"])
    engine = build_config("engine", str(tmp_path))
    assert engine.Engine.mpi == "mpi4py" and engine.Engine.mpi_init_script == "from mpi4py import MPI"


def test_mpiexec_not_found_names_the_setting(tmp_path):
    launcher = MPIEngineSetLauncher(mpi_cmd=[str(tmp_path / "no-such-mpiexec")], profile_dir=str(tmp_path))
    with pytest.raises(ClusterLauncherError, match=r"MPILauncher.mpi_cmd: '.*no-such-mpiexec' not found") as caught:
        launcher.start(2)
    assert "\n" not in str(caught.value) and "pip install mpich" in str(caught.value)
    assert launcher.pid == 0, "nothing was started"


@pytest.mark.parametrize("version, flavor", [
    ("mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/", "openmpi"),
    ("mpirun (Open MPI) 5.0.3", "openmpi"),
    ("HYDRA build details:\n    Version:                                 4.2.0", "mpich"),
    ("something else entirely", ""),
])
def test_the_mpi_implementation_is_told_from_its_version_text(tmp_path, version, flavor):
    launcher = MPIEngineSetLauncher(mpi_cmd=[_fake_mpiexec(tmp_path, version)])
    assert launcher._check_mpiexec() == flavor


@pytest.mark.skipif(os.geteuid() != 0, reason="Open MPI's run-as-root variables are only set for root")
def test_open_mpi_as_root_is_allowed_out_loud(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    fake = _fake_mpiexec(tmp_path, "mpirun (Open MPI) 5.0.3")
    launcher = MPIEngineSetLauncher(mpi_cmd=[fake], profile_dir=str(tmp_path), engine_cmd=["true"])
    launcher.start(1)
    launcher.wait(10)
    assert OPENMPI_ROOT_ENVIRONMENT.items() <= launcher.environment.items()
    assert any("OMPI_ALLOW_RUN_AS_ROOT=1" in r.getMessage() for r in caplog.records), "said, not hidden"


STUBBORN_MPIEXEC = """#!/bin/sh
# Like Hydra: the rank runs in a session of its own, out of reach of a signal to
# mpiexec's process group; unlike Hydra, this mpiexec leaves it behind when killed.
if [ "$1" = "--version" ]; then echo "HYDRA build details:"; exit 0; fi
setsid {python} -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)' &
wait
"""


def test_stop_kills_by_pid_what_mpiexec_leaves_behind(tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text(STUBBORN_MPIEXEC.format(python=sys.executable))
    fake.chmod(0o755)
    launcher = MPIEngineSetLauncher(mpi_cmd=[str(fake)], profile_dir=str(tmp_path), engine_cmd=["true"],
                                    stop_timeout=1)
    launcher.start(1)
    rank = None
    try:
        deadline = time.monotonic() + 30
        while not (launcher.poll() is None and launcher.tree):  # poll records the tree
            assert time.monotonic() < deadline, "the fake rank never appeared under mpiexec"
            time.sleep(0.05)
        (rank_pid, _), *_ = launcher.tree
        rank = psutil.Process(rank_pid)
        assert rank.pid != launcher.pid and os.getsid(rank.pid) != os.getsid(launcher.pid)
    finally:
        launcher.stop()
    assert rank is not None
    assert not rank.is_running() or rank.status() == psutil.STATUS_ZOMBIE, "the rank outlived stop"
    assert launcher.poll() is not None
    assert launcher.killed and "ignored SIGTERM" in launcher.killed[0], launcher.killed
