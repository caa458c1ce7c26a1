"""BatchSystemLauncher, the base of the batch plugins, on a toy batch system
whose commands are small scripts this test writes (the real systems are in
tests/test_batch_*.py): IPython's templates and EvalFormatter, the engines'
connection information in the script, job ids, states as the scheduler
tells them, stop, and the one-line errors."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from traitlets import List, Unicode
from traitlets.config import Config

from cluster_launcher.error import ClusterError, ConfigError
from cluster_launcher.launcher import (
    BatchSystemLauncher,
    ControllerLauncher,
    EngineSetLauncher,
    EvalFormatter,
    JobState,
    JobStatus,
    walltime_seconds,
)
from cluster_launcher.protocol.connection import ENGINE_CONNECTION_ENV, connection_file, write_private_json

# The seed-era PBS template of IPython's documentation ("Using ipcluster in PBS mode"), with {n//4}.
IPYTHON_PBS_TEMPLATE = """#PBS -N ipython
#PBS -j oe
#PBS -l walltime=00:10:00
#PBS -l nodes={n//4}:ppn=4
#PBS -q {queue}

cd $PBS_O_WORKDIR
export PATH=$HOME/usr/local/bin
export PYTHONPATH=$HOME/usr/local/lib/python2.7/site-packages
/usr/local/bin/mpiexec -n {n} ipengine --profile-dir={profile_dir}
"""


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport sys, json, pathlib\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


class ToyLauncher(BatchSystemLauncher):
    """A batch system of three scripts: `toysub` keeps the script and prints
    an id, `toystat` prints '<id> <STATE>' lines from a file, `toydel` marks jobs CANCELLED."""

    unknown_job_markers = ("Unknown toy job",)

    system = "Toy"
    directive = "#TOY"
    queue_directive = "#TOY -q {queue}"
    walltime_directive = "#TOY -t {walltime}"
    name_directives = ("#TOY -N {job_name}", "#TOY -o {output}")
    engines_directives = ("#TOY -n {n}",)
    submit_command = List(Unicode(), ["toysub"]).tag(config=True)
    delete_command = List(Unicode(), ["toydel"]).tag(config=True)
    status_command = List(Unicode(), ["toystat"]).tag(config=True)
    job_id_regexp = Unicode(r"job (\d+) submitted").tag(config=True)

    def parse_states(self, output: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        found = {}
        for line in output.splitlines():
            job_id, native, *reason = line.split()
            if job_id in job_ids:
                state = {"Q": JobState.PENDING, "R": JobState.RUNNING, "CANCELLED": JobState.CANCELLED,
                         "DONE": JobState.DONE, "TIMEOUT": JobState.TIMEOUT}[native]
                found[job_id] = JobStatus(job_id, [state], native, " ".join(reason))
        return found


class ToyEngineSetLauncher(ToyLauncher, EngineSetLauncher):
    pass


class ToyControllerLauncher(ToyLauncher, ControllerLauncher):
    pass


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy system's commands on PATH; its state file ('<id> <STATE>' lines) is tmp_path/jobs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    jobs = tmp_path / "jobs"
    jobs.write_text("")
    _script(bin_dir / "toysub", f"""
jobs = pathlib.Path({str(jobs)!r})
script = sys.stdin.read() if len(sys.argv) == 1 else pathlib.Path(sys.argv[1]).read_text()
job_id = 100 + len(jobs.read_text().splitlines())
pathlib.Path({str(tmp_path)!r}, f"submitted-{{job_id}}").write_text(script)
jobs.write_text(jobs.read_text() + f"{{job_id}} Q\\n")
print(f"job {{job_id}} submitted")""")
    # tmp_path/statfail, when there, holds '<code> <message>': toystat prints the message and fails.
    # Every toystat call is a line of tmp_path/statcalls: its job ids.
    _script(bin_dir / "toystat", f"""
