"""AdaptivePolicy on its own: table-driven runs of observations in, decisions
out (the way Parsl's scaling regression tests are written): scaling out,
no overshoot while the queue is slow, no oscillation when load comes and
goes, scale-in only of idle engines and after hysteresis, the bounds and
the queue cap."""

from __future__ import annotations

import pytest

from cluster_launcher.cluster.adapt import AdaptivePolicy, EngineLoad, Observation


def busy(*ids: int) -> tuple[EngineLoad, ...]:
    return tuple(EngineLoad(i, busy=True, tasks=1) for i in ids)


def idle(*ids: int, idle_for: float = 600.0) -> tuple[EngineLoad, ...]:
    return tuple(EngineLoad(i, busy=False, idle_for=idle_for) for i in ids)


def run(policy: AdaptivePolicy, observations: list[Observation]) -> list[tuple[int, int, tuple[int, ...]]]:
    """(start, cancel, retire) of each decision."""
    return [(d.start, d.cancel, d.retire) for d in map(policy.decide, observations)]


@pytest.mark.parametrize("policy, observations, expected", [
    # Tasks waiting and no engine: one engine per task, within maximum.
    (AdaptivePolicy(0, 64), [Observation(waiting_tasks=12)], [(12, 0, ())]),
    (AdaptivePolicy(0, 8), [Observation(waiting_tasks=100)], [(8, 0, ())]),
    # The minimum is kept even with nothing to do.
    (AdaptivePolicy(2, 8), [Observation()], [(2, 0, ())]),
    # Busy engines count toward the target: 3 busy + 2 waiting with 3 engines -> 2 more.
    (AdaptivePolicy(0, 8), [Observation(busy(0, 1, 2), waiting_tasks=2)], [(2, 0, ())]),
    # Steady: as many engines as work.
    (AdaptivePolicy(0, 8), [Observation(busy(0, 1), waiting_tasks=0)], [(0, 0, ())]),
    # Tasks queued on an engine (hwm above 1) count too; tasks sent to an engine by name count as one.
    (AdaptivePolicy(0, 8), [Observation((EngineLoad(0, busy=True, tasks=3),), waiting_tasks=1)], [(3, 0, ())]),
    (AdaptivePolicy(0, 8), [Observation((EngineLoad(0, busy=True, tasks=0),), waiting_tasks=1)], [(1, 0, ())]),
], ids=["one-per-task", "capped-at-maximum", "minimum-kept", "busy-count", "steady", "queued-on-engine",
        "direct-tasks"])
def test_scale_out(policy, observations, expected):
    assert run(policy, observations) == expected


def test_a_slow_queue_is_not_asked_twice_for_the_same_load():
    """Overshoot: 8 tasks wait while the 8 engines asked for sit in the queue, decision after decision."""
    policy = AdaptivePolicy(0, 64)
    first = policy.decide(Observation(waiting_tasks=8))
    later = [policy.decide(Observation(waiting_tasks=8, requested=8, queued_jobs=1)) for _ in range(20)]
    assert first.start == 8 and all(not d.acts for d in later)
    # Half of them arrive and take tasks: still nothing more asked for.
    assert not policy.decide(Observation(busy(0, 1, 2, 3), waiting_tasks=4, requested=4)).acts


def test_load_that_comes_and_goes_does_not_make_engines_come_and_go():
    """Oscillation: tasks arrive in bursts; engines idle between bursts for less than idle_timeout stay."""
    policy = AdaptivePolicy(0, 8, idle_timeout=60, scale_in_wait=3)
    decisions = [policy.decide(Observation(waiting_tasks=4))]
    for step in range(30):
        if step % 2:
            seen = Observation(busy(0, 1, 2, 3), waiting_tasks=0)
        else:
            seen = Observation(idle(0, 1, 2, 3, idle_for=5.0), waiting_tasks=0)
        decisions.append(policy.decide(seen))
    assert decisions[0].start == 4
    assert [d for d in decisions[1:] if d.acts] == []


