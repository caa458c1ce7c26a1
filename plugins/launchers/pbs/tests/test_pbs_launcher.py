"""The PBS launchers without a PBS server: their job scripts (golden files,
from the dry run), the directives given to qsub on its command line too, job
ids, and states from `qstat -f`'s real output (captured/: Slurm's Torque
wrappers on Debian 12, slurm-wlm-torque 22.05.8, while a 2-sub-job array
named pbs-tok (ids 6 and 7) and other jobs ran, then after `qdel 6`).  Real
Slurm behind the wrappers runs in tests/test_batch_systems.py."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import pytest
from cluster_launcher_pbs import PBSControllerLauncher, PBSEngineSetLauncher

from cluster_launcher import plugins
from cluster_launcher.launcher import JobState
from cluster_launcher.testing.golden import golden_dry_run, matches_golden

HERE = Path(__file__).parent


@pytest.mark.parametrize("cls, n, golden", [(PBSEngineSetLauncher, 4, "engines.txt"),
                                            (PBSControllerLauncher, 1, "controller.txt")])
def test_dry_run_is_the_golden_job_script(cls, n, golden):
    assert matches_golden(golden_dry_run(cls, n, name_token="abc123"), HERE / "golden" / golden)


def test_pbs_pro_arrays():
    launcher = PBSEngineSetLauncher(array_option="-J", name_token="abc123")
    assert "#PBS -J 1-4" in launcher.job_script_text(4, dry_run=True).splitlines()


def test_directives_are_also_given_to_qsub(tmp_path):
    record = tmp_path / "argv"
    fake = tmp_path / "qsub"
    fake.write_text(f"#!{sys.executable}\nimport sys, pathlib\n"
                    f"pathlib.Path({str(record)!r}).write_text(repr(sys.argv[1:]))\nprint('42.server')\n")
    fake.chmod(0o755)
    launcher = PBSEngineSetLauncher(submit_command=[str(fake)], name_token="abc123", queue="short")
    assert launcher.submit("/p/job.sh", launcher.job_script_text(2, dry_run=True)) == "42"  # '42.server' printed
    argv = eval(record.read_text())
    assert argv[-1] == "/p/job.sh"
    assert argv[:2] == ["-N", "cluster-launcher-engines-default-abc123"]
    assert ["-t", "1-2"] == argv[argv.index("-t"):argv.index("-t") + 2] and "-q" in argv and "-V" in argv


def test_names_users_write_resolve():
    assert plugins.resolve("launcher", "PBS", "engines") is PBSEngineSetLauncher
    assert plugins.resolve("launcher", "IPython.parallel.apps.launcher.PBSControllerLauncher",
                           "controller") is PBSControllerLauncher


@pytest.mark.parametrize("output, job_id", [("6\n", "6"), ("1234.headnode\n", "1234"), ("1234[].headnode\n", "1234[]")])
def test_job_id_from_qsub(output, job_id):
    assert PBSEngineSetLauncher().parse_job_id(output) == job_id


def _captured_qstat(name: str, launcher: PBSEngineSetLauncher, owner: str | None = None) -> str:
    """A captured ``qstat -f`` (jobs named 'pbs-tok', owned by root), as if this launcher had submitted them."""
    text = (HERE / "captured" / name).read_text().replace("= pbs-tok", f"= {launcher.default_job_name()}")
    return text.replace("Job_Owner = root@", f"Job_Owner = {owner or getpass.getuser()}@")


def test_sub_jobs_are_found_by_name_as_qstat_printed_them():
    launcher = PBSEngineSetLauncher()
    states = launcher.parse_states(_captured_qstat("qstat-f.txt", launcher), ["6"])
    assert states["6"].states == [JobState.RUNNING, JobState.RUNNING] and states["6"].running == 2
    assert launcher.member_ids == ["7"]  # the wrapper gave the second sub-job an id of its own
    assert launcher.delete_argvs(["6"]) == [["qdel", "6", "7"]]
    after = launcher.parse_states(_captured_qstat("qstat-f-after-qdel.txt", launcher), ["6"])
    assert after["6"].states == [JobState.DONE, JobState.DONE] and not after["6"].active  # C: no exit status told


@pytest.mark.parametrize("how", ["a name you chose", "another user's job"])
def test_only_our_own_name_and_our_own_jobs_are_adopted(how):
    """qstat lists every user's jobs: a job of a name you chose may be anyone's, and one of another
    user is never ours, so neither is polled nor deleted as a sub-job of this launcher's."""
    launcher = PBSEngineSetLauncher(**({"job_name": "ipython"} if how == "a name you chose" else {}))
    text = _captured_qstat("qstat-f.txt", launcher, owner="someone-else" if how == "another user's job" else None)
    if how == "a name you chose":
        text = text.replace(f"= {launcher.default_job_name()}", "= ipython")
    states = launcher.parse_states(text, ["6"])
    assert states["6"].states == [JobState.RUNNING] and launcher.member_ids == []
    assert launcher.delete_argvs(["6"]) == [["qdel", "6"]]


def test_exit_status_of_a_real_torque_refines_completed():
    output = "Job Id: 12.head\n    Job_Name = x\n    job_state = C\n    exit_status = 271\n"
    (status,) = PBSEngineSetLauncher(job_name="x").parse_states(output, ["12"]).values()
    assert (status.state, status.exit_code) == (JobState.FAILED, 271)
