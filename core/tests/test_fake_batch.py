"""The fake LSF and Windows HPC commands of cluster_launcher.testing.fake_batch: they print exactly the
formats captured in batch_samples, run their jobs as local processes (directives, arrays, output files,
environment), report the jobs' states as they change, stop them, and leave nothing running."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import psutil
import pytest

from cluster_launcher.testing import batch_samples as samples
from cluster_launcher.testing.fake_batch import (
    FIRST_JOB_ID,
    LSF_DEFAULT_QUEUE,
    WINHPC_VIEW_STATE_FORMAT,
    install_fake_commands,
    live_pids,
    stop_all,
)
from cluster_launcher.testing.processes import wait_for

CUSTOM = "jobid stat exit_code exit_reason job_name delimiter='^'"


class FakeSystem:
    """The fake commands of one system installed under tmp_path, run from a work directory there."""

    def __init__(self, system: str, tmp_path: Path, queues: tuple[str, ...] | None = None):
        self.directory = tmp_path / "fake"
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.env = {**os.environ, **install_fake_commands(system, self.directory, queues=queues, kill_grace=0.5)}

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=self.env, cwd=self.work, input=input, capture_output=True, text=True,
                              timeout=30)

    def bsub(self, *args: str, input: str | None = None) -> int:
        """Submit; the job id from the acceptance line."""
        result = self.run("bsub", *args, input=input)
        assert result.returncode == 0, result.stderr
        match = re.fullmatch(r"Job <(\d+)> is submitted to (default )?queue <[^>]+>\.\n", result.stdout)
        assert match, result.stdout
        return int(match[1])

    def fields(self, *ids: str) -> list[list[str]]:
        """``bjobs -noheader -o CUSTOM``: one list of fields per element."""
        result = self.run("bjobs", "-noheader", "-o", CUSTOM, *ids)
        return [line.split("^") for line in result.stdout.splitlines()]

    def wait_stat(self, job: str, stat: str) -> list[list[str]]:
        """Wait until every element of ``job`` shows ``stat``; their fields."""
        wait_for(lambda: all(row[1] == stat for row in self.fields(job)) and self.fields(job), 15,
                 f"job {job} to be {stat}")
        return self.fields(job)

    def gate(self, name: str) -> Path:
        return self.work / name


def teardown(fake: FakeSystem) -> None:
    """Every process the fakes started must be gone at the end of a test; stop them anyway."""
    try:
        wait_for(lambda: not live_pids(fake.directory), 15, "every process the fake commands started to end")
    finally:
        stop_all(fake.directory)


@pytest.fixture
def lsf(tmp_path: Path) -> Iterator[FakeSystem]:
    fake = FakeSystem("lsf", tmp_path, queues=(LSF_DEFAULT_QUEUE, "short"))
    yield fake
    teardown(fake)


@pytest.fixture
def winhpc(tmp_path: Path) -> Iterator[FakeSystem]:
    fake = FakeSystem("winhpc", tmp_path)
    yield fake
    teardown(fake)


def waits_for_gate(gate: Path) -> str:
    """Shell lines that keep a job running until the test creates ``gate`` (bounded: 30 s)."""
    return f"n=0; while [ ! -e '{gate}' ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done\n"


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# ---------------------------------------------------------------------------------------------------------
# The samples themselves
# ---------------------------------------------------------------------------------------------------------

def test_each_format_gives_back_its_captured_line() -> None:
    assert samples.LSF_BSUB_SUBMITTED_FORMAT.format(job_id=473713, queue="pub.1h") == samples.LSF_BSUB_SUBMITTED
    assert (samples.LSF_BSUB_SUBMITTED_DEFAULT_FORMAT.format(job_id=123, queue="normal")
            == samples.LSF_BSUB_SUBMITTED_DEFAULT)
    assert (samples.LSF_BSUB_SUBMITTED_DEFAULT_FORMAT.format(job_id=1, queue="normal")
            == samples.LSF_BSUB_ARRAY_SUBMITTED)
    assert (samples.LSF_BSUB_NO_SUCH_QUEUE_FORMAT.format(queue="o_pri_interactive_cpu_32G")
            == samples.LSF_BSUB_NO_SUCH_QUEUE)
    assert samples.LSF_BJOBS_NOT_FOUND_FORMAT.format(job_id=864220165) == samples.LSF_BJOBS_NOT_FOUND
    assert samples.LSF_BKILL_TERMINATING_FORMAT.format(job_id=473713) == samples.LSF_BKILL_TERMINATING
    assert samples.LSF_BKILL_ALREADY_FINISHED_FORMAT.format(job_id=11) == samples.LSF_BKILL_ALREADY_FINISHED
    assert samples.LSF_BKILL_NO_MATCHING_JOB_FORMAT.format(job_id=22) == samples.LSF_BKILL_NO_MATCHING_JOB
    assert samples.WINHPC_JOB_SUBMITTED_FORMAT.format(job_id=3490639) == samples.WINHPC_JOB_SUBMITTED


def columns(header: str) -> list[int]:
    return [match.start() for match in re.finditer(r"\S+", header)]


def cells(row: str, offsets: list[int]) -> list[str]:
    return [row[start:end].strip() for start, end in zip(offsets, [*offsets[1:], None], strict=True)]


def test_captured_table_rows_line_up_with_the_captured_header() -> None:
    offsets = columns(samples.LSF_BJOBS_HEADER)
    assert cells(samples.LSF_BJOBS_PEND, offsets) == [
        "473713", "gloessa", "PEND", "pub.1h", "brutus2", "", "TM-T", "Oct 19 17:10"]
    assert cells(samples.LSF_BJOBS_RUN, offsets)[5] == "a6128"
    assert cells(samples.LSF_BJOBS_EXIT, offsets)[2] == "EXIT"
    assert cells(samples.LSF_BJOBS_TRUNCATED_NAME, offsets)[6:] == ["*069656647", "Mar  7 00:58"]


# ---------------------------------------------------------------------------------------------------------
# LSF: bsub and bjobs
# ---------------------------------------------------------------------------------------------------------

def test_bsub_reads_the_script_and_its_directives_from_stdin(lsf: FakeSystem) -> None:
    script = ("#!/bin/sh\n"
              "# a comment\n"
              "#BSUB -J writer\n"
              "#BSUB -o writer.%J.out\n"
              "#BSUB -n 2\n"
              "echo \"job $LSB_JOBID in $(pwd)\"\n"
              "echo to-stderr >&2\n"
              "exit 3\n"
              "#BSUB -o after-the-first-command-so-ignored\n")
    result = lsf.run("bsub", input=script)
    assert result.stdout == samples.LSF_BSUB_SUBMITTED_DEFAULT_FORMAT.format(
        job_id=FIRST_JOB_ID, queue=LSF_DEFAULT_QUEUE) + "\n"
    assert (result.returncode, result.stderr) == (0, "")
    job = str(FIRST_JOB_ID)
    assert lsf.wait_stat(job, "EXIT") == [[job, "EXIT", "3", "-", "writer"]]
    output = (lsf.work / f"writer.{job}.out").read_text()
    assert output == f"job {job} in {lsf.work}\nto-stderr\n"  # no -e: standard error goes to the -o file
    assert not (lsf.work / "after-the-first-command-so-ignored").exists()


def test_a_named_queue_separate_output_files_and_done(lsf: FakeSystem) -> None:
    (lsf.work / "out").write_text("old\n")
    result = lsf.run("bsub", "-q", "short", "-J", "quick", "-oo", "out", "-eo", "err", "echo out; echo err >&2")
    assert result.stdout == samples.LSF_BSUB_SUBMITTED_FORMAT.format(job_id=FIRST_JOB_ID, queue="short") + "\n"
    assert lsf.wait_stat(str(FIRST_JOB_ID), "DONE") == [[str(FIRST_JOB_ID), "DONE", "-", "-", "quick"]]
    assert (lsf.work / "out").read_text() == "out\n"  # -oo overwrites
    assert (lsf.work / "err").read_text() == "err\n"


def test_the_default_table_follows_a_job_from_run_to_done(lsf: FakeSystem) -> None:
    gate = lsf.gate("gate")
    job = str(lsf.bsub("-J", "gated", "-q", "short", input=waits_for_gate(gate)))
    offsets = columns(samples.LSF_BJOBS_HEADER)

    def rows() -> list[list[str]]:
        result = lsf.run("bjobs", job)
        assert result.stdout.splitlines()[0] == samples.LSF_BJOBS_HEADER
        return [cells(line, offsets) for line in result.stdout.splitlines()[1:]]

    wait_for(lambda: rows()[0][2] == "RUN", 15, "the job to run")
    (row,) = rows()
    job_id, user, stat, queue, from_host, exec_host, name, submit_time = row
    assert (job_id, stat, queue, name) == (job, "RUN", "short", "gated")
    assert user and from_host and exec_host and re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d", submit_time)
    assert lsf.run("bjobs").stdout == lsf.run("bjobs", job).stdout  # unfinished: listed without asking
    gate.touch()
    wait_for(lambda: rows()[0][2] == "DONE", 15, "the job to be done")
    assert lsf.run("bjobs", "-noheader", job).stdout.splitlines() == lsf.run("bjobs", job).stdout.splitlines()[1:]
    nothing = lsf.run("bjobs")  # finished: only with -a or by id
    assert (nothing.returncode, nothing.stdout, nothing.stderr) == (0, "", samples.LSF_BJOBS_NO_UNFINISHED + "\n")
    assert cells(lsf.run("bjobs", "-a").stdout.splitlines()[1], offsets)[2] == "DONE"


def test_a_long_job_name_is_cut_as_lsf_cuts_it_unless_wide(lsf: FakeSystem) -> None:
    job = str(lsf.bsub("-J", "averyveryverylongname", "true"))
    lsf.wait_stat(job, "DONE")
    offsets = columns(samples.LSF_BJOBS_HEADER)
    assert cells(lsf.run("bjobs", job).stdout.splitlines()[1], offsets)[6] == "*ylongname"
    assert " averyveryverylongname " in lsf.run("bjobs", "-w", job).stdout


def test_a_job_array_runs_one_process_per_element(lsf: FakeSystem) -> None:
    gate = lsf.gate("gate")
    script = ('#BSUB -J "engines[1-3]"\n'
              "#BSUB -o out.%J.%I\n"
              "#BSUB -e err.%J.%I\n"
              'echo "$LSB_JOBID $LSB_JOBINDEX"\n' + waits_for_gate(gate))
    job = str(lsf.bsub(input=script))
    rows = lsf.wait_stat(job, "RUN")
    assert rows == [[job, "RUN", "-", "-", f"engines[{i}]"] for i in (1, 2, 3)]
    offsets = columns(samples.LSF_BJOBS_HEADER)
    table = [cells(line, offsets) for line in lsf.run("bjobs", job).stdout.splitlines()[1:]]
    assert [(row[0], row[6]) for row in table] == [(job, f"engines[{i}]") for i in (1, 2, 3)]
    assert lsf.fields(f"{job}[2]") == [[job, "RUN", "-", "-", "engines[2]"]]
    gate.touch()
    lsf.wait_stat(job, "DONE")
    for i in (1, 2, 3):
        assert (lsf.work / f"out.{job}.{i}").read_text() == f"{job} {i}\n"
        assert (lsf.work / f"err.{job}.{i}").read_text() == ""


def test_a_script_given_as_a_path_runs_without_its_directives(lsf: FakeSystem) -> None:
    script = lsf.work / "job.sh"
    script.write_text("#!/bin/sh\n#BSUB -o from-the-directive\necho \"ran with $1\"\n")
    job = str(lsf.bsub("-J", "bypath", "-o", "by-option", "/bin/sh", str(script), "an-argument"))
    lsf.wait_stat(job, "DONE")
    assert (lsf.work / "by-option").read_text() == "ran with an-argument\n"
    assert not (lsf.work / "from-the-directive").exists()  # LSF reads #BSUB lines only from standard input


def test_bjobs_about_jobs_it_does_not_know(lsf: FakeSystem) -> None:
    missing = lsf.run("bjobs", "-noheader", "-o", CUSTOM, "4242")
    assert (missing.returncode, missing.stdout) == (0, "")
    assert missing.stderr == samples.LSF_BJOBS_NOT_FOUND_FORMAT.format(job_id=4242) + "\n"
    job = str(lsf.bsub("true"))
    lsf.wait_stat(job, "DONE")
    mixed = lsf.run("bjobs", "-noheader", "-o", CUSTOM, job, "4242", f"{job}[7]")
    assert mixed.returncode == 255  # ert: 255 when some jobs were found and some not; 0 when none was
    assert mixed.stdout == f"{job}^DONE^-^-^true\n"
    assert mixed.stderr.splitlines() == [samples.LSF_BJOBS_NOT_FOUND_FORMAT.format(job_id=i)
                                         for i in ("4242", f"{job}[7]")]


# ---------------------------------------------------------------------------------------------------------
# LSF: bkill
# ---------------------------------------------------------------------------------------------------------

def test_bkill_stops_the_job_and_says_what_real_bkill_says(lsf: FakeSystem) -> None:
    script = "echo $$ > pid\nexec sleep 60\n"
    job = str(lsf.bsub("-J", "sleeper", input=script))
    lsf.wait_stat(job, "RUN")
    wait_for(lambda: (lsf.work / "pid").exists() and (lsf.work / "pid").read_text().strip(), 15, "the job's pid")
    pid = int((lsf.work / "pid").read_text())
    assert psutil.pid_exists(pid)
    killed = lsf.run("bkill", job)
    assert (killed.returncode, killed.stdout, killed.stderr) == (
        0, samples.LSF_BKILL_TERMINATING_FORMAT.format(job_id=job) + "\n", "")
    assert lsf.wait_stat(job, "EXIT") == [
        [job, "EXIT", str(samples.LSF_EXIT_CODE_KILLED), samples.LSF_EXIT_REASON_KILLED, "sleeper"]]
    wait_for(lambda: gone(pid), 15, f"the job's process {pid} to end")
    again = lsf.run("bkill", job)
    assert (again.returncode, again.stdout, again.stderr) == (
        samples.LSF_BKILL_EXIT_STATUS_FAILED, "", samples.LSF_BKILL_ALREADY_FINISHED_FORMAT.format(job_id=job) + "\n")
    unknown = lsf.run("bkill", "4242")
    assert (unknown.returncode, unknown.stderr) == (
        samples.LSF_BKILL_EXIT_STATUS_FAILED, samples.LSF_BKILL_NO_MATCHING_JOB_FORMAT.format(job_id=4242) + "\n")


def test_bkill_follows_sigterm_with_sigkill_when_the_job_ignores_it(lsf: FakeSystem) -> None:
    script = "trap '' TERM\necho $$ > pid\nwhile :; do sleep 0.1; done\n"
    job = str(lsf.bsub(input=script))
    wait_for(lambda: (lsf.work / "pid").exists() and (lsf.work / "pid").read_text().strip(), 15, "the job's pid")
    pid = int((lsf.work / "pid").read_text())
    assert lsf.run("bkill", job).returncode == 0
    assert lsf.wait_stat(job, "EXIT")[0][2] == "137"  # 128 + SIGKILL, kill_grace (0.5 s) after the SIGTERM
    wait_for(lambda: gone(pid), 15, f"the job's process {pid} to end")


def test_bkill_of_one_array_element_and_then_of_the_array(lsf: FakeSystem) -> None:
    gate = lsf.gate("gate")
    job = str(lsf.bsub("-J", "arr[1-3]", input=waits_for_gate(gate)))
    lsf.wait_stat(job, "RUN")
    one = lsf.run("bkill", f"{job}[2]")
    assert one.stdout == samples.LSF_BKILL_TERMINATING_FORMAT.format(job_id=f"{job}[2]") + "\n"
    wait_for(lambda: [row[1] for row in lsf.fields(job)] == ["RUN", "EXIT", "RUN"], 15, "element 2 to exit")
    rest = lsf.run("bkill", job)
    assert rest.stdout == samples.LSF_BKILL_TERMINATING_FORMAT.format(job_id=job) + "\n"
    lsf.wait_stat(job, "EXIT")


def test_bkill_with_a_signal(lsf: FakeSystem) -> None:
    job = str(lsf.bsub(input="exec sleep 60\n"))
    lsf.wait_stat(job, "RUN")
    signaled = lsf.run("bkill", "-s", "SIGKILL", job)
    assert signaled.stdout == samples.LSF_BKILL_SIGNALED_FORMAT.format(job_id=job) + "\n"
    assert lsf.wait_stat(job, "EXIT")[0][2:4] == ["137", "-"]


# ---------------------------------------------------------------------------------------------------------
# LSF: refusals
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "message"), [
    (("bsub", "-Z", "true"), "bsub: illegal option -- Z"),
    (("bjobs", "-l"), "bjobs: illegal option -- l"),
    (("bjobs", "-o", "jobid nonsense"), "bjobs: the fake does not know the output field 'nonsense'"),
    (("bkill", "-q", "1"), "bkill: illegal option -- q"),
    (("bkill",), "bkill: name the job to kill"),
])
def test_an_unknown_option_is_refused_as_a_usage_error(lsf: FakeSystem, command: tuple[str, ...],
                                                       message: str) -> None:
    result = lsf.run(*command)
    assert (result.returncode, result.stdout, result.stderr) == (255, "", message + "\n")
    assert lsf.run("bjobs", "-a").stdout == ""  # nothing was submitted


def test_an_unknown_queue_is_refused_as_lsf_refuses_it(lsf: FakeSystem) -> None:
    result = lsf.run("bsub", "-q", "nosuch", "true")
    assert (result.returncode, result.stdout) == (samples.LSF_BSUB_EXIT_STATUS_REFUSED, "")
    assert result.stderr == samples.LSF_BSUB_NO_SUCH_QUEUE_FORMAT.format(queue="nosuch") + "\n"


# ---------------------------------------------------------------------------------------------------------
# stop_all
# ---------------------------------------------------------------------------------------------------------

def test_stop_all_stops_every_job_by_pid(lsf: FakeSystem) -> None:
    lsf.bsub(input="echo $$ > pid1\nexec sleep 60\n")
    lsf.bsub(input="trap '' TERM\necho $$ > pid2\nexec sleep 60\n")  # sleep ignores SIGTERM too
    pid_files = [lsf.work / "pid1", lsf.work / "pid2"]
    wait_for(lambda: all(f.exists() and f.read_text().strip() for f in pid_files), 15, "both jobs' pids")
    pids = [int(f.read_text()) for f in pid_files]
    running = live_pids(lsf.directory)
    assert set(pids) <= set(running) and len(running) == 4  # two waiters, two jobs
    assert stop_all(lsf.directory) == running
    assert all(gone(pid) for pid in running) and live_pids(lsf.directory) == []
    assert [row[1] for row in lsf.fields(str(FIRST_JOB_ID), str(FIRST_JOB_ID + 1))] == ["EXIT", "EXIT"]


# ---------------------------------------------------------------------------------------------------------
# Windows HPC: job submit | view | cancel
# ---------------------------------------------------------------------------------------------------------

def ipython_job_file(fake: FakeSystem, command: str) -> str:
    """IPython 0.13's two-task job description, running ``command`` in the work directory, with one
    environment variable of its own."""
    xml = samples.WINHPC_IPYTHON_JOB_XML
    xml = xml.replace('CommandLine="ipengine.exe --log-to-file --log-level=40"',
                      f'CommandLine="{escape(command, {chr(34): "&quot;"})}"')
    xml = xml.replace('WorkDirectory="C:\\Users\\bgranger\\.ipython\\profile_default"',
                      f'WorkDirectory="{fake.work}"')
    xml = xml.replace("<EnvironmentVariables />",
                      "<EnvironmentVariables><Variable><Name>ANSWER</Name><Value>42</Value></Variable>"
                      "</EnvironmentVariables>")
    path = fake.work / "job.xml"
    path.write_text(xml)
    return str(path)


def task_outputs(fake: FakeSystem) -> list[str]:
    names = sorted(name for name in os.listdir(fake.work) if name.endswith(".out"))
    return [(fake.work / name).read_text() for name in names]


def view(fake: FakeSystem, job: int) -> str:
    result = fake.run("job", "view", str(job), "/scheduler:HEADNODE")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_job_submit_runs_the_tasks_of_ipythons_job_file(winhpc: FakeSystem) -> None:
    job_file = ipython_job_file(winhpc, 'echo "job=$CCP_JOBID task=$CCP_TASKID answer=$ANSWER"; echo e >&2')
    submitted = winhpc.run("job", "submit", f"/jobfile:{job_file}", "/scheduler:HEADNODE")
    assert (submitted.returncode, submitted.stderr) == (0, "")
    assert submitted.stdout == samples.WINHPC_JOB_SUBMITTED_FORMAT.format(job_id=FIRST_JOB_ID) + "\n"
    wait_for(lambda: view(winhpc, FIRST_JOB_ID) == WINHPC_VIEW_STATE_FORMAT.format(state="Finished") + "\n", 15,
             "the job to finish")
    assert sorted(task_outputs(winhpc)) == [f"job={FIRST_JOB_ID} task={task} answer=42\n" for task in (1, 2)]
    errors = sorted(name for name in os.listdir(winhpc.work) if name.endswith(".err"))
    assert [(winhpc.work / name).read_text() for name in errors] == ["e\n", "e\n"]


def test_ipythons_job_file_as_written_is_accepted_and_fails_here(winhpc: FakeSystem) -> None:
    (winhpc.work / "job.xml").write_text(samples.WINHPC_IPYTHON_JOB_XML)
    submitted = winhpc.run("job", "submit", "/jobfile:job.xml", "/scheduler:HEADNODE")
    assert submitted.stdout == samples.WINHPC_JOB_SUBMITTED_FORMAT.format(job_id=FIRST_JOB_ID) + "\n"
    wait_for(lambda: view(winhpc, FIRST_JOB_ID) == WINHPC_VIEW_STATE_FORMAT.format(state="Failed") + "\n", 15,
             "the job to fail: there is no C:\\ here")


def test_a_failing_task_fails_the_job(winhpc: FakeSystem) -> None:
    job_file = ipython_job_file(winhpc, 'test "$CCP_TASKID" = 1')
    assert winhpc.run("job", "submit", f"/jobfile:{job_file}").returncode == 0
    wait_for(lambda: view(winhpc, FIRST_JOB_ID) == WINHPC_VIEW_STATE_FORMAT.format(state="Failed") + "\n", 15,
             "the job to fail")


def test_job_view_shows_running_and_job_cancel_stops_every_task(winhpc: FakeSystem) -> None:
    job_file = ipython_job_file(winhpc, f'echo $$ > "pid.$CCP_TASKID"; {waits_for_gate(winhpc.gate("gate"))}')
    assert winhpc.run("job", "submit", f"/jobfile:{job_file}").returncode == 0
    pid_files = [winhpc.work / "pid.1", winhpc.work / "pid.2"]
    wait_for(lambda: all(f.exists() and f.read_text().strip() for f in pid_files), 15, "both tasks' pids")
    assert view(winhpc, FIRST_JOB_ID) == WINHPC_VIEW_STATE_FORMAT.format(state="Running") + "\n"
    canceled = winhpc.run("job", "cancel", str(FIRST_JOB_ID), "/scheduler:HEADNODE")
    assert (canceled.returncode, canceled.stdout, canceled.stderr) == (0, "", "")
    wait_for(lambda: view(winhpc, FIRST_JOB_ID) == WINHPC_VIEW_STATE_FORMAT.format(state="Canceled") + "\n", 15,
             "the job to be canceled")
    for pid in (int(f.read_text()) for f in pid_files):
        wait_for(lambda pid=pid: gone(pid), 15, f"task process {pid} to end")
    again = winhpc.run("job", "cancel", str(FIRST_JOB_ID))
    assert again.returncode != 0 and again.stdout == "" and again.stderr.strip()


@pytest.mark.parametrize("command", [
    ("job",), ("job", "frobnicate"), ("job", "view", "4242"), ("job", "cancel", "4242"), ("job", "view"),
    ("job", "submit", "/jobfile:missing.xml"), ("job", "submit", "/jobfile:job.xml", "/unknown:1"),
    ("job", "submit", "echo", "hello"),
])
def test_job_refuses_what_it_cannot_do(winhpc: FakeSystem, command: tuple[str, ...]) -> None:
    result = winhpc.run(*command)
    assert result.returncode != 0 and result.stdout == "" and len(result.stderr.splitlines()) == 1