def test_idle_engines_go_after_hysteresis_and_idle_timeout_longest_idle_first():
    policy = AdaptivePolicy(1, 8, idle_timeout=60, scale_in_wait=3)
    engines = (EngineLoad(0, False, 100.0), EngineLoad(1, False, 300.0), EngineLoad(2, False, 30.0),
               EngineLoad(3, True, tasks=1))
    decisions = [policy.decide(Observation(engines)) for _ in range(3)]
    # Target: 1 busy -> 1 (the minimum is 1 too): surplus 3, but engine 2 has been idle only 30 s.
    assert [d.acts for d in decisions] == [False, False, True]
    assert decisions[2].retire == (1, 0) and decisions[2].start == 0
    assert "retiring 2 idle engines (1, 0)" in decisions[2].reason


def test_queued_requests_are_cancelled_before_engines_are_retired():
    policy = AdaptivePolicy(0, 8, idle_timeout=0, scale_in_wait=1)
    decision = policy.decide(Observation(idle(0, 1), waiting_tasks=0, requested=3, queued_jobs=1))
    assert (decision.cancel, decision.retire) == (3, (0, 1))


def test_never_below_the_minimum():
    policy = AdaptivePolicy(2, 8, idle_timeout=0, scale_in_wait=1)
    decision = policy.decide(Observation(idle(0, 1, 2, 3)))
    assert len(decision.retire) == 2


def test_draining_engines_are_neither_counted_nor_retired():
    policy = AdaptivePolicy(0, 8, idle_timeout=0, scale_in_wait=1)
    leaving = (EngineLoad(0, busy=True, tasks=1, draining=True), EngineLoad(1, busy=False, idle_for=99, draining=True))
    decision = policy.decide(Observation(leaving, waiting_tasks=2))
    assert decision.start == 2 and decision.retire == ()


def test_the_queue_cap_holds_back_new_requests():
    policy = AdaptivePolicy(0, 64, max_queued_jobs=2)
    decision = policy.decide(Observation(waiting_tasks=10, requested=4, queued_jobs=2))
    assert not decision.acts and "max_queued_jobs=2" in decision.reason


@pytest.mark.parametrize("minimum, maximum", [(-1, 4), (5, 4), (0, 0)])
def test_bounds_that_cannot_work_are_refused(minimum, maximum):
    with pytest.raises(ValueError, match=r"^adaptive scaling needs 0 <= minimum <= maximum and maximum >= 1"):
        AdaptivePolicy(minimum, maximum)


class _Client:
    """What Adaptive.observe asks of a client: queue_status()."""

    def __init__(self, status: dict):
        self.status = status

    def queue_status(self) -> dict:
        return dict(self.status)


class _Cluster:
    engine_sets: list = []


def test_an_engine_near_its_deadline_counts_as_leaving_so_its_replacement_is_asked_for_early():
    import time

    from cluster_launcher.cluster.adapt import Adaptive

    now = time.time()
    status = {0: {"queue": 0, "tasks": 0, "deadline": now + 300, "draining": False, "idle_since": now - 10},
              1: {"queue": 1, "tasks": 1, "deadline": now + 7200, "draining": False, "idle_since": None},
              "unassigned": 0}
    adapter = Adaptive(_Cluster(), AdaptivePolicy(2, 2), replace_lead=600)  # type: ignore[arg-type]
    seen = adapter.observe(_Client(status))  # type: ignore[arg-type]
    assert [(e.engine_id, e.draining, e.busy) for e in seen.engines] == [(0, True, False), (1, False, True)]
    assert adapter.policy.decide(seen).start == 1  # engine 0 leaves within 10 minutes: its replacement now
    assert not Adaptive(_Cluster(), AdaptivePolicy(2, 2)).observe(_Client(status)).engines[0].draining  # type: ignore[arg-type]
