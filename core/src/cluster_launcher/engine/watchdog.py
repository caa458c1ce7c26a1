"""Stopping the task an engine is running (docs/stopping-tasks.md).

The engine's main thread runs the task, so it cannot read an abort before the
task ends.  The watchdog thread can: it has a socket of its own to the
controller's heartbeat port (the engine's routing id + ``-int``), where the
controller sends ``interrupt`` with the ids of the tasks a client aborted, and
it knows when the running task's ``time_limit`` runs out.  Either way it sends
SIGINT to the main thread (a real signal, so a ``time.sleep`` or a blocking
``recv`` in the task wakes), whose handler (:meth:`TaskWatchdog.take_signal`)
raises KeyboardInterrupt in the task, and in the task only.

A task still running ``Engine.interrupt_grace`` seconds after its interrupt
(it caught the KeyboardInterrupt and went on) gets its engine killed: the
watchdog tells the controller (``interrupt_ignored``), waits a moment for the
answer, and ends the process with ``EXIT_TASK_IGNORED_INTERRUPT``.

A task that holds the GIL in C code keeps this thread from running too (and
the KeyboardInterrupt from being raised).  For it, faulthandler's own C
thread, which needs no GIL, is the backstop: armed when a task with a
``time_limit`` starts (and again at an interrupt), it ends the process
:data:`BACKSTOP_DELAY` seconds after the time limit and the grace (exit code
1, every thread's stack in the engine's log); the controller then sees the
engine's heartbeat stop.  An abort cannot be read while a task holds the GIL
throughout: it takes effect when the task lets go.
"""

from __future__ import annotations

import faulthandler
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from ..protocol import connection
from ..protocol.session import Session

log = logging.getLogger("cluster_launcher")

# Seconds after Engine.interrupt_grace at which faulthandler ends an engine whose task holds the GIL
# (so that the watchdog thread, which would have ended it at the grace, cannot run).
BACKSTOP_DELAY = 10.0
# Seconds the watchdog waits for the controller to acknowledge interrupt_ignored before the engine exits.
ACKNOWLEDGE_WAIT = 2.0
# How many aborted task ids the watchdog remembers for tasks not running (yet): an abort that reaches it
# just before its task starts still interrupts that task.
REMEMBERED_ABORTS = 1000


@dataclass
class Interrupt:
    """The interrupt sent to the running task, and why."""

    msg_id: str
    cause: str  # "aborted" (a client aborted it) or "timeout" (it ran past its time_limit)
    time_limit: float | None
    at: float  # monotonic


@dataclass
class RunningTask:
    msg_id: str
    started: float  # monotonic
    time_limit: float | None


def time_limit_of(header: dict[str, Any]) -> float | None:
    """An ``apply`` header's ``time_limit``: seconds > 0, or None for no limit (0, null or
    anything the controller should have refused)."""
    value = header.get("time_limit")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


