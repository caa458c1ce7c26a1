"""The cluster end to end: `cluster-launcher start/list/engines/stop`, the
foreground `start`, `Cluster` in Python, and a controller and engines started
by hand — real processes, checked with psutil."""

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

from cluster_launcher.cluster import Cluster, state_file
from cluster_launcher.protocol.connection import connection_file

TIMEOUT = 60
CLI = [sys.executable, "-m", "cluster_launcher"]
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "local-cluster.md"


def run(args: list[str], env: dict, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def recorded_pids(path: str) -> list[int]:
    state = json.load(open(path))
    engine_pids = [e["pid"] for engines in state["engines"] for e in engines["engines"]]
    return [state["controller"]["pid"], *engine_pids]


def all_gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_start_daemonized_list_add_engines_stop(tmp_path, env):
    profile = str(tmp_path / "home" / "profile_default")
    started = run(["start", "-n", "2", "--daemonize"], env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "cluster ready with 2 engines" in started.stdout
    record = state_file(profile)
    assert os.stat(record).st_mode & 0o777 == 0o600
    pids = recorded_pids(record)
    assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)

    again = run(["start", "-n", "1", "--daemonize"], env)
    assert again.returncode == 1 and "already runs" in again.stderr and "--cluster-id" in again.stderr
    assert recorded_pids(record) == pids  # the running cluster's record is untouched

    listed = run(["list"], env)
    assert listed.returncode == 0
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("default"))
    assert row == ["default", "default", "running", "2", str(pids[0]), "-"]  # no batch jobs
    watcher = json.load(open(record))["watcher"]["pid"]  # start --daemonize left its watcher process
    assert listed.stdout.splitlines()[2:] == [f"default/default: watcher: daemon pid {watcher}"]

    added = run(["engines", "--n=1"], env)
    assert added.returncode == 0, added.stderr
    assert "3/3 engines registered" in added.stdout
    pids = recorded_pids(record)
    assert len(pids) == 4
    assert os.path.exists(os.path.join(profile, "log", "engine-2-default.log"))

    stopped = run(["stop"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert all_gone(pids)
    assert not os.path.exists(record)
    assert not any(os.path.exists(connection_file(profile, role)) for role in ("client", "engine"))
    listed = run(["list"], env)
    assert "no clusters recorded" in listed.stdout

    nothing = run(["stop"], env)
    assert nothing.returncode == 1 and len(nothing.stderr.strip().splitlines()) == 1
    assert "no cluster" in nothing.stderr


def test_foreground_start_stopped_by_sigint_cleans_up(tmp_path, env):
    profile = str(tmp_path / "home" / "profile_default")
    proc = subprocess.Popen([*CLI, "start", "-n", "2", "--cluster-id=fg"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_until(proc, "cluster ready")
        pids = recorded_pids(state_file(profile, "fg"))
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0, lines + rest
    assert "SIGINT: stopping 2 engines, then the controller" in rest and "cluster stopped" in rest
    assert all_gone(pids)
    assert not os.path.exists(state_file(profile, "fg"))
    assert not os.path.exists(connection_file(profile, "client", "fg"))


def test_foreground_start_leaves_when_stop_runs_elsewhere(tmp_path, env):
    proc = subprocess.Popen([*CLI, "start", "-n", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        read_until(proc, "cluster ready")
        assert run(["stop"], env).returncode == 0
        rest, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped (by cluster-launcher stop)" in rest


def test_an_engine_dying_at_start_names_its_log_and_leaves_nothing(tmp_path, env):
    profile = str(tmp_path / "home" / "profile_default")
    failed = run(["start", "-n", "2", "--daemonize", "--Engine.startup_command=raise SystemExit('no numpy here')"], env)
    assert failed.returncode == 1
    first, *rest = failed.stderr.splitlines()
    assert first.startswith("cluster-launcher start: engine exited with code 1 before the cluster was ready; see ")
    assert first.split("see ")[1].startswith(os.path.join(profile, "log", "engine-"))
    assert any("no numpy here" in line for line in rest)  # the log's last lines
    assert not os.path.exists(state_file(profile))


def test_cluster_context_manager_runs_a_task(tmp_path, env, monkeypatch):
    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", env["CLUSTER_LAUNCHER_DIR"])
    cluster = Cluster(n=2, profile="ctx")
    with cluster as client:
        assert client.ids == [0, 1]
        engine_pids = client[:].apply_sync(os.getpid)
        assert sorted(engine_pids) == sorted(e.pid for e in cluster.engine_sets[0].engines)
        cluster.add_engines(1)
        assert client.ids == [0, 1, 2]
        pids = recorded_pids(cluster.state_path)
    assert all_gone(pids)
    assert not os.path.exists(cluster.state_path)
    assert cluster.profile_dir == str(tmp_path / "home" / "profile_ctx")
    assert cluster.cluster_id and Cluster(n=1).cluster_id != cluster.cluster_id


def test_cluster_is_stopped_at_interpreter_exit(tmp_path, env):
    script = ("from cluster_launcher import Cluster; c = Cluster(n=1, profile='atexit'); c.start(); "
              "import json; print(json.dumps([c.controller.pid, *(e.pid for e in c.engine_sets[0].engines)]))")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert all_gone(json.loads(out.stdout))
    assert not os.listdir(tmp_path / "home" / "profile_atexit" / "pid")


def test_controller_and_engines_started_by_hand(tmp_path, env):
    from cluster_launcher.client import Client
    profile = str(tmp_path / "byhand")
    controller = subprocess.Popen([*CLI, "controller", f"--profile-dir={profile}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engines = [subprocess.Popen([*CLI, "engine", f"--profile-dir={profile}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(connection_file(profile, "client")) and time.monotonic() < deadline:
            assert controller.poll() is None
            time.sleep(0.05)
        client = Client(profile_dir=profile, timeout=TIMEOUT)
        try:
            client.wait_for_engines(2, timeout=TIMEOUT)
            assert sorted(client[:].apply_sync(os.getpid)) == sorted(e.pid for e in engines)
            client.shutdown(hub=True)
        finally:
            client.close()
        for proc in [controller, *engines]:
            assert proc.wait(TIMEOUT) == 0
    finally:
        for proc in [controller, *engines]:
            proc.kill()


def read_until(proc: subprocess.Popen, text: str, timeout: float = TIMEOUT) -> str:
    """stdout lines of ``proc`` up to the one holding ``text`` (bounded in time)."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} not printed; got: {''.join(seen)}")


def doc_examples(language: str) -> list[str]:
    blocks = re.findall(rf"```{language}\n(# test: run\n.*?)```", DOCS_PAGE.read_text(), re.S)
    assert blocks, f"no {language} example marked '# test: run' in {DOCS_PAGE}"
    return blocks


def test_docs_shell_examples_run(tmp_path, env):
    bin_dir = os.path.dirname(sys.executable)  # where the cluster-launcher script is installed
    for block in doc_examples("sh"):
        out = subprocess.run(["bash", "-e", "-c", block], env={**env, "PATH": f"{bin_dir}:{env['PATH']}"},
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stdout + out.stderr
    assert "running" in out.stdout and "stopped cluster" in out.stdout
    assert not os.listdir(tmp_path / "home" / "profile_default" / "pid")


def test_docs_python_examples_run(tmp_path, env):
    for block in doc_examples("python"):
        out = subprocess.run([sys.executable, "-c", block], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stdout + out.stderr
