"""The SSH launchers without a server: IPython's settings and names, the
engines dict, remote profile folders, the files moved by default and when
overridden; and the agent each host runs, driven in this process on real
local processes.  Real sshd hosts are in tests/test_ssh_launchers.py."""

from __future__ import annotations

import io
import json
import os
import signal
import sys

import psutil
import pytest
from cluster_launcher_ssh import (
    AGENT_PROTOCOL,
    EXIT_LINE,
    SSHControllerLauncher,
    SSHEngineLauncher,
    SSHEngineSetLauncher,
    _profile_option,
    _reuses_files,
    agent_main,
)
from traitlets.config import Config

from cluster_launcher import plugins
from cluster_launcher.config import build_config
from cluster_launcher.error import ClusterError, ConfigError
from cluster_launcher.testing.processes import running_with, wait_for


@pytest.mark.parametrize("name", ["SSH", "ssh", "SSHEngineSetLauncher",
                                  "IPython.parallel.apps.launcher.SSHEngineSetLauncher",
                                  "ipyparallel.cluster.launcher.SSHEngineSetLauncher"])
def test_names_users_write_resolve(name):
    assert plugins.resolve("launcher", name, "engines") is SSHEngineSetLauncher
    assert plugins.resolve("launcher", name.replace("EngineSet", "Controller"), "controller") is SSHControllerLauncher


def test_ipython_config_lines_reach_the_launchers(tmp_path):
    """The lines of IPython's SSH walkthrough, verbatim."""
    (tmp_path / "ipcluster_config.py").write_text(
        "c = get_config()\n"
        "c.IPClusterEngines.engine_launcher_class = 'SSHEngineSetLauncher'\n"
        "c.IPClusterStart.controller_launcher_class = 'SSHControllerLauncher'\n"
        "c.SSHControllerLauncher.hostname = 'controller.example.com'\n"
        "c.SSHControllerLauncher.user = 'me'\n"
        "c.SSHControllerLauncher.controller_args = ['--reuse', '--ip=*', '--profile-dir=/path/to/cd']\n"
        "c.SSHEngineSetLauncher.engines = { 'host1.example.com' : 2,\n"
        "            'host2.example.com' : 5,\n"
        "            'host3.example.com' : (1, ['--profile-dir=/home/different/location']),\n"
        "            'host4.example.com' : 8 }\n"
        "c.SSHEngineSetLauncher.engine_args = ['--profile-dir=/path/to/profile_ssh']\n"
        "c.SSHLauncher.to_send = []\n"
        "c.SSHLauncher.to_fetch = []\n")
    config = build_config("cluster", str(tmp_path))
    assert config.Cluster.engine_launcher_class == "SSHEngineSetLauncher"
    controller = SSHControllerLauncher(config=config, profile_dir=str(tmp_path))
    assert (controller.hostname, controller.user) == ("controller.example.com", "me")
    assert controller.destination(controller.hostname) == "me@controller.example.com"
    assert controller.remote_profile(controller.controller_args) == {"profile_dir": "/path/to/cd"}
    assert controller.to_send == [] and controller.fetch_list() == []
    engines = SSHEngineSetLauncher(config=config, profile_dir=str(tmp_path))
    plan = engines.plan(4)
    assert {host: count for host, (count, _) in plan.items()} == {
        "host1.example.com": 2, "host2.example.com": 5, "host3.example.com": 1, "host4.example.com": 8}
    assert plan["host3.example.com"][1] == ["--profile-dir=/home/different/location"]  # replaces engine_args
    assert plan["host1.example.com"][1] == ["--profile-dir=/path/to/profile_ssh"]
    assert engines.remote_profile(plan["host3.example.com"][1]) == {"profile_dir": "/home/different/location"}


def test_engines_dict_keys_keep_their_own_user_and_port():
    config = Config()
    config.SSHLauncher.user = "me"
    config.SSHLauncher.port = 2222
    config.SSHEngineSetLauncher.engines = {"node1": 1, "alice@node2": 1, "node3:22": 1, "alice@[::1]:23": 1, "node4": 0}
    plan = SSHEngineSetLauncher(config=config).plan(1)
    assert list(plan) == ["me@node1:2222", "alice@node2:2222", "me@node3:22", "alice@[::1]:23"]  # 0 engines: none


