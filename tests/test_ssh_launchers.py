"""The SSH launchers for real: engines and a controller started over SSH on
"hosts" that are real OpenSSH servers (cluster_launcher.testing.sshd.SSHHosts:
one sshd per loopback address, each login with a HOME of its own, so no
file is shared through ``~``), by the ``cluster-launcher`` command line and
by ``Cluster`` in Python.

What is checked is what a user would look at on each host: which login an
engine runs under, where the connection files landed (0600), which SSH
sessions used SFTP (sshd's own log), and, after ``stop``, that no process
recorded for any host is left, by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from traitlets.config import Config

from cluster_launcher import Client, Cluster
from cluster_launcher.cluster import state_file
from cluster_launcher.protocol.connection import connection_file
from cluster_launcher.testing.processes import wait_for
from cluster_launcher.testing.sshd import SSHHosts, connections_to, write_ed25519_key

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 60
CLI = [sys.executable, "-m", "cluster_launcher"]
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "ssh.md"


def _doc_block(first_line: str) -> str:
    """The fenced block of docs/ssh.md that starts with ``first_line``."""
    blocks = re.findall(r"^```\w*\n(.*?)^```", DOCS_PAGE.read_text(), re.S | re.M)
    return next(block for block in blocks if block.startswith(first_line + "\n"))


@pytest.fixture
def hosts(tmp_path, env):
    """host1.example.com and host2.example.com (cluster-launcher installed), and
    host3.example.com, where a login finds no cluster-launcher.  (After ``env``,
    whose check for processes left running must come after sshd stopped.)"""
    names = ["host1.example.com", "host2.example.com", "host3.example.com"]
    # host3's python3: this Python without its site-packages, so without cluster-launcher.
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    (bare / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    (bare / "python3").chmod(0o755)
    with SSHHosts(tmp_path / "hosts", names, paths={"host3.example.com": f"{bare}:/usr/bin:/bin"}) as started:
        yield started
        wait_for(lambda: not started.session_pids(), 10, f"every SSH session to end: {started.session_pids()}")


@pytest.fixture
def user_env(hosts, env, monkeypatch):
    """The environment of a user whose ~/.ssh reaches the hosts, with profiles
    under that HOME (as ~/.cluster-launcher): for the command line, and for
    this process (Client, Cluster)."""
    user = {**env, **hosts.env()}
    user.pop("CLUSTER_LAUNCHER_DIR")
    user.pop("SSH_AUTH_SOCK", None)
    monkeypatch.setenv("HOME", str(hosts.home))
    monkeypatch.delenv("CLUSTER_LAUNCHER_DIR", raising=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return user


def run(args: list[str], env: dict, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def recorded(profile: Path, cluster_id: str = "") -> dict:
    return json.loads(Path(state_file(str(profile), cluster_id)).read_text())


def remote_processes(record: dict) -> list[tuple[str, int]]:
    """(host, pid) of every process the record says was started over SSH."""
    found = []
    for launcher in [record["controller"], *record["engines"]]:
        for process in launcher.get("launched", [launcher]):
            if process.get("host"):
                found.append((process["host"], process["pid"]))
    return found


def gone(pids: list[int]) -> bool:
    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return not any(running(pid) for pid in pids)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sftp_sessions(hosts: SSHHosts, name: str) -> int:
    """How many SSH sessions of host ``name`` asked for SFTP (sshd logs each request)."""
    return hosts[name].output().count("subsystem 'sftp'")


# --- IPython's SSH mode: the engines dict across two hosts ---------------------------------------------


def test_engines_dict_with_per_host_args_across_two_hosts_without_a_shared_filesystem(hosts, user_env, tmp_path):
    """docs/ssh.md's walkthrough, by the command line: the engines dict
    verbatim; each host gets the connection file in its own profile (host2
    where its --profile-dir says); list; stop leaves nothing on any host."""
    created = run(["profile", "create", "--parallel", "--profile=ssh"], user_env)
    assert created.returncode == 0, created.stderr
    profile = hosts.home / ".cluster-launcher" / "profile_ssh"
    elsewhere = tmp_path / "different" / "location"
    config = _doc_block("# profile_ssh/cluster_config.py").replace("/home/different/location", str(elsewhere))
    with open(profile / "cluster_config.py", "a") as f:
        f.write(config)

    started = run(["start", "--profile=ssh", "--daemonize"], user_env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert re.search(r"3 engines started \(2 on host1\.example\.com \(pids \d+, \d+\), 1 on host2\.example\.com "
                     r"\(pid \d+\); logs in host1\.example\.com:/\S+/profile_ssh/log, host2\.example\.com:"
                     + re.escape(str(elsewhere / "log")) + r"\)", started.stdout), started.stdout
    assert "cluster ready with 3 engines" in started.stdout

    # No file crossed through a shared folder: each host's copy is where its engines look.
    local = Path(connection_file(str(profile), "engine"))
    host1_copy = hosts["host1.example.com"].remote_home / ".cluster-launcher/profile_ssh/security" / local.name
    host2_copy = elsewhere / "security" / local.name
    for copy in (host1_copy, host2_copy):
        assert copy.read_bytes() == local.read_bytes() and mode(copy) == 0o600
    assert not (hosts["host2.example.com"].remote_home / ".cluster-launcher").exists()
    assert sftp_sessions(hosts, "host1.example.com") == sftp_sessions(hosts, "host2.example.com") == 1

    with Client(profile="ssh", timeout=10) as client:
        client.wait_for_engines(3, timeout=30)
        where = client[:].apply_sync(lambda: (__import__("os").environ["HOME"], __import__("sys").argv))
    homes = sorted(home for home, _ in where)
    assert homes == sorted([str(hosts["host1.example.com"].remote_home)] * 2
                           + [str(hosts["host2.example.com"].remote_home)])
    record = recorded(profile)
    processes = remote_processes(record)
    assert sorted(host for host, _ in processes) == ["host1.example.com"] * 2 + ["host2.example.com"]
    assert all(psutil.pid_exists(pid) for _, pid in processes)

    listed = run(["list"], user_env)
    assert re.search(r"^ssh\s+default\s+running\s+3\s", listed.stdout, re.M), listed.stdout

    stopped = run(["stop", "--profile=ssh"], user_env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped cluster 'default' of profile 'ssh' (3 engines and the controller)" in stopped.stdout
    assert gone([pid for _, pid in processes])
    assert not host1_copy.exists() and not host2_copy.exists()  # the key is not left on the hosts
    # Each engine's output is in its host's profile.
    log = hosts["host1.example.com"].remote_home / ".cluster-launcher/profile_ssh/log/engine-0-default.log"
    assert "registered as engine" in log.read_text() and log.read_text().endswith("--- exited with code 0\n")


# --- a controller over SSH ------------------------------------------------------------------------------


def test_remote_controller_with_its_files_fetched_back_and_engines_on_another_host(hosts, user_env, tmp_path):
    """IPython's SSHControllerLauncher lines (with a loopback --ip: tests
    listen on nothing else), from Python: the controller runs on host1, its
    connection files come back here, and engines on host2 get theirs from here."""
    controller_dir = tmp_path / "controller-profile"
    config = Config()
    config.Cluster.controller_launcher_class = "SSH"
    config.Cluster.engine_launcher_class = "SSH"
    config.SSHControllerLauncher.hostname = "host1.example.com"
    config.SSHControllerLauncher.controller_args = ["--reuse", "--ip=127.0.0.1", f"--profile-dir={controller_dir}"]
    config.SSHEngineSetLauncher.engines = {"host2.example.com": 2}

    cluster = Cluster(profile="remote", config=config, cluster_id="")
    with cluster as client:
        assert len(client.ids) == 2
        assert sorted(client[:].apply_sync(lambda: __import__("os").environ["HOME"])) == [
            str(hosts["host2.example.com"].remote_home)] * 2
        local = Path(cluster.profile_dir) / "security"
        for name in ("controller-client.json", "controller-engine.json"):
            assert (local / name).read_bytes() == (controller_dir / "security" / name).read_bytes()
            assert mode(local / name) == 0o600
        controller_pid = cluster.controller.pid
        assert psutil.Process(controller_pid).cmdline()[-3:] == ["--ip=127.0.0.1", f"--profile-dir={controller_dir}",
                                                                 "--Controller.log_to_file=False"]
        engine_pids = [pid for _, pid in remote_processes(cluster.to_dict())]
    assert gone([controller_pid, *engine_pids])
    assert (controller_dir / "security" / "controller-engine.json").exists()  # --reuse: kept for the next start


# --- to_send and to_fetch: defaults replaced, or nothing moved ----------------------------------------------


def test_explicit_to_send_replaces_the_default(hosts, user_env):
    """IPython's override: an explicit to_send is all that is sent; here the
    engines find the file where it went, through --file."""
    profile = hosts.home / ".cluster-launcher" / "profile_explicit"
    profile.mkdir(parents=True)
    (profile / "cluster_config.py").write_text(
        "c.Cluster.engine_launcher_class = 'SSH'\n"
        "c.SSHEngineSetLauncher.engines = {'host1.example.com': 1}\n"
        + _doc_block("import os"))  # docs/ssh.md's example, as it stands
    started = run(["start", "--profile=explicit", "--daemonize"], user_env)
    assert started.returncode == 0, started.stdout + started.stderr
    home1 = hosts["host1.example.com"].remote_home
    assert mode(home1 / "handed-over" / "engine.json") == 0o600
    assert not (home1 / ".cluster-launcher" / "profile_explicit" / "security" / "controller-engine.json").exists()
    stopped = run(["stop", "--profile=explicit"], user_env)
    assert stopped.returncode == 0, stopped.stderr
    assert (home1 / "handed-over" / "engine.json").exists()  # the user's own file: theirs to remove


def test_empty_to_send_and_to_fetch_for_a_shared_filesystem(hosts, user_env, tmp_path):
    """[] moves nothing: a controller on host1 and engines on host2 share the
    profile folder (remote_profile_dir is ours), and no session used SFTP."""
    profile = tmp_path / "shared-profile"
    profile.mkdir()
    (profile / "cluster_config.py").write_text(
        "c.Cluster.controller_launcher_class = 'SSH'\n"
        "c.Cluster.engine_launcher_class = 'SSH'\n"
        "c.SSHControllerLauncher.hostname = 'host1.example.com'\n"
        "c.SSHEngineSetLauncher.engines = {'host2.example.com': 1}\n"
        f"c.SSHLauncher.remote_profile_dir = {str(profile)!r}\n"
        "c.SSHLauncher.to_send = []\n"
        "c.SSHLauncher.to_fetch = []\n")
    started = run(["start", f"--profile-dir={profile}", "--daemonize"], user_env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "cluster ready with 1 engines" in started.stdout
    assert sftp_sessions(hosts, "host1.example.com") == sftp_sessions(hosts, "host2.example.com") == 0
    processes = remote_processes(recorded(profile))
    assert run(["stop", f"--profile-dir={profile}"], user_env).returncode == 0
    assert gone([pid for _, pid in processes])


# --- hosts that fail while others start ---------------------------------------------------------------------


def _add_failing_hosts(hosts: SSHHosts, tmp_path: Path) -> None:
    """Aliases of the user's ssh config that fail each their own way."""
    unauthorized = tmp_path / "unauthorized_key"
    write_ed25519_key(unauthorized)
    host2 = hosts["host2.example.com"]
    with socket_bound_not_listening() as port:
        closed_port = port
    hosts.add_alias("unreachable.example.com", f"    HostName 127.0.0.1\n    Port {closed_port}\n")
    hosts.add_alias("wrongkey.example.com", host2.host_block("wrongkey.example.com", unauthorized,
                                                             hosts.known_hosts_path))
    empty_known_hosts = tmp_path / "empty_known_hosts"
    empty_known_hosts.write_text("")
    hosts.add_alias("newhost.example.com", host2.host_block("newhost.example.com", hosts.client_key_path,
                                                            empty_known_hosts))