class TaskWatchdog:
    """Interrupts the running task when it is aborted or runs past its time limit, and ends
    the engine when the task ignores that interrupt for ``grace`` seconds."""

    def __init__(self, context: zmq.Context, ident: bytes, info: dict[str, Any], url: str, grace: float,
                 exit_code: int):
        self.grace = grace
        self.exit_code = exit_code
        self.main_thread = threading.main_thread().ident or 0
        self.session = Session(key=info["key"])  # its own: sessions are not shared across threads
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, ident + b"-int")
        self.socket.setsockopt(zmq.LINGER, 0)
        # Never blocks the engine's exit: a controller that cannot be told is not waited for.
        self.socket.setsockopt(zmq.SNDTIMEO, int(ACKNOWLEDGE_WAIT * 1000))
        connection.secure(self.socket, info)
        self.socket.connect(url)
        # The main thread wakes the watchdog (a task started: its time limit counts from now) through
        # this pair; each end is used by one thread only.
        wake_url = f"inproc://watchdog-{id(self)}"
        self.wake_receiver = context.socket(zmq.PAIR)
        self.wake_receiver.setsockopt(zmq.LINGER, 0)
        self.wake_receiver.bind(wake_url)
        self.wake_sender = context.socket(zmq.PAIR)
        self.wake_sender.setsockopt(zmq.LINGER, 0)
        self.wake_sender.connect(wake_url)
        self.lock = threading.Lock()
        self.running: RunningTask | None = None
        self.interrupt: Interrupt | None = None
        self.aborted: dict[str, None] = {}  # ids of tasks aborted, oldest first (an ordered set)
        # Read by the SIGINT handler, which must not take the lock (it runs in the main thread,
        # which may hold it): the task the signal on its way is for, and how many are on their way.
        self.signal_target: str | None = None
        self.signals_sent = 0
        self.backstop_armed = False
        self.thread = threading.Thread(target=self._run, name="task-watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End the thread and close its sockets (before the engine terminates its context)."""
        if self.thread.is_alive():
            self.wake_sender.send(b"stop")
            self.thread.join(timeout=5)
        self.wake_sender.close(0)

    # --- the main thread's side ----------------------------------------------

    def task_started(self, msg_id: str, time_limit: float | None) -> None:
        with self.lock:
            self.running = RunningTask(msg_id, time.monotonic(), time_limit)
            self.interrupt = None
            if time_limit is not None:
                self._arm_backstop(time_limit + self.grace + BACKSTOP_DELAY)
            # Its abort came to the watchdog before the task started (the main thread had not read it yet).
            aborted = msg_id in self.aborted
        if time_limit is not None or aborted:
            self.wake_sender.send(b"")

    def task_finished(self) -> Interrupt | None:
        """The task ended (however): the interrupt it got, if any.  Safe to call twice."""
        with self.lock:
            interrupt, self.interrupt = self.interrupt, None
            self.running = None
            self.signal_target = None
            if self.backstop_armed:
                faulthandler.cancel_dump_traceback_later()
                self.backstop_armed = False
        return interrupt

    def take_signal(self) -> bool | None:
        """In the SIGINT handler: True if the signal is the watchdog's for the running task
        (raise KeyboardInterrupt), False if it is the watchdog's for a task that has ended
        since (ignore it), None if it is not the watchdog's (someone else's SIGINT)."""
        if not self.signals_sent:
            return None
        self.signals_sent = 0  # signals sent while one is pending arrive as one
        target, self.signal_target = self.signal_target, None
        running = self.running
        return target is not None and running is not None and running.msg_id == target

    # --- the watchdog thread ----------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.wake_receiver, zmq.POLLIN)
        try:
            while True:
                wait = self._next_deadline()
                timeout = None if wait is None else max(0, math.ceil((wait - time.monotonic()) * 1000))
                events = dict(poller.poll(timeout))
                if self.wake_receiver in events and self._woken_to_stop():
                    return
                if self.socket in events:
                    self._receive()
                self._check_clock()
        except zmq.ContextTerminated:  # the engine is closing
            pass
        finally:
            self.socket.close(0)
            self.wake_receiver.close(0)

    def _woken_to_stop(self) -> bool:
        stop = False
        while self.wake_receiver.poll(0):
            stop = self.wake_receiver.recv() == b"stop" or stop
        return stop

    def _receive(self) -> None:
        while self.socket.poll(0):
            msg = self.session.recv(self.socket)
            if msg is None or msg.type != "interrupt":
                continue
            msg_ids = msg.header.get("msg_ids")
            if isinstance(msg_ids, list):
                with self.lock:
                    for msg_id in msg_ids:
                        if isinstance(msg_id, str):
                            self.aborted[msg_id] = None
                    while len(self.aborted) > REMEMBERED_ABORTS:
                        del self.aborted[next(iter(self.aborted))]

    def _next_deadline(self) -> float | None:
        """When the watchdog must next look (monotonic), None when nothing is due."""
        with self.lock:
            if self.running is None:
                return None
            if self.interrupt is not None:
                return self.interrupt.at + self.grace
            if self.running.time_limit is not None:
                return self.running.started + self.running.time_limit
            return None

    def _check_clock(self) -> None:
        with self.lock:
            running, now = self.running, time.monotonic()
            if running is None:
                return
            if self.interrupt is None:
                if running.msg_id in self.aborted:
                    del self.aborted[running.msg_id]
                    self._interrupt("aborted")
                elif running.time_limit is not None and now >= running.started + running.time_limit:
                    self._interrupt("timeout")
                return
            if self.interrupt.msg_id == running.msg_id and now >= self.interrupt.at + self.grace:
                interrupt = self.interrupt
            else:
                return
        self._kill(interrupt)

    def _interrupt(self, cause: str) -> None:
        """With the lock held, a task running and not interrupted yet."""
        if self.running is None or self.interrupt is not None:
            return
        task = self.running
        log.info("interrupting task %s: %s", task.msg_id, "aborted by a client" if cause == "aborted"
                 else f"it ran longer than its time_limit of {task.time_limit:g}s")
        self.interrupt = Interrupt(task.msg_id, cause, task.time_limit, time.monotonic())
        self._arm_backstop(self.grace + BACKSTOP_DELAY)
        self.signal_target = task.msg_id
        self.signals_sent += 1
        signal.pthread_kill(self.main_thread, signal.SIGINT)

    def _arm_backstop(self, seconds: float) -> None:
        """End the process in ``seconds`` unless the task finishes first (see the module's docstring)."""
        stderr = sys.__stderr__
        try:
            fd = stderr.fileno() if stderr is not None else -1
        except (OSError, ValueError):
            fd = -1
        if fd < 0:
            return
        faulthandler.dump_traceback_later(seconds, exit=True, file=fd)
        self.backstop_armed = True

    def _kill(self, interrupt: Interrupt) -> None:
        """The task ignored its interrupt for the grace: tell the controller, then end the engine."""
        log.error("task %s %s and ignored its interrupt for %gs (Engine.interrupt_grace): the engine exits "
                  "with code %d", interrupt.msg_id, "was aborted" if interrupt.cause == "aborted" else
                  f"ran longer than its time_limit of {interrupt.time_limit:g}s", self.grace, self.exit_code)
        try:
            sent = self.session.send(self.socket, "interrupt_ignored", {
                "parent": interrupt.msg_id, "cause": interrupt.cause, "time_limit": interrupt.time_limit,
                "interrupt_grace": self.grace})
            deadline = time.monotonic() + ACKNOWLEDGE_WAIT
            while (left := deadline - time.monotonic()) > 0 and self.socket.poll(left * 1000):
                answer = self.session.recv(self.socket)
                if answer is not None and answer.header.get("parent") == sent["id"]:
                    break
        except zmq.ZMQError:
            pass  # the controller is not there to tell: the engine exits all the same
        for handler in logging.getLogger("cluster_launcher").handlers:
            handler.flush()
        os._exit(self.exit_code)
