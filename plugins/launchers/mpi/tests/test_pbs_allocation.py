"""Inside a PBS/Torque job: the allocation the MPI plugin reads from
``$PBS_NODEFILE`` (its hook), and the node file given to mpiexec as its host
file, with the real MPICH mpiexec of this environment (the mpich wheel)."""

from __future__ import annotations

import os
import socket
import sys

import pytest
from cluster_launcher_mpi import MPIControllerLauncher, MPIEngineSetLauncher, cluster_launcher_allocation

from cluster_launcher.launcher import Allocation, tail
from cluster_launcher.testing.processes import wait_for

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the venv's MPICH, not a Slurm wrapper


@pytest.fixture
def node_file(tmp_path, monkeypatch):
    """A PBS node file naming this host twice (two slots), as ``$PBS_NODEFILE`` of this process."""
    path = tmp_path / "nodes"
    path.write_text(f"{socket.gethostname()}\n{socket.gethostname()}\n")
    monkeypatch.setenv("PBS_NODEFILE", str(path))
    return str(path)


def test_a_pbs_job_is_an_allocation_of_one_mpi_engine_per_node_file_line(tmp_path):
    nodes = tmp_path / "nodes"
    nodes.write_text("n1\nn1\n# a comment\n\nn2\nn2\n")
    allocation = cluster_launcher_allocation({"PBS_NODEFILE": str(nodes), "PBS_JOBID": "17.head"})
    assert allocation == Allocation(system="PBS", job_id="17.head", engine_launcher="MPI", slots=4, nodes=("n1", "n2"))
    assert str(allocation) == "PBS job 17.head (2 nodes, 4 tasks)"


def test_no_node_file_no_allocation(tmp_path, caplog):
    assert cluster_launcher_allocation({"PBS_JOBID": "17.head"}) is None
    assert cluster_launcher_allocation({"PBS_NODEFILE": str(tmp_path / "missing")}) is None
    assert "names no hosts" in caplog.text


@pytest.mark.parametrize("flavor, option", [("mpich", "-f"), ("openmpi", "--hostfile"), ("", "-machinefile")])
def test_the_node_file_is_mpiexecs_host_file_in_its_own_words(node_file, flavor, option):
    launcher = MPIEngineSetLauncher(mpi_cmd=["no-such-mpiexec"], mpi_flavor=flavor, engine_cmd=["engine"])
    assert launcher.wrap(2, ["engine"]) == ["no-such-mpiexec", "-n", "2", option, node_file, "engine"]


@pytest.mark.parametrize("mpi_args", [["-hosts", "a,b"], ["-f", "mine"], ["--hostfile=mine"], ["-machinefile", "m"]])
def test_hosts_in_mpi_args_replace_the_node_file(node_file, mpi_args):
    launcher = MPIEngineSetLauncher(mpi_cmd=["mpiexec"], mpi_flavor="mpich", mpi_args=mpi_args)
    assert node_file not in launcher.wrap(2, ["engine"])


def test_the_controller_gets_no_node_file(node_file):
    assert node_file not in MPIControllerLauncher(mpi_cmd=["mpiexec"], mpi_flavor="mpich").args


def test_outside_pbs_nothing_is_added(monkeypatch):
    monkeypatch.delenv("PBS_NODEFILE", raising=False)
    launcher = MPIEngineSetLauncher(mpi_cmd=["mpiexec"], mpi_flavor="mpich")
    assert launcher.wrap(2, ["engine"]) == ["mpiexec", "-n", "2", "engine"]


def test_mpich_runs_the_ranks_on_the_hosts_of_the_node_file(node_file, tmp_path):
    """The real MPICH mpiexec (Hydra): ``-f $PBS_NODEFILE`` naming this host runs both ranks here."""
    # Each rank writes a file of its own: the ranks' output through mpiexec may interleave.
    report = (f"import os, socket; open(os.path.join({str(tmp_path)!r}, 'rank-' + os.environ['PMI_RANK']), 'w')"
              ".write(socket.gethostname())")
    launcher = MPIEngineSetLauncher(mpi_cmd=[MPIEXEC], engine_cmd=[sys.executable, "-c", report],
                                    profile_dir=str(tmp_path / "profile"))
    launcher.start(2)
    try:
        assert launcher.mpi_flavor == "mpich"
        assert launcher.args[:5] == [MPIEXEC, "-n", "2", "-f", node_file]
        wait_for(lambda: launcher.poll() is not None, 60, "mpiexec's two ranks to report and exit")
        assert launcher.poll() == 0, tail(launcher.log_path)
    finally:
        launcher.stop()  # by the PID it started (and the ranks it recorded): nothing left either way
    ranks = {path.name: path.read_text() for path in tmp_path.glob("rank-*")}
    assert ranks == {"rank-0": socket.gethostname(), "rank-1": socket.gethostname()}
