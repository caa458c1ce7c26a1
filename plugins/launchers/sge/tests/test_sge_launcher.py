"""The Grid Engine launchers without a running Grid Engine: their job
scripts (golden files, from the dry run), job ids, states from `qstat
-xml`, and how a job that left the queue ended from `qacct`, all from real
output (captured/: gridengine 8.1.9 on Debian 12, while a 3-task array
(job 1) and a job that exits 3 (job 2) waited; qacct of job 2 once it
ended, and of job 1 after `qdel 1`).  The real Grid Engine runs in
tests/test_batch_systems.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_launcher_sge import SGEControllerLauncher, SGEEngineSetLauncher, _count_tasks

from cluster_launcher import plugins
from cluster_launcher.error import ClusterError
from cluster_launcher.launcher import JobState
from cluster_launcher.testing.golden import golden_dry_run, matches_golden

HERE = Path(__file__).parent


@pytest.mark.parametrize("cls, n, golden", [(SGEEngineSetLauncher, 4, "engines.txt"),
                                            (SGEControllerLauncher, 1, "controller.txt")])
def test_dry_run_is_the_golden_job_script(cls, n, golden):
    assert matches_golden(golden_dry_run(cls, n, queue="short.q"), HERE / "golden" / golden)


def test_names_users_write_resolve():
    assert plugins.resolve("launcher", "SGE", "engines") is SGEEngineSetLauncher
    assert plugins.resolve("launcher", "IPython.parallel.apps.launcher.SGEControllerLauncher",
                           "controller") is SGEControllerLauncher


@pytest.mark.parametrize("output, job_id", [("1.1-3:1\n", "1"), ("2\n", "2")])  # qsub -terse, as captured
def test_job_id_from_qsub_terse(output, job_id):
    assert SGEEngineSetLauncher().parse_job_id(output) == job_id


@pytest.mark.parametrize("tasks, count", [("1-3:1", 3), ("", 1), ("2-8:2", 4), ("1,3,5-7:1", 5)])
def test_array_tasks_counted(tasks, count):
    assert _count_tasks(tasks) == count


def test_states_as_qstat_printed_them():
    states = SGEEngineSetLauncher().parse_states((HERE / "captured" / "qstat-xml.txt").read_text(), ["1", "2", "3"])
    assert states["1"].states == [JobState.PENDING] * 3 and states["1"].native == "qw"
    assert states["2"].states == [JobState.PENDING]
    assert "3" not in states


def test_qstat_that_is_not_xml_is_a_value_error():
    with pytest.raises(ValueError, match="qstat -xml printed no XML"):
        SGEEngineSetLauncher().parse_states("error: commlib error: got select error", ["1"])


def _fake_qacct(tmp_path: Path, captured: str) -> list[str]:
    script = tmp_path / "qacct"
    script.write_text(f"#!/bin/sh\ncat {HERE / 'captured' / captured}\n")
    script.chmod(0o755)
    return [str(script)]


def test_how_jobs_ended_as_qacct_printed_it(tmp_path):
    failed = SGEEngineSetLauncher(accounting_command=_fake_qacct(tmp_path, "qacct-failed.txt")).ended_status("2")
    assert failed is not None and (failed.state, failed.exit_code) == (JobState.FAILED, 3)
    deleted = SGEEngineSetLauncher(accounting_command=_fake_qacct(tmp_path, "qacct-deleted.txt")).ended_status("1")
    assert deleted is not None and deleted.states == [JobState.CANCELLED] * 3
    assert deleted.exit_code == 137 and deleted.describe() == "finished (assumedly after job)"


def test_no_accounting_record_is_none(tmp_path):
    assert SGEEngineSetLauncher(accounting_command=_fake_qacct(tmp_path, "README.md")).ended_status("9") is None


def test_a_missing_qacct_is_none_not_an_error():
    assert SGEEngineSetLauncher(accounting_command=["no-such-qacct"]).ended_status("9") is None
    with pytest.raises(ClusterError, match="no-such-qsub not found"):
        SGEEngineSetLauncher(submit_command=["no-such-qsub"]).run_command(["no-such-qsub"])
