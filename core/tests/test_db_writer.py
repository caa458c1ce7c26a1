"""BatchWriter: the write-behind thread of task databases that do I/O.  The
``apply`` functions here are gated by events, so every test decides when a
batch may finish: nothing depends on timing."""

from __future__ import annotations

import logging
import select
import threading
import time

import pytest

from cluster_launcher.db.writer import BatchWriter
from cluster_launcher.error import TaskDBError

LOG = logging.getLogger("test.writer")


class Store:
    """An ``apply`` that records batches; ``gate`` holds it; ``failing`` makes it raise."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.failing: Exception | None = None
        self.attempts = 0

    def apply(self, ops: list) -> None:
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"
        self.attempts += 1
        if self.failing is not None:
            raise self.failing
        self.batches.append(list(ops))

    @property
    def applied(self) -> list:
        return [op for batch in self.batches for op in batch]


def _merge(queued, new):
    return (queued[0], queued[1] + new[1]) if queued[0] == new[0] else None


def _run_until(writer: BatchWriter, condition, what: str) -> None:
    """Run due callbacks as the controller's loop does, until ``condition`` (bounded)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        select.select([writer.fileno()], [], [], 0.5)
        writer.run_callbacks()


def _lost_server_writer(store: Store) -> BatchWriter:
    """A non-holding writer (as MongoDB's) whose every write fails until the test says otherwise."""
    store.failing = ConnectionError("server gone")
    return BatchWriter(store.apply, target="mongodb://db", log=LOG, hold_on_failure=False,
                       retry_delay=0.001, max_retry_delay=0.01)


@pytest.fixture
def store():
    return Store()


def test_operations_are_applied_in_order_and_merged_by_key(store):
    store.gate.clear()
    writer = BatchWriter(store.apply, target="memory", log=LOG, merge=_merge)
    try:
        writer.put(("first", ["x"]), key="first")
        assert store.entered.wait(30)  # the first batch is being applied: later puts queue up behind it
        writer.put(("a", ["add"]), key="a")
        writer.put(("b", ["add"]), key="b")
        writer.put(("a", ["update"]), key="a")  # folded into the queued ("a", ...)
        writer.put(("barrier", []))
        writer.put(("a", ["late update"]), key="a")  # not folded across the barrier
        store.gate.set()
        writer.flush()
        assert store.applied == [("first", ["x"]), ("a", ["add", "update"]), ("b", ["add"]), ("barrier", []),
                                 ("a", ["late update"])]
        assert len(store.batches) == 2, "what queued up while a batch was applied goes in one batch"
        assert writer.queued == writer.applied == 6
    finally:
        writer.close()


def test_callbacks_wait_for_the_writes_made_before_them_and_run_in_order(store):
    writer = BatchWriter(store.apply, target="memory", log=LOG)
    ran: list[str] = []
    try:
        writer.when_durable(lambda: ran.append("nothing pending"))
        assert ran == ["nothing pending"], "with nothing pending a callback runs at once"
        store.gate.clear()
        writer.put("one")
        writer.when_durable(lambda: ran.append("after one"))
        writer.put("two")
        writer.when_durable(lambda: ran.append("after two"))
        writer.run_callbacks()
        assert ran == ["nothing pending"]
        store.gate.set()
        _run_until(writer, lambda: len(ran) == 3, "callbacks to run")
        assert ran == ["nothing pending", "after one", "after two"]
    finally:
        writer.close()


