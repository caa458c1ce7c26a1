"""The Windows HPC launchers without HPC Pack: their job descriptions (golden
files, from the dry run; IPython 0.13's XML form), job ids from `job
submit`'s real output, states as `job view` names them
(cluster_launcher.testing.batch_samples, sources cited there).  Submit, poll
and stop run end to end against the fake `job` command in
tests/test_batch_fakes.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cluster_launcher_winhpc import STATES, WindowsHPCControllerLauncher, WindowsHPCEngineSetLauncher

from cluster_launcher import plugins
from cluster_launcher.error import ConfigError
from cluster_launcher.protocol.connection import ENGINE_CONNECTION_ENV
from cluster_launcher.testing import batch_samples as samples
from cluster_launcher.testing.golden import golden_dry_run, matches_golden

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("cls, n, golden", [(WindowsHPCEngineSetLauncher, 4, "engines.txt"),
                                            (WindowsHPCControllerLauncher, 1, "controller.txt")])
def test_dry_run_is_the_golden_job_description(cls, n, golden):
    assert matches_golden(golden_dry_run(cls, n), GOLDEN / golden)


def test_the_description_has_ipythons_form(tmp_path):
    launcher = WindowsHPCEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="c1")
    job = ET.fromstring(launcher.job_script_text(2, dry_run=True).split("\n", 1)[1])
    ours = ET.fromstring(samples.WINHPC_IPYTHON_JOB_XML.split("\n", 1)[1])
    assert job.tag == ours.tag == f"{{{samples.WINHPC_JOB_NAMESPACE}}}Job"
    tasks = job.findall(f"{{{samples.WINHPC_JOB_NAMESPACE}}}Tasks/{{{samples.WINHPC_JOB_NAMESPACE}}}Task")
    assert len(tasks) == 2
    assert set(tasks[0].attrib) <= set(samples.WINHPC_TASK_ATTRIBUTES)


@pytest.mark.parametrize("in_environment", [False, True])
def test_the_key_is_in_the_tasks_environment_only_when_asked(tmp_path, in_environment):
    """Other users of an HPC Pack cluster see a task's environment: by default
    the engines read the profile's connection file (on a share) instead."""
    launcher = WindowsHPCEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="c1",
                                           connection_in_job=in_environment,
                                           environment={"OMP_NUM_THREADS": "1"})
    job = ET.fromstring(launcher.job_script_text(2, dry_run=True).split("\n", 1)[1])
    names = [n.text for n in job.iter(f"{{{samples.WINHPC_JOB_NAMESPACE}}}Name")]
    assert names == ["OMP_NUM_THREADS", *([ENGINE_CONNECTION_ENV] if in_environment else [])] * 2


def test_names_users_write_resolve():
    assert plugins.resolve("launcher", "WindowsHPC", "engines") is WindowsHPCEngineSetLauncher
    assert plugins.resolve("launcher", "IPython.parallel.apps.launcher.WindowsHPCControllerLauncher",
                           "controller") is WindowsHPCControllerLauncher


def test_job_id_from_real_job_submit_output():
    assert WindowsHPCEngineSetLauncher().parse_job_id(samples.WINHPC_JOB_SUBMITTED) == "3490639"


@pytest.mark.parametrize("native", samples.WINHPC_JOB_STATES)
def test_every_documented_state(native):
    (status,) = WindowsHPCEngineSetLauncher().parse_states(f"State : {native}\n", ["42"]).values()
    assert status.state is STATES[native] and status.native == native
    assert status.active is (native not in samples.WINHPC_FINISHED_STATES)


def test_scheduler_and_one_cancel_per_job():
    launcher = WindowsHPCEngineSetLauncher(scheduler="HEAD01")
    assert launcher.status_argv(["7"]) == ["job", "view", "7", "/scheduler:HEAD01"]
    assert launcher.delete_argvs(["7", "8"]) == [["job", "cancel", "7", "/scheduler:HEAD01"],
                                                 ["job", "cancel", "8", "/scheduler:HEAD01"]]
    job_exe = "C:\\bin\\job.exe"
    assert WindowsHPCEngineSetLauncher(job_cmd=job_exe).status_argv(["7"])[:2] == [job_exe, "view"]


def test_templates_do_not_apply():
    with pytest.raises(ConfigError, match=r"^WindowsHPCEngineSetLauncher.batch_template: Windows HPC jobs are "
                                          r"described in XML built from the launcher's settings"):
        WindowsHPCEngineSetLauncher(batch_template="#!/bin/sh\n").job_script_text(1, dry_run=True)