class socket_bound_not_listening:
    """A loopback port that is bound (so nothing else takes it) but not listening, while in the block."""

    def __enter__(self) -> int:
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_failing_hosts_are_named_with_their_cause_and_the_others_start(hosts, user_env, tmp_path):
    _add_failing_hosts(hosts, tmp_path)
    profile = hosts.home / ".cluster-launcher" / "profile_mixed"
    profile.mkdir(parents=True)
    (profile / "cluster_config.py").write_text(
        "c.Cluster.engine_launcher_class = 'SSH'\n"
        "c.SSHEngineSetLauncher.engines = {'host1.example.com': 2, 'unreachable.example.com': 1,\n"
        "    'wrongkey.example.com': 1, 'newhost.example.com': 1, 'host3.example.com': 3}\n")
    started = run(["start", "--profile=mixed", "--daemonize"], user_env)
    assert started.returncode == 0, started.stdout + started.stderr
    lines = started.stdout.splitlines()

    def line_for(host: str) -> str:
        (line,) = [line for line in lines if f" {host}: " in line]
        return line

    unreachable = line_for("unreachable.example.com")
    assert "unreachable.example.com: 1 engine not started: cannot reach SSH server " in unreachable
    assert "Connection refused" in unreachable
    assert "refused authentication" in line_for("wrongkey.example.com")
    assert "is unknown: its ssh-ed25519 host key is not in" in line_for("newhost.example.com")
    assert re.search(r"host3\.example\.com: 3 engines not started: cluster-launcher is not installed for 'python3' "
                     r"there \(\S+: No module named cluster_launcher_ssh\); install it there \(pip install "
                     r"cluster-launcher\) or set c\.SSHLauncher\.remote_python", line_for("host3.example.com"))
    assert re.search(r"2 engines started \(2 on host1\.example\.com \(pids \d+, \d+\); logs in ", started.stdout)
    assert "cluster ready with 2 engines" in started.stdout
    processes = remote_processes(recorded(profile))
    assert [host for host, _ in processes] == ["host1.example.com"] * 2
    assert run(["stop", "--profile=mixed"], user_env).returncode == 0
    assert gone([pid for _, pid in processes])


