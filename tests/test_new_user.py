"""What a new user hits first, typed the way IPython's documentation types it:
`profile create --parallel --profile=NAME`, `stop` (returning only once every
process is gone), log files in the profile's log/, numeric options out of
range, `engine --file` naming a missing file.  Each test runs the command line
in a subprocess with $CLUSTER_LAUNCHER_DIR in a temp dir, and checks real
processes with psutil."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster_launcher.testing.processes import running_with

TIMEOUT = 60
CLI = [sys.executable, "-m", "cluster_launcher"]
IGNORE_SIGTERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)"


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None,
         timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _is_running(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, its parent not yet reaping) has exited."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def _wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _recorded_pids(profile: Path) -> tuple[int, list[int]]:
    """The controller's and the engines' PIDs in the default cluster's record."""
    state = json.loads((profile / "pid" / "cluster-default.json").read_text())
    return state["controller"]["pid"], [e["pid"] for engines in state["engines"] for e in engines["engines"]]


# --- 1. profile create --parallel --profile=NAME -------------------------------


@pytest.mark.parametrize("argv", [
    ["profile", "create", "--parallel", "--profile=myprofile"],
    ["profile", "create", "--parallel", "--profile", "myprofile"],
    ["profile", "create", "myprofile"],
])
def test_profile_create_ipython_form_lands_in_the_home_folder(tmp_path, env, argv):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = _run(argv, env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    profile = tmp_path / "home" / "profile_myprofile"
    assert (profile / "cluster_config.py").is_file()
    assert os.listdir(cwd) == []
    located = _run(["profile", "locate", "--profile=myprofile"], env, cwd=cwd)
    assert located.returncode == 0 and located.stdout.strip() == str(profile), located.stderr


def test_profile_name_given_twice_differently_is_one_line_error(tmp_path, env):
    done = _run(["profile", "create", "one", "--profile=two"], env, cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "'one'" in done.stderr and "'two'" in done.stderr
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("argv", [["profile", "create", "--profile-d=x"], ["start", "--profile-d=x"],
                                  ["profile", "create", "--over"]])
def test_abbreviated_options_are_refused(tmp_path, env, argv):
    done = _run(argv, env, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "x").exists()


# --- 2. stop returns once every process has exited -----------------------------


def test_stop_returns_once_every_recorded_process_has_exited(tmp_path, env):
    started = _run(["start", "-n", "2", "--daemonize"], env)
    assert started.returncode == 0, started.stdout + started.stderr
    profile = tmp_path / "home" / "profile_default"
    controller_pid, engine_pids = _recorded_pids(profile)
    assert len(engine_pids) == 2

    stopped = _run(["stop"], env)

    assert stopped.returncode == 0, stopped.stderr
    assert "stopped cluster" in stopped.stdout
    assert [pid for pid in [controller_pid, *engine_pids] if _is_running(pid)] == []
    # Started by a launcher, which captures their output into log/<role>-<id>.log: no log file of their own.
    logs = sorted(os.listdir(profile / "log"))
    # The watcher of start --daemonize (which restarts dead engines) writes its lines to its own.
    assert logs == ["controller-default.log", "engine-0-default.log", "engine-1-default.log",
                    "watcher-default.log"], logs


def test_stop_kills_an_engine_that_ignores_sigterm_and_says_so(tmp_path, env):
    # Engine.timeout=60: the engine does not leave by itself when the controller goes away.
    started = _run(["start", "-n", "1", "--daemonize", f"--Engine.startup_command={IGNORE_SIGTERM}",
                    "--Engine.timeout=60"], env)
    assert started.returncode == 0, started.stdout + started.stderr
    controller_pid, (engine_pid,) = _recorded_pids(tmp_path / "home" / "profile_default")
    # Without a controller, `stop` cannot ask the engine to shut down: only signals are left.
    os.kill(controller_pid, signal.SIGKILL)
    _wait_until(lambda: not _is_running(controller_pid), 10, "the controller to die")

    began = time.monotonic()
    stopped = _run(["stop", "--Launcher.stop_timeout=1"], env)

    assert stopped.returncode == 0, stopped.stderr
    assert f"engine 0 (pid {engine_pid}) ignored SIGTERM for 1s: killed" in stopped.stdout, stopped.stdout
    assert not _is_running(engine_pid)
    assert time.monotonic() - began < 30


# --- 3. log files in the profile's log/ ------------------------------------------


def test_controller_and_engine_started_by_hand_log_to_the_profile(tmp_path, env):
    log_dir = tmp_path / "home" / "profile_byhand" / "log"
    controller = subprocess.Popen([*CLI, "controller", "--profile=byhand"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = subprocess.Popen([*CLI, "engine", "--profile=byhand"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        controller_log = log_dir / f"controller-{controller.pid}.log"
        engine_log = log_dir / f"engine-{engine.pid}.log"
        _wait_until(lambda: controller_log.is_file() and "registered" in controller_log.read_text(), TIMEOUT,
                    f"an engine's registration in {controller_log}")
        _wait_until(lambda: engine_log.is_file() and engine_log.read_text().strip(), TIMEOUT,
                    f"the engine to log to {engine_log}")
    finally:
        for proc in (engine, controller):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(TIMEOUT)


def test_log_files_are_rotated(tmp_path):
    """Controller.log_max_bytes / log_backup_count reach the rotating handler: a chatty process keeps
    at most backup_count + 1 files, none much larger than max_bytes."""
    script = ("import logging, sys\n"
              "from cluster_launcher.logs import start_logging\n"
              "start_logging('controller', sys.argv[1], to_file=True, max_bytes=2048, backup_count=2)\n"
              "for i in range(500):\n"
              "    logging.getLogger('cluster_launcher').info('line %d of a long-lived controller', i)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    files = sorted(os.listdir(tmp_path / "log"))
    assert len(files) == 3 and all(re.fullmatch(r"controller-\d+\.log(\.[12])?", name) for name in files), files
    assert all((tmp_path / "log" / name).stat().st_size <= 2048 for name in files)


# --- 4. numeric options out of range -----------------------------------------------


@pytest.mark.parametrize(("argv", "named", "allowed"), [
    (["start", "-n", "-2"], "-n", "at least 1"),
    (["start", "-n", "0"], "-n", "at least 1"),
    (["engines", "--n=0"], "-n", "at least 1"),
    (["start", "--Controller.heartbeat_period=0"], "--Controller.heartbeat_period", "at least 0.001"),
    (["start", "--Controller.client_port=70000"], "--Controller.client_port", "from 0 to 65535"),
    (["start", "--Engine.timeout=-1"], "--Engine.timeout", "at least 0"),
    (["controller", "--Controller.client_port=70000"], "--Controller.client_port", "from 0 to 65535"),
    (["engine", "--Engine.timeout=-1"], "--Engine.timeout", "at least 0"),
])
def test_numeric_option_out_of_range_is_refused_before_anything_starts(tmp_path, env, argv, named, allowed):
    done = _run(argv, env, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and allowed in lines[0], lines
    assert not (tmp_path / "home").exists()  # no profile folder, so no record, connection file or log
    assert running_with(str(tmp_path)) == []


# --- 5. engine --file naming a missing file -----------------------------------------


def test_engine_with_a_missing_file_fails_at_once_naming_it(tmp_path, env):
    missing = tmp_path / "does" / "not" / "exist.json"
    began = time.monotonic()
    done = _run(["engine", f"--file={missing}"], env, timeout=20)
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - began < 15  # not Engine.connect_timeout's 30 s
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cluster-launcher: error:") and str(missing) in last, done.stderr


def test_engine_waiting_for_the_profile_file_says_which_once(tmp_path, env):
    done = _run(["engine", "--Engine.connect_timeout=0.5"], env, timeout=20)
    expected = tmp_path / "home" / "profile_default" / "security" / "controller-engine.json"
    assert done.returncode == 2, done.stderr
    waiting = [line for line in done.stderr.splitlines() if "waiting up to" in line]
    assert len(waiting) == 1 and str(expected) in waiting[0], done.stderr


# --- 7: user-facing text names IPython ------------------------------------------------------------

SEED = re.compile(r"\bthe seed\b|\bseed's\b", re.IGNORECASE)
SUBCOMMANDS = (["start"], ["stop"], ["engines"], ["list"], ["controller"], ["engine"], ["profile"],
               ["profile", "create"], ["profile", "list"], ["profile", "locate"], ["plugins"])


def test_help_generated_config_and_docs_name_ipython_not_the_seed(env: dict[str, str]) -> None:
    texts = {"--help": _run(["--help"], env).stdout}
    for words in SUBCOMMANDS:
        texts[" ".join(words) + " --help"] = _run([*words, "--help"], env).stdout
    created = _run(["profile", "create", "words"], env)
    assert created.returncode == 0, created.stderr
    profile = Path(env["CLUSTER_LAUNCHER_DIR"]) / "profile_words"
    for path in sorted(profile.glob("*_config.py")):
        texts[path.name] = path.read_text()
    root = Path(__file__).resolve().parents[1]
    for path in sorted([root / "README.md", *(root / "docs").rglob("*.md")]):
        texts[str(path.relative_to(root))] = path.read_text()
    assert all(texts.values()), [name for name, text in texts.items() if not text]
    assert "IPython" in texts["--help"] and "IPython" in texts["controller_config.py"]
    found = {name: SEED.findall(text) for name, text in texts.items() if SEED.search(text)}
    assert not found, f"'the seed' in user-facing text: {found}"
