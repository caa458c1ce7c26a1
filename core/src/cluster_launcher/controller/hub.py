"""The controller: hub, task queue, heartbeat monitor and task database in
one process (``cluster-launcher controller``).

One thread polls three ROUTER sockets (clients, engines, heartbeats).  Task
messages are forwarded with their frames unchanged; the controller reads
only headers.  See docs/internals/protocol.md for the messages.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import socket as _socket
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

import zmq
from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import Config

from .. import plugins
from ..db import BaseDB, check_query
from ..error import BulkError, ClusterLauncherError, NoTaskHistory
from ..logs import ProcessLogging
from ..protocol import bulk, connection
from ..protocol.records import decode_record, encode_record
from ..protocol.session import LogThrottle, Message, Session, discard_bulk, new_id, parse_time, utcnow
from ..scheduler import TaskScheduler
from . import taskqueue
from .roster import EngineRoster
from .taskqueue import Dispatch, Fail, ForwardAbort, Requeue, TaskQueue

if sys.platform != "win32":
    import resource

log = logging.getLogger("cluster_launcher")

# What one engine costs the controller in file descriptors: one TCP connection
# each for its task socket, its stream socket (-io), its heartbeat echo (-echo),
# its ping (-hb) and its task watchdog (-int).  docs/internals/scale.md has the
# measurements.
FDS_PER_ENGINE = 5
# Kept free beyond the engines' share: clients (two connections each), the task
# database, log files, and the connections of engines being refused.
RESERVED_FDS = 64
# Pending connections the kernel keeps per listening socket (capped by
# net.core.somaxconn): a storm of engines connecting at once is queued, not
# dropped and left to TCP's one-second SYN retries (libzmq's default is 100).
LISTEN_BACKLOG = 4096
LOST_ENGINES_KEPT = 100  # how many departed engines queue_status reports (the latest)


class Controller(ProcessLogging):
    """Where the controller listens and how it keeps task history."""

    ip = Unicode("127.0.0.1", help="Interface to listen on. '*' (or '0.0.0.0') listens on every "
                 "interface: engines on other hosts need it.").tag(config=True)
    location = Unicode("", help="The host name or address that engines and clients should connect "
                       "to, written into the connection files (default: the listen ip, or this "
                       "host's name when listening on every interface).").tag(config=True)
    reuse = Bool(False, help="Reuse the ports and key of existing connection files, so engines and "
                 "clients started earlier reconnect after a controller restart.").tag(config=True)
    client_port = Integer(0, min=0, max=65535, help="Port for clients (0: a random free port).").tag(config=True)
    engine_port = Integer(0, min=0, max=65535, help="Port for engines (0: a random free port).").tag(config=True)
    heartbeat_port = Integer(0, min=0, max=65535,
                             help="Port for engine heartbeats (0: a random free port).").tag(config=True)
    db_class = Unicode("DictDB", help="The task database: DictDB (in memory), NoDB (none), "
                       "SQLiteDB, MongoDB, or any installed plugin's class name.").tag(config=True)
    heartbeat_period = Float(1.0, min=0.001, help="Seconds between heartbeats.").tag(config=True)
    heartbeat_timeout = Float(10.0, min=0.001, help="Seconds without a heartbeat before an engine is declared "
                              "dead and its tasks failed or retried: heartbeat_timeout / heartbeat_period "
                              "heartbeats in a row unanswered (see heartbeat_max_misses).").tag(config=True)
    heartbeat_max_misses = Integer(0, min=0, help="Heartbeats in a row an engine may leave unanswered before it is "
                                   "declared dead (IPython's HeartMonitor.max_heartmonitor_misses).  Only "
                                   "heartbeats the controller sent count, so a controller starved of CPU "
                                   "does not judge engines on time it was not running.  0: "
                                   "heartbeat_timeout / heartbeat_period, rounded up.").tag(config=True)
    ssh = Unicode("", help="SSH server clients should tunnel through to reach the controller "
                  "(written into controller-client.json).").tag(config=True)
    enginessh = Unicode("", help="SSH server engines should tunnel through to reach the controller "
                        "(written into controller-engine.json).").tag(config=True)
    cluster_id = Unicode("", help="The id of the cluster within its profile (names its files).").tag(config=True)
    curve = Bool(False, help="Encrypt all traffic with CurveZMQ (messages are signed either way). "
                 "The server key goes into the connection files; clients and engines use it "
                 "by themselves.").tag(config=True)
    shutdown_grace = Float(2.0, min=0.0, help="Seconds a shutdown request waits for engines to leave before "
                           "the controller exits.").tag(config=True)
    max_message_size = Integer(1 << 30, min=-1, help="Largest message (bytes, all frames) the controller "
                               "accepts; a peer sending a larger one is disconnected before it is buffered. "
                               "Buffers that go through shared memory do not count. -1: no limit.").tag(config=True)
    reply_grace = Float(10.0, min=0.0, help="Seconds a task's result waits for a client whose reply socket is "
                        "not connected (reconnecting after a controller restart, or a network hiccup) "
                        "before it is dropped.").tag(config=True)
    shm_sweep_interval = Float(30.0, min=0.001, help="Seconds between sweeps of /dev/shm for shared-memory files "
                               "left by processes of this user that died.").tag(config=True)
    dependency_memory = Integer(10_000, min=0, help="How many finished tasks the controller remembers (about "
                                "250 bytes each) for after/follow dependencies; older ones are looked "
                                "up in the task DB.").tag(config=True)

    def __init__(self, profile_dir: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.profile_dir = profile_dir
        self.by_ident: dict[bytes, int] = {}  # engine routing id (private) -> engine id
        # The latest engines that left, and why (heartbeat: died; shutdown; drained; re-registered), for
        # queue_status: an engine crash told apart from a task's exception.
        self.lost_engines: deque[dict[str, Any]] = deque(maxlen=LOST_ENGINES_KEPT)
        self.clients: set[bytes] = set()  # reply sockets of connected clients; gone ones pruned on send
        # Results for known clients whose reply socket is not attached right
        # now: sent again every heartbeat period, for up to reply_grace seconds.
        self.held: dict[bytes, deque[list]] = {}
        self.missing: dict[bytes, float] = {}  # client -> since when its reply socket is not attached
        self.running = False
        self.exit_at: float | None = None  # set by a shutdown request
        # After a restart with --reuse (see "When the controller crashes" in
        # docs/controller-and-engines.md): until the previous controller's
        # engines are back, or heartbeat_timeout has passed, a task nobody
        # claims may still be on an engine that is coming back.
        self.recovering_until: float | None = None  # monotonic
        self.unclaimed: list[tuple[bytes, str]] = []  # (client, msg_id) asked about while recovering
        # Replies that reached us from an engine before it registered again
        # (it finished the task while there was no controller), by task.
        self.early_replies: OrderedDict[str, Message] = OrderedDict()
        self.heartbeat_sent_at: float | None = None  # monotonic time of the last heartbeat round sent
        self.open_file_limit = 0  # the soft RLIMIT_NOFILE in force (set in setup)
        self.engine_capacity = 0  # how many engines it has room for
        self.refusals = LogThrottle(burst=1)  # registrations refused at that limit: one line, then counts
        # What each socket accepts, by message type: the index of the protocol
        # (docs/internals/protocol.md).  Anything else is logged and ignored.
        self.client_handlers: dict[str, Callable[[Message], None]] = {
            "connect": self.client_connect, "disconnect": self.client_disconnect,
            "apply": self.client_apply, "queue_status": self.client_queue_status,
            "db_query": self.client_db_query, "get_result": self.client_get_result,
            "purge": self.client_purge, "resubmit": self.client_resubmit,
            "abort": self.client_abort, "shutdown": self.client_shutdown,
            "hub_history": self.client_hub_history, "resume": self.client_resume}
        self.engine_handlers: dict[str, Callable[[Message], None]] = {
            "register": self.engine_register, "unregister": self.engine_unregister,
            "apply_reply": self.engine_apply_reply, "stream": self.engine_stream, "drain": self.engine_drain}
        self.heartbeat_handlers: dict[str, Callable[[Message], None]] = {
            "heartbeat": self.heartbeat_echoed, "ping": self.heartbeat_ping,
            "interrupt_ignored": self.heartbeat_interrupt_ignored,
            "register": self.heartbeat_register}
        # What the task queue decides, carried out here on the sockets and the DB.
        self.action_handlers: dict[type, Callable[[Any], None]] = {
            Dispatch: self.do_dispatch, Requeue: self.do_requeue, Fail: self.do_fail,
            ForwardAbort: self.do_forward_abort}

    # --- set-up -------------------------------------------------------

    def setup(self) -> None:
        scheduling = TaskScheduler(parent=self)
        key, ports, db_session = self._reused_key_and_ports()
        self.session = Session(key=key, parent=self)
        # The task DB's session (SQLiteDB's default table) outlives a restart with
        # --reuse, so the history the previous controller kept stays readable.
        self.db_session = db_session or self.session.session_id
        # Opened before anything is bound or written, so a DB that cannot be
        # used stops the controller with nothing half-done.
        self.db: BaseDB = plugins.resolve("db", self.db_class)(
            parent=self, session=self.db_session, profile_dir=self.profile_dir)
        self.queue: TaskQueue[Task, EngineState] = TaskQueue(
            plugins.resolve("scheduler", scheduling.scheme_name)(), hwm=scheduling.hwm,
            memory=self.dependency_memory, recorded_outcome=self.recorded_outcome)
        swept = bulk.sweep()
        if swept:
            log.info("removed %d shared-memory file(s) left by processes that died", swept)
        self.engine_capacity = self._raise_open_file_limit()
        self.context = zmq.Context()
        self.curve_keys = (connection.curve_server_keys(self.profile_dir, self.cluster_id, self.reuse)
                           if self.curve else None)
        self.ports: dict[zmq.Socket, int] = {}
        self.client_socket = self._bind(ports["client_port"])
        self.engine_socket = self._bind(ports["engine_port"])
        self.heartbeat_socket = self._bind(ports["heartbeat_port"])
        self._write_connection_files(key)
        pid_dir = os.path.join(self.profile_dir, "pid")
        os.makedirs(pid_dir, exist_ok=True)
        self.pid_file = os.path.join(pid_dir, f"controller{'-' + self.cluster_id if self.cluster_id else ''}.pid")
        with open(self.pid_file, "w") as f:
            f.write(str(os.getpid()))
        self.roster = EngineRoster(self.pid_file.removesuffix(".pid") + "-engines.json")
        if self.restarted:
            self.roster.load()
            self.recovering_until = time.monotonic() + self.heartbeat_timeout

    def _reused_key_and_ports(self) -> tuple[str, dict[str, int], str]:
        """The key, ports and task-DB session to use: new ones, or with
        ``reuse`` those of the existing connection files."""
        ports = {"client_port": self.client_port, "engine_port": self.engine_port,
                 "heartbeat_port": self.heartbeat_port}
        self.restarted = False  # whether this controller takes over from an earlier one (--reuse)
        if self.reuse:
            client_file = connection.connection_file(self.profile_dir, "client", self.cluster_id)
            engine_file = connection.connection_file(self.profile_dir, "engine", self.cluster_id)
            if os.path.exists(client_file) and os.path.exists(engine_file):
                client = connection.read_connection_file(client_file, "client")
                engine = connection.read_connection_file(engine_file, "engine")
                ports = {"client_port": client["client_port"], "engine_port": engine["engine_port"],
                         "heartbeat_port": engine["heartbeat_port"]}
                log.info("reusing key and ports of %s", client_file)
                self.restarted = True
                return client["key"], ports, str(engine.get("db_session") or "")
        return connection.new_key(), ports, ""

    def _raise_open_file_limit(self) -> int:
        """Raise the soft open-file limit (``ulimit -n``) to the hard one, said in
        the log; returns how many engines then fit (:data:`FDS_PER_ENGINE` each,
        beyond the descriptors open now and :data:`RESERVED_FDS`)."""
        if sys.platform == "win32":  # no per-process limit on sockets to raise or to count against
            return 1 << 30
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # An unlimited hard limit still stops at the kernel's per-process maximum.
        wanted = hard if hard != resource.RLIM_INFINITY else _kernel_open_file_maximum()
        if soft != resource.RLIM_INFINITY and soft < wanted:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                log.info("raised the open-file limit (ulimit -n) from %d to the hard limit %d", soft, wanted)
                soft = wanted
            except (ValueError, OSError) as exc:
                log.warning("could not raise the open-file limit (ulimit -n) from %d to %d: %s", soft, wanted, exc)
        limit = soft if soft != resource.RLIM_INFINITY else _kernel_open_file_maximum()
        capacity = max(0, (limit - _open_fds() - RESERVED_FDS) // FDS_PER_ENGINE)
        log.info("open-file limit %d: room for %d engines (%d files each)", limit, capacity, FDS_PER_ENGINE)
        self.open_file_limit = limit
        return capacity

    def _bind(self, port: int) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 1000)
        # No ROUTER_HANDOVER: a second connection claiming an identity in use
        # is refused, so no peer can take over an engine's or client's stream.
        # ROUTER_MANDATORY: a message to a peer that is gone raises
        # EHOSTUNREACH instead of vanishing, so its shared-memory files can be
        # removed and a client that left forgotten.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Checked on the size prefix, before a byte of the message is buffered.
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        if self.curve_keys:
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = self.curve_keys
        ip = "*" if self.ip in ("*", "0.0.0.0", "") else self.ip
        try:
            if port:
                sock.bind(f"tcp://{ip}:{port}")
            else:
                port = sock.bind_to_random_port(f"tcp://{ip}", min_port=30000, max_port=60000, max_tries=500)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ClusterLauncherError(f"cannot listen on {self.ip}:{port}: {exc} (another controller "
                                       "with --reuse? stop it or start without --reuse)") from None
        self.ports[sock] = port
        return sock

    def _write_connection_files(self, key: str) -> None:
        location = self.location or (_socket.gethostname() if self.ip in ("*", "0.0.0.0", "") else self.ip)
        common = {"key": key, "signature_scheme": "hmac-sha256", "location": location,
                  "cluster_id": self.cluster_id, "transport": "tcp", "max_message_size": self.max_message_size,
                  "curve_serverkey": self.curve_keys[0].decode() if self.curve_keys else ""}
        self.client_info = {**common, "client_port": self.ports[self.client_socket], "ssh": self.ssh}
        self.engine_info = {**common, "engine_port": self.ports[self.engine_socket],
                            "heartbeat_port": self.ports[self.heartbeat_socket], "ssh": self.enginessh,
                            "db_session": self.db_session}
        # The client file last: its appearance is what launchers and tests wait for.
        for role, info in (("engine", self.engine_info), ("client", self.client_info)):
            connection.write_connection_file(connection.connection_file(self.profile_dir, role, self.cluster_id), info)

    # --- the loop -----------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        handlers = {self.client_socket: self.on_client, self.engine_socket: self.on_engine,
                    self.heartbeat_socket: self.on_heartbeat}
        for sock in handlers:
            poller.register(sock, zmq.POLLIN)
        durable_fd = self.db.durable_fd()
        if durable_fd is not None:  # results whose records are now stored go out from here
            poller.register(durable_fd, zmq.POLLIN)
        self.running = True
        plugins.get_plugin_manager().hook.cluster_launcher_controller_started(
            connection_info=dict(self.client_info), profile_dir=self.profile_dir)
        log.info("controller listening: clients %s, engines %s", self.ports[self.client_socket],
                 self.ports[self.engine_socket])
        next_check = time.monotonic() + self.heartbeat_period
        next_sweep = time.monotonic() + self.shm_sweep_interval
        while self.running:
            if self.exit_at is not None and (not self.engines or time.monotonic() >= self.exit_at):
                break
            deadline = self.queue.next_deadline()
            wake_at = next_check if deadline is None else min(next_check, deadline)
            if self.exit_at is not None:
                wake_at = min(wake_at, self.exit_at)
            timeout = max(0.0, wake_at - time.monotonic())
            for sock, _ in poller.poll(int(timeout * 1000)):
                if sock == durable_fd:
                    self.db.run_durable_callbacks()
                    continue
                self.handle_waiting(sock, handlers[sock])
            deadline = self.queue.next_deadline()
            if deadline is not None and deadline <= time.monotonic():
                self.queue.expire(time.monotonic())
                self.carry_out()
            if time.monotonic() >= next_check:
                self.check_heartbeats()
                self.carry_out()
                self.send_heartbeats()
                self.deliver_held()
                self.roster.save()
                # Without a trusted record, which engines to expect is unknown: the whole window.
                if self.recovering_until is not None and (
                        time.monotonic() >= self.recovering_until or self.roster.loaded and not self.roster.reserved):
                    self.end_recovery()
                next_check = time.monotonic() + self.heartbeat_period
            if time.monotonic() >= next_sweep:
                bulk.sweep()
                next_sweep = time.monotonic() + self.shm_sweep_interval

    def handle_waiting(self, sock: zmq.Socket, handler: Callable[[Message], None], most: int = 1000) -> None:
        """Handle up to ``most`` messages waiting on ``sock`` (bounded, so no
        socket starves the others): fewer polls under load."""
        for _ in range(most):
            try:
                msg = self.session.recv(sock, zmq.NOBLOCK)
            except zmq.Again:
                break
            except Exception:  # nothing a peer sends may stop the loop
                log.exception("error receiving a message")
                continue
            if msg is None:
                continue
            try:
                handler(msg)
            except Exception:  # one malformed message must not stop the cluster
                log.exception("error handling a %s message", msg.type)
            self.carry_out()

    def close(self) -> None:
        self.db.close()
        for sock in (self.client_socket, self.engine_socket, self.heartbeat_socket):
            sock.close(linger=200)
        self.context.term()
        if self.reuse:
            self.roster.save()  # for the engines that outlive this controller
        else:
            self.roster.discard()
            for role in ("client", "engine", "curve"):
                _remove(connection.connection_file(self.profile_dir, role, self.cluster_id))
        _remove(self.pid_file)

    # --- clients ------------------------------------------------------

    def reply_to(self, msg: Message) -> bytes:
        return b"r-" + str(msg.header.get("session", "")).encode()

    def route(self, sock: zmq.Socket, ident: bytes, frames: list, hold: bool = False) -> bool:
        """Send ``frames`` to the peer ``ident``; False if it is not connected.
        A known client whose reply socket is not attached (reconnecting after
        a controller restart, a network hiccup) has ``reply_grace`` seconds to
        come back: a task's result (``hold``) waits for it, other messages are
        dropped.  After that, or for a peer that is simply gone, the message
        is dropped with the shared-memory files it names (nobody else would
        read them) and the client is forgotten."""
        if hold and ident in self.held:  # behind the results already waiting
            self.held[ident].append(frames)
            return False
        try:
            sock.send_multipart([ident, *frames], copy=False)
            if self.missing:
                self.missing.pop(ident, None)
            return True
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
        if sock is self.client_socket and ident in self.clients:
            since = self.missing.setdefault(ident, time.monotonic())
            if time.monotonic() - since < self.reply_grace:
                if hold:
                    self.held[ident] = deque([frames])
                else:
                    _discard_bulk_files(frames)
                return False
            self.forget_client(ident)
        _discard_bulk_files(frames)
        return False

    def deliver_held(self) -> None:
        """Send the results waiting for clients that were not attached; forget
        the clients missing for longer than ``reply_grace``."""
        for ident, waiting in list(self.held.items()):
            while waiting:
                try:
                    self.client_socket.send_multipart([ident, *waiting[0]], copy=False)
                except zmq.ZMQError as exc:
                    if exc.errno != errno.EHOSTUNREACH:
                        raise
                    break
                waiting.popleft()
            if not waiting:
                del self.held[ident]
                self.missing.pop(ident, None)
        limit = time.monotonic() - self.reply_grace
        for ident in [i for i, since in self.missing.items() if since < limit]:
            log.warning("forgot client %r: not connected for %gs (Controller.reply_grace); dropped %d result(s) "
                        "waiting for it", ident[:18], self.reply_grace, len(self.held.get(ident, ())))
            self.forget_client(ident)

    def forget_client(self, ident: bytes) -> None:
        self.clients.discard(ident)
        self.missing.pop(ident, None)
        for frames in self.held.pop(ident, ()):
            _discard_bulk_files(frames)

    def send_client(self, ident: bytes, msg_type: str, fields: dict[str, Any], buffers: Sequence = ()) -> None:
        header = {"type": msg_type, "id": new_id(), **fields}
        self.route(self.client_socket, ident, self.session.pack(header, buffers))

    def send_engine(self, engine: EngineState, msg_type: str, fields: dict[str, Any]) -> None:
        header = {"type": msg_type, "id": new_id(), **fields}
        self.route(self.engine_socket, engine.ident, self.session.pack(header))

    def on_client(self, msg: Message) -> None:
        handler = self.client_handlers.get(msg.type)
        if handler is not None and msg.type != "disconnect":
            # Any request makes its client known (a client of a controller
            # restarted with --reuse never sends connect again).
            self.clients.add(self.reply_to(msg))
        if handler is None:
            log.warning("ignored a client message of unknown type %r", msg.type)
            return
        try:
            handler(msg)
        except Exception as exc:  # a bad request gets an error reply; the controller goes on
            if not isinstance(exc, (ValueError, KeyError, TypeError)):
                log.exception("error handling a client %s message", msg.type)
            self.send_client(self.reply_to(msg), msg.type + "_reply",
                             {"parent": msg.header["id"], "status": "error",
                              "error": {"ename": type(exc).__name__, "evalue": str(exc)}})

    def client_connect(self, msg: Message) -> None:
        ident = self.reply_to(msg)
        self.clients.add(ident)
        engines = {str(e.id): e.info() for e in self.engines.values()}
        self.send_client(ident, "connect_reply", {"parent": msg.header["id"], "status": "ok",
                                                  "engines": engines, "cluster_id": self.cluster_id,
                                                  "task_history": self.db.stores_records})

    def client_disconnect(self, msg: Message) -> None:
        self.forget_client(self.reply_to(msg))

    def client_apply(self, msg: Message) -> None:
        header = msg.header
        _check_apply(header)
        if self.queue.knows(header["id"]):
            # A replay with a fresh signature, or a client bug: never run a task twice.
            log.warning("refused an apply whose id %s is already known", header["id"])
            return
        task = _task(header, self.reply_to(msg), msg.frames)
        # Everything that can fail comes before the task is stored, so a
        # failure leaves no task behind (the error reply goes to the client).
        task.buffers = self.stored_buffers(msg, needed=task.retries > 0)
        self.db.add_record(task.msg_id, _new_record(task, header))
        if task.retries == 0 and not self.db.stores_records:
            task.buffers = []  # kept only for a retry or the DB
        self.queue.submit(task, time.monotonic())
        self.carry_out()

    def stored_buffers(self, msg: Message, needed: bool = False) -> list:
        """The buffers to keep in the task database, shared-memory ones mapped
        in (their file stays for the receiver) unless the DB keeps nothing and
        they are not ``needed`` otherwise."""
        if not msg.header.get("bulk") or (not self.db.stores_records and not needed):
            return list(msg.buffers)
        # Mapped on receipt, before the message goes on: still the sender's
        # file (see bulk.take); the receiver, which unpickles, checks the digest.
        return self.session.resolve_bulk(msg, remove=False, verify=False)

    def client_queue_status(self, msg: Message) -> None:
        targets = msg.header.get("targets")
        status = {str(e.id): {"queue": len(e.in_flight), "completed": e.completed, "tasks": e.lb_load,
                              "deadline": e.deadline, "draining": e.draining, "idle_since": e.idle_since,
                              "failed": e.failed}
                  for e in self.engines.values() if targets is None or e.id in targets}
        self.send_client(self.reply_to(msg), "queue_status_reply", {
            "parent": msg.header["id"], "status": "ok", "engines": status,
            "unassigned": self.queue.unassigned(), "clients": len(self.clients), "lost": list(self.lost_engines)})

    def refused_without_history(self, msg: Message) -> bool:
        """Answer a history request with NoTaskHistory when the task DB keeps
        nothing (NoDB), rather than an empty answer that looks like no task ran."""
        if self.db.stores_records:
            return False
        self.send_client(self.reply_to(msg), msg.type + "_reply", {
            "parent": msg.header["id"], "status": "error",
            "error": {"ename": "NoTaskHistory", "evalue": str(NoTaskHistory.for_request(msg.type))}})
        return True

    def client_hub_history(self, msg: Message) -> None:
        if self.refused_without_history(msg):
            return
        self.send_client(self.reply_to(msg), "hub_history_reply", {
            "parent": msg.header["id"], "status": "ok", "history": self.db.get_history()})

    def client_db_query(self, msg: Message) -> None:
        if self.refused_without_history(msg):
            return
        query = decode_record(msg.header.get("query") or {}, list(msg.buffers))
        check_query(query)
        records = self.db.find_records(query, msg.header.get("keys"))
        buffers: list = []
        encoded = encode_record(records, buffers)
        self.send_client(self.reply_to(msg), "db_reply", {"parent": msg.header["id"], "status": "ok",
                                                          "records": encoded}, buffers)

    def client_get_result(self, msg: Message) -> None:
        ident = self.reply_to(msg)
        for msg_id in msg.header.get("msg_ids", []):
            task = self.queue.pending(msg_id)
            if task is not None:
                task.waiters.add(ident)
                continue
            if not self.db.stores_records:
                self.send_client(ident, "apply_reply", _error_header(
                    msg_id, "remote", "NoTaskHistory", str(NoTaskHistory.for_request(f"get_result of task {msg_id}"))))
                continue
            try:
                record = self.db.get_record(msg_id)
            except KeyError as exc:
                record = None
                reason = exc.args[0] if exc.args else f"no task {msg_id!r}"
            if record is None or not record.get("result_header"):
                self.send_client(ident, "apply_reply", _error_header(
                    msg_id, "remote", "KeyError", reason if record is None else f"task {msg_id} has no result"))
                continue
            self.send_recorded(ident, record)

    def send_recorded(self, ident: bytes, record: dict[str, Any]) -> None:
        """Send a task's stored result to a client, as a new message."""
        header = {**record["result_header"], "id": new_id()}  # a new message, not a replay
        if record.get("submitted") and not header.get("submitted"):
            header["submitted"] = record["submitted"].isoformat()
        self.route(self.client_socket, ident, self.session.pack(header, record["result_buffers"] or []), hold=True)

    def end_recovery(self) -> None:
        """The previous controller's engines are back, or had heartbeat_timeout
        seconds to come back: settle every task the restart left unclaimed."""
        self.recovering_until = None
        gone = dict(self.roster.reserved)
        if gone:
            log.warning("%d engine(s) of the previous controller did not come back within %gs "
                        "(Controller.heartbeat_timeout): %s", len(gone), self.heartbeat_timeout,
                        ", ".join(str(i) for i in sorted(gone)[:20]))
            self.roster.reserved = {}  # their ids stay retired: the roster's next id is above them
            self.roster.dirty = True
        try:
            unfinished = self.db.find_records({"completed": {"$exists": False}}) if self.db.stores_records else []
        except Exception:  # the tasks' clients still get their answer, from answer_unclaimed
            log.exception("could not read the unfinished tasks of the task database")
            unfinished = []
        by_uuid = {uuid: engine_id for engine_id, uuid in gone.items()}
        for record in unfinished:
            header = record.get("header")
            if not isinstance(header, dict) or self.queue.knows(record["msg_id"]):
                continue
            try:
                _check_apply(header)
            except (ValueError, TypeError) as exc:
                log.warning("task %s of the task database cannot be resubmitted: %s", record["msg_id"], exc)
                continue
            task = _task(header, self.reply_to(Message([], header, [], [])), [])
            self.clients.add(task.reply_to)  # reconnecting: its results wait for it (reply_grace)
            early = self.early_replies.pop(task.msg_id, None)
            if early is not None:  # finished while there was no controller: recorded and sent now
                try:
                    buffers = self.stored_buffers(early)
                except BulkError:
                    buffers = []
                self.deliver(task, early.header, buffers, early.frames)
                self.queue.complete(task, ok=early.header.get("status") == "ok")
                continue
            uuid = record.get("engine_uuid")
            if uuid is None:
                # Queued in the previous controller: it runs now, under its own msg id.
                task.buffers = list(record.get("buffers") or [])
                task.frames = self.session.pack(header, task.buffers)
                log.info("resubmitted task %s from the task database (queued when the controller stopped)",
                         task.msg_id)
                self.queue.submit(task, time.monotonic())
                continue
            engine = f"engine {by_uuid[uuid]}" if uuid in by_uuid else f"the engine with uuid {uuid}"
            came_back = any(e.uuid == uuid for e in self.engines.values())
            self.queue.fail(task, "engine", "EngineError", f"{engine} was running this task when the controller "
                            "stopped, and " + ("came back without it (its result was lost with the controller)"
                                               if came_back else f"did not come back within {self.heartbeat_timeout:g}"
                                               "s of the restart"))
        self.carry_out()
        unclaimed, self.unclaimed = self.unclaimed, []
        for ident, msg_id in unclaimed:
            pending = self.queue.pending(msg_id)
            if pending is not None:
                pending.waiters.add(ident)
            else:
                self.answer_unclaimed(ident, msg_id)

    def client_resume(self, msg: Message) -> None:
        """A client whose reply socket connected again (to this controller,
        restarted with --reuse) names the tasks it still waits for: each gets
        its result when it comes, its stored one, or, once nothing can claim
        it any more, a TaskLost error.  No answer of its own."""
        ident = self.reply_to(msg)
        for msg_id in _id_list(msg.header, "msg_ids", str) or []:
            task = self.queue.pending(msg_id)
            if task is not None:
                task.waiters.add(ident)
            elif self.recovering_until is not None:
                self.unclaimed.append((ident, msg_id))  # its engine may still come back with it
            else:
                self.answer_unclaimed(ident, msg_id)

    def answer_unclaimed(self, ident: bytes, msg_id: str) -> None:
        """A task a client waits for that no engine claimed: its result if one
        reached us or is recorded, else the error saying it was lost."""
        early = self.early_replies.pop(msg_id, None)
        if early is not None:
            self.route(self.client_socket, ident, early.frames, hold=True)
            return
        if self.queue.knows(msg_id):
            return  # finished since the client asked: its result went to it
        try:
            record = self.db.get_record(msg_id) if self.db.stores_records else None
        except KeyError:
            record = None
        if record is not None and record.get("result_header"):
            self.send_recorded(ident, record)
            return
        kept = ("" if self.db.persistent else
                "; a persistent task database (--db=sqlite) would have kept it if it was queued")
        header = _error_header(msg_id, "lost", "TaskLost", f"the controller restarted and lost task {msg_id}: it "
                               "was neither on an engine that came back nor in the task database" + kept)
        self.route(self.client_socket, ident, self.session.pack(header), hold=True)

    def client_purge(self, msg: Message) -> None:
        header = msg.header
        if header.get("all"):
            self.db.drop_matching_records({"completed": {"$exists": True}})
        else:
            msg_ids = header.get("msg_ids") or []
            pending = [m for m in msg_ids if self.queue.pending(m)]
            if pending:
                raise ValueError(f"cannot purge pending tasks: {', '.join(pending[:5])}")
            self.db.drop_matching_records({"msg_id": {"$in": msg_ids}})
        if header.get("targets"):
            uuids = [self.engines[t].uuid for t in header["targets"] if t in self.engines]
            self.db.drop_matching_records({"engine_uuid": {"$in": uuids}, "completed": {"$exists": True}})
        self.send_client(self.reply_to(msg), "purge_reply", {"parent": header["id"], "status": "ok"})

    def client_resubmit(self, msg: Message) -> None:
        if self.refused_without_history(msg):
            return
        resubmitted = {}
        for old_id in msg.header.get("msg_ids", []):
            if self.queue.pending(old_id):
                raise ValueError(f"task {old_id} is still pending; wait for it before resubmitting")
            record = self.db.get_record(old_id)
            # Not the first submitter's pid and memory domain: the result goes
            # inline to whoever resubmits.
            header = {**{k: v for k, v in record["header"].items() if k not in ("pid", "domain")},
                      "id": new_id(), "session": msg.header.get("session"), "resubmit_of": old_id}
            frames = self.session.pack(header, record["buffers"] or [])
            self.client_apply(Message([], header, list(record["buffers"] or []), frames))
            self.db.update_record(old_id, {"resubmitted": header["id"]})
            resubmitted[old_id] = header["id"]
        self.send_client(self.reply_to(msg), "resubmit_reply",
                         {"parent": msg.header["id"], "status": "ok", "resubmitted": resubmitted})

    def client_abort(self, msg: Message) -> None:
        header = msg.header
        targets = _id_list(header, "targets", int)
        msg_ids = _id_list(header, "msg_ids", str)
        if msg_ids is None:  # as in ipyparallel: the caller's own outstanding tasks, not everyone's
            msg_ids = self.queue.outstanding(str(header.get("session", "")), targets)
        aborted = self.queue.abort(msg_ids)
        forwarded = [m for action in self.queue.actions if isinstance(action, ForwardAbort) for m in action.msg_ids]
        self.carry_out()
        self.send_client(self.reply_to(msg), "abort_reply", {
            "parent": header["id"], "status": "ok", "aborted": aborted, "forwarded": forwarded})

    def client_shutdown(self, msg: Message) -> None:
        targets = msg.header.get("targets")
        for engine in list(self.engines.values()):
            if targets is None or engine.id in targets:
                self.send_engine(engine, "shutdown", {})
        self.send_client(self.reply_to(msg), "shutdown_reply", {"parent": msg.header["id"], "status": "ok"})
        if msg.header.get("hub"):
            log.info("shutdown requested by a client")
            # Stop once the engines told to stop have left (bounded), so their
            # unregistration is seen and reported like any other.
            self.exit_at = time.monotonic() + self.shutdown_grace

    # --- engines --------------------------------------------------------

    @property
    def engines(self) -> OrderedDict[int, EngineState]:
        """The registered engines, least recently used first."""
        return self.queue.engines

    def on_engine(self, msg: Message) -> None:
        engine = self.engine_of(msg.idents[0])
        if engine is not None:
            engine.last_seen = time.monotonic()
        handler = self.engine_handlers.get(msg.type)
        if handler is None:
            log.warning("ignored an engine message of type %r", msg.type)
            return
        handler(msg)

    def engine_of(self, ident: bytes) -> EngineState | None:
        engine_id = self.by_ident.get(ident)
        return self.engines.get(engine_id) if engine_id is not None else None

    def engine_register(self, msg: Message) -> None:
        self.register_engine(msg.idents[0], msg, self.engine_socket, msg.idents[0])

    def heartbeat_register(self, msg: Message) -> None:
        """An engine registering again with this controller, restarted with
        --reuse, from its heartbeat thread (routing id + ``-hb``): its main
        thread may be busy with a task for a long time."""
        ident = msg.idents[0]
        if ident.endswith(b"-hb"):
            self.register_engine(ident.removesuffix(b"-hb"), msg, self.heartbeat_socket, ident)

    def register_engine(self, ident: bytes, msg: Message, reply_socket: zmq.Socket, reply_ident: bytes) -> None:
        if reply_socket is not self.engine_socket:
            # Its task socket must be connected again before it can take a task: until it is, the
            # engine's heartbeat thread sends its registration again.
            probe = self.session.pack({"type": "reconnected", "id": new_id()})
            try:
                self.engine_socket.send_multipart([ident, *probe])
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                log.debug("registration of %r waits for its task socket to connect", ident[:8])
                return
        header = msg.header
        uuid = str(header.get("uuid", ""))
        old = self.engine_of(ident)
        if old is not None and old.uuid == uuid and reply_socket is not self.engine_socket:
            # Its heartbeat thread sent its registration again before our answer reached it (a busy
            # controller): the same answer again, and its tasks stay where they are.
            self.route(reply_socket, reply_ident, self.session.pack(self.register_reply(old, header)))
            return
        if old is not None:
            self.unregister(old, "re-registered")
        if len(self.engines) >= self.engine_capacity:
            self.refuse_registration(reply_socket, reply_ident, header)
            return
        engine_id = self.roster.choose_id(header.get("engine_id"), uuid, self.engines)
        engine = EngineState(id=engine_id, ident=ident, uuid=uuid,
                             hostname=str(header.get("hostname", "")), pid=header.get("pid", 0),
                             domain=header.get("domain"), mpi=_mpi_rank(header.get("mpi")),
                             deadline=_deadline(header.get("deadline")), draining=header.get("draining") is True)
        self.roster.add(engine.id, uuid)
        self.by_ident[ident] = engine.id
        self.route(reply_socket, reply_ident, self.session.pack(self.register_reply(engine, header)))
        ends = f", its job ends at {_local_time(engine.deadline)}" if engine.deadline else ""
        log.info("engine %d registered (%s, pid %s%s)", engine.id, engine.hostname, engine.pid, ends)
        for client in list(self.clients):
            self.send_client(client, "registration", {"engine_id": engine.id, **engine.info()})
        _call_hook("cluster_launcher_engine_registered", engine_id=engine.id, info=engine.info())
        self.adopt(engine, header.get("held"))
        self.queue.add_engine(engine)
        self.carry_out()
        for msg_id in [m for m in engine.in_flight if m in self.early_replies]:
            # It finished while there was no controller, and said so before registering again.
            self.engine_apply_reply(self.early_replies.pop(msg_id))

    def register_reply(self, engine: EngineState, header: dict[str, Any]) -> dict[str, Any]:
        return {"type": "register_reply", "id": new_id(), "parent": header["id"], "status": "ok",
                "engine_id": engine.id, "heartbeat_period": self.heartbeat_period,
                "heartbeat_timeout": self.heartbeat_timeout}

    def adopt(self, engine: EngineState, held: Any) -> None:
        """The tasks an engine holds as it registers again with this
        controller (restarted with --reuse): in flight on it from now on, so
        that their results reach their clients and are recorded."""
        if not isinstance(held, list) or not held:
            return
        adopted = 0
        for item in held:
            header = item.get("header") if isinstance(item, dict) else None
            try:
                if not isinstance(header, dict) or not isinstance(header.get("id"), str):
                    raise ValueError("no header")
                _check_apply(header)
            except (ValueError, TypeError) as exc:
                log.warning("engine %d holds a task the controller cannot take over: %s", engine.id, exc)
                continue
            task = _task(header, self.reply_to(Message([], header, [], [])), [])
            task.retries = 0  # its message stayed on the engine: if the engine dies, it cannot run elsewhere
            if not self.queue.adopt(task, engine):
                continue
            adopted += 1
            # Its client is reconnecting too: the result waits for it (reply_grace).
            self.clients.add(task.reply_to)
            try:
                self.db.get_record(task.msg_id)
            except KeyError:  # a task DB that does not outlive the controller: recorded anew
                self.db.add_record(task.msg_id, _new_record(task, header))
            self.db.update_record(task.msg_id, {"engine_uuid": engine.uuid})
        if adopted:
            log.info("engine %d came back holding %d task(s): their results go to their clients", engine.id,
                     adopted)

    def refuse_registration(self, reply_socket: zmq.Socket, reply_ident: bytes, header: dict[str, Any]) -> None:
        """No room for another engine under the open-file limit: the engine gets
        the reason (and exits with it), the log one line, then a count at most
        every ten seconds; the engines registered go on."""
        reason = (f"the controller is at its open-file limit (ulimit -n {self.open_file_limit}): "
                  f"{self.engine_capacity} engines fit, {FDS_PER_ENGINE} files each; raise ulimit -n "
                  "where the controller starts (docs/internals/scale.md)")
        self.route(reply_socket, reply_ident, self.session.pack({
            "type": "register_reply", "id": new_id(), "parent": header["id"], "status": "error", "reason": reason}))
        count = self.refusals.tick(time.monotonic())
        if count == 0:
            log.error("refused engine registrations: %s", reason)
        elif count:
            log.error("refused %d more engine registrations at the open-file limit (%d engines fit)", count,
                      self.engine_capacity)

    def engine_unregister(self, msg: Message) -> None:
        engine = self.engine_of(msg.idents[0])
        if engine is not None:
            self.unregister(engine, "drained" if engine.draining else "shutdown")

    def engine_drain(self, msg: Message) -> None:
        """The engine is leaving on time (its job's walltime, a signal): it
        gets no new task, and the tasks it hands back unstarted (``msg_ids``)
        go to other engines.  The reply tells it that every task sent to it
        before is in its hands, so it can hand those back and go."""
        engine = self.engine_of(msg.idents[0])
        if engine is None:
            return
        handed_back = _id_list(msg.header, "msg_ids", str) or []
        for msg_id in list(handed_back):
            task = self.queue.pending(msg_id)
            if task is None or task.frames or task.engine_id != engine.id:
                continue
            # Taken over from the engine after a restart (adopt): this controller never had its message.
            self.queue.returned(msg_id, engine.id)
            handed_back.remove(msg_id)
            self.queue.fail(task, "engine", "EngineError", f"engine {engine.id} handed this task back (it drains), "
                            "and the controller, restarted since it was sent, does not have its message to send "
                            "elsewhere: submit it again", engine_id=engine.id)
        log.info("engine %d drains (%s): no new task goes to it; %d task(s) it had not started handed back to "
                 "the queue", engine.id, str(msg.header.get("reason") or "no reason given")[:200], len(handed_back))
        self.queue.drain(engine.id, handed_back)
        self.carry_out()
        self.send_engine(engine, "drain_reply", {"parent": msg.header["id"], "status": "ok"})

    def engine_apply_reply(self, msg: Message) -> None:
        header = msg.header
        engine = self.engine_of(msg.idents[0])
        task = self.queue.returned(str(header.get("parent")), engine.id if engine else None)
        if (engine is None and self.recovering_until is not None and not self.queue.knows(str(header.get("parent")))
                and len(self.early_replies) < 10_000):
            # Finished while there was no controller: kept for its engine's registration or its client.
            self.early_replies[str(header.get("parent"))] = msg
            return
        if task is None or engine is None:
            # Late (from an engine declared dead, its task since retried) or
            # from an engine that never had the task: never a task's result.
            log.warning("dropped a reply for task %s from %s, which does not run it", header.get("parent"),
                        f"engine {engine.id}" if engine else "an unregistered engine")
            discard_bulk(header)
            return
        if header.get("status") == "error":
            engine.failed += 1
        # A task that ran past its time_limit would do so on any engine: it is not retried.
        interrupted = (header.get("error") or {}).get("kind") in ("aborted", "timeout")
        if header.get("status") == "error" and not interrupted and self.queue.retry(task, failed_on=engine.id):
            discard_bulk(header)
            self.carry_out()
            return
        try:
            buffers = self.stored_buffers(msg, needed=bool(task.waiters))
        except BulkError as exc:
            discard_bulk(header)
            self.queue.fail(task, "engine", "BulkError", f"the result of engine {engine.id} could not be read: "
                            f"{exc}", engine_id=engine.id)
        else:
            self.deliver(task, header, buffers, msg.frames)
            self.queue.complete(task, ok=header.get("status") == "ok")
        self.carry_out()

    def engine_stream(self, msg: Message) -> None:
        """Output of a running task, sent while it runs by the engine's stream
        socket (its routing id + ``-io``): forwarded to whoever waits for it."""
        task = self.queue.pending(str(msg.header.get("parent")))
        sender = self.engine_of(msg.idents[0].removesuffix(b"-io"))
        if task is not None and sender is not None and task.engine_id == sender.id:
            for client in (task.reply_to, *task.waiters):
                self.route(self.client_socket, client, msg.frames)

    def unregister(self, engine: EngineState, reason: str) -> None:
        self.by_ident.pop(engine.ident, None)
        self.roster.remove(engine.id)
        log.info("engine %d unregistered (%s)", engine.id, reason)
        self.lost_engines.append({"engine_id": engine.id, "uuid": engine.uuid, "pid": engine.pid, "reason": reason,
                                  "at": time.time(), "failed": engine.failed})
        self.queue.remove_engine(engine.id, reason)
        self.carry_out()
        for client in list(self.clients):
            self.send_client(client, "unregistration", {"engine_id": engine.id, "uuid": engine.uuid,
                                                        "reason": reason})
        _call_hook("cluster_launcher_engine_unregistered", engine_id=engine.id, reason=reason)

    def on_heartbeat(self, msg: Message) -> None:
        handler = self.heartbeat_handlers.get(msg.type)
        if handler is None:
            log.warning("ignored a heartbeat-socket message of type %r", msg.type)
            return
        handler(msg)

    def heartbeat_echoed(self, msg: Message) -> None:
        """Our own ping, echoed by the engine's libzmq proxy thread (routing id
        + ``-echo``): it answers even while a task holds the engine's GIL."""
        ident = msg.idents[0]
        engine = self.engine_of(ident.removesuffix(b"-echo")) if ident.endswith(b"-echo") else None
        if engine is not None and msg.header.get("engine_id") == engine.id:
            engine.last_seen = time.monotonic()

    def heartbeat_ping(self, msg: Message) -> None:
        """The engine's own liveness check of the controller, from its Python
        thread (routing id + ``-hb``); the pong says whether we know it."""
        ident = msg.idents[0]
        engine = self.engine_of(ident.removesuffix(b"-hb"))
        if engine is not None:
            engine.last_seen = time.monotonic()
            if msg.header.get("draining") is True and not engine.draining:
                # Its walltime is near, or it was signalled, while it runs a task: no new task for
                # it from now on; what it holds it hands back in its own drain message.
                log.info("engine %d is draining (its heartbeat says so): no new task goes to it", engine.id)
                self.queue.drain(engine.id)
                self.carry_out()
        header = {"type": "pong", "id": new_id(), "parent": msg.header["id"], "registered": engine is not None}
        self.route(self.heartbeat_socket, ident, self.session.pack(header))

    def heartbeat_interrupt_ignored(self, msg: Message) -> None:
        """The engine's watchdog (routing id + ``-int``): its task went on for
        ``Engine.interrupt_grace`` seconds after its interrupt, and the engine
        exits.  The task fails now, the engine is unregistered."""
        ident = msg.idents[0]
        engine = self.engine_of(ident.removesuffix(b"-int")) if ident.endswith(b"-int") else None
        if engine is None:
            return
        header = msg.header
        timed_out = header.get("cause") == "timeout"
        limit, grace = _seconds(header.get("time_limit")), _seconds(header.get("interrupt_grace"))
        why = f"ran longer than its time_limit of {limit:g}s" if timed_out and limit is not None else (
            "ran longer than its time_limit" if timed_out else "was aborted")
        grace_text = f" for {grace:g}s" if grace is not None else ""
        evalue = (f"the task {why} and ignored its interrupt{grace_text} (Engine.interrupt_grace): engine "
                  f"{engine.id} ({engine.hostname}, pid {engine.pid}) was killed")
        task = self.queue.returned(str(header.get("parent")), engine.id)
        log.warning("engine %d: task %s %s and ignored its interrupt%s (Engine.interrupt_grace): the engine "
                    "kills itself", engine.id, header.get("parent"), why, grace_text)
        if task is not None:
            self.queue.fail(task, "timeout" if timed_out else "aborted", "TaskTimeout" if timed_out else
                            "TaskAborted", evalue, engine_id=engine.id)
        self.unregister(engine, "killed: its task ignored an interrupt")
        self.route(self.heartbeat_socket, ident, self.session.pack(
            {"type": "interrupt_ignored_reply", "id": new_id(), "parent": header["id"], "status": "ok"}))

    def send_heartbeats(self) -> None:
        """A heartbeat to each engine not heard from since the last round.  One
        that was (its ping thread, a reply) is known alive: asking it again
        would only double the controller's work per engine.  The echo is for
        the others, whose Python may be held by a task."""
        since = self.heartbeat_sent_at
        for engine in self.engines.values():
            engine.asked = since is None or engine.last_seen < since
            if engine.asked:
                header = {"type": "heartbeat", "id": new_id(), "engine_id": engine.id}
                self.route(self.heartbeat_socket, engine.ident + b"-echo", self.session.pack(header))
        self.heartbeat_sent_at = time.monotonic()

    @property
    def allowed_misses(self) -> int:
        return self.heartbeat_max_misses or max(1, math.ceil(self.heartbeat_timeout / self.heartbeat_period - 1e-9))

    def check_heartbeats(self) -> None:
        """Count, for each engine sent a heartbeat last round, whether it left it
        unanswered (no message of its own since); declare dead those with
        ``allowed_misses`` in a row.  Only heartbeats sent count, never the
        clock: after the controller itself was starved of CPU, an engine is not
        judged on time nobody was asking it."""
        if self.heartbeat_sent_at is None:
            return
        # What has arrived by now is an answer, even if the loop has not read it yet (a long busy turn).
        self.handle_waiting(self.heartbeat_socket, self.on_heartbeat, most=2 * len(self.engines) + 1000)
        allowed = self.allowed_misses
        dead = []
        for engine in self.engines.values():
            if engine.last_seen >= self.heartbeat_sent_at:
                engine.missed = 0
            elif engine.asked:  # one not asked last round is asked this round, then judged
                engine.missed += 1
                if engine.missed >= allowed:
                    dead.append(engine)
        for engine in dead:
            log.warning("engine %d missed %d heartbeats in a row (%gs apart): declaring it dead", engine.id,
                        engine.missed, self.heartbeat_period)
            self.unregister(engine, "heartbeat")

    # --- what the task queue decided ----------------------------------------

    def carry_out(self) -> None:
        """Carry out the task queue's actions, in order.  One that fails is
        logged; the others still happen."""
        for action in self.queue.take_actions():
            try:
                self.action_handlers[type(action)](action)
            except Exception:
                what = action.msg_ids if isinstance(action, ForwardAbort) else action.task.msg_id
                log.exception("error carrying out %s for %s", type(action).__name__, what)

    def do_dispatch(self, action: Dispatch) -> None:
        task, engine = cast(Task, action.task), cast(EngineState, action.engine)
        # Not delivered means the engine is gone: its heartbeat runs out and
        # the task is failed or retried like any task of a dead engine.
        self.route(self.engine_socket, engine.ident, task.frames)
        self.db.update_record(task.msg_id, {"engine_uuid": engine.uuid})

    def do_requeue(self, action: Requeue) -> None:
        """The engine that had the task consumed its shared-memory files, and
        a file of that name could since be anyone's: the retry carries the
        buffers the controller mapped at submission, inline and signed."""
        task = cast(Task, action.task)
        log.info("retrying task %s on another engine (%d more retries allowed)", task.msg_id, task.retries)
        if "bulk" in task.header:
            task.header = _without_bulk(task.header)
            task.frames = self.session.pack(task.header, task.buffers)

    def do_fail(self, action: Fail) -> None:
        task = cast(Task, action.task)
        header = _error_header(task.msg_id, action.kind, action.ename, action.evalue, action.engine_id)
        header["submitted"] = task.submitted.isoformat()
        self.deliver(task, header, [], self.session.pack(header))

    def do_forward_abort(self, action: ForwardAbort) -> None:
        engine = cast(EngineState, action.engine)
        # The engine's main thread drops those it has not started; its watchdog
        # thread interrupts the one it runs (docs/stopping-tasks.md).
        self.send_engine(engine, "abort", {"msg_ids": action.msg_ids})
        self.route(self.heartbeat_socket, engine.ident + b"-int", self.session.pack(
            {"type": "interrupt", "id": new_id(), "msg_ids": action.msg_ids}))

    def deliver(self, task: Task, header: dict[str, Any], buffers: list, frames: list) -> None:
        """Record a finished task's reply, then, once the record is stored
        (the durability promise, BaseDB), send it to its submitter and to
        every client waiting for it."""
        task.buffers = []
        waiters = task.waiters - {task.reply_to}  # the submitter gets the frames themselves

        def send() -> None:
            self.route(self.client_socket, task.reply_to, frames, hold=True)
            if waiters:
                # Shared-memory files are read once, by the submitter: the other
                # clients waiting for this result get the bytes themselves.
                others = (self.session.pack({**_without_bulk(header), "id": new_id()}, buffers)
                          if "bulk" in header else frames)
                for ident in waiters:
                    self.route(self.client_socket, ident, others)

        try:
            self.db.update_record(task.msg_id, {
                "started": parse_time(header.get("started")), "completed": parse_time(header.get("completed")),
                "received": parse_time(utcnow()), "result_header": _without_bulk(header),
                "result_content": {"status": header.get("status"), "error": header.get("error")},
                "result_buffers": list(buffers), "stdout": header.get("stdout", ""),
                "stderr": header.get("stderr", "")})
        except Exception:  # a result the DB cannot take still belongs to its client
            log.exception("could not record the result of task %s; sending it anyway", task.msg_id)
            send()
            return
        self.db.when_durable(send)

    def recorded_outcome(self, msg_id: str) -> tuple[bool, str | None]:
        """``(succeeded, engine uuid)`` of a task the queue no longer remembers,
        from the task database (KeyError if it has none)."""
        record = self.db.get_record(msg_id)
        return (record.get("result_content") or {}).get("status") == "ok", record.get("engine_uuid")