def test_no_host_starting_is_one_error_and_leaves_nothing(hosts, user_env, tmp_path):
    profile = tmp_path / "none"
    profile.mkdir()
    (profile / "cluster_config.py").write_text(
        "c.Cluster.engine_launcher_class = 'SSH'\n"
        "c.SSHEngineSetLauncher.engines = {'host3.example.com': 1}\n")
    failed = run(["start", f"--profile-dir={profile}", "--daemonize"], user_env)
    assert failed.returncode == 1
    (error,) = [line for line in failed.stderr.splitlines() if line.startswith("cluster-launcher start:")]
    assert error.startswith("cluster-launcher start: no engine started: host3.example.com: 1 engine not started: "
                            "cluster-launcher is not installed")
    assert not Path(state_file(str(profile))).exists()  # the controller it started is stopped again


@pytest.mark.parametrize("flags, message", [
    ([], "SSHEngineSetLauncher.engines is empty: say where engines run"),
    (["--SSHEngineSetLauncher.engines={'node1': 'two'}"], "SSHEngineSetLauncher.engines['node1'] = 'two': "
                                                           "expected a number of engines"),
    (["--SSHLauncher.hostname=node1", "--SSHLauncher.ssh_args=['-L', '8080:web:80']"],
     "SSHEngineSetLauncher.ssh_args: the ssh option -L is not supported here"),
    (["--SSHLauncher.hostname=node1", "--SSHLauncher.transport=sftpp"],
     "SSHEngineSetLauncher.transport: unknown transport 'sftpp'; installed: file, sftp; did you mean 'sftp'?"),
    (["--controller=SSH", "--SSHLauncher.hostname=node1", "--SSHControllerLauncher.hostname="],
     "SSHControllerLauncher.hostname is empty: say where the controller runs"),
])
def test_settings_that_cannot_work_fail_before_anything_starts(env, tmp_path, flags, message):
    failed = run(["start", "--engines=SSH", "-n", "2", "--daemonize", *flags], env)
    assert failed.returncode == 1
    assert failed.stdout == ""  # no controller was started
    (line,) = failed.stderr.strip().splitlines()[-1:]
    assert line.startswith("cluster-launcher start: ") and message in line, failed.stderr
    assert not (tmp_path / "home" / "profile_default" / "pid" / "cluster-default.json").exists()


