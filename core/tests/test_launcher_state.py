"""Launcher state is declared once, as traits tagged ``state``: to_dict() records
every one of them and from_dict() restores every one, nested engine launchers
included; and the process identity (pid_alive, process_start_token) that a
later ``cluster-launcher stop`` relies on, checked against real child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from cluster_launcher_local import LocalControllerLauncher, LocalEngineLauncher, LocalEngineSetLauncher
from traitlets import Bool, Dict, Float, Instance, Integer, List, TraitType, Unicode
from traitlets.config import Config

from cluster_launcher import plugins
from cluster_launcher.cluster import launcher_from_dict
from cluster_launcher.launcher import (
    ControllerLauncher,
    EngineSetLauncher,
    Launcher,
    LocalProcessLauncher,
    pid_alive,
    process_start_token,
)
from cluster_launcher.testing.processes import wait_for


class RemoteEngineSetLauncher(LocalEngineSetLauncher):
    """What a plugin author writes to record more: traits tagged state, no other code."""

    hosts = List(Unicode(), help="Where the engines run.").tag(config=False, state=True)
    remote_pid = Integer(0, help="The engine's PID on its host.").tag(config=False, state="rpid")


BUILTIN_LAUNCHERS: list[type[Launcher]] = [
    Launcher, ControllerLauncher, EngineSetLauncher, LocalProcessLauncher,
    LocalControllerLauncher, LocalEngineLauncher, LocalEngineSetLauncher]


def registered_launchers() -> list[type[Launcher]]:
    """Every launcher class installed in this environment (the condor example too, when installed)."""
    registry = plugins.get_registry()
    found = [plugins.resolve("launcher", name) for name in registry.names("launcher")]
    plugins.reset()  # leave the registry as a new process would find it
    return found


ALL_LAUNCHERS = list(dict.fromkeys([*BUILTIN_LAUNCHERS, *registered_launchers(), RemoteEngineSetLauncher]))


def sample(name: str, trait: TraitType[Any, Any], serial: int) -> Any:
    """A value of ``trait`` unlike its default, different for each ``serial``."""
    element = trait._trait if isinstance(trait, List) else None
    if isinstance(element, Instance) and isinstance(element.klass, type) and issubclass(element.klass, Launcher):
        return [filled(element.klass, serial * 10 + i) for i in (1, 2)]
    if isinstance(element, Integer):  # a list of numbers (BatchSystemLauncher.job_sizes)
        return [serial * 10 + 1, serial * 10 + 2]
    if isinstance(element, List):  # a list of lists (SSHEngineSetLauncher.sent: [host, path] pairs)
        return [[f"{name}-{serial}-{i}", f"{name}-{serial}-{i}-b"] for i in (1, 2)]
    if isinstance(trait, Unicode):
        return f"{name}-{serial}"
    if isinstance(trait, Bool):
        return not trait.default_value
    if isinstance(trait, Integer):
        return 1000 * serial + len(name)
    if isinstance(trait, Float):
        return serial + 0.5
    if isinstance(trait, List):
        return [f"{name}-{serial}-a", f"{name}-{serial}-b"]
    if isinstance(trait, Dict):  # of strings, or of numbers (EngineSetLauncher.restarts)
        return {name: serial if isinstance(trait._value_trait, Integer) else str(serial)}
    raise AssertionError(f"no sample value for the {type(trait).__name__} trait {name!r}: add one here")


def filled(cls: type[Launcher], serial: int = 1) -> Launcher:
    """A ``cls`` launcher whose every state trait holds a non-default value."""
    launcher = cls()
    for name, trait in cls.state_traits().items():
        setattr(launcher, name, sample(name, trait, serial))
        assert getattr(launcher, name) != trait.default(), f"{cls.__name__}.{name}: sample equals the default"
    return launcher


def state_of(launcher: Launcher) -> dict[str, Any]:
    """Every state trait's value, nested launchers as their own state_of."""
    def plain(value: Any) -> Any:
        if isinstance(value, Launcher):
            return {"class": type(value), **state_of(value)}
        return [plain(item) for item in value] if isinstance(value, list) else value
    return {name: plain(getattr(launcher, name)) for name in launcher.state_traits()}