@dataclass(eq=False, kw_only=True)
class Task(taskqueue.Task):
    """A task as the hub keeps it: the signed message to forward and who
    waits for the result."""

    reply_to: bytes  # the submitting client's reply socket
    frames: list  # the signed message, forwarded unchanged
    header: dict[str, Any]
    waiters: set[bytes] = field(default_factory=set)  # other clients asking for the result (get_result)
    buffers: list = field(default_factory=list)  # mapped at submission: for the DB and for retries
    submitted: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass(eq=False, kw_only=True)
class EngineState(taskqueue.Engine):
    """An engine as the hub keeps it: its private routing id and heartbeat."""

    ident: bytes  # zmq routing id: private to the engine and the controller
    last_seen: float = field(default_factory=time.monotonic)
    missed: int = 0  # heartbeats in a row it left unanswered
    asked: bool = False  # whether the last round sent it a heartbeat (not if it had just been heard from)
    mpi: dict[str, int] | None = None  # {'rank': r, 'size': n} of an engine under MPI

    def info(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "hostname": self.hostname, "pid": self.pid, "domain": self.domain,
                "mpi": self.mpi}


def _task(header: dict[str, Any], reply_to: bytes, frames: list) -> Task:
    """The hub's task for a checked ``apply`` header (:func:`_check_apply`)."""
    return Task(msg_id=header["id"], reply_to=reply_to, frames=frames, header=header,
                queue=header.get("queue", "task"), targets=header.get("targets"),
                retries=int(header.get("retries") or 0),
                after=list(header.get("after") or []), follow=list(header.get("follow") or []),
                timeout=float(header["timeout"]) if header.get("timeout") else None,
                expected_runtime=float(header["expected_runtime"]) if header.get("expected_runtime") else None,
                owner=str(header.get("session", "")),
                shm_domain=str(header.get("domain") or "") if "bulk" in header else None)