def test_no_engines_dict_means_n_engines_on_hostname():
    config = Config()
    config.SSHLauncher.hostname = "node7"
    assert SSHEngineSetLauncher(config=config).plan(3) == {"node7": (3, [])}
    with pytest.raises(ClusterError, match=r"SSHEngineSetLauncher.engines is empty: say where engines run, e.g. "
                                           r"c.SSHEngineSetLauncher.engines = \{'node1.example.com': 4"):
        SSHEngineSetLauncher().plan(3)
    with pytest.raises(ClusterError, match="SSHControllerLauncher.hostname is empty: say where the controller runs"):
        SSHControllerLauncher().start()


@pytest.mark.parametrize("value, message", [
    ("two", r"SSHEngineSetLauncher.engines\['node1'\] = 'two': expected a number of engines, or \(number, "),
    (-1, r"SSHEngineSetLauncher.engines\['node1'\] = -1: expected a number of engines"),
    ((2, "--debug"), r"SSHEngineSetLauncher.engines\['node1'\] = \(2, '--debug'\): the engine arguments must be a "
                     "list of strings"),
])
def test_bad_engines_dict_is_named(value, message):
    config = Config()
    config.SSHEngineSetLauncher.engines = {"node1": value}
    with pytest.raises(ConfigError, match=message):
        SSHEngineSetLauncher(config=config).plan(1)