# --- stop from another process, when politeness fails -------------------------------------------------------


def test_stop_kills_engines_that_ignore_sigterm_by_their_recorded_pids(hosts, user_env, tmp_path):
    """With the controller gone (SIGKILL), nobody asks the engines to leave:
    `stop` signals them by PID on their hosts, and kills those that ignore it."""
    profile = tmp_path / "stubborn"
    profile.mkdir()
    (profile / "cluster_config.py").write_text(
        "c.Cluster.engine_launcher_class = 'SSH'\n"
        "c.SSHEngineSetLauncher.engines = {'host1.example.com': 1, 'host2.example.com': 1}\n"
        "c.SSHLauncher.stop_timeout = 1\n"
        "c.SSHEngineSetLauncher.engine_args = [\n"
        "    '--Engine.startup_command=import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)']\n")
    started = run(["start", f"--profile-dir={profile}", "--daemonize"], user_env)
    assert started.returncode == 0, started.stdout + started.stderr
    record = recorded(profile)
    processes = remote_processes(record)
    engine_pids = [child.pid for _, pid in processes for child in psutil.Process(pid).children()]
    os.kill(record["controller"]["pid"], signal.SIGKILL)
    stopped = run(["stop", f"--profile-dir={profile}"], user_env)
    assert stopped.returncode == 0, stopped.stderr
    for host in ("host1.example.com", "host2.example.com"):
        assert re.search(rf"engine \d on {re.escape(host)} \(pid \d+\) ignored SIGTERM for 1s: killed",
                         stopped.stdout), stopped.stdout
    assert gone([pid for _, pid in processes] + engine_pids)