def test_holding_writer_keeps_results_until_a_failing_write_succeeds(store, caplog):
    caplog.set_level(logging.WARNING, logger="test.writer")
    store.failing = OSError("disk full")
    writer = BatchWriter(store.apply, target="/data/tasks.db", log=LOG, hold_on_failure=True,
                         retry_delay=0.001, max_retry_delay=0.01)
    ran: list[int] = []
    try:
        writer.put("record")
        writer.when_durable(lambda: ran.append(1))
        _run_until(writer, lambda: store.attempts >= 3, "retries")
        assert ran == [], "a result went out although its record was not written"
        with pytest.raises(TaskDBError, match=r"writing to /data/tasks.db fails \(OSError: disk full\)"):
            writer.flush()
        store.failing = None
        _run_until(writer, lambda: ran == [1], "the callback after recovery")
        assert store.applied == ["record"]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "disk full" in errors[0].getMessage(), "the failure is logged once"
        assert any("again, after" in r.getMessage() for r in caplog.records), "the recovery is logged"
    finally:
        writer.close()


def test_non_holding_writer_releases_results_and_retries_the_writes(store):
    writer = _lost_server_writer(store)
    ran: list[int] = []
    try:
        writer.put("record")
        writer.when_durable(lambda: ran.append(1))
        _run_until(writer, lambda: ran == [1], "the callback while the server is gone")
        assert store.applied == []
        store.failing = None
        writer.flush(fail_fast=False)
        assert store.applied == ["record"], "the write is retried until it lands"
    finally:
        writer.close()


def test_close_applies_what_is_queued_runs_due_callbacks_and_reports_what_it_cannot(store, caplog):
    writer = BatchWriter(store.apply, target="memory", log=LOG)
    ran: list[int] = []
    store.gate.clear()
    writer.put("last")
    writer.when_durable(lambda: ran.append(1))
    store.gate.set()
    writer.close()
    assert store.applied == ["last"] and ran == [1]

    failing = Store()
    failing.failing = OSError("read-only file system")
    broken = BatchWriter(failing.apply, target="/ro/tasks.db", log=LOG, retry_delay=0.001, max_retry_delay=0.01)
    broken.put("never written")
    broken.close(timeout=0.2)
    assert any("are lost" in r.getMessage() and "/ro/tasks.db" in r.getMessage() for r in caplog.records)


def test_flush_never_reports_success_while_a_retry_is_in_flight(store):
    """A failing batch being retried is out of the queue but not applied: flush
    fails fast (reads must not wait on a lost server), and waits without fail_fast."""
    writer = _lost_server_writer(store)
    try:
        writer.put("record")
        _run_until(writer, lambda: store.attempts >= 1, "a first failed attempt")
        store.entered.clear()  # (before closing the gate: an attempt entering now is seen)
        store.gate.clear()  # the next retry is now in flight, held at the gate
        assert store.entered.wait(30)
        with pytest.raises(TaskDBError, match="server gone"):
            writer.flush()
        with pytest.raises(TaskDBError, match="server gone"):
            writer.flush(timeout=0.05, fail_fast=False)
        store.failing = None
        store.gate.set()
        writer.flush(fail_fast=False)
        assert store.applied == ["record"]
    finally:
        store.gate.set()
        writer.close()


def test_while_failing_a_non_holding_writer_calls_back_at_once(store):
    writer = _lost_server_writer(store)
    ran: list[str] = []
    try:
        writer.put("first")
        _run_until(writer, lambda: store.attempts >= 1, "a failed attempt")
        store.gate.clear()  # hold the retries: the results put now must not wait for them
        writer.put("second")
        writer.when_durable(lambda: ran.append("second"))
        writer.run_callbacks()
        assert ran == ["second"]
    finally:
        store.failing = None
        store.gate.set()
        writer.close()


def test_a_failing_callback_is_logged_and_the_others_still_run(store, caplog):
    writer = BatchWriter(store.apply, target="memory", log=LOG)
    ran: list[int] = []

    def broken() -> None:
        raise RuntimeError("cannot send this result")

    try:
        store.gate.clear()
        writer.put("one")
        writer.when_durable(broken)
        writer.when_durable(lambda: ran.append(2))
        store.gate.set()
        _run_until(writer, lambda: ran == [2], "the callback after the broken one")
        assert any("durable callback" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        writer.close()
        writer.close()  # a second close does nothing
    assert writer.stopped