with open({str(tmp_path / "statcalls")!r}, "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
failure = pathlib.Path({str(tmp_path)!r}, "statfail")
if failure.exists():
    code, message = failure.read_text().split(maxsplit=1)
    print(message, file=sys.stderr)
    sys.exit(int(code))
print(pathlib.Path({str(jobs)!r}).read_text(), end="")""")
    _script(bin_dir / "toydel", f"""
jobs = pathlib.Path({str(jobs)!r})
lines = [line.split()[0] + (" CANCELLED" if line.split()[0] in sys.argv[1:] else " " + line.split(maxsplit=1)[1])
         for line in jobs.read_text().splitlines()]
jobs.write_text("".join(line + "\\n" for line in lines))""")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    profile = tmp_path / "profile"
    (profile / "security").mkdir(parents=True)
    write_private_json(connection_file(str(profile), "engine", "c1"), {"key": "k3y", "location": "10.0.0.5"})
    return tmp_path


def _engines(toy: Path, **traits) -> ToyEngineSetLauncher:
    return ToyEngineSetLauncher(**{"profile_dir": str(toy / "profile"), "cluster_id": "c1", "poll_interval": 0,
                                   "submit_interval": 0, **traits})


def _set_state(toy: Path, job_id: str, state: str) -> None:
    lines = [line for line in (toy / "jobs").read_text().splitlines() if not line.startswith(job_id + " ")]
    (toy / "jobs").write_text("".join(f"{line}\n" for line in [*lines, f"{job_id} {state}"]))


# --- IPython's EvalFormatter --------------------------------------------------------------------


@pytest.mark.parametrize("template, expected", [
    ("{n}", "8"), ("{n//4}", "2"), ("{n/4}", "2"), ("{n/16}", "0.5"), ("{n * 2}", "16"),
    ("{queue or 'default'}", "default"), ("{n:03d}", "008"), ("{{literal}}", "{literal}"),
])
def test_eval_formatter_evaluates_fields(template, expected):
    assert EvalFormatter().format(template, n=8, queue="") == expected


def test_eval_formatter_runs_no_builtins():
    with pytest.raises(NameError):
        EvalFormatter().format("{open('/etc/passwd')}", n=1)


# --- the job script ------------------------------------------------------------------------------


def test_default_template_is_header_prologue_command_with_the_connection_exported(toy):
    launcher = _engines(toy, queue="short", walltime="00:30:00", job_extra_directives=["-A abc"],
                        job_script_prologue=["module load python"], engine_args=["--x=a b"])
    script = launcher.job_script_text(4)
    connection = json.dumps({"key": "k3y", "location": "10.0.0.5"}, separators=(",", ":"), sort_keys=True)
    output = toy / "profile" / "log" / "cluster-launcher-engines-c1.out"
    assert script.splitlines() == [
        "#!/bin/sh",
        "#TOY -N cluster-launcher-engines-c1",
        f"#TOY -o {output}",
        "#TOY -n 4",
        "#TOY -q short",
        "#TOY -t 00:30:00",
        "#TOY -A abc",
        f"export {ENGINE_CONNECTION_ENV}='{connection}'",
        "export CLUSTER_LAUNCHER_ENGINE_DEADLINE=$(( $(date +%s) + 1800 ))",  # computed when the job starts
        "module load python",
        f"exec {sys.executable} -m cluster_launcher engine --profile-dir={toy / 'profile'} --cluster-id=c1 "
        "'--x=a b' --Engine.log_to_file=False",
    ]


def test_ipythons_pbs_template_renders_verbatim_with_the_connection_after_its_directives(toy):
    launcher = _engines(toy, batch_template=IPYTHON_PBS_TEMPLATE, queue="veryshort.q")
    lines = launcher.job_script_text(64).splitlines()
    assert lines.pop(0) == "#!/bin/sh"  # it had none: a shell script gets one (sbatch refuses one without)
    assert lines[:6] == ["#PBS -N ipython", "#PBS -j oe", "#PBS -l walltime=00:10:00", "#PBS -l nodes=16:ppn=4",
                         "#PBS -q veryshort.q", ""]
    assert lines[6].startswith(f"export {ENGINE_CONNECTION_ENV}=")  # before the first command, not among directives
    assert lines[-1] == f"/usr/local/bin/mpiexec -n 64 ipengine --profile-dir={toy / 'profile'}"


def test_template_file_is_found_in_the_profile_then_here_and_context_adds_keys(toy, monkeypatch):
    (toy / "profile" / "toy.template").write_text("#!/bin/sh\n#TOY -A {account}\nrun {n} in {cluster_id}\n")
    config = Config()
    config.ToyLauncher.batch_template_file = "toy.template"
    config.ToyLauncher.context = {"account": "abc123"}
    script = _engines(toy, config=config).job_script_text(2)
    assert "#TOY -A abc123\n" in script and script.endswith("run 2 in c1\n")
    monkeypatch.chdir(toy)
    (toy / "here.template").write_text("#!/bin/sh\nhere {n}\n")
    assert _engines(toy, batch_template_file="here.template").job_script_text(1).endswith("here 1\n")


def test_template_errors_name_the_setting_and_the_keys(toy):
    with pytest.raises(ConfigError, match=r"^ToyEngineSetLauncher.batch_template: name 'qeue' is not defined "
                                          r"\(the keys a template can use: array_throttle, cluster_id, command, "
                                          r"header, job_name, n, output, profile_dir, program_and_args, prologue, "
                                          r"queue, throttle, walltime; "
                                          r"add yours with c.ToyEngineSetLauncher.context\)$"):
        _engines(toy, batch_template="#TOY -q {qeue}\n").job_script_text(1)
    with pytest.raises(ConfigError, match=r"^ToyEngineSetLauncher.batch_template_file = 'nope.template': no such "
                                          r"file \(looked in .*/profile/nope.template and .*/nope.template\)$"):
        _engines(toy, batch_template_file="nope.template").job_script_text(1)
    with pytest.raises(ConfigError, match=r"^ToyEngineSetLauncher.batch_template: cannot render it: "
                                          r"ZeroDivisionError"):
        _engines(toy, batch_template="{n//0}").job_script_text(1)


def test_dry_run_shows_command_and_script_and_submits_nothing(toy):
    lines = _engines(toy).dry_run(3)
    path = toy / "profile" / "batch" / "toy-engines-c1.sh"
    assert lines[0] == f"$ toysub {path}" and lines[1] == f"--- {path}" and lines[-1] == "---"
    assert f"export {ENGINE_CONNECTION_ENV}='<controller-engine.json of the running controller>'" in lines
    assert not path.exists() and (toy / "jobs").read_text() == ""


def test_environment_is_exported_with_the_connection(toy):
    lines = _engines(toy, environment={"OMP_NUM_THREADS": "1", "NOTE": "a b"}).job_script_text(1).splitlines()
    at = lines.index("export OMP_NUM_THREADS=1")
    assert lines[at + 1] == "export NOTE='a b'" and lines[at + 2].startswith(f"export {ENGINE_CONNECTION_ENV}=")


class PublicToyEngineSetLauncher(ToyEngineSetLauncher):
    job_is_private = False  # a system that lets other users read job scripts


def test_no_key_in_a_job_other_users_can_read_unless_asked(toy):
    public = PublicToyEngineSetLauncher(profile_dir=str(toy / "profile"), cluster_id="c1")
    assert public.connection_in_job is False
    script = public.job_script_text(2)
    assert ENGINE_CONNECTION_ENV not in script and "k3y" not in script
    assert f"--profile-dir={toy / 'profile'}" in script  # the engines read the profile's file (a shared filesystem)
    asked = PublicToyEngineSetLauncher(profile_dir=str(toy / "profile"), cluster_id="c1", connection_in_job=True)
    assert f"export {ENGINE_CONNECTION_ENV}=" in asked.job_script_text(2)


def test_check_renders_the_script_and_finds_the_submit_command(toy):
    _engines(toy).check(2)
    with pytest.raises(ConfigError, match=r"^ToyEngineSetLauncher.batch_template: name 'qeue' is not defined"):
        _engines(toy, batch_template="#TOY -q {qeue}\n").check(2)
    with pytest.raises(ClusterError, match=r"^no-such-toysub not found: is Toy's client installed and on PATH\? "
                                           r"\(set c.ToyEngineSetLauncher.submit_command to its full path"):
        _engines(toy, submit_command=["no-such-toysub"]).check(2)
    assert (toy / "jobs").read_text() == "" and not (toy / "profile" / "batch").exists()


def test_an_engine_given_its_connection_by_its_job_logs_to_the_jobs_output(monkeypatch):
    from cluster_launcher.engine.engine import Engine

    monkeypatch.delenv(ENGINE_CONNECTION_ENV, raising=False)
    assert Engine().log_to_file is True
    monkeypatch.setenv(ENGINE_CONNECTION_ENV, "{}")
    assert Engine().log_to_file is False
    config = Config()
    config.Engine.log_to_file = True
    assert Engine(config=config).log_to_file is True


def test_a_controller_job_carries_no_connection(toy):
    script = ToyControllerLauncher(profile_dir=str(toy / "profile")).job_script_text(1)
    assert ENGINE_CONNECTION_ENV not in script
    assert script.splitlines()[-1].endswith("-m cluster_launcher controller "
                                            f"--profile-dir={toy / 'profile'} --Controller.log_to_file=False")


# --- submit, poll, stop ---------------------------------------------------------------------------


def test_submit_records_the_job_and_writes_the_script_0600(toy):
    launcher = _engines(toy)
    launcher.start(4)
    assert launcher.job_ids == ["100"] and launcher.n == 4
    script = Path(launcher.job_script)
    assert stat.S_IMODE(script.stat().st_mode) == 0o600  # it holds the key
    assert (toy / "submitted-100").read_text() == script.read_text()
    restored = ToyEngineSetLauncher.from_dict(json.loads(json.dumps(launcher.to_dict())))
    assert (restored.job_ids, restored.job_script, restored.output_file) == (["100"], str(script),
                                                                          launcher.output_file)


def test_a_later_stop_runs_the_commands_the_start_was_given(toy):
    """Commands given on the start command line only are the record's: `stop` from another shell uses them."""
    bin_dir = toy / "bin"
    (bin_dir / "site-toystat").symlink_to(bin_dir / "toystat")
    (bin_dir / "site-toydel").symlink_to(bin_dir / "toydel")
    launcher = _engines(toy, status_command=["site-toystat"], delete_command=["site-toydel"])
    launcher.start(1)
    record = json.loads(json.dumps(launcher.to_dict()))
    assert (record["status_command"], record["delete_command"]) == (["site-toystat"], ["site-toydel"])
    later = ToyEngineSetLauncher.from_dict(record)
    assert later.status_argv(["100"])[0] == "site-toystat"
    later.stop()
    assert (toy / "jobs").read_text() == "100 CANCELLED\n"


def test_states_as_the_scheduler_tells_them(toy):
    launcher = _engines(toy)
    launcher.start(2)
    assert launcher.poll() is None and launcher.running_engines() == 0  # queued
    _set_state(toy, "100", "R")
    assert launcher.poll() is None and launcher.running_engines() == 1
    assert launcher.status_line() == "Toy job 100 R"
    _set_state(toy, "100", "TIMEOUT DUE TO TIME LIMIT")
    assert launcher.poll() == 0  # it reached its walltime: it ended, it did not fail
    ((code, output, lines),) = launcher.exited()
    assert code == 0 and output == launcher.output_path("100")
    assert lines[0] == "Toy job 100: TIMEOUT (DUE TO TIME LIMIT): it reached its walltime (the queue default); " \
        "ended, not failed"
    (toy / "jobs").write_text("")  # the scheduler forgot it: its end, as seen, stays
    assert launcher.job_states()["100"].state is JobState.TIMEOUT


def test_a_job_never_seen_ending_and_not_listed_is_gone(toy):
    launcher = _engines(toy)
    launcher.start(1)
    (toy / "jobs").write_text("")
    assert launcher.job_states()["100"].state is JobState.GONE and launcher.poll() == 0


def test_a_status_command_that_fails_ends_no_job(toy, caplog):
    launcher = _engines(toy)
    launcher.start(1)
    (toy / "statfail").write_text("1 toystat: cannot reach the toy server")
    assert launcher.job_states()["100"].native == "unknown" and launcher.poll() is None
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["cannot ask Toy for the state of job(s) 100: `toystat 100` failed with code 1: toystat: "
                      "cannot reach the toy server"]  # once, not at every poll
    (toy / "statfail").unlink()
    _set_state(toy, "100", "R")
    assert launcher.job_states()["100"].state is JobState.RUNNING
    (toy / "statfail").write_text("2 toystat: timed out")  # no answer: the last one stands
    assert launcher.job_states()["100"].state is JobState.RUNNING and launcher.running_engines() == 1


def test_a_status_command_that_fails_for_an_unknown_job_says_it_is_gone(toy):
    launcher = _engines(toy)
    launcher.start(1)
    (toy / "statfail").write_text("1 toystat: Unknown toy job 100")
    assert launcher.job_states()["100"].state is JobState.GONE and launcher.poll() == 0


def test_stop_deletes_a_job_the_scheduler_did_not_answer_about(toy):
    launcher = _engines(toy, stop_timeout=0.1)
    launcher.start(1)
    _set_state(toy, "100", "R")
    (toy / "statfail").write_text("1 toystat: cannot reach the toy server")
    launcher.stop()
    (toy / "statfail").unlink()
    assert (toy / "jobs").read_text() == "100 CANCELLED\n"
    assert launcher.job_states(fresh=True)["100"].state is JobState.CANCELLED


def test_polls_are_rate_limited(toy):
    launcher = _engines(toy, poll_interval=3600)
    launcher.start(1)
    assert launcher.job_states()["100"].state is JobState.PENDING
    _set_state(toy, "100", "R")
    assert launcher.job_states()["100"].state is JobState.PENDING  # the last answer, not a new command
    assert launcher.job_states(fresh=True)["100"].state is JobState.RUNNING


def test_stop_deletes_and_waits_for_the_end(toy):
    launcher = _engines(toy)
    launcher.start(2)
    _set_state(toy, "100", "R")
    launcher.stop()
    assert launcher.job_states(fresh=True)["100"].state is JobState.CANCELLED and launcher.killed == ()
    launcher.stop()  # deleting it again changes nothing
    assert (toy / "jobs").read_text() == "100 CANCELLED\n" and launcher.killed == ()


# --- errors ----------------------------------------------------------------------------------------


def test_a_missing_command_says_what_to_install(toy):
    launcher = _engines(toy, submit_command=["no-such-toysub"])
    with pytest.raises(ClusterError, match=r"^no-such-toysub not found: is Toy's client installed and on PATH\?"):
        launcher.start(1)


def test_a_failing_submit_shows_what_it_printed(toy):
    fail = _script(toy / "bin" / "toyfail", "print('toysub: error: queue short is full', file=sys.stderr)\n"
                   "sys.exit(3)")
    with pytest.raises(ClusterError, match=rf"^`{fail} \S+` failed with code 3: toysub: error: queue short is "
                                           r"full$"):
        _engines(toy, submit_command=[fail]).start(1)


def test_no_job_id_in_the_output_is_named(toy):
    quiet = _script(toy / "bin" / "toyquiet", "print('accepted')")
    with pytest.raises(ClusterError, match=r"^\S+toyquiet printed no job id \(ToyEngineSetLauncher.job_id_regexp = "
                                           r"'job \(\\\\d\+\) submitted'\): accepted$"):
        _engines(toy, submit_command=[quiet]).start(1)


# --- at scale: arrays split, one status command per poll, submissions spaced and retried -----------


def _status_calls(toy: Path) -> list[str]:
    path = toy / "statcalls"
    return path.read_text().splitlines() if path.exists() else []


class ToyWholeJobLauncher(ToyEngineSetLauncher):
    status_per_engine = False  # toystat tells a job's state, not its tasks'


def test_engines_beyond_max_array_size_go_out_as_several_jobs(toy):
    launcher = ToyWholeJobLauncher(profile_dir=str(toy / "profile"), cluster_id="c1", poll_interval=0,
                                   submit_interval=0, max_array_size=4)
    assert launcher.job_split(10) == [4, 4, 2]
    launcher.start(10)
    assert launcher.job_ids == ["100", "101", "102"] and launcher.job_sizes == [4, 4, 2] and launcher.n == 10
    assert [(toy / f"submitted-{job_id}").read_text().count("#TOY -n 4") for job_id in ("100", "101")] == [1, 1]
    assert "#TOY -n 2\n" in (toy / "submitted-102").read_text()
    _set_state(toy, "101", "R")
    assert launcher.active_engines() == 10 and launcher.running_engines() == 4
    assert launcher.cancel_queued(5) == 2  # whole queued jobs, newest first: 102 (2); 100 (4) would be 6
    assert launcher.job_states()["102"].state is JobState.CANCELLED and launcher.active_engines() == 8


def test_the_dry_run_shows_each_job_size_once(toy):
    lines = _engines(toy, max_array_size=4).dry_run(10)
    assert [line.split("    #")[-1] for line in lines if line.startswith("$ ")] == [" 2 jobs of 4 engines",
                                                                                    f"$ toysub {lines[1][4:]}"]


def test_more_jobs_than_max_queued_jobs_is_refused_before_anything_starts(toy):
    with pytest.raises(ConfigError, match=r"^10 engines need 3 jobs of at most ToyEngineSetLauncher.max_array_size=4, "
                                          r"more than ToyEngineSetLauncher.max_queued_jobs=2: raise one of them$"):
        _engines(toy, max_array_size=4, max_queued_jobs=2).check(10)
    assert not (toy / "submitted-100").exists()


def test_array_throttle_is_written_the_systems_way(toy):
    class Suffixed(ToyEngineSetLauncher):
        engines_directives = ("#TOY -a 1-{n}{throttle}",)
        throttle_suffix = "%{array_throttle}"

    class Directive(ToyEngineSetLauncher):
        throttle_directives = ("#TOY -tc {array_throttle}",)

    common = {"profile_dir": str(toy / "profile"), "cluster_id": "c1"}
    assert "#TOY -a 1-8%2\n" in Suffixed(array_throttle=2, **common).job_script_text(8)
    assert "#TOY -a 1-8\n" in Suffixed(**common).job_script_text(8)
    assert "#TOY -n 8\n#TOY -tc 3\n" in Directive(array_throttle=3, **common).job_script_text(8)


def test_one_status_command_per_poll_for_all_the_jobs_of_a_cluster(toy):
    common = {"profile_dir": str(toy / "profile"), "cluster_id": "c1", "poll_interval": 3600, "submit_interval": 0}
    controller = ToyControllerLauncher(**common)
    controller.start()
    engine_sets = [ToyEngineSetLauncher(**common) for _ in range(3)]
    for engines in engine_sets:
        engines.start(2)
    assert [launcher.poll() for launcher in [controller, *engine_sets]] == [None] * 4
    assert _status_calls(toy) == ["100 101 102 103"]  # one command, every job of the cluster in it
    other_cluster = ToyControllerLauncher(**{**common, "cluster_id": "c2"})
    other_cluster.start(1)
    assert other_cluster.poll() is None and _status_calls(toy)[1:] == ["104"]  # another cluster asks for itself
    _set_state(toy, "101", "DONE")
    assert engine_sets[0].job_states(fresh=True)["101"].state is JobState.DONE
    assert _status_calls(toy)[2:] == ["101 100 102 103"]
    assert [launcher.poll() for launcher in engine_sets[1:]] == [None, None]  # the shared answer still covers them
    assert len(_status_calls(toy)) == 3
    engine_sets[1].job_states(fresh=True)
    assert _status_calls(toy)[3] == "102 100 103"  # the ended job is no longer asked about


def test_submissions_are_spaced_by_submit_interval(toy, monkeypatch):
    slept = []
    monkeypatch.setattr("cluster_launcher.launcher.batch._pause", slept.append)
    _engines(toy, submit_interval=30, max_array_size=1).start(3)
    assert len(slept) >= 2 and all(0 < pause <= 30 for pause in slept)


def test_a_busy_scheduler_is_tried_again_with_backoff(toy, monkeypatch):
    slept = []
    monkeypatch.setattr("cluster_launcher.launcher.batch._pause", slept.append)
    busy = toy / "busy-once"
    busy.write_text("")
    flaky = _script(toy / "bin" / "toyflaky", f"""
import os, subprocess
if os.path.exists({str(busy)!r}):
    os.unlink({str(busy)!r})
    print("toysub: error: Socket timed out on send/recv operation", file=sys.stderr)
    sys.exit(1)
sys.exit(subprocess.run(["toysub", *sys.argv[1:]]).returncode)""")
    launcher = _engines(toy, submit_command=[flaky], submit_backoff=7)
    launcher.transient_submit_markers = ("Socket timed out",)
    launcher.start(1)
    assert launcher.job_ids == ["100"] and slept == [7]


def test_a_scheduler_busy_every_time_fails_after_the_retries(toy, monkeypatch):
    slept = []
    monkeypatch.setattr("cluster_launcher.launcher.batch._pause", slept.append)
    busy = _script(toy / "bin" / "toybusy", "print('Socket timed out', file=sys.stderr)\nsys.exit(1)")
    launcher = _engines(toy, submit_command=[busy], submit_backoff=1, submit_retries=2)
    launcher.transient_submit_markers = ("Socket timed out",)
    with pytest.raises(ClusterError, match=r"failed with code 1: Socket timed out \(tried 3 times; "
                                           r"ToyEngineSetLauncher.submit_retries\)$"):
        launcher.start(1)
    assert slept == [1, 2] and launcher.job_ids == []


# --- walltime ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "bare_unit", "seconds"), [
    ("", 1, None), ("01:00:00", 1, 3600), ("10:30", 1, 630), ("90", 1, 90), ("90", 60, 5400),
    ("2-0", 60, 2 * 86400), ("1-12", 60, 86400 + 12 * 3600), ("1-00:30", 60, 86400 + 1800),
    ("1-00:00:05", 60, 86405), (" 0:0:3 ", 1, 3),
])
def test_walltime_forms_in_seconds(text, bare_unit, seconds):
    assert walltime_seconds(text, bare_unit=bare_unit) == seconds


