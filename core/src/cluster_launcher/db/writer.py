"""Write-behind for task databases that do I/O: one thread applies the
controller's writes in batches, so a slow disk or a distant server never
stalls task routing, and tells the controller's thread when what it wrote is
durable, so a result goes to its client only once its record is stored.

A backend (SQLiteDB, MongoDB) owns a :class:`BatchWriter`: it ``put``s one
operation per write, gives the writer a function that applies a list of
operations in one transaction, and hands :meth:`BaseDB.when_durable` and
:meth:`BaseDB.durable_fd` on to it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from ..error import TaskDBError
from .base import BaseDB

Apply = Callable[[list[Any]], None]
Merge = Callable[[Any, Any], Any]


class BatchWriter:
    """Operations in, applied in order by one background thread, in batches.

    ``apply(ops)`` must apply every operation or raise; it is retried with
    backoff (the same operations, in the same order) until it succeeds.  It
    should raise only for failures that may pass (a full disk, a lost
    server) and deal with an operation that can never succeed itself.

    ``merge(queued, new)`` may fold an operation into an earlier one with the
    same key that is still queued (an update into the insert of its record),
    returning the merged operation or None to queue ``new`` on its own.

    ``hold_on_failure`` decides what :meth:`when_durable` callbacks do while
    ``apply`` fails: wait for the retry to succeed (True: the durability
    promise of a local file), or run at once (False: a lost database server
    must not stop results from reaching their clients).
    """

    def __init__(self, apply: Apply, *, target: str, log: logging.Logger, hold_on_failure: bool = True,
                 merge: Merge | None = None, retry_delay: float = 0.05, max_retry_delay: float = 5.0,
                 name: str = "task-db-writer"):
        self._apply = apply
        self._merge = merge
        self.target = target  # the file or URL, for log lines and errors
        self.log = log
        self.hold_on_failure = hold_on_failure
        self._retry_delay, self._max_retry_delay = retry_delay, max_retry_delay
        self._lock = threading.Condition()
        self._ops: list[Any] = []
        self._by_key: dict[Hashable, int] = {}  # key -> index in _ops of its latest mergeable operation
        self._queued = 0  # operations put so far
        self._applied = 0  # of which applied
        # Of which the callbacks may run: applied ones, and (failing and not
        # holding) every one put until the target works again.
        self._durable = 0
        self._failure: BaseException | None = None  # the last error while failing, None once it works
        self._closing = False
        self._closed = False
        # Owned by the controller's thread only: (operations put when asked, callback).
        self._callbacks: deque[tuple[int, Callable[[], None]]] = deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- the controller's thread ----------------------------------------------

    def put(self, op: Any, key: Hashable | None = None) -> None:
        """Queue ``op``; with a ``key``, it may be merged into the queued
        operation of the same key.  ``key=None`` is a barrier: nothing put
        after it merges into anything put before it."""
        with self._lock:
            self._queued += 1
            index = self._by_key.get(key) if key is not None and self._merge is not None else None
            merged = self._merge(self._ops[index], op) if index is not None and self._merge else None
            if index is not None and merged is not None:
                self._ops[index] = merged
            else:
                if key is None:
                    self._by_key.clear()
                else:
                    self._by_key[key] = len(self._ops)
                self._ops.append(op)
            if len(self._ops) == 1:
                self._lock.notify_all()

    @property
    def queued(self) -> int:
        """How many operations were put so far (a position to compare with :attr:`applied`)."""
        return self._queued

    @property
    def applied(self) -> int:
        """How many of the operations put so far are applied."""
        with self._lock:
            return self._applied

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` in this thread once everything put so far is
        applied (or, while writes fail and the writer does not hold, at once):
        now if it is, else from :meth:`run_callbacks`."""
        with self._lock:
            if self._failure is not None and not self.hold_on_failure:
                self._durable = self._queued
            queued, durable = self._queued, self._durable
        if queued == durable and not self._callbacks:
            _run_callback(callback, self.log)
        else:
            self._callbacks.append((queued, callback))

    def fileno(self) -> int:
        """Readable when :meth:`run_callbacks` has callbacks to run (for the
        controller's poller)."""
        return self._wake_read

    def run_callbacks(self) -> None:
        """Run, in order, the callbacks whose writes are durable."""
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            durable = self._durable
        while self._callbacks and self._callbacks[0][0] <= durable:
            _run_callback(self._callbacks.popleft()[1], self.log)

    def flush(self, timeout: float = 30.0, what: str = "read the task database", fail_fast: bool = True) -> None:
        """Wait until everything put so far is applied.  While writes fail,
        raise TaskDBError naming the target and the failure: at once with
        ``fail_fast``, else once ``timeout`` has passed."""
        deadline = time.monotonic() + timeout
        with self._lock:
            goal = self._queued
            while self._applied < goal:
                left = deadline - time.monotonic()
                if self._failure is not None and (fail_fast or left <= 0):
                    raise TaskDBError(f"cannot {what}: writing to {self.target} fails "
                                      f"({_one_line(self._failure)}); retrying")
                if left <= 0:
                    raise TaskDBError(f"cannot {what}: writes to {self.target} still pending after {timeout:g}s")
                self._lock.wait(left)

    def close(self, timeout: float = 30.0) -> None:
        """Apply what is queued (waiting up to ``timeout``), run the callbacks
        that became due, and stop the thread.  Writes still failing at the
        deadline are reported, not silently lost.  A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout, what="finish writing the task database", fail_fast=False)
        except TaskDBError as exc:
            self.log.error("%s; the task records not yet written are lost", exc)
        self.run_callbacks()
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(timeout=max(1.0, timeout))
        if self._thread.is_alive():  # stuck in apply: its wake-up write must not hit a reused fd
            self.log.error("the task-database writer for %s did not stop; leaving it", self.target)
            return
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)

    @property
    def stopped(self) -> bool:
        """Whether the writer's thread has ended (after :meth:`close`)."""
        return not self._thread.is_alive()

    # --- the writer's thread --------------------------------------------------

    def _run(self) -> None:
        failures, delay = 0, self._retry_delay
        while True:
            with self._lock:
                while not self._ops and not self._closing:
                    self._lock.wait()
                if not self._ops:  # closing, nothing left
                    return
                if self._closing and self._failure is not None and failures > 1:
                    return  # close() has given up on a failing target
                batch, self._ops, upto = self._ops, [], self._queued
                self._by_key.clear()
            try:
                self._apply(batch)
            except Exception as exc:  # a failure that may pass: keep the batch, retry
                failures += 1
                if failures == 1:
                    self.log.error("cannot write task records to %s: %s; retrying, %s", self.target,
                                   _one_line(exc), "results wait for it" if self.hold_on_failure
                                   else "results still go to clients meanwhile")
                with self._lock:
                    self._failure = exc
                    self._ops[:0] = batch
                    self._by_key.clear()
                    if not self.hold_on_failure:  # and, while failing, when_durable calls back at once
                        self._durable = self._queued
                    self._lock.notify_all()
                self._wake()
                with self._lock:
                    if not self._closing:
                        self._lock.wait(delay)
                delay = min(delay * 2, self._max_retry_delay)
                continue
            if failures:
                self.log.warning("writing task records to %s again, after %d failed attempts", self.target, failures)
            failures, delay = 0, self._retry_delay
            with self._lock:
                self._failure = None
                self._applied = upto
                self._durable = max(self._durable, upto)
                self._lock.notify_all()
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"\0")
        except (BlockingIOError, OSError):  # full: the controller has wake-ups pending already
            pass


class WriteBehindDB(BaseDB):
    """A task database whose writes go through its :class:`BatchWriter`
    (``self.writer``, made by the subclass): the controller's durability hooks
    are the writer's, so a result waits exactly for the writes made before it."""

    writer: BatchWriter

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the writes made so far are stored (see
        :meth:`BatchWriter.when_durable`, and ``hold_on_failure`` for what
        happens while they fail)."""
        self.writer.when_durable(callback)

    def durable_fd(self) -> int | None:
        return self.writer.fileno()

    def run_durable_callbacks(self) -> None:
        self.writer.run_callbacks()


def _run_callback(callback: Callable[[], None], log: logging.Logger) -> None:
    # One callback that fails (a result that cannot be sent) must not stop
    # the controller's loop, nor the callbacks after it.
    try:
        callback()
    except Exception:
        log.exception("error in a task-database durable callback")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