def test_remote_profile_is_ours_relative_to_home_as_in_ipython(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    under_home = SSHEngineSetLauncher(profile_dir=str(tmp_path / ".cluster-launcher" / "profile_ssh"))
    assert under_home.remote_profile([]) == {"profile_dir": ".cluster-launcher/profile_ssh"}
    elsewhere = SSHEngineSetLauncher(profile_dir="/scratch/profile_ssh")
    assert elsewhere.remote_profile([]) == {"profile_dir": "/scratch/profile_ssh"}
    configured = SSHEngineSetLauncher(profile_dir="/scratch/profile_ssh", remote_profile_dir="cl/profile_x")
    assert configured.remote_profile([]) == {"profile_dir": "cl/profile_x"}
    assert configured.remote_profile(["--profile", "mpi"]) == {"profile": "mpi"}
    assert configured.remote_profile(["--profile-dir", "/a", "--profile-dir=/b"]) == {"profile_dir": "/b"}


def test_commands_run_the_remote_python():
    config = Config()
    config.SSHLauncher.remote_python = "/opt/venv/bin/python -X utf8"
    engine = SSHEngineLauncher(config=config, remote_profile_path="/r/profile", cluster_id="c1")
    assert engine.args[:7] == ["/opt/venv/bin/python", "-X", "utf8", "-m", "cluster_launcher", "engine",
                               "--profile-dir=/r/profile"]
    assert engine.args[7:] == ["--cluster-id=c1", "--Engine.log_to_file=False"]
    own = SSHEngineLauncher(config=config, engine_args=["--profile-dir=/mine"])
    assert [a for a in own.args if a.startswith("--profile-dir")] == ["--profile-dir=/mine"]  # its own, only
    config.SSHEngineSetLauncher.engine_cmd = ["/opt/bin/cluster-launcher", "engine"]  # IPython's engine_cmd
    assert SSHEngineSetLauncher(config=config).engine_cmd == ["/opt/bin/cluster-launcher", "engine"]
    controller = SSHControllerLauncher(config=config, remote_profile_path="/r/profile", controller_args=["--reuse"])
    assert controller.args == ["/opt/venv/bin/python", "-X", "utf8", "-m", "cluster_launcher", "controller",
                               "--profile-dir=/r/profile", "--reuse", "--Controller.log_to_file=False"]


def test_to_fetch_defaults_to_both_connection_files_and_is_replaced_when_set(tmp_path):
    controller = SSHControllerLauncher(profile_dir=str(tmp_path), cluster_id="c1", remote_profile_path="/r/p")
    assert controller.fetch_list() == [
        ("/r/p/security/controller-c1-client.json", str(tmp_path / "security" / "controller-c1-client.json")),
        ("/r/p/security/controller-c1-engine.json", str(tmp_path / "security" / "controller-c1-engine.json"))]
    controller.to_fetch = [("x/controller-c1-client.json", "/local/client.json")]
    assert controller.fetch_list() == [("x/controller-c1-client.json", "/local/client.json")]


@pytest.mark.parametrize("args, reuse", [
    (["--reuse"], True), (["--Controller.reuse=True"], True), (["--IPControllerApp.reuse_files=True"], True),
    (["--Controller.reuse=False"], False), (["--ip=*"], False)])
def test_reuse_is_told_from_the_controller_arguments(args, reuse):
    assert _reuses_files(args) is reuse


def test_profile_options_in_both_spellings():
    assert _profile_option(["--profile-dir", "/a"]) == {"profile_dir": "/a"}
    assert _profile_option(["--profile=x", "--debug"]) == {"profile": "x"}
    assert _profile_option(["--debug"]) is None


# --- the agent, in this process, on real processes -------------------------------------------------


def _agent(op: str, **fields):
    out = io.StringIO()
    assert agent_main(io.StringIO(json.dumps({"protocol": AGENT_PROTOCOL, "op": op, **fields})), out) == 0
    reply = json.loads(out.getvalue())
    assert "error" not in reply, reply
    return reply["result"]


@pytest.fixture
def agent_home(tmp_path, monkeypatch):
    """The agent works from $HOME, as after an SSH login.  What a test
    started and left running is killed (by PID) and fails it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", str(tmp_path / "cl"))
    cwd = os.getcwd()
    yield tmp_path
    os.chdir(cwd)  # the agent changed to $HOME
    left = running_with(str(tmp_path / "marker"))
    for process in left:
        process.kill()
    assert not left, f"left running: {[p.pid for p in left]}"


def _spawn(tmp_path, code: str) -> dict:
    """Start ``code`` through the agent; it prints READY (spelled otherwise in
    its command line, which the log's first line shows) once it runs."""
    argv = [sys.executable, "-c", code.replace("READY", "'REA' + 'DY'"), str(tmp_path / "marker")]
    (answer,) = _agent("spawn", processes=[{"argv": argv, "log": str(tmp_path / "p.log"),
                                            "env": {"AGENT_TEST": "yes"}}])
    return answer


def _gone(process: psutil.Process) -> bool:
    """Exited (a zombie its new parent has not reaped yet counts)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _ready(tmp_path) -> bool:
    return "READY" in (tmp_path / "p.log").read_text()


def test_agent_prepares_profiles_relative_to_home(agent_home):
    answer = _agent("prepare", profiles=[{"profile_dir": "rel/profile_a"}, {"profile": "b"},
                                         {"profile_dir": str(agent_home / "abs")}])
    assert answer["home"] == str(agent_home)
    assert answer["profile_dirs"] == [str(agent_home / "rel" / "profile_a"), str(agent_home / "cl" / "profile_b"),
                                      str(agent_home / "abs")]
    assert oct((agent_home / "abs" / "security").stat().st_mode & 0o777) == "0o700"


def test_agent_reports_exit_code_and_last_lines(agent_home):
    answer = _spawn(agent_home, "import os, sys; print('cwd', os.getcwd(), os.environ['AGENT_TEST']); sys.exit(3)")
    record = {"pid": answer["pid"], "token": answer["token"], "log": answer["log"], "offset": answer["offset"]}

    def exited():
        (status,) = _agent("status", processes=[record])
        return None if status["running"] else status

    status = wait_for(exited, 20, "the process to exit")
    assert status["code"] == 3
    assert status["tail"] == [f"cwd {agent_home} yes"]  # started in $HOME, with its environment; no exit line
    assert (agent_home / "p.log").read_text().endswith(f"{EXIT_LINE}3\n")


def test_agent_stop_kills_what_ignores_sigterm_by_its_recorded_pid(agent_home):
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(READY, flush=True); "
            "time.sleep(120)")
    answer = _spawn(agent_home, code)
    wait_for(lambda: _ready(agent_home), 20, "the process to ignore SIGTERM")
    wrapper = psutil.Process(answer["pid"])
    (child,) = wrapper.children()
    record = {"pid": answer["pid"], "token": answer["token"], "log": answer["log"], "offset": answer["offset"]}
    (stopped,) = _agent("stop", processes=[record], wait=0.5, remove=[str(agent_home / "sent.json")])
    assert stopped == {"was_running": True, "killed": True, "gone": True}
    wait_for(lambda: _gone(child), 10, "the process under the wrapper to be gone")
    (status,) = _agent("status", processes=[record])
    assert status["running"] is False and status["code"] is None  # killed: the wrapper noted nothing


def test_agent_stop_waits_for_a_clean_exit_and_spares_a_reused_pid(agent_home):
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
            "print(READY, flush=True); time.sleep(120)")
    answer = _spawn(agent_home, code)
    wait_for(lambda: _ready(agent_home), 20, "the process to start")
    stranger = {"pid": answer["pid"], "token": "1.00", "log": answer["log"], "offset": answer["offset"]}
    (spared,) = _agent("stop", processes=[stranger], wait=0.5)
    assert spared == {"was_running": False, "killed": False, "gone": True}  # another start time: not ours
    assert psutil.pid_exists(answer["pid"])
    record = {**stranger, "token": answer["token"]}
    (stopped,) = _agent("stop", processes=[record], wait=20)
    assert stopped == {"was_running": True, "killed": False, "gone": True}
    assert (agent_home / "p.log").read_text().endswith(f"{EXIT_LINE}0\n")  # SIGTERM handled, then the exit noted


def test_agent_errors_are_one_line_replies(agent_home):
    out = io.StringIO()
    agent_main(io.StringIO(json.dumps({"protocol": 99, "op": "status"})), out)
    assert json.loads(out.getvalue())["error"].startswith("ClusterLauncherError: this host's cluster-launcher-ssh "
                                                          "speaks agent protocol 1, not 99")
    out = io.StringIO()
    agent_main(io.StringIO('{"protocol": 1, "op": "prepare", "profiles": [{"profile_dir": "/proc/x"}]}'), out)
    assert json.loads(out.getvalue())["error"].startswith("ConfigError: /proc/x: cannot create the profile directory")


def test_agent_spawn_is_all_or_none(agent_home):
    """The second process cannot start (its log is a folder): the first, already
    running, is stopped, and the reply is the error (no PID the caller would lose)."""
    (agent_home / "second.log").mkdir()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)", str(agent_home / "marker")]
    out = io.StringIO()
    request = {"protocol": AGENT_PROTOCOL, "op": "spawn",
               "processes": [{"argv": sleeper, "log": str(agent_home / "first.log")},
                             {"argv": sleeper, "log": str(agent_home / "second.log")}]}
    agent_main(io.StringIO(json.dumps(request)), out)
    assert json.loads(out.getvalue())["error"].startswith("IsADirectoryError: ")
    assert (agent_home / "first.log").read_text().startswith("--- ")  # it had started
    wait_for(lambda: not running_with(str(agent_home / "marker")), 10, "the first process to be stopped")


def test_agent_never_signals_a_record_without_a_start_token(agent_home):
    code = "import time; print(READY, flush=True); time.sleep(120)"
    answer = _spawn(agent_home, code)
    wait_for(lambda: _ready(agent_home), 20, "the process to start")
    tokenless = {"pid": answer["pid"], "token": "", "log": answer["log"], "offset": answer["offset"]}
    assert _agent("signal", processes=[tokenless], signal=int(signal.SIGTERM)) == [False]
    (spared,) = _agent("stop", processes=[tokenless], wait=0.5)
    assert spared["was_running"] is False and psutil.pid_exists(answer["pid"])
    (stopped,) = _agent("stop", processes=[{**tokenless, "token": answer["token"]}], wait=20)
    assert stopped["was_running"] is True and stopped["gone"] is True


def test_agent_runs_a_program_under_the_remote_home(agent_home):
    """remote_python = '~/venv/bin/python': the program is the remote home's."""
    (agent_home / "venv" / "bin").mkdir(parents=True)
    (agent_home / "venv" / "bin" / "python").symlink_to(sys.executable)
    argv = ["~/venv/bin/python", "-c", "import sys; print('ran', sys.argv[1])", str(agent_home / "marker")]
    (answer,) = _agent("spawn", processes=[{"argv": argv, "log": str(agent_home / "p.log")}])
    record = {"pid": answer["pid"], "token": answer["token"], "log": answer["log"], "offset": answer["offset"]}
    wait_for(lambda: not _agent("status", processes=[record])[0]["running"], 20, "the program to end")
    (status,) = _agent("status", processes=[record])
    assert status["code"] == 0 and status["tail"] == [f"ran {agent_home / 'marker'}"]