@pytest.mark.parametrize("text", ["1h", "1:2:3:4", "-5", "1-", "a:b", "1.5"])
def test_a_walltime_of_no_known_form_is_a_one_line_config_error_naming_the_option(text):
    with pytest.raises(ConfigError, match=rf"^SlurmEngineSetLauncher\.walltime = '{re.escape(text)}': expected "
                       r"HH:MM:SS, MM:SS, a number, or \(Slurm\) D-HH, D-HH:MM, D-HH:MM:SS$"):
        walltime_seconds(text, "SlurmEngineSetLauncher")


def test_only_the_engines_job_exports_its_deadline_computed_when_it_starts(toy):
    engines = _engines(toy, walltime="1:00:00")
    assert "\nexport CLUSTER_LAUNCHER_ENGINE_DEADLINE=$(( $(date +%s) + 3600 ))\n" in engines.job_script_text(1)
    assert "DEADLINE" not in _engines(toy).job_script_text(1)  # no walltime: no deadline
    controller = ToyControllerLauncher(profile_dir=str(toy / "profile"), cluster_id="c1", walltime="1:00:00")
    assert "DEADLINE" not in controller.job_script_text(1)
    with pytest.raises(ConfigError, match=r"^ToyEngineSetLauncher\.walltime = 'soon'"):
        _engines(toy, walltime="soon").check(1)


