"""CondorEngineSetLauncher: its submit description, and HTCondor's real output.

Run from this folder after installing it: ``pip install -e .[test] && pytest``.
The outputs below were captured from HTCondor 23.9 (Debian 13's minicondor);
where HTCondor runs here (``condor_submit`` on PATH and a schedd answering),
the integration test also submits, polls and removes real jobs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from cluster_launcher_condor import CondorEngineSetLauncher, quote_arguments

from cluster_launcher import plugins
from cluster_launcher.error import ClusterError
from cluster_launcher.launcher import JobState
from cluster_launcher.protocol.connection import ENGINE_CONNECTION_ENV

# condor_submit -terse, submitting a cluster of 2 jobs.
RECORDED_SUBMIT = "1.0 - 1.1\n"
# condor_q 1 -af:t ClusterId ProcId JobStatus ExitCode HoldReason RemoveReason: two idle jobs.
RECORDED_QUEUE = "1\t0\t1\tundefined\tundefined\tundefined\n1\t1\t1\tundefined\tundefined\tundefined\n"
# condor_history 1 -af:t (the same attributes), after condor_rm 1.
RECORDED_HISTORY = ("1\t1\t3\tundefined\tundefined\tvia condor_rm (by user cltest)\n"
                    "1\t0\t3\tundefined\tundefined\tvia condor_rm (by user cltest)\n")
RECORDED_NO_SCHEDD = "\nERROR: Can't find address of local schedd\n"


def replay(output: str, exit_code: int = 0) -> list[str]:
    """A command that prints ``output`` and exits ``exit_code``, as an HTCondor command did."""
    return [sys.executable, "-c", f"import sys; sys.stdin.read(); sys.stdout.write({output!r}); sys.exit({exit_code})"]


def test_quoting_follows_the_submit_language():
    assert quote_arguments(["-m", "it's", 'say "hi"']) == '''"'-m' 'it''s' 'say ""hi""'"'''


def test_submit_description_sends_the_engines_connection_file(tmp_path):
    """The connection file travels with HTCondor's file transfer; the key is
    nowhere in the description (whose environment any user may read)."""
    launcher = CondorEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="c1", engine_args=["--x=a b"],
                                       environment={"OMP_NUM_THREADS": "1"}, submit_extra={"request_memory": "2GB"})
    lines = launcher.job_script_text(4, dry_run=True).splitlines()
    assert lines[0] == "universe = vanilla"
    assert f"executable = {sys.executable}" in lines
    assert (f"arguments = \"'-m' 'cluster_launcher' 'engine' '--profile-dir={tmp_path}' '--cluster-id=c1' "
            "'--x=a b' '--file=controller-c1-engine.json' '--Engine.log_to_file=False'\"") in lines
    assert "should_transfer_files = yes" in lines
    assert f"transfer_input_files = {tmp_path}/security/controller-c1-engine.json" in lines
    assert f"initialdir = {tmp_path}/log" in lines
    assert f"output = {tmp_path}/log/cluster-launcher-engines-c1-$(Cluster).$(Process).out" in lines
    assert "request_memory = 2GB" in lines
    assert "environment = \"'OMP_NUM_THREADS=1'\"" in lines
    assert not any(ENGINE_CONNECTION_ENV in line or "controller-engine.json of" in line for line in lines)
    assert lines[-1] == "queue 4"


def test_start_submits_on_stdin_and_records_the_cluster_id(tmp_path):
    launcher = CondorEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="c1",
                                       submit_command=replay(RECORDED_SUBMIT))
    (tmp_path / "security").mkdir()
    (tmp_path / "security" / "controller-c1-engine.json").write_text('{"key": "k"}')
    launcher.start(2)
    assert (launcher.job_ids, launcher.n) == (["1"], 2)
    record = json.loads(json.dumps(launcher.to_dict()))  # what a later `cluster-launcher stop` reads
    assert record["job_ids"] == ["1"] and record["class"] == "cluster_launcher_condor.CondorEngineSetLauncher"
    assert CondorEngineSetLauncher.from_dict(record).job_ids == ["1"]


def test_states_from_condor_q_and_how_jobs_ended_from_condor_history():
    launcher = CondorEngineSetLauncher(history_command=replay(RECORDED_HISTORY))
    queued = launcher.parse_states(RECORDED_QUEUE, ["1"])["1"]
    assert queued.states == [JobState.PENDING] * 2 and queued.describe() == "Idle"
    ended = launcher.ended_status("1")
    assert ended is not None and ended.state is JobState.CANCELLED
    assert ended.describe() == "Removed (via condor_rm (by user cltest))"


def test_failed_submit_is_a_one_line_error(tmp_path):
    launcher = CondorEngineSetLauncher(profile_dir=str(tmp_path), submit_command=replay(RECORDED_NO_SCHEDD, 1))
    (tmp_path / "security").mkdir()
    (tmp_path / "security" / "controller-engine.json").write_text('{"key": "k"}')
    with pytest.raises(ClusterError, match=r"failed with code 1: ERROR: Can't find address of local schedd$"):
        launcher.start(1)
    assert launcher.job_ids == []


def test_registered_under_its_short_name():
    plugins.reset()
    assert plugins.resolve("launcher", "Condor", role="engines") is CondorEngineSetLauncher


def _schedd_answers() -> bool:
    if shutil.which("condor_q") is None:
        return False
    return subprocess.run(["condor_q"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(not _schedd_answers(), reason="no HTCondor here (no condor_q, or no schedd answering)")
def test_real_htcondor_submit_poll_and_remove(tmp_path):
    """The jobs need not be engines to be submitted, polled and removed: two sleeps."""
    launcher = CondorEngineSetLauncher(profile_dir=str(tmp_path), engine_cmd=["/bin/sleep", "300"],
                                       initialdir=str(tmp_path), poll_interval=0)
    (tmp_path / "security").mkdir()
    (tmp_path / "security" / "controller-engine.json").write_text('{"key": "k"}')
    launcher.start(2)
    try:
        assert launcher.job_ids[0].isdigit() and launcher.poll() is None
    finally:
        launcher.stop()
    assert not launcher.job_states(fresh=True)[launcher.job_ids[0]].active
