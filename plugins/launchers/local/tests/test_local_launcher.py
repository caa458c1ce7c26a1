"""LocalControllerLauncher / LocalEngineSetLauncher with plain commands:
real processes, stopped by PID, checked with psutil."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from cluster_launcher_local import LocalControllerLauncher, LocalEngineLauncher, LocalEngineSetLauncher
from traitlets.config import Config

from cluster_launcher import plugins
from cluster_launcher.launcher import pid_alive

SLEEPER = [sys.executable, "-c", "import time, sys; print('up', sys.argv[1:], flush=True); time.sleep(60)"]
IGNORES_SIGTERM = [sys.executable, "-c",
                   "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ignoring', flush=True); time.sleep(60)"]


@pytest.fixture
def started():
    """PIDs a test started; whatever is still alive at the end is killed (by PID)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def gone(pid: int, timeout: float = 5.0) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def wait_for_text(path: str, text: str, timeout: float = 10.0) -> str:
    """Wait until a line of ``path`` starts with ``text`` (not the header
    line naming the command, which holds the text too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and f"\n{text}" in (content := open(path).read()):
            return content
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s")


def test_short_names_resolve_to_the_local_launchers():
    assert plugins.resolve("launcher", "Local", role="controller") is LocalControllerLauncher
    assert plugins.resolve("launcher", "local", role="engines") is LocalEngineSetLauncher
    assert plugins.resolve("launcher", "LocalEngineSetLauncher") is LocalEngineSetLauncher


def test_controller_starts_polls_stops_and_logs_in_profile(tmp_path, started):
    launcher = LocalControllerLauncher(profile_dir=str(tmp_path), cluster_id="abc", controller_cmd=SLEEPER)
    launcher.start()
    started.append(launcher.pid)
    assert launcher.poll() is None
    log = tmp_path / "log" / "controller-abc.log"
    assert launcher.log_path == str(log)
    content = wait_for_text(str(log), "up")
    assert f"--profile-dir={tmp_path}" in content and "--cluster-id=abc" in content  # the args it got
    launcher.stop()
    assert launcher.poll() == -signal.SIGTERM
    assert gone(launcher.pid)


def test_sigkill_after_stop_timeout_when_sigterm_is_ignored(tmp_path, started):
    launcher = LocalControllerLauncher(profile_dir=str(tmp_path), controller_cmd=IGNORES_SIGTERM, stop_timeout=0.5)
    launcher.start()
    started.append(launcher.pid)
    wait_for_text(launcher.log_path, "ignoring")
    began = time.monotonic()
    launcher.stop()
    assert time.monotonic() - began >= 0.5
    assert launcher.poll() == -signal.SIGKILL
    assert gone(launcher.pid)


def test_stop_reaches_what_a_wrapper_command_spawned(tmp_path, started):
    # A shell that runs the real process as its child, as ssh or mpiexec do.
    launcher = LocalControllerLauncher(profile_dir=str(tmp_path), controller_cmd=[
        "sh", "-c", f"{sys.executable} -c 'import time; print(\"child\", flush=True); time.sleep(60)' & wait"])
    launcher.start()
    started.append(launcher.pid)
    wait_for_text(launcher.log_path, "child")
    children = psutil.Process(launcher.pid).children(recursive=True)
    assert children
    started.extend(child.pid for child in children)
    launcher.stop()
    assert all(gone(child.pid) for child in children)


def test_engine_set_to_dict_from_dict_in_another_process_stops_them(tmp_path, started):
    engines = LocalEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="c1", engine_cmd=SLEEPER)
    engines.start(3)
    pids = [engine.pid for engine in engines.engines]
    started.extend(pids)
    assert engines.n == 3 and engines.running_engines() == 3
    for i in range(3):
        wait_for_text(str(tmp_path / "log" / f"engine-{i}-c1.log"), "up")
    record = json.dumps(engines.to_dict())
    script = ("import json, sys; from cluster_launcher.cluster import launcher_from_dict; "
              "s = launcher_from_dict(json.loads(sys.stdin.read())); "
              "print(s.running_engines()); s.stop(); print(s.running_engines())")
    out = subprocess.run([sys.executable, "-c", script], input=record, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "0"]
    assert all(gone(pid) for pid in pids)
    assert engines.poll() is not None


def test_fresh_object_from_dict_polls_and_stops(tmp_path, started):
    controller = LocalControllerLauncher(profile_dir=str(tmp_path), controller_cmd=SLEEPER)
    controller.start()
    started.append(controller.pid)
    fresh = LocalControllerLauncher.from_dict(json.loads(json.dumps(controller.to_dict())))
    assert fresh.pid == controller.pid and fresh.poll() is None
    fresh.stop()
    assert fresh.poll() is not None and gone(controller.pid)


def test_a_reused_pid_is_not_taken_for_ours(tmp_path, started):
    other = subprocess.Popen(SLEEPER, stdout=subprocess.DEVNULL)
    started.append(other.pid)
    stale = LocalEngineLauncher.from_dict({"pid": other.pid, "start_token": "1", "profile_dir": str(tmp_path)})
    assert os.path.isdir("/proc")  # start tokens come from /proc (Linux, where CI runs)
    assert stale.poll() is not None
    stale.stop()
    assert other.poll() is None  # still running: never signalled
    assert pid_alive(other.pid)


def test_exited_reports_code_and_this_runs_log_lines(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('first line'); print('boom', sys.argv[1:]); sys.exit(3)"]
    for _ in range(2):  # the same log file twice: the report shows only the second run
        launcher = LocalControllerLauncher(profile_dir=str(tmp_path), controller_cmd=cmd)
        launcher.start()
        assert launcher.wait(10) == 3
    [(code, log_path, lines)] = launcher.exited()
    assert code == 3 and log_path == launcher.log_path
    assert lines[0] == "first line" and lines[1].startswith("boom") and len(lines) == 2
    assert open(log_path).read().count("\nboom") == 2


def exits_once_all_got_sigterm(folder, n: int) -> list[str]:
    """An engine command that, on SIGTERM, marks it in ``folder`` and exits 0
    once ``n`` engines have (3 if they never do: then it was not signalled
    with the others, but only after an engine before it had exited)."""
    code = textwrap.dedent(f"""\
        import os, signal, sys, time

        def on_sigterm(*_):
            open(os.path.join({str(folder)!r}, str(os.getpid())), "w").close()
            deadline = time.monotonic() + 20
            while len(os.listdir({str(folder)!r})) < {n}:
                if time.monotonic() > deadline:
                    sys.exit(3)
                time.sleep(0.01)
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_sigterm)
        print("up", flush=True)
        time.sleep(60)
        """)
    return [sys.executable, "-c", code]


def test_added_engines_get_their_own_logs(tmp_path, started):
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = LocalEngineSetLauncher(profile_dir=str(tmp_path), stop_timeout=30,
                                   engine_cmd=exits_once_all_got_sigterm(tmp_path / "first", 2))
    first.start(2)
    second = LocalEngineSetLauncher(profile_dir=str(tmp_path), first_index=2, stop_timeout=30,
                                    engine_cmd=exits_once_all_got_sigterm(tmp_path / "second", 1))
    second.start(1)
    started.extend(e.pid for e in first.engines + second.engines)
    assert [e.log_path for e in second.engines] == [str(tmp_path / "log" / "engine-2-default.log")]
    for engine in first.engines + second.engines:
        wait_for_text(engine.log_path, "up")  # its SIGTERM handler is set
    first.stop()
    second.stop()
    # All SIGTERMed at once: each engine of a set saw the others signalled
    # before any of them exited (none gave up waiting, none was SIGKILLed).
    assert [e.poll() for e in first.engines + second.engines] == [0, 0, 0]
    assert all(gone(e.pid) for e in first.engines + second.engines)


def test_start_options_reach_the_processes_as_flags(tmp_path):
    config = Config()
    config.Controller.ip = "*"
    config.Controller.reuse = True
    config.Engine.extra_paths = ["/a", "/b"]
    config.Engine.cluster_id = "ignored"
    controller = LocalControllerLauncher(config=config, profile_dir=str(tmp_path), cluster_id="x")
    assert controller.args[-4:] == [f"--profile-dir={tmp_path}", "--cluster-id=x",
                                    "--Controller.ip=*", "--Controller.reuse=True"]
    engines = LocalEngineSetLauncher(config=config, profile_dir=str(tmp_path))
    assert engines.args[-2:] == ["--Engine.extra_paths=/a", "--Engine.extra_paths=/b"]
