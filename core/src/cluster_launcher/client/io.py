"""The client's IO side: its two sockets, the background thread that reads
replies, and the :class:`Dispatcher` that applies each verified message to
the client's state.

Two DEALER sockets talk to the controller's client port: a *request* socket
that user threads send on (under a lock), and a *reply* socket whose identity
is ``b"r-" + session id``, read by one background IO thread.  The IO thread
verifies every message, updates the tasks' :class:`TaskState` and wakes the
threads waiting in :class:`AsyncResult`.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import zmq

from ..error import BulkError, ClusterLauncherError, NoTaskHistory
from ..protocol import connection
from ..protocol.session import Message, Session, discard_bulk, new_id
from .asyncresult import TaskState, Waiter

if TYPE_CHECKING:
    from ..protocol.tunnel import Tunnel

log = logging.getLogger("cluster_launcher.client")

# Answers to the requests a client waits for (Client._request): "<request>_reply"
# (an error answer to any of them too), and db_reply for db_query.
CONTROL_REPLIES = ("connect_reply", "queue_status_reply", "db_reply", "db_query_reply", "purge_reply",
                   "resubmit_reply", "abort_reply", "shutdown_reply", "hub_history_reply")
# Messages handled before waking waiters, so a flood of replies cannot starve them.
_BATCH = 256


class ControlRequest:
    """A pending control request (queue_status, db_query, …)."""

    __slots__ = ("reply", "tasks")

    def __init__(self) -> None:
        self.reply: Message | None = None
        self.tasks: dict[str, TaskState] = {}  # tasks the reply created (resubmit), held until taken


@dataclass
class Answer:
    """An answered control request: the reply, and the tasks it created (resubmit)."""

    reply: Message
    tasks: dict[str, TaskState]


class Dispatcher:
    """Everything the IO thread updates: tasks, control replies, engines.
    Kept apart from :class:`Client` so the thread holds no reference to the
    client (a forgotten client is garbage collected and closes itself)."""

    def __init__(self, echo_streams: bool = False):
        self.waiter = Waiter()
        self.pending: dict[str, TaskState] = {}  # submitted, no reply yet
        self.finished: weakref.WeakValueDictionary[str, TaskState] = weakref.WeakValueDictionary()
        self.controls: dict[str, ControlRequest] = {}
        self.engines: dict[int, dict[str, Any]] = {}
        self.echo_streams = echo_streams
        self.closed = False
        # What the controller sends a client, by message type (the protocol's
        # index, docs/internals/protocol.md); anything else is ignored.
        self.handlers: dict[str, Callable[[Message], None]] = {
            "apply_reply": self.on_apply_reply, "stream": self.on_stream,
            "registration": self.on_registration, "unregistration": self.on_unregistration,
            **dict.fromkeys(CONTROL_REPLIES, self.on_control_reply)}

    def handle(self, msg: Message) -> None:
        """Apply one verified message to the client's state."""
        handler = self.handlers.get(msg.type)
        if handler is None:
            log.debug("ignored a %s message (parent %s)", msg.type, msg.header.get("parent"))
            return
        handler(msg)

    def on_apply_reply(self, msg: Message) -> None:
        header = msg.header
        task = self.pending.pop(str(header.get("parent")), None)
        if task is None:
            log.debug("apply_reply for unknown task %s", header.get("parent"))
            discard_bulk(header)
            return
        task.discard_files()  # gone already if an engine read them; not if the task never ran
        try:
            buffers = Session.resolve_bulk(msg) if "bulk" in header else msg.buffers
        except Exception as exc:  # whatever went wrong, the task ends with it: never left waiting
            discard_bulk(header)
            task.fail_locally(BulkError(f"the result of task {task.msg_id} could not be read: {exc}"))
        else:
            error = header.get("error") or {}
            if (header.get("status") == "error" and error.get("ename") == "NoTaskHistory"
                    and header.get("engine_id") is None):
                # The controller's own answer (no engine ran anything) to get_result of a
                # finished task without a task DB: the same error as every other history
                # request, not a RemoteError.
                task.fail_locally(NoTaskHistory(str(error.get("evalue", ""))))
            else:
                task.finish(header, buffers)
        self.finished[task.msg_id] = task

    def on_stream(self, msg: Message) -> None:
        header = msg.header
        task = self.pending.get(str(header.get("parent")))
        if task is not None:
            task.add_stream(header.get("name", "stdout"), header.get("text", ""))
            if self.echo_streams:
                engine = f"[stream {header.get('name')}:{header.get('parent', '')[:8]}] "
                print(engine + header.get("text", ""), end="", flush=True)

    def on_registration(self, msg: Message) -> None:
        header = msg.header
        self.engines[int(header["engine_id"])] = {k: header.get(k) for k in ("uuid", "hostname", "pid", "domain",
                                                                            "mpi")}

    def on_unregistration(self, msg: Message) -> None:
        self.engines.pop(int(msg.header["engine_id"]), None)

    def on_control_reply(self, msg: Message) -> None:
        """The answer to a request :meth:`Client._request` waits for."""
        header = msg.header
        control = self.controls.get(str(header.get("parent")))
        if control is None:
            log.debug("unexpected %s message (parent %s) dropped", msg.type, header.get("parent"))
            return
        if msg.type == "connect_reply":
            self.engines.update({int(eid): info for eid, info in (header.get("engines") or {}).items()})
        elif msg.type == "resubmit_reply":
            # Register the new tasks now, before their replies can arrive.
            for new in (header.get("resubmitted") or {}).values():
                control.tasks[new] = self.pending.setdefault(new, TaskState(new, datetime.now(timezone.utc)))
        control.reply = msg

    def new_task(self, msg_id: str, submitted: datetime | None) -> TaskState:
        task = TaskState(msg_id, submitted)
        self.pending[msg_id] = task
        return task

    def task(self, msg_id: str) -> TaskState | None:
        return self.pending.get(msg_id) or self.finished.get(msg_id)

    def fail_pending(self, why: str) -> None:
        for task in list(self.pending.values()):
            task.fail_locally(ClusterLauncherError(why))
            task.discard_files()
        self.pending.clear()
        self.closed = True
        self.waiter.notify()


