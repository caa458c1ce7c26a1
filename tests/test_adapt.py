"""Adaptive scaling of real local clusters: engines asked for while tasks
wait, given back once idle, decisions logged and shown by `list` (the policy
itself is tested on its own in core/tests/test_adapt_policy.py; on real
Slurm with a held queue in tests/test_batch_systems.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from cluster_launcher import Client, Cluster
from cluster_launcher.testing.processes import wait_for, wait_for_gate

pytestmark = pytest.mark.timeout(180)

CLI = [sys.executable, "-m", "cluster_launcher"]


def _pid_after_gate(path: str) -> int:
    """Run on an engine: wait at the gate, then say which engine (its pid) ran it."""
    wait_for_gate(path, timeout=120)
    return os.getpid()


def test_engines_come_with_waiting_tasks_and_go_once_idle(tmp_path, make_gate):
    cluster = Cluster(n=0, profile_dir=str(tmp_path / "profile"), adaptive=True, adapt_minimum=0, adapt_maximum=3,
                      adapt_interval=0.1, adapt_idle_timeout=0.5, adapt_scale_in_wait=2)
    with cluster as client:
        assert client.ids == [] and cluster.adapter is not None
        gate = make_gate()
        view = client.load_balanced_view()
        held = [view.apply_async(_pid_after_gate, gate.path) for _ in range(5)]
        # 5 waiting tasks, at most 3 engines: 3 come, and the other 2 tasks wait for them.
        wait_for(lambda: len(client.ids) == 3, 60, "3 engines to be asked for and to register")
        assert client.queue_status()["unassigned"] == 2
        gate.open()
        assert len({result.get(timeout=60) for result in held}) == 3  # the 3 engines shared the 5 tasks
        # Idle for adapt_idle_timeout, after adapt_scale_in_wait decisions: given back, down to the minimum.
        wait_for(lambda: client.ids == [], 60, "the idle engines to be shut down")
        # Asked for as the tasks came, given back as each had been idle long enough: 3 in all, never more.
        assert sum(d.start for d in cluster.adapter.acted) == 3
        assert sum(len(d.retire) for d in cluster.adapter.acted) == 3
        wait_for(lambda: all(s.poll() is not None for s in cluster.engine_sets), 30, "the engine processes to end")
        cluster.adapter.step()
        assert cluster.engine_sets == []  # the ended sets are forgotten
        # More work brings engines back.
        assert view.apply_async(lambda: 6 * 7).get(timeout=60) == 42


def test_start_adapt_on_the_command_line_logs_its_decisions_and_list_shows_them(env, tmp_path):
    profile = tmp_path / "profile"
    start = subprocess.Popen([*CLI, "start", f"--profile-dir={profile}", "--adapt", "--min=1", "--max=2",
                              "--Cluster.adapt_interval=0.2", "--Cluster.adapt_idle_timeout=0.5",
                              "--Cluster.adapt_scale_in_wait=2"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert start.stdout is not None
        for line in start.stdout:
            lines.append(line)
            if "adapting between" in line:
                break
        assert any("cluster ready with 1 engines" in line for line in lines), lines
        assert "adapting between 1 and 2 engines, deciding every 0.2s (engines idle for 0.5s are shut down)" \
            in lines[-1]
        with Client(profile_dir=str(profile), timeout=10) as client:
            view = client.load_balanced_view()
            results = view.map_async(time.sleep, [1.0] * 4)
            wait_for(lambda: len(client.ids) == 2, 60, "a second engine for the waiting tasks")
            listed = subprocess.run([*CLI, "list", f"--profile-dir={profile}"], env=env, capture_output=True,
                                    text=True, timeout=60)
            assert re.search(r"\s1-2: (asking for|steady at|\d+ more than needed)", listed.stdout), listed.stdout
            results.get(timeout=60)
            wait_for(lambda: len(client.ids) == 1, 60, "the idle engine to be given back, down to --min=1")
    finally:
        start.send_signal(signal.SIGINT)
        out, _ = start.communicate(timeout=60)
        lines.append(out)
    said = "".join(lines)
    assert re.search(r"adapt: asking for 1 engines: \d+ tasks waiting", said), said
    assert re.search(r"adapt: retiring 1 idle engine \(\d+\)", said), said
    assert "cluster stopped" in said and start.returncode == 0


def test_adapt_with_daemonize_the_watcher_process_decides(env, tmp_path, make_gate):
    profile = tmp_path / "profile"
    started = subprocess.run([*CLI, "start", f"--profile-dir={profile}", "--adapt", "--min=1", "--max=2",
                              "--daemonize", "--Cluster.adapt_interval=0.2"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "adapting between 1 and 2 engines, deciding every 0.2s" in started.stdout
    try:
        with Client(profile_dir=str(profile), timeout=10) as client:
            gate = make_gate()
            view = client.load_balanced_view()
            held = [view.apply_async(_pid_after_gate, gate.path) for _ in range(2)]
            wait_for(lambda: len(client.ids) == 2, 60, "a second engine for the waiting task")
            gate.open()
            assert len({result.get(timeout=60) for result in held}) == 2
        listed = subprocess.run([*CLI, "list", f"--profile-dir={profile}"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert re.search(r"\s1-2: ", listed.stdout) and re.search(r"^profile/default: watcher: daemon pid \d+$",
                                                                    listed.stdout, re.M), listed.stdout
        log = (profile / "log" / "watcher-default.log").read_text()
        assert re.search(r"adapt: asking for 1 engines: \d+ tasks waiting", log), log
    finally:
        stopped = subprocess.run([*CLI, "stop", f"--profile-dir={profile}"], env=env, capture_output=True,
                                 text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
