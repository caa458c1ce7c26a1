"""The LSF launchers without LSF: their job scripts (golden files, from the
dry run), job ids from bsub's real output and states from bjobs' fields as
LSF prints them (cluster_launcher.testing.batch_samples, each sample's source
cited there).  Submit, poll and stop run end to end against the fake
commands in tests/test_batch_fakes.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_launcher_lsf import LSFControllerLauncher, LSFEngineSetLauncher

from cluster_launcher import plugins
from cluster_launcher.launcher import JobState
from cluster_launcher.testing import batch_samples as samples
from cluster_launcher.testing.golden import golden_dry_run, matches_golden

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("cls, n, golden", [(LSFEngineSetLauncher, 4, "engines.txt"),
                                            (LSFControllerLauncher, 1, "controller.txt")])
def test_dry_run_is_the_golden_job_script(cls, n, golden):
    assert matches_golden(golden_dry_run(cls, n), GOLDEN / golden)


def test_names_users_write_resolve():
    assert plugins.resolve("launcher", "LSF", "engines") is LSFEngineSetLauncher
    assert plugins.resolve("launcher", "IPython.parallel.apps.launcher.LSFControllerLauncher",
                           "controller") is LSFControllerLauncher


@pytest.mark.parametrize("output, job_id", [
    (samples.LSF_BSUB_SUBMITTED, "473713"), (samples.LSF_BSUB_SUBMITTED_DEFAULT, "123"),
    (samples.LSF_BSUB_ARRAY_SUBMITTED, "1")])
def test_job_id_from_real_bsub_output(output, job_id):
    assert LSFEngineSetLauncher().parse_job_id(output) == job_id


def _line(job_id: str, stat: str, exit_code: str = "-", reason: str = "-", name: str = "engines[1]") -> str:
    return "^".join([job_id, stat, exit_code, reason, name])


def test_states_of_an_array_from_bjobs_fields():
    output = "\n".join([_line("7", "RUN"), _line("7", "RUN", name="engines[2]"), _line("7", "PEND", name="e[3]"),
                        _line("8", "DONE")])
    states = LSFEngineSetLauncher().parse_states(output, ["7", "8", "9"])
    assert states["7"].states == [JobState.RUNNING, JobState.RUNNING, JobState.PENDING] and states["7"].running == 2
    assert states["8"].state is JobState.DONE
    assert "9" not in states  # bjobs said "Job <9> is not found" (on stderr): gone


@pytest.mark.parametrize("stat, exit_code, reason, state, code", [
    # The exit reasons and codes real jobs ended with (batch_samples: [aiida], [dtu]).
    ("EXIT", "-", "TERM_RUNLIMIT: job killed after reaching LSF run time limit", JobState.TIMEOUT, None),
    ("EXIT", str(samples.LSF_EXIT_CODE_KILLED), samples.LSF_EXIT_REASON_KILLED, JobState.CANCELLED, 143),
    ("EXIT", "2", "-", JobState.FAILED, 2),
    ("DONE", "-", "-", JobState.DONE, None),
])
def test_how_a_job_ended(stat, exit_code, reason, state, code):
    (status,) = LSFEngineSetLauncher().parse_states(_line("5", stat, exit_code, reason), ["5"]).values()
    assert (status.state, status.exit_code) == (state, code)
    assert status.describe() == (stat if reason == "-" else f"{stat} ({reason})")


def test_every_state_lsf_documents_is_known():
    from cluster_launcher_lsf import STATES
    assert set(samples.LSF_STATES) <= set(STATES)
