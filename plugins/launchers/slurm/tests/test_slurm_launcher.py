"""The Slurm launchers without a running Slurm: their job scripts (golden
files, from the dry run), job ids, and states from squeue's real output
(captured/: squeue --noheader --array --states=all --format='%F %K %T %r'
on a Debian 12 slurm-wlm 22.05.8, while an array of 2 sleeping tasks (job
1), a 2-task job (3) and a short job (4) ran, then after `scancel 3`).  The
real Slurm runs in tests/test_batch_systems.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_launcher_slurm import STATES, SlurmControllerLauncher, SlurmEngineSetLauncher

from cluster_launcher import plugins
from cluster_launcher.launcher import JobState
from cluster_launcher.testing.golden import golden_dry_run, matches_golden

HERE = Path(__file__).parent


@pytest.mark.parametrize("cls, n, golden", [(SlurmEngineSetLauncher, 4, "engines.txt"),
                                            (SlurmControllerLauncher, 1, "controller.txt")])
def test_dry_run_is_the_golden_job_script(cls, n, golden):
    assert matches_golden(golden_dry_run(cls, n), HERE / "golden" / golden)


def test_names_users_write_resolve():
    assert plugins.resolve("launcher", "Slurm", "engines") is SlurmEngineSetLauncher
    assert plugins.resolve("launcher", "slurm", "controller") is SlurmControllerLauncher
    assert plugins.resolve("launcher", "ipyparallel.cluster.launcher.SlurmEngineSetLauncher") is SlurmEngineSetLauncher


@pytest.mark.parametrize("output, job_id", [("8\n", "8"), ("8;cluster2\n", "8"), ("Submitted batch job 4\n", "4")])
def test_job_id_from_sbatch(output, job_id):
    assert SlurmEngineSetLauncher().parse_job_id(output) == job_id


def test_states_of_running_jobs_as_squeue_printed_them():
    output = (HERE / "captured" / "squeue-running.txt").read_text()
    states = SlurmEngineSetLauncher().parse_states(output, ["1", "3", "4", "5"])
    assert states["1"].states == [JobState.RUNNING, JobState.RUNNING] and states["1"].running == 2
    assert states["3"].state is JobState.RUNNING and states["3"].describe() == "RUNNING"  # reason None: not shown
    assert "5" not in states  # not listed: the launcher counts it gone


def test_states_after_scancel_as_squeue_printed_them():
    output = (HERE / "captured" / "squeue-after.txt").read_text()
    states = SlurmEngineSetLauncher().parse_states(output, ["1", "3", "4"])
    assert states["3"].state is JobState.CANCELLED and states["4"].state is JobState.DONE
    assert states["1"].active and not states["3"].active


def test_failures_and_time_limits_as_squeue_printed_them():
    # squeue of a job that exited 3 and of one killed at its --time=00:01:00 (captured/squeue-ended.txt).
    output = (HERE / "captured" / "squeue-ended.txt").read_text()
    states = SlurmEngineSetLauncher().parse_states(output, [line.split()[0] for line in output.splitlines()])
    assert sorted(status.describe() for status in states.values()) == ["FAILED (NonZeroExitCode)",
                                                                      "TIMEOUT (TimeLimit)"]
    assert {status.state for status in states.values()} == {JobState.FAILED, JobState.TIMEOUT}


def test_every_state_slurm_names_is_known():
    # squeue(1)'s JOB STATE CODES, Slurm 22.05.
    names = ["BOOT_FAIL", "CANCELLED", "COMPLETED", "CONFIGURING", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
             "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "RUNNING", "RESV_DEL_HOLD", "REQUEUE_FED", "REQUEUE_HOLD",
             "REQUEUED", "RESIZING", "REVOKED", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED", "SUSPENDED",
             "TIMEOUT"]
    assert set(names) <= set(STATES)