@pytest.mark.parametrize("cls", ALL_LAUNCHERS, ids=lambda cls: cls.__name__)
def test_every_state_trait_round_trips_through_json(cls):
    original = filled(cls)
    record = json.loads(json.dumps(original.to_dict()))
    assert record["class"] == f"{cls.__module__}.{cls.__name__}"
    restored = cls.from_dict(record)
    assert type(restored) is cls
    assert state_of(restored) == state_of(original)


def test_nested_engine_launchers_are_rebuilt_as_children_with_the_parents_config():
    config = Config()
    config.LocalEngineSetLauncher.stop_timeout = 9.0
    config.LocalEngineSetLauncher.environment = {"OMP_NUM_THREADS": "1"}
    original = filled(LocalEngineSetLauncher)
    pids = [engine.pid for engine in original.engines]
    record = json.loads(json.dumps(original.to_dict()))
    assert [engine["pid"] for engine in record["engines"]] == pids

    engines = launcher_from_dict(record, config)
    assert isinstance(engines, LocalEngineSetLauncher) and engines.stop_timeout == 9.0
    assert [type(engine) for engine in engines.engines] == [LocalEngineLauncher, LocalEngineLauncher]
    assert [engine.pid for engine in engines.engines] == pids
    for engine in engines.engines:
        assert engine.parent is engines and engine.config == config
        assert engine.stop_timeout == 9.0 and engine.environment == {"OMP_NUM_THREADS": "1"}


def test_a_subclass_trait_tagged_state_is_recorded_with_no_other_code():
    launcher = RemoteEngineSetLauncher(hosts=["node1", "node2"], remote_pid=4242, n=2)
    record = json.loads(json.dumps(launcher.to_dict()))
    assert (record["hosts"], record["rpid"], record["n"]) == (["node1", "node2"], 4242, 2)
    again = RemoteEngineSetLauncher.from_dict(record)
    assert (again.hosts, again.remote_pid, again.n) == (["node1", "node2"], 4242, 2)


@pytest.mark.parametrize("cls", BUILTIN_LAUNCHERS, ids=lambda cls: cls.__name__)
def test_every_runtime_trait_of_the_builtin_launchers_is_state(cls):
    # config=False marks what a launcher learns by starting (PIDs, logs, ids):
    # exactly what a later `stop` needs, so untagged means forgotten.
    runtime = cls.class_traits(config=False)
    assert runtime and set(runtime) <= set(cls.state_traits())


# A cluster record as written before state traits (pid/cluster-<id>.json):
# read the same, and written back unchanged.
RECORD_BEFORE_STATE_TRAITS = {
    "class": "cluster_launcher_local.LocalEngineSetLauncher", "profile_dir": "/p", "cluster_id": "c1", "n": 2,
    "first_index": 0,
    "engines": [{"class": "cluster_launcher_local.LocalEngineLauncher", "profile_dir": "/p", "cluster_id": "c1",
                 "n": 1, "pid": 4000 + i, "start_token": "98765", "log": f"/p/log/engine-{i}-c1.log",
                 "log_offset": 64} for i in range(2)],
}


def test_records_written_before_keep_their_format():
    engines = launcher_from_dict(json.loads(json.dumps(RECORD_BEFORE_STATE_TRAITS)))
    assert isinstance(engines, LocalEngineSetLauncher)
    assert [(e.pid, e.start_token, e.log_path, e.log_offset) for e in engines.engines] == [
        (4000, "98765", "/p/log/engine-0-c1.log", 64), (4001, "98765", "/p/log/engine-1-c1.log", 64)]
    restart_state = {"restarts": {}, "given_up": {}}  # recorded since self-healing engine sets, empty here
    assert engines.to_dict() == {**RECORD_BEFORE_STATE_TRAITS, **restart_state, "engines": [
        {**engine, **restart_state} for engine in RECORD_BEFORE_STATE_TRAITS["engines"]]}