def test_the_exported_deadline_is_the_shells_clock_plus_the_walltime(toy, tmp_path):
    script = _engines(toy, walltime="10:00", batch_template="{header}\necho $CLUSTER_LAUNCHER_ENGINE_DEADLINE\n"
                      ).job_script_text(1)
    before = time.time()
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, timeout=30)
    assert before + 600 - 1 <= int(done.stdout) <= time.time() + 600


@pytest.mark.parametrize("walltime, signal, expected", [
    ("01:00:00", 60, "#TOY -warn 60 1 0:59:00"),
    ("00:10:00", 90, "#TOY -warn 90 2 0:08:30"),  # minutes rounded up: warned no later than asked
    ("00:00:30", 60, None),  # a walltime shorter than the warning: no signal (it would come at start)
    ("01:00:00", 0, None),
])
def test_the_walltime_signal_directive_gets_seconds_minutes_and_the_soft_limit(toy, walltime, signal, expected):
    class Warned(ToyEngineSetLauncher):
        walltime_signal_directive = "#TOY -warn {seconds} {minutes} {soft_limit}"

    script = Warned(profile_dir=str(toy / "profile"), cluster_id="c1", walltime=walltime,
                    walltime_signal=signal).job_script_text(2)
    warn = [line for line in script.splitlines() if line.startswith("#TOY -warn")]
    assert warn == ([expected] if expected else [])


def test_a_submission_that_timed_out_after_the_scheduler_took_it_is_adopted_not_submitted_again(toy, monkeypatch):
    """The submit command queues the job, then hangs past command_timeout: the job found by name is the one."""
    monkeypatch.setattr("cluster_launcher.launcher.batch._pause", lambda seconds: None)
    hangs = _script(toy / "bin" / "toyhang", """
import subprocess, time
subprocess.run(["toysub", *sys.argv[1:]], stdout=subprocess.DEVNULL)
time.sleep(30)""")

    class Named(ToyEngineSetLauncher):
        def submitted_jobs_named(self, job_name: str) -> list[str]:
            return [line.split()[0] for line in (toy / "jobs").read_text().splitlines()]

    launcher = Named(profile_dir=str(toy / "profile"), cluster_id="c1", submit_command=[hangs], command_timeout=1,
                     submit_interval=0)
    launcher.start(1)
    assert launcher.job_ids == ["100"] and (toy / "jobs").read_text() == "100 Q\n"  # one job, not two