# --- OpenSSH's ProxyJump ------------------------------------------------------------------------------------


def test_engines_on_a_host_reached_through_a_proxyjump_host(hosts, user_env):
    """A Host of ~/.ssh/config with ProxyJump: the login to host2 is carried
    by host1's sshd (its session holds the connection to host2's port)."""
    host2 = hosts["host2.example.com"]
    hosts.add_alias("behind.example.com", f"    HostName {host2.address}\n    Port {host2.port}\n"
                                          "    ProxyJump host1.example.com\n"
                                          f"    IdentityFile {hosts.client_key_path}\n"
                                          f"    UserKnownHostsFile {hosts.known_hosts_path}\n")
    config = Config()
    config.Cluster.engine_launcher_class = "SSH"
    config.SSHEngineSetLauncher.engines = {"behind.example.com": 1}
    with Cluster(profile="jump", config=config) as client:
        assert client[:].apply_sync(lambda: __import__("os").environ["HOME"]) == [str(host2.remote_home)]
        # The launcher keeps its connection for polls: it still runs through host1.
        assert connections_to(hosts["host1.example.com"].session_pids(), host2.port)


# --- a connection that drops, a host that fails after its file was sent ---------------------------------


def test_a_dropped_ssh_connection_is_logged_in_again(hosts, user_env):
    """sshd ends the launcher's connection (a reboot of the network, an idle
    timeout): the next poll logs in again, and the engines still count."""
    config = Config()
    config.Cluster.engine_launcher_class = "SSH"
    config.SSHEngineSetLauncher.engines = {"host1.example.com": 2}
    config.SSHLauncher.poll_interval = 0
    host1 = hosts["host1.example.com"]
    cluster = Cluster(profile="drop", config=config)
    with cluster as client:
        (engines,) = cluster.engine_sets
        assert engines.running_engines() == 2
        for pid in host1.session_pids():
            os.kill(pid, signal.SIGTERM)  # the connection, not the engines (they run in sessions of their own)
        wait_for(lambda: not host1.session_pids(), 10, "sshd to drop the connection")
        assert engines.poll() is None and engines.running_engines() == 2
        assert host1.session_pids()  # logged in again
        assert client[:].apply_sync(lambda: 1) == [1, 1]
    assert gone([pid for _, pid in remote_processes({"controller": {}, "engines": [engines.to_dict()]})])


def test_a_host_whose_engines_cannot_start_has_its_connection_file_removed_at_stop(hosts, user_env):
    """host2 got the connection file, then its engine could not start (its log
    file's name is taken by a folder): stop removes the file there too."""
    host2 = hosts["host2.example.com"]
    remote_profile = host2.remote_home / ".cluster-launcher" / "profile_halfway"
    (remote_profile / "log" / "engine-1-default.log").mkdir(parents=True)
    config = Config()
    config.Cluster.engine_launcher_class = "SSH"
    config.SSHEngineSetLauncher.engines = {"host1.example.com": 1, "host2.example.com": 1}
    cluster = Cluster(profile="halfway", cluster_id="", config=config)
    with cluster:
        (engines,) = cluster.engine_sets
        (failure,) = engines.start_failures
        assert failure.startswith("host2.example.com: 1 engine not started: the cluster-launcher agent there: "
                                  "IsADirectoryError: "), failure
        assert (remote_profile / "security" / "controller-engine.json").exists()
    assert not (remote_profile / "security" / "controller-engine.json").exists()


