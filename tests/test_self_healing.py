"""Self-healing engine sets (``start --engine-restart-limit=N``): engines
SIGKILLed by their PID are restarted in their slot with backoff, then given
up with one line, while the other engines keep serving tasks; exit 0 is not a
death; each watcher (the foreground ``start``, ``start --daemonize``'s
detached watcher, ``Cluster``'s supervisor thread) does it — real
controller and engine processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from cluster_launcher.client import Client
from cluster_launcher.cluster import Cluster, state_file
from cluster_launcher.error import EngineError
from cluster_launcher.testing.processes import ignore_interrupts, wait_for

TIMEOUT = 60
CLI = [sys.executable, "-m", "cluster_launcher"]
FAST_BACKOFF = "--Cluster.engine_restart_delay=0.2"  # 0.2 s, 0.4 s, 0.8 s: the policy's own tests check the rule


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT)


def slot_pid(record: str, slot: int) -> int:
    """The PID of the engine process of ``slot`` (the local engine set's), as the record has it now."""
    state = json.load(open(record))
    return int(state["engines"][0]["engines"][slot]["pid"])


def engine_id_of(client: Client, pid: int) -> int:
    """The engine id the controller gave the engine process ``pid`` (once it registered)."""
    def registered() -> int | None:
        return next((i for i, info in client.engines.items() if info.get("pid") == pid), None)

    found = wait_for(lambda: registered() is not None, TIMEOUT, f"engine process {pid} to register")
    assert found
    engine_id = registered()
    assert engine_id is not None
    return engine_id


def kill_and_wait_gone(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             TIMEOUT, f"engine {pid} to die")


class Output:
    """The lines a process prints, read by a thread, so a test waits on them with a bound."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")),
                                        daemon=True)
        self._reader.start()

    def wait(self, text: str, count: int = 1) -> None:
        wait_for(lambda: sum(text in line for line in self.lines) >= count, TIMEOUT,
                 f"{count} lines with {text!r}; got {''.join(self.lines)}")


def test_foreground_start_restarts_a_killed_engine_three_times_then_gives_up(tmp_path, env):
    profile = str(tmp_path / "home" / "profile_default")
    record = state_file(profile)
    proc = subprocess.Popen([*CLI, "start", "-n", "2", "--engine-restart-limit=3", FAST_BACKOFF], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    client = None
    try:
        output.wait("cluster ready with 2 engines")
        client = Client(profile_dir=profile, timeout=TIMEOUT)
        survivor = engine_id_of(client, slot_pid(record, 0))
        for kill in range(1, 5):
            victim = slot_pid(record, 1)
            engine_id_of(client, victim)
            kill_and_wait_gone(victim)
            # The cluster serves tasks on the other engine throughout.
            assert client[survivor].apply_sync(lambda k: k * 2, kill) == kill * 2
            if kill <= 3:
                output.wait(f"engine slot 1 restarted ({kill} of 3; new engine ids)")
                assert slot_pid(record, 1) != victim
        output.wait("engine slot 1 (log ")
        given_up = next(line for line in output.lines if "not restarted again" in line)
        assert "died 4 times (last: killed by SIGKILL); not restarted again (Cluster.engine_restart_limit = 3)" \
            in given_up and os.path.join(profile, "log", "engine-1-default.log") in given_up
        assert client[survivor].apply_sync(os.getpid) == slot_pid(record, 0)

        listed = run(["list"], env)
        assert listed.returncode == 0, listed.stderr
        header, row, *notes = listed.stdout.splitlines()
        assert header.split()[-1] == "RESTARTS" and row.split()[-4:] == ["3", "(1", "given", "up)"]
        assert row.split()[2:4] == ["running", "1"]
        assert notes == [f"default/default: watcher: start pid {proc.pid}",
                         f"default/default: {given_up.split(' ', 1)[1].rstrip()}"]
    finally:
        if client is not None:
            client.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(TIMEOUT)
    assert not os.path.exists(record)


def test_cluster_in_python_restarts_a_crash_not_a_shutdown(tmp_path, env, monkeypatch):
    """The supervisor thread of ``Cluster``: an engine exiting with
    EXIT_TASK_IGNORED_INTERRUPT (as one whose task ignored an interrupt) is
    restarted and said so; one shut down (exit 0) is not."""
    from cluster_launcher.engine.engine import EXIT_TASK_IGNORED_INTERRUPT

    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", env["CLUSTER_LAUNCHER_DIR"])
    cluster = Cluster(n=2, profile="heal", engine_restart_delay=0.2)
    said: list[str] = []
    cluster.warn = said.append
    with cluster as client:
        engines = cluster.engine_sets[0]
        crashing = engine_id_of(client, engines.engines[1].pid)
        first_pid = engines.engines[1].pid
        task = client[crashing].apply_async(os._exit, EXIT_TASK_IGNORED_INTERRUPT)
        with pytest.raises(EngineError):
            task.get(timeout=TIMEOUT)  # the engine died under the task: an engine error, not the task's own
        wait_for(lambda: engines.restarts.get("1") == 1 and engines.engines[1].pid != first_pid, TIMEOUT,
                 "slot 1 restarted")
        assert any("engine slot 1 killed: its task ignored an interrupt (Engine.interrupt_grace)" in line
                   for line in said), said
        restarted = engine_id_of(client, engines.engines[1].pid)
        assert restarted != crashing and client[restarted].apply_sync(lambda: 7) == 7

        shut_down_pid = engines.engines[0].pid
        shut_down = engine_id_of(client, shut_down_pid)
        client.shutdown(targets=[shut_down], block=True)
        wait_for(lambda: engines.engines[0].poll() is not None, TIMEOUT, "the shut-down engine to exit")
        assert engines.engines[0].poll() == 0 and engines.dead_engines() == []
        # The supervisor's next steps (every 0.5 s) see it gone and leave it: a step run here sees the same.
        assert cluster.supervisor is not None
        cluster.supervisor.restarter.step()
        assert engines.engines[0].pid == shut_down_pid and "0" not in engines.restarts
        # The controller tells the two apart as well: one died (its heartbeats stopped), one was shut down.
        lost = {e["engine_id"]: e["reason"] for e in client.queue_status(verbose=True)["lost"]}
        assert lost == {crashing: "heartbeat", shut_down: "shutdown"}
    assert cluster.supervisor is None  # stopped first by stop()


def test_daemonized_watcher_restarts_and_stop_stops_it(tmp_path, env):
    profile = str(tmp_path / "home" / "profile_default")
    record = state_file(profile)
    started = run(["start", "-n", "2", "--daemonize", FAST_BACKOFF], env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "cluster ready with 2 engines" in started.stdout
    watcher = json.load(open(record))["watcher"]
    assert watcher["kind"] == "daemon" and psutil.pid_exists(watcher["pid"])

    victim = slot_pid(record, 1)
    kill_and_wait_gone(victim)
    log = Path(profile, "log", "watcher-default.log")
    wait_for(lambda: log.exists() and "engine slot 1 restarted (1 of 3; new engine ids)" in log.read_text(), TIMEOUT,
             "the watcher to restart slot 1")
    with Client(profile_dir=profile, timeout=TIMEOUT) as client:
        restarted = engine_id_of(client, slot_pid(record, 1))
        assert client[restarted].apply_sync(lambda: 5) == 5
    listed = run(["list"], env)
    assert f"default/default: watcher: daemon pid {watcher['pid']}" in listed.stdout.splitlines()

    engines = [slot_pid(record, 0), slot_pid(record, 1)]
    stopped = run(["stop"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert not psutil.pid_exists(watcher["pid"]) or psutil.Process(watcher["pid"]).status() == psutil.STATUS_ZOMBIE
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in engines), TIMEOUT, "the engines to be gone")
    assert not os.path.exists(record)


def test_killed_watcher_leaves_the_engines_and_list_says_so(tmp_path, env):
    profile = str(tmp_path / "home" / "profile_default")
    record = state_file(profile)
    started = run(["start", "-n", "1", "--daemonize"], env)
    assert started.returncode == 0, started.stdout + started.stderr
    watcher = json.load(open(record))["watcher"]["pid"]
    os.kill(watcher, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(watcher) or psutil.Process(watcher).status() == psutil.STATUS_ZOMBIE,
             TIMEOUT, "the watcher to die")
    engine = slot_pid(record, 0)
    assert psutil.pid_exists(engine)
    listed = run(["list"], env)
    assert listed.stdout.splitlines()[1].split()[2:4] == ["running", "1"]  # the engine runs on
    assert listed.stdout.splitlines()[2] == (f"default/default: watcher: not running (daemon pid {watcher} is gone): "
                                             "nothing restarts engines that die")
    stopped = run(["stop"], env)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: not psutil.pid_exists(engine), TIMEOUT, "the engine to be stopped")


def test_a_task_ignoring_its_time_limit_gets_its_engine_killed_and_restarted(tmp_path, env, monkeypatch):
    """The two halves together: the engine kills itself after Engine.interrupt_grace
    (the task fails with TaskTimeout saying so), the supervisor restarts it in its
    slot and reports why, counted against the limit; the controller lists the old
    engine as killed."""
    from traitlets.config import Config

    from cluster_launcher.error import TaskTimeout

    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", env["CLUSTER_LAUNCHER_DIR"])
    config = Config()
    config.Engine.interrupt_grace = 1.0
    cluster = Cluster(n=1, profile="stuck", engine_restart_delay=0.2, config=config)
    said: list[str] = []
    cluster.warn = said.append
    with cluster as client:
        engines = cluster.engine_sets[0]
        first_pid = engines.engines[0].pid
        stuck = engine_id_of(client, first_pid)
        view = client.load_balanced_view()
        view.set_flags(time_limit=1)
        with pytest.raises(TaskTimeout, match=r"ignored its interrupt for 1s \(Engine.interrupt_grace\)"):
            view.apply(ignore_interrupts, 120).get(timeout=TIMEOUT)
        wait_for(lambda: engines.restarts.get("0") == 1 and engines.engines[0].pid != first_pid, TIMEOUT,
                 "slot 0 restarted")
        assert any("engine slot 0 killed: its task ignored an interrupt (Engine.interrupt_grace)" in line
                   for line in said), said
        restarted = engine_id_of(client, engines.engines[0].pid)
        view.set_flags(time_limit=None)
        assert restarted != stuck and view.apply(lambda: "served").get(timeout=TIMEOUT) == "served"
        lost = {e["engine_id"]: e["reason"] for e in client.queue_status(verbose=True)["lost"]}
        assert lost == {stuck: "killed: its task ignored an interrupt"}