def _new_record(task: Task, header: dict[str, Any]) -> dict[str, Any]:
    """A submitted task's record in the task database."""
    return {"msg_id": task.msg_id, "header": _without_bulk(header), "content": {}, "buffers": task.buffers,
            "submitted": task.submitted, "client_uuid": header.get("session"), "engine_uuid": None,
            "started": None, "completed": None, "received": None, "resubmitted": None,
            "queue": "mux" if task.queue == "mux" else "task", "result_header": None,
            "result_content": None, "result_buffers": None, "stdout": "", "stderr": ""}


def _deadline(value: Any) -> float | None:
    """An engine's ``deadline`` field (epoch seconds) if it is a positive finite number, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _seconds(value: Any) -> float | None:
    """A number of seconds from a peer's header if it is a finite number >= 0, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _local_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")


def _mpi_rank(value: Any) -> dict[str, int] | None:
    """An engine's ``mpi`` field if it is ``{'rank': int, 'size': int}``, else None."""
    if isinstance(value, dict) and all(type(value.get(k)) is int for k in ("rank", "size")):
        return {"rank": value["rank"], "size": value["size"]}
    return None


def _error_header(msg_id: str, kind: str, ename: str, evalue: str, engine_id: int | None = None) -> dict[str, Any]:
    return {"type": "apply_reply", "id": new_id(), "parent": msg_id, "status":
            "aborted" if kind == "aborted" else "error", "engine_id": engine_id, "started": None,
            "completed": utcnow(), "stdout": "", "stderr": "",
            "error": {"ename": ename, "evalue": evalue, "traceback": "", "engine_id": engine_id, "kind": kind}}