def test_dry_run_shows_each_hosts_command_and_files_and_logs_in_nowhere(env, tmp_path):
    profile = Path(env["CLUSTER_LAUNCHER_DIR"]) / "profile_default"
    profile.mkdir(parents=True)
    # In a config file: on the command line traitlets would expand ~ to this host's home.
    (profile / "cluster_config.py").write_text("c.SSHLauncher.remote_python = '~/venv/bin/python'\n")
    shown = run(["start", "--dry-run", "--engines=SSH", "--controller=SSH",
                 "--SSHControllerLauncher.hostname=head.example.com",
                 "--SSHEngineSetLauncher.engines={'node1': 2, 'me@node2:2222': (1, ['--profile-dir=/scratch/p'])}"],
                env)
    assert shown.returncode == 0, shown.stderr
    remote_profile = f"~/{profile.relative_to(Path.home())}" if profile.is_relative_to(Path.home()) else str(profile)
    engine_file = "controller-engine.json"
    assert shown.stdout.splitlines() == [
        "the controller, with SSHControllerLauncher:",
        f"  on head.example.com: $ '~/venv/bin/python' -m cluster_launcher controller --profile-dir={remote_profile} "
        "--Controller.log_to_file=False",
        f"    then fetching head.example.com:{remote_profile}/security/controller-client.json to "
        f"{profile}/security/controller-client.json",
        f"    then fetching head.example.com:{remote_profile}/security/{engine_file} to {profile}/security/"
        f"{engine_file}",
        "3 engines, with SSHEngineSetLauncher:",
        f"  on node1: 2 engines: $ '~/venv/bin/python' -m cluster_launcher engine --profile-dir={remote_profile} "
        "--Engine.log_to_file=False",
        f"    after sending {profile}/security/{engine_file} to node1:{remote_profile}/security/{engine_file}",
        "  on me@node2:2222: 1 engine: $ '~/venv/bin/python' -m cluster_launcher engine --profile-dir=/scratch/p "
        "--Engine.log_to_file=False",
        f"    after sending {profile}/security/{engine_file} to me@node2:2222:/scratch/p/security/{engine_file}",
    ]
    assert not (profile / "security" / engine_file).exists()


# --- self-healing: an engine that dies on its host is started again there ------------------------------------


def test_an_engine_killed_on_its_host_is_restarted_there(hosts, user_env):
    """The agent's wrapper notes the engine's exit code (137 after a SIGKILL):
    Cluster's supervisor thread restarts it on the same host, in the same slot
    and log, as a new engine."""
    config = Config()
    config.Cluster.engine_launcher_class = "SSH"
    config.Cluster.engine_restart_delay = 0.2
    config.SSHEngineSetLauncher.engines = {"host1.example.com": 1}
    config.SSHLauncher.poll_interval = 0
    cluster = Cluster(profile="heal", config=config)
    said: list[str] = []
    cluster.warn = said.append
    with cluster as client:
        (engines,) = cluster.engine_sets
        (first,) = engines.launched
        (engine_process,) = psutil.Process(first.pid).children()  # the engine, under the agent's sh wrapper
        (old_id,) = client.ids
        engine_process.kill()
        wait_for(lambda: engines.restarts == {"0": 1}, TIMEOUT, f"slot 0 to be restarted; said: {said}")
        (restarted,) = engines.launched
        assert restarted.host == "host1.example.com" and restarted.pid != first.pid
        assert restarted.log_path == first.log_path
        wait_for(lambda: len(client.ids) == 1 and client.ids != [old_id], TIMEOUT,
                 "the restarted engine to register, the dead one to be gone")
        assert client[:].apply_sync(lambda: __import__("os").environ["HOME"]) == [
            str(hosts["host1.example.com"].remote_home)]
        assert any("engine slot 0 on host1.example.com exited with code 137" in line for line in said), said
    assert gone([restarted.pid, first.pid])
