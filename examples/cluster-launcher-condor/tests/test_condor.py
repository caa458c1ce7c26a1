"""CondorEngineSetLauncher: its submit file, and condor_submit's real output.

Run from this folder after installing it: ``pip install -e .[test] && pytest``.
Where HTCondor is installed (``condor_submit`` on PATH, a schedd running),
the integration test submits and removes a real job.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from cluster_launcher_condor import CondorEngineSetLauncher, parse_cluster_id, quote_arguments

from cluster_launcher import plugins
from cluster_launcher.error import ClusterLauncherError

# What condor_submit printed on real pools (8.x adds the "Logging submit event" line).
RECORDED_SUBMIT_OUTPUT = {
    "Submitting job(s).\n1 job(s) submitted to cluster 19.\n": "19",
    "Submitting job(s).........................\n100 job(s) submitted to cluster 837.\n": "837",
    "Submitting job(s).\nLogging submit event(s).\n1 job(s) submitted to cluster 5.\n": "5",
}
RECORDED_NO_SCHEDD = "\nERROR: Can't find address of local schedd\n"


@pytest.mark.parametrize(("output", "cluster_id"), RECORDED_SUBMIT_OUTPUT.items())
def test_cluster_id_from_real_condor_submit_output(output, cluster_id):
    assert parse_cluster_id(output) == cluster_id


def test_output_without_cluster_id_is_a_one_line_error():
    with pytest.raises(ClusterLauncherError, match=r"^condor_submit printed no cluster id: "
                                                   r"ERROR: Can't find address of local schedd$"):
        parse_cluster_id(RECORDED_NO_SCHEDD)


def test_quoting_follows_the_submit_language():
    assert quote_arguments(["-m", "it's", 'say "hi"']) == '''"'-m' 'it''s' 'say ""hi""'"'''


def test_submit_description(tmp_path):
    launcher = CondorEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="c1", engine_args=["--x=a b"],
                                       environment={"OMP_NUM_THREADS": "1"},
                                       submit_extra={"request_memory": "2GB"})
    lines = launcher.submit_description(4).splitlines()
    assert lines[0] == "universe = vanilla"
    assert f"executable = {sys.executable}" in lines
    assert (f"arguments = \"'-m' 'cluster_launcher' 'engine' '--profile-dir={tmp_path}' '--cluster-id=c1' "
            "'--x=a b'\"") in lines
    assert f"initialdir = {tmp_path}" in lines
    assert f"output = {tmp_path}/log/engine-c1-$(Process).out" in lines
    assert "environment = \"'OMP_NUM_THREADS=1'\"" in lines
    assert "request_memory = 2GB" in lines
    assert lines[-1] == "queue 4"


def replay(output: str, exit_code: int = 0) -> list[str]:
    """A command that prints ``output`` and exits ``exit_code``, as condor_submit did."""
    return [sys.executable, "-c", f"import sys; sys.stdout.write({output!r}); sys.exit({exit_code})"]


def test_start_writes_the_submit_file_and_keeps_the_cluster_id(tmp_path):
    launcher = CondorEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="c1",
                                       submit_command=replay(next(iter(RECORDED_SUBMIT_OUTPUT))))
    launcher.start(3)
    assert (launcher.job_id, launcher.n) == ("19", 3)
    with open(launcher.submit_file) as f:
        assert f.read() == launcher.submit_description(3)
    again = CondorEngineSetLauncher.from_dict(launcher.to_dict())
    assert (again.job_id, again.n) == ("19", 3)


def test_the_record_a_later_stop_reads_holds_the_job_id(tmp_path):
    # job_id and n are traits tagged state: recorded with no to_dict() of the launcher's own.
    launcher = CondorEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="c1", job_id="837", n=100)
    record = json.loads(json.dumps(launcher.to_dict()))
    assert record == {"class": "cluster_launcher_condor.CondorEngineSetLauncher", "profile_dir": str(tmp_path),
                      "cluster_id": "c1", "job_id": "837", "n": 100}
    again = CondorEngineSetLauncher.from_dict(record)
    assert (again.profile_dir, again.cluster_id, again.job_id, again.n) == (str(tmp_path), "c1", "837", 100)


def test_failed_submit_is_a_one_line_error(tmp_path):
    launcher = CondorEngineSetLauncher(profile_dir=str(tmp_path), submit_command=replay(RECORDED_NO_SCHEDD, 1))
    with pytest.raises(ClusterLauncherError, match=r"exited 1: ERROR: Can't find address of local schedd$"):
        launcher.start(1)
    assert launcher.job_id == ""


def test_registered_under_its_short_name():
    plugins.reset()
    assert plugins.resolve("launcher", "Condor", role="engines") is CondorEngineSetLauncher


@pytest.mark.skipif(shutil.which("condor_submit") is None, reason="HTCondor is not installed (no condor_submit)")
def test_real_htcondor_submit_and_remove(tmp_path):
    launcher = CondorEngineSetLauncher(profile_dir=str(tmp_path), engine_cmd=["/bin/sleep", "300"])
    launcher.start(2)
    try:
        assert launcher.job_id.isdigit()
        assert launcher.poll() is None
    finally:
        launcher.stop()
    deadline = time.monotonic() + 60
    while launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    assert launcher.poll() == 0, subprocess.run(["condor_q", launcher.job_id], capture_output=True, text=True).stdout
