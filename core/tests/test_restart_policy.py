"""The pure parts of self-healing engine sets: the backoff, the limit per
slot, the one give-up line, how an exit is said; and the restarter's
accounting over an engine set whose deaths the test decides (no processes)."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from cluster_launcher.cluster.restart import BACKOFF_CAP, EngineRestarter, RestartPolicy, exit_reason
from cluster_launcher.engine.engine import EXIT_TASK_IGNORED_INTERRUPT
from cluster_launcher.launcher import DeadEngine, EngineSetLauncher


def test_backoff_doubles_from_the_first_delay_up_to_the_cap():
    policy = RestartPolicy(limit=10, first_delay=1.0)
    assert [policy.delay(k) for k in range(7)] == [1, 2, 4, 8, 16, BACKOFF_CAP, BACKOFF_CAP]
    assert RestartPolicy(first_delay=0.0).delay(5) == 0


@pytest.mark.parametrize("limit, restarts, gives_up", [(3, 0, False), (3, 2, False), (3, 3, True), (0, 0, True)])
def test_a_slot_is_given_up_once_it_had_its_restarts(limit, restarts, gives_up):
    assert RestartPolicy(limit=limit).gives_up(restarts) is gives_up


@pytest.mark.parametrize("code, said", [
    (-signal.SIGKILL, "killed by SIGKILL"), (-signal.SIGSEGV, "killed by SIGSEGV"), (1, "exited with code 1"),
    (EXIT_TASK_IGNORED_INTERRUPT, "killed: its task ignored an interrupt (Engine.interrupt_grace)"),
    (-200, "killed by signal 200")])
def test_exit_reason(code, said):
    assert exit_reason(code) == said


def test_the_give_up_line():
    line = RestartPolicy(limit=3).give_up_line("engine slot 3", "/p/log/engine-3-default.log", 3, -9)
    assert line == ("engine slot 3 (log /p/log/engine-3-default.log): died 4 times (last: killed by SIGKILL); "
                    "not restarted again (Cluster.engine_restart_limit = 3)")


class ScriptedEngines(EngineSetLauncher):
    """An engine set whose slots die when the test says (``dead``) and come back when restarted."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.dead: dict[int, int] = {}  # slot -> exit code
        self.restarted: list[int] = []

    def dead_engines(self) -> list[DeadEngine]:
        return [DeadEngine(slot, code, f"engine-{slot}.log", f"engine slot {slot}")
                for slot, code in self.dead.items() if str(slot) not in self.given_up]

    def restart_engine(self, slot: int) -> None:
        del self.dead[slot]
        self.restarted.append(slot)
        self.count_restart(slot)


class Watched:
    """What the restarter needs of a Cluster."""

    def __init__(self, engine_sets: list[EngineSetLauncher]):
        self.engine_sets = engine_sets
        self.controller_up = True
        self.saved = 0

    def running(self) -> bool:
        return self.controller_up

    def save_state(self) -> None:
        self.saved += 1


def restarter(engines: ScriptedEngines, limit: int = 2, may_restart: bool = True) -> tuple[EngineRestarter, list]:
    said: list[str] = []
    cluster: Any = Watched([engines])
    return EngineRestarter(cluster, RestartPolicy(limit, first_delay=0.0), said.append, lambda: may_restart), said


def test_limit_accounting_per_slot():
    engines = ScriptedEngines()
    watcher, said = restarter(engines, limit=2)
    for _ in range(2):
        engines.dead[1] = -9
        watcher.step()  # noticed, the restart due at once (no delay)
        watcher.step()  # restarted
    assert engines.restarted == [1, 1] and engines.restarts == {"1": 2}
    engines.dead[1] = -9
    engines.dead[0] = 1  # another slot has its own count
    watcher.step()
    watcher.step()
    assert engines.restarted == [1, 1, 0] and engines.restarts == {"1": 2, "0": 1}
    assert list(engines.given_up) == ["1"] and "died 3 times" in engines.given_up["1"]
    assert sum("not restarted again" in line for line in said) == 1
    watcher.step()
    assert sum("not restarted again" in line for line in said) == 1  # said once


def test_nothing_restarts_while_the_controller_is_down_or_a_stop_was_asked():
    engines = ScriptedEngines()
    watcher, _ = restarter(engines)
    engines.dead[0] = -9
    watcher.cluster.controller_up = False  # type: ignore[attr-defined]
    watcher.step()
    watcher.step()
    assert engines.restarted == []

    stopping, _ = restarter(engines, may_restart=False)
    stopping.step()
    stopping.step()
    assert engines.restarted == [] and engines.restarts == {}


def test_a_launcher_that_cannot_restart_reports_no_deaths():
    assert EngineSetLauncher().dead_engines() == [] and not EngineSetLauncher().can_restart
    assert ScriptedEngines().can_restart
    with pytest.raises(NotImplementedError, match="cannot restart one engine"):
        EngineSetLauncher().restart_engine(0)