def _id_list(header: dict[str, Any], name: str, kind: type) -> list | None:
    """``header[name]``: ``None`` or a list of ``kind``; TypeError naming the field otherwise."""
    value = header.get(name)
    if value is not None and not (isinstance(value, list) and all(type(v) is kind for v in value)):
        raise TypeError(f"{header.get('type')}: field {name!r} must be a list of {kind.__name__} or null")
    return value


def _check_apply(header: dict[str, Any]) -> None:
    """Reject a malformed ``apply`` before it can reach the task queue."""
    if header.get("queue", "task") not in ("mux", "task"):
        raise ValueError(f"apply: field 'queue' must be 'mux' or 'task', not {header.get('queue')!r}")
    targets = _id_list(header, "targets", int)
    if header.get("queue") == "mux" and (targets is None or len(targets) != 1):
        raise ValueError("apply: a 'mux' task names exactly one engine in 'targets'")
    _id_list(header, "after", str)
    _id_list(header, "follow", str)
    if not isinstance(header.get("retries") or 0, int) or (header.get("retries") or 0) < 0:
        raise TypeError("apply: field 'retries' must be a non-negative integer")
    for name in ("timeout", "expected_runtime", "time_limit"):
        value = header.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value) or value < 0):
            raise TypeError(f"apply: field {name!r} must be a finite number of seconds >= 0, or null")


