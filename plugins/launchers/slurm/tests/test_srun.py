"""Inside a Slurm job: the allocation the plugin reads from a job's
environment (its hook), and the Srun launcher's command line and checks.
The real thing, a job script submitted with sbatch, runs in
tests/test_allocation.py."""

from __future__ import annotations

import pytest
from cluster_launcher_slurm import (
    SrunEngineSetLauncher,
    count_cpus_per_node,
    expand_hostlist,
    slurm_allocation,
)
from traitlets.config import Config

from cluster_launcher import plugins
from cluster_launcher.error import ClusterLauncherError
from cluster_launcher.launcher import Allocation


@pytest.mark.parametrize("hostlist, hosts", [
    ("vm", ["vm"]),
    ("node[01-03,7],gpu1", ["node01", "node02", "node03", "node7", "gpu1"]),
    ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
    ("a,b", ["a", "b"]),
    ("", []),
    ("odd[x-y]", ["odd[x-y]"]),  # not a range Slurm writes: the name as given
])
def test_slurm_host_lists_expand_as_scontrol_show_hostnames_does(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("value, cpus", [("4", 4), ("4(x2),2", 10), ("16(x3)", 48), ("", 0), ("weird", 0)])
def test_cpus_per_node_are_summed_with_their_repeat_counts(value, cpus):
    assert count_cpus_per_node(value) == cpus


BATCH_JOB = {  # what `sbatch --ntasks=8 --nodes=2` gives the script (Slurm 22.05), less what is not read
    "SLURM_JOB_ID": "42", "SLURM_JOBID": "42", "SLURM_JOB_NODELIST": "node[17-18]", "SLURM_NODELIST": "node[17-18]",
    "SLURM_NTASKS": "8", "SLURM_NPROCS": "8", "SLURM_JOB_CPUS_PER_NODE": "4(x2)", "SLURM_JOB_NUM_NODES": "2",
}


def test_a_batch_job_with_ntasks_is_an_allocation_of_that_many_srun_engines():
    allocation = slurm_allocation(BATCH_JOB)
    assert allocation == Allocation(system="Slurm", job_id="42", engine_launcher="Srun", slots=8,
                                    nodes=("node17", "node18"))
    assert str(allocation) == "Slurm job 42 (2 nodes, 8 tasks)"


@pytest.mark.parametrize("drop, slots", [
    (("SLURM_NTASKS",), 8),  # SLURM_NPROCS, its older name
    (("SLURM_NTASKS", "SLURM_NPROCS"), 8),  # no --ntasks: the CPUs, 4 on each of 2 nodes
    (("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_JOB_CPUS_PER_NODE"), 2),  # one per node
])
def test_without_ntasks_the_slots_come_from_the_cpus_then_the_nodes(drop, slots):
    environ = {k: v for k, v in BATCH_JOB.items() if k not in drop}
    assert slurm_allocation(environ).slots == slots


def test_an_salloc_shell_with_only_the_old_names_is_an_allocation():
    allocation = slurm_allocation({"SLURM_JOBID": "7", "SLURM_NODELIST": "c1", "SLURM_JOB_CPUS_PER_NODE": "2"})
    assert (allocation.job_id, allocation.slots, allocation.nodes) == ("7", 2, ("c1",))


def test_outside_a_slurm_job_there_is_no_allocation():
    assert slurm_allocation({"PATH": "/usr/bin", "SLURM_CONF": "/etc/slurm/slurm.conf"}) is None


def test_the_hook_answers_through_the_plugin_manager(monkeypatch):
    monkeypatch.setenv("CLUSTER_LAUNCHER_LOAD_PLUGINS", "slurm")
    plugins.reset()
    try:
        hook = plugins.get_plugin_manager().hook.cluster_launcher_allocation
        assert hook(environ=BATCH_JOB).engine_launcher == "Srun"
        assert hook(environ={}) is None
        assert plugins.resolve("launcher", "Srun", role="engines") is SrunEngineSetLauncher
    finally:
        plugins.reset()


def test_the_engines_are_the_tasks_of_one_srun_step():
    config = Config()
    config.SrunEngineSetLauncher.srun_cmd = ["/opt/slurm/bin/srun"]
    config.SrunEngineSetLauncher.engine_args = ["--log-level=DEBUG"]
    launcher = SrunEngineSetLauncher(config=config, profile_dir="/p", cluster_id="c1")
    engine = [*launcher.engine_cmd, "--profile-dir=/p", "--cluster-id=c1", "--log-level=DEBUG"]
    assert launcher.dry_run(8) == ["$ /opt/slurm/bin/srun --ntasks=8 --overlap --kill-on-bad-exit=0 "
                                   + " ".join(engine)]
    launcher.n = 3
    assert launcher.args == ["/opt/slurm/bin/srun", "--ntasks=3", "--overlap", "--kill-on-bad-exit=0", *engine]
    assert launcher.exit_label("engine") == "/opt/slurm/bin/srun of the engines"


def test_srun_args_replace_the_defaults():
    config = Config()
    config.SrunEngineSetLauncher.srun_args = ["--cpus-per-task=2"]
    launcher = SrunEngineSetLauncher(config=config, engine_cmd=["engine"])
    assert launcher.wrap(2, ["engine"]) == ["srun", "--ntasks=2", "--cpus-per-task=2", "engine"]


def test_a_missing_srun_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterLauncherError, match=r"SrunEngineSetLauncher.srun_cmd: 'srun' not found on PATH"):
        SrunEngineSetLauncher().check(2)
    with pytest.raises(ClusterLauncherError, match=r"SrunEngineSetLauncher.srun_cmd is empty"):
        SrunEngineSetLauncher(srun_cmd=[]).check(2)