def test_a_key_missing_from_a_record_keeps_the_default_or_the_parents_value():
    controller = LocalControllerLauncher.from_dict({"pid": 1234})
    assert (controller.pid, controller.start_token, controller.log_path, controller.profile_dir) == (1234, "", "", "")
    engines = LocalEngineSetLauncher.from_dict({"profile_dir": "/p", "cluster_id": "c1", "engines": [{"pid": 1235}]})
    [engine] = engines.engines
    assert (engine.pid, engine.profile_dir, engine.cluster_id) == (1235, "/p", "c1")


# --- process identity, against real child processes -------------------------


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A child process that runs until its stdin is closed; killed at the end if it still runs."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield process
    if process.poll() is None:  # by this Popen, so never a PID the system reused
        process.kill()
        process.wait(10)
    if process.stdin:
        process.stdin.close()


def test_a_child_is_alive_until_it_exits_and_is_reaped_by_pid_alive(child):
    token = process_start_token(child.pid)
    started = psutil.Process(child.pid).create_time() - psutil.boot_time()  # seconds after boot
    assert abs(float(token) - started) < 0.015
    assert pid_alive(child.pid) and pid_alive(child.pid, token)

    assert child.stdin is not None
    child.stdin.close()  # it exits, a zombie until someone reaps it
    wait_for(lambda: not pid_alive(child.pid, token), 10, "the child to be gone")
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)  # pid_alive reaped it: our exited child is gone, not a zombie
    assert process_start_token(child.pid) == "" or psutil.pid_exists(child.pid)  # '' unless the PID was reused


def test_a_different_start_token_means_the_pid_was_reused(child):
    started = float(process_start_token(child.pid))
    assert not pid_alive(child.pid, f"{started + 0.02:.2f}")  # two clock ticks later: another process
    assert not pid_alive(child.pid, "1")  # the pre-psutil format: clock ticks since boot
    assert not pid_alive(child.pid, "not a token")
    assert pid_alive(child.pid, f"{started:.2f}")


def test_the_start_token_does_not_move_with_the_wall_clock(child, monkeypatch):
    token = process_start_token(child.pid)
    # An NTP step between `start` and `stop` moves the boot time psutil reports
    # (and with it every create_time), not the offset from boot.
    stepped = psutil.boot_time() + 3600.0
    monkeypatch.setattr(psutil, "boot_time", lambda: stepped)
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: float(token) + stepped)
    assert pid_alive(child.pid, token)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="pre-psutil start tokens came from /proc")
def test_a_start_token_recorded_before_psutil_still_identifies_the_process(child):
    with open(f"/proc/{child.pid}/stat") as f:
        stat = f.read()
    ticks_since_boot = stat[stat.rfind(")") + 2:].split()[19]  # what the old process_start_token recorded
    assert pid_alive(child.pid, ticks_since_boot)
    assert not pid_alive(child.pid, str(int(ticks_since_boot) + 1))


def test_a_zombie_that_is_not_our_child_counts_as_gone():
    # A parent that does not reap its exited child (until its stdin closes),
    # as a `cluster-launcher start` busy elsewhere leaves its engines.
    parent_code = ("import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', 'pass']); "
                   "print(child.pid, flush=True); sys.stdin.read(); child.wait()")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None
        zombie = int(parent.stdout.readline())
        wait_for(lambda: psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE, 10, "the grandchild to exit")
        assert psutil.pid_exists(zombie) and not pid_alive(zombie)
    finally:
        assert parent.stdin is not None
        parent.stdin.close()
        try:
            parent.wait(10)
        except subprocess.TimeoutExpired:
            parent.kill()
            parent.wait(10)
        if parent.stdout:
            parent.stdout.close()


def test_a_process_we_may_not_inspect_counts_as_running(child, monkeypatch):
    def access_denied(process: psutil.Process) -> str:
        raise psutil.AccessDenied(process.pid)

    monkeypatch.setattr(psutil.Process, "status", access_denied)
    assert pid_alive(child.pid, "1")


def test_no_token_for_what_is_not_a_process():
    assert process_start_token(0) == "" and process_start_token(-1) == ""
    assert not pid_alive(0) and not pid_alive(-1)