def _without_bulk(header: dict[str, Any]) -> dict[str, Any]:
    """A header as stored in the DB, whose buffers are stored in full: the
    shared-memory files it named are the receiver's, and gone once read."""
    return {k: v for k, v in header.items() if k != "bulk"} if "bulk" in header else header


def _discard_bulk_files(frames: list) -> None:
    """:func:`discard_bulk` for a message as signed frames (``[DELIM, signature,
    header, *buffers]``), which is all :meth:`Controller.route` has."""
    try:
        header = json.loads(frames[2].bytes if isinstance(frames[2], zmq.Frame) else bytes(frames[2]))
    except (ValueError, TypeError, IndexError, RecursionError):
        return
    if isinstance(header, dict):
        discard_bulk(header)


def _call_hook(name: str, **kwargs: Any) -> None:
    try:
        getattr(plugins.get_plugin_manager().hook, name)(**kwargs)
    except Exception:  # a plugin's bug must not take the controller down
        log.exception("plugin hook %s failed", name)


def _open_fds() -> int:
    """File descriptors this process has open."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS): a guess that errs on the safe side
        return 64


def _kernel_open_file_maximum() -> int:
    """The most files one process may open (Linux: fs.nr_open)."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def main(config: Config, profile_dir: str) -> int:
    """Run a controller until it is told to stop (``cluster-launcher controller``)."""
    controller = Controller(profile_dir=profile_dir, config=config)
    controller.start_logging("controller", profile_dir, controller.cluster_id)
    controller.setup()

    def stop(signum: int, frame: Any) -> None:
        controller.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        controller.run()
    finally:
        controller.close()
    return 0