def _discard_unread(sock: zmq.Socket, session: Session) -> None:
    """At close: the shared-memory files of replies that arrived but were
    never read would stay in /dev/shm (memory) until reboot."""
    for _ in range(100_000):
        try:
            msg = session.recv(sock, zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        if msg is not None:
            discard_bulk(msg.header)


def _io_loop(sock: zmq.Socket, wake: zmq.Socket, monitor: zmq.Socket, session: Session, dispatcher: Dispatcher,
             reconnected: Callable[[], None]) -> None:
    """The IO thread: read, verify and dispatch replies until woken to stop;
    ``reconnected()`` each time the reply socket connects again (a controller
    restarted with --reuse)."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(wake, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    try:
        while True:
            events = dict(poller.poll())
            if wake in events:
                _discard_unread(sock, session)
                return
            if monitor in events:
                monitor.recv_multipart()
                reconnected()
            for _ in range(_BATCH):
                try:
                    msg = session.recv(sock, zmq.NOBLOCK)
                except zmq.Again:
                    break
                if msg is not None:
                    try:
                        dispatcher.handle(msg)
                    except Exception:  # a malformed message must not kill the thread
                        log.exception("cannot handle %r", msg)
            dispatcher.waiter.notify()
    except zmq.ContextTerminated:
        return
    finally:
        monitor.close(linger=0)
        sock.close(linger=0)
        wake.close(linger=0)


class ClientSockets:
    """The sockets, SSH tunnel and IO thread of one client.  ``close`` is
    idempotent and safe from any thread, atexit and garbage collection."""

    def __init__(self, dispatcher: Dispatcher, session: Session):
        self.dispatcher, self.session = dispatcher, session
        self.context = zmq.Context()
        self.send_lock = threading.Lock()
        self.request = self.context.socket(zmq.DEALER)
        self.reply = self.context.socket(zmq.DEALER)
        self.reply.setsockopt(zmq.IDENTITY, b"r-" + session.session_id.encode())
        for sock in (self.request, self.reply):
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.LINGER, 1000)
        self.tunnel: Tunnel | None = None
        self.thread: threading.Thread | None = None
        self._wake_send: zmq.Socket | None = None
        self._closed = False

    def connect(self, url: str, timeout: float, info: dict[str, Any]) -> None:
        """Connect both sockets; return once the reply socket has completed its
        handshake (so the controller can route replies to it)."""
        for sock in (self.request, self.reply):
            connection.secure(sock, info)
        # Watched for as long as the client lives: after the first handshake,
        # each one is a reconnection to a controller restarted with --reuse.
        monitor = self.reply.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            self.reply.connect(url)
            if not monitor.poll(int(timeout * 1000)):
                raise TimeoutError(f"no controller answered at {url} within {timeout:g} s; is it running?")
            monitor.recv_multipart()
        except BaseException:
            self.reply.disable_monitor()
            monitor.close(linger=0)
            raise
        self.request.connect(url)
        wake_url = f"inproc://wake-{id(self)}"
        wake_recv = self.context.socket(zmq.PAIR)
        wake_recv.bind(wake_url)
        self._wake_send = self.context.socket(zmq.PAIR)
        self._wake_send.connect(wake_url)
        self.thread = threading.Thread(target=_io_loop, name="cluster-launcher-client-io", daemon=True,
                                       args=(self.reply, wake_recv, monitor, self.session, self.dispatcher,
                                             self.resume))
        self.thread.start()

    def resume(self) -> None:
        """Tell a restarted controller which tasks this client still waits
        for: it answers each (a result, or TaskLost), so none waits for ever."""
        header = {"type": "resume", "id": new_id(), "session": self.session.session_id,
                  "msg_ids": list(self.dispatcher.pending)}
        log.info("reconnected to the controller: asking about %d task(s) still waited for", len(header["msg_ids"]))
        try:
            self.send(self.session.pack(header))
        except (ClusterLauncherError, zmq.ZMQError):
            pass

    def say_goodbye(self) -> None:
        """Tell the controller this client is leaving (it forgets it at once)."""
        header = {"type": "disconnect", "id": new_id(), "session": self.session.session_id}
        try:
            self.send(self.session.pack(header))
        except (ClusterLauncherError, zmq.ZMQError):
            pass

    def send(self, frames: list, copy: bool = True) -> None:
        with self.send_lock:
            if self._closed:
                raise ClusterLauncherError("the client is closed")
            self.request.send_multipart(frames, copy=copy)

    def close(self) -> None:
        with self.send_lock:
            if self._closed:
                return
            self._closed = True
        if self.thread is not None and self._wake_send is not None:
            self._wake_send.send(b"stop")
            if self.thread is not threading.current_thread():
                self.thread.join(5)
            self._wake_send.close(linger=0)
        else:
            self.reply.close(linger=0)
        self.request.close(linger=500)  # lets the goodbye leave
        self.dispatcher.fail_pending("the client was closed before the result arrived")
        self.context.term()
        if self.tunnel is not None:  # after term(): the goodbye above leaves through it
            self.tunnel.close()
        atexit.unregister(self.close)


