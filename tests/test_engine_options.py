"""Engine start-up options against a real controller and engines: start-up
command and script, working directory (new and legacy spellings), and a
task's output streamed to the client while it runs."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from cluster_launcher import Client
from cluster_launcher.testing.processes import LocalCluster, Process, wait_for, wait_for_gate

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Engine 0 takes its options from the command line, engine 1 from the
    profile's engine_config.py written with the seed's section name."""
    root = tmp_path_factory.mktemp("engine-options")
    paths = {name: root / name for name in ("profile", "work0", "work1")}
    for path in paths.values():
        path.mkdir()
    paths["script"] = root / "setup_engine.py"
    paths["script"].write_text("import os\nfrom_script = 'ran in ' + os.getcwd()\n"
                               "x = 1  # overwritten by the command\n")
    return paths


@pytest.fixture(scope="module")
def cluster(dirs):
    running = LocalCluster(str(dirs["profile"]))
    try:
        running.start_controller()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(cluster, dirs):
    client = Client(profile_dir=cluster.profile_dir, timeout=10)
    try:
        cluster.start_engines(1, "--Engine.startup_command=x = 41", f"--Engine.startup_script={dirs['script']}",
                              f"--Engine.work_dir={dirs['work0']}")
        client.wait_for_engines(1, timeout=20)
        # Written after engine 0 started, so only engine 1 reads it.
        (dirs["profile"] / "engine_config.py").write_text(textwrap.dedent(f"""\
            c = get_config()
            c.IPEngineApp.startup_command = 'y = 42'
            c.IPEngineApp.work_dir = {str(dirs['work1'])!r}
            """))
        cluster.start_engines(1)
        client.wait_for_engines(2, timeout=20)
        yield client
    finally:
        client.close()


def test_startup_command_runs_in_the_namespace(client):
    assert client[0].pull("x", block=True) == 41  # the command ran after the script


def test_startup_script_runs_in_the_namespace_after_changing_directory(client, dirs):
    assert client[0].pull("from_script", block=True) == f"ran in {dirs['work0']}"


def test_work_dir(client, dirs):
    assert client[0].apply_sync(os.getcwd) == str(dirs["work0"])
    lview = client.load_balanced_view()
    with lview.temp_flags(targets=[0]):
        assert lview.apply_sync(os.getcwd) == str(dirs["work0"])


def test_legacy_ipengineapp_options_from_the_profile(client, dirs):
    assert client[1].pull("y", block=True) == 42
    assert client[1].apply_sync(os.getcwd) == str(dirs["work1"])
    assert client[1].apply_sync(lambda: "x" in globals()) is False  # command-line options were engine 0's


# --- output streams -------------------------------------------------------------


def _print_flush_then_wait(gate: str):
    print("working on it", flush=True)
    wait_for_gate(gate)
    print("done", file=sys.stderr)
    return 7


def _print_then_wait(gate: str):
    print("no explicit flush")
    wait_for_gate(gate)


def _progress_without_newline(gate: str):
    sys.stdout.write("50% ")
    wait_for_gate(gate)


def _print_many_quickly(lines: int):
    for i in range(lines):
        print(f"line {i}", flush=i % 3 == 0)
    time.sleep(0.3)


@pytest.mark.parametrize("task, text", [(_print_flush_then_wait, "working on it\n"),
                                        (_print_then_wait, "no explicit flush\n"),
                                        (_progress_without_newline, "50% ")])
def test_output_reaches_the_client_while_the_task_runs(client, make_gate, task, text):
    gate = make_gate()
    ar = client.load_balanced_view().apply_async(task, gate.path)
    # The task cannot end before the gate opens: what arrives now was streamed while it runs.
    wait_for(lambda: text in ar.stdout, 20, f"{text!r} to be streamed while the task runs")
    assert ar.stdout == ar.metadata["stdout"] == text and not ar.ready()
    gate.open()
    ar.get(20)
    assert ar.stdout == text  # the reply's full output replaces the preview, nothing doubled


def test_final_output_is_exactly_what_was_printed(client, make_gate):
    gate = make_gate()
    ar = client[0].apply(_print_flush_then_wait, gate.path)
    wait_for(lambda: "working on it" in ar.stdout, 20, "the streamed preview of the output")
    gate.open()
    assert ar.get(20) == 7
    assert ar.stdout == "working on it\n" and ar.stderr == "done\n"
    many = client[1].apply(_print_many_quickly, 200)
    many.get(5)
    assert many.stdout == "".join(f"line {i}\n" for i in range(200))


# --- bad options ------------------------------------------------------------------


def _error_line(process: Process) -> str:
    assert process.wait(20) not in (None, 0), process.output()
    errors = [line for line in process.output().splitlines() if "error:" in line]
    assert len(errors) == 1, process.output()
    return errors[0]


@pytest.mark.parametrize("option, named", [
    ("--Engine.work_dir={tmp}/nowhere", ("Engine.work_dir", "nowhere")),
    ("--Engine.startup_script={tmp}/missing.py", ("Engine.startup_script", "missing.py")),
    ("--Engine.startup_command=import no_such_module_here", ("Engine.startup_command", "no_such_module_here")),
], ids=["work_dir", "startup_script", "startup_command"])
def test_bad_start_up_option_is_a_one_line_error(cluster, tmp_path, option, named):
    engine = Process("engine", cluster.profile_dir, option.format(tmp=tmp_path))
    try:
        line = _error_line(engine)
    finally:
        engine.stop()
    assert all(word in line for word in named), line
