"""The engine: runs tasks in a persistent namespace (``cluster-launcher engine``).

The main thread receives ``apply`` messages and runs them one at a time.
The controller's heartbeats are echoed by libzmq itself (``zmq.proxy`` on
one socket, in a thread that never takes the GIL), so a task holding the
GIL for minutes never looks like a dead engine.  A Python heartbeat thread
checks the other way: if the controller stops answering for
``Engine.timeout`` seconds the engine exits (a task still running is
interrupted first).  A task watchdog thread (:mod:`.watchdog`) interrupts the
running task when a client aborts it or its ``time_limit`` runs out, and ends
the engine when the task ignores that for ``Engine.interrupt_grace`` seconds.

An engine of a batch job knows when the job's walltime ends it
(``Engine.deadline``).  ``drain_margin`` seconds before (minus a random
part of ``lifetime_stagger``), or at SIGUSR1, which batch systems send
ahead of the walltime, it drains: the controller gives it no new task, it
hands back those it has not started, finishes the one running, unregisters
and exits with code 0, so the job ends as a job that finished.
"""

from __future__ import annotations

import _thread
import logging
import math
import os
import random
import socket as _socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
from traitlets import Float, List, Unicode, default
from traitlets.config import Config

from ..error import ClusterLauncherError, ConfigError, ConnectionFileError
from ..logs import ProcessLogging
from ..protocol import connection
from ..protocol.remote import user_namespace
from ..protocol.serialize import serialize, unpack_apply
from ..protocol.session import Message, Session, discard_bulk, new_id, utcnow
from .streams import StreamSender, TaskStream
from .watchdog import Interrupt, TaskWatchdog, time_limit_of

if TYPE_CHECKING:
    from ..protocol.ssh import SSHConnection

log = logging.getLogger("cluster_launcher")

# Where a batch job script puts the epoch second its walltime ends the job (launcher/batch.py).
DEADLINE_ENV = "CLUSTER_LAUNCHER_ENGINE_DEADLINE"
# Where newer Slurm (23.02+) says the same of the job it runs.
SLURM_DEADLINE_ENV = "SLURM_JOB_END_TIME"


def deadline_from_environment(environ: Any = os.environ) -> float:
    """The epoch second the job running this engine ends, from the job
    script's export, else from Slurm's; 0 when neither says (or says nonsense:
    an engine without a deadline is better than one that does not start)."""
    for name in (DEADLINE_ENV, SLURM_DEADLINE_ENV):
        try:
            value = float(environ.get(name, ""))
        except ValueError:
            continue
        if math.isfinite(value) and value > 0:
            return value
    return 0.0


# The exit code of an engine that killed itself because its task ignored an interrupt (abort, time_limit)
# for Engine.interrupt_grace seconds: what whoever restarts engines reports as such.
EXIT_TASK_IGNORED_INTERRUPT = 3


# Where MPI launchers tell a process its rank and the job's size, by implementation.
MPI_ENVIRONMENT = (("PMI_RANK", "PMI_SIZE"),  # MPICH (Hydra), Intel MPI
                   ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # Open MPI
                   ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"))  # MVAPICH


def mpi_rank_and_size() -> dict[str, int] | None:
    """``{'rank': r, 'size': n}`` of this process in MPI_COMM_WORLD: from
    mpi4py if MPI is initialized, else from the launcher's environment; None
    outside MPI."""
    mpi4py_mpi = sys.modules.get("mpi4py.MPI")
    if mpi4py_mpi is not None and mpi4py_mpi.Is_initialized() and not mpi4py_mpi.Is_finalized():
        world = mpi4py_mpi.COMM_WORLD
        return {"rank": int(world.Get_rank()), "size": int(world.Get_size())}
    for rank, size in MPI_ENVIRONMENT:
        if os.environ.get(rank, "").isdigit() and os.environ.get(size, "").isdigit():
            return {"rank": int(os.environ[rank]), "size": int(os.environ[size])}
    return None


class Engine(ProcessLogging):
    file = Unicode("", help="The controller-engine.json connection file to use (default: the "
                   "one in the profile's security/ folder).").tag(config=True)
    ssh = Unicode("", help="SSH server ([user@]host[:port] or a ~/.ssh/config Host alias) that every "
                  "connection to the controller goes through, as tunnels to the controller's location as seen "
                  "from that server (default: the connection file's 'ssh' field, which controller "
                  "--enginessh writes).").tag(config=True)
    sshkey = Unicode("", help="Private key file for Engine.ssh, tried first (then IdentityFile in "
                     "~/.ssh/config, ssh-agent, ~/.ssh/id_*).").tag(config=True)
    startup_script = Unicode("", help="A Python file run in the engine's namespace at start.").tag(config=True)
    startup_command = Unicode("", help="Python code run in the engine's namespace at start.").tag(config=True)
    work_dir = Unicode("", help="Directory the engine changes to before it runs anything.").tag(config=True)
    timeout = Float(10.0, min=0.0, help="Seconds to wait for the controller, at start and after it goes "
                    "away, before the engine gives up and exits.").tag(config=True)
    connect_timeout = Float(30.0, min=0.0, help="Seconds to wait for the connection file to appear.").tag(config=True)
    extra_paths = List(Unicode(), help="Directories prepended to sys.path.").tag(config=True)
    mpi = Unicode("", help="Initialize MPI in the engine before it runs anything: 'mpi4py' imports "
                  "mpi4py.MPI (which calls MPI_Init), '' does nothing.  IPython's c.MPI.use."
                  ).tag(config=True)
    mpi_init_script = Unicode("", help="Python code run in the engine's namespace instead of the "
                              "import Engine.mpi makes, to initialize MPI your own way (IPython's "
                              "c.MPI.init_script); it must leave MPI initialized.").tag(config=True)
    cluster_id = Unicode("", help="The id of the cluster within its profile.").tag(config=True)
    deadline = Float(help="When this engine's batch job ends (epoch seconds; 0: no known end).  Default: "
                     f"${DEADLINE_ENV}, which the job scripts of batch launchers with a walltime export, else "
                     f"${SLURM_DEADLINE_ENV} (newer Slurm).").tag(config=True)
    drain_margin = Float(30.0, min=0.0, help="Seconds before Engine.deadline at which the engine drains: it takes "
                         "no new task, hands back those it has not started, finishes the one running and "
                         "exits.").tag(config=True)
    interrupt_grace = Float(5.0, min=0.0, help="Seconds a task may go on after its interrupt (an abort, or its "
                            "time_limit running out) before the engine kills itself (exit code "
                            f"{EXIT_TASK_IGNORED_INTERRUPT}) and the controller fails the task; see "
                            "docs/stopping-tasks.md.").tag(config=True)
    lifetime_stagger = Float(0.0, min=0.0, help="Up to this many seconds more (a random amount, each engine its "
                             "own) the engine drains before its deadline, so the engines of one job do not all "
                             "leave at once.").tag(config=True)

    @default("deadline")
    def _deadline_default(self) -> float:
        return deadline_from_environment()

    @default("log_to_file")
    def _log_to_file_default(self) -> bool:
        # An engine of a batch job (its connection in its environment) logs to the job's output file,
        # which the scheduler keeps; a log folder on the node may be nobody's to read.
        return connection.ENGINE_CONNECTION_ENV not in os.environ

    def __init__(self, profile_dir: str = "", **kwargs: Any):
        super().__init__(**kwargs)
        self.profile_dir = profile_dir
        self.uuid = new_id()  # public: clients see it
        # The zmq routing id of this engine's sockets: known only to this
        # engine and the controller, so no peer can claim its task stream.
        self.ident = new_id().encode()
        self.engine_id: int | None = None
        self.mpi_rank: dict[str, int] | None = None  # {'rank': r, 'size': n} under MPI
        self.pending: deque[Message] = deque()
        self.current: Message | None = None  # the task running now (the main thread's)
        self.aborted: set[str] = set()
        self.stopping = False
        # Draining (see the module's docstring).  The signal handler only sets drain_signalled:
        # the loop acts on it between tasks.
        self.drain_signalled = False
        self.drain_reason = ""  # why it drains; "" while it does not
        self.drain_acknowledged = False  # the controller's drain_reply came: every task sent is here
        self.drain_sent_at = 0.0  # monotonic
        self.stagger = random.uniform(0.0, self.lifetime_stagger) if self.lifetime_stagger else 0.0
        self.controller_lost = threading.Event()
        self.sigint_ignored = False  # SIGINT was ignored when the engine started (a shell's background job)
        self.watchdog: TaskWatchdog | None = None
        # Set by the heartbeat thread once it registered the engine again with a
        # restarted controller (--reuse): the main loop then tells it again that it drains.
        self.registered_again = threading.Event()
        self.registered_at = 0.0  # monotonic time of the last completed registration
        self.ssh_connection: SSHConnection | None = None
        self.urls: dict[str, str] = {}  # port field of the connection file -> where to connect for it
        # What the controller may send on the task socket, by message type (the
        # protocol's index, docs/internals/protocol.md); anything else is ignored.
        self.handlers: dict[str, Callable[[Message], None]] = {
            "apply": self.pending.append, "abort": self.on_abort, "shutdown": self.on_shutdown,
            "drain_reply": self.on_drain_reply}

    # --- set-up -------------------------------------------------------

    def connection_info(self) -> dict[str, Any]:
        """The controller's connection file: an explicit ``Engine.file`` must
        exist now (a wrong path is a mistake, not a controller still starting);
        else its content from the environment, where a batch job script puts
        it; else the profile's own, waited for up to ``connect_timeout`` seconds."""
        if not self.file and connection.ENGINE_CONNECTION_ENV in os.environ:
            # Taken out of the environment: the tasks' subprocesses have no use for the key.
            text = os.environ.pop(connection.ENGINE_CONNECTION_ENV)
            return connection.parse_connection_info(text, f"${connection.ENGINE_CONNECTION_ENV}", "engine")
        if self.file:
            if not os.path.exists(self.file):
                raise ConnectionFileError(f"--file={self.file}: no such connection file (Engine.file must name "
                                          "an existing controller-engine.json)")
            return connection.read_connection_file(self.file, "engine")
        path = connection.connection_file(self.profile_dir, "engine", self.cluster_id)
        if not os.path.exists(path):
            log.info("waiting up to %gs (Engine.connect_timeout) for the controller's connection file %s",
                     self.connect_timeout, path)
        deadline = time.monotonic() + self.connect_timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        return connection.read_connection_file(path, "engine")

    def setup(self) -> None:
        if self.file:  # as the user meant it, not relative to work_dir
            self.file = os.path.abspath(os.path.expanduser(self.file))
        if self.work_dir:
            try:
                os.chdir(os.path.expanduser(self.work_dir))
            except OSError as exc:
                raise ConfigError(f"Engine.work_dir={self.work_dir!r}: cannot change to it: {exc.strerror}") from None
        sys.path[:0] = [*self.extra_paths, os.getcwd()]
        self.init_mpi()
        # Before registering: an engine whose start-up fails never shows up in client.ids.
        self.run_startup()
        self.info = info = self.connection_info()
        self.session = Session(key=info["key"], parent=self)
        self.open_tunnels()
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, self.ident)
        for option in (zmq.SNDHWM, zmq.RCVHWM):
            self.socket.setsockopt(option, 0)
        self.socket.setsockopt(zmq.LINGER, 2000)
        connection.secure(self.socket, info)
        self.socket.connect(self.controller_url("engine_port"))
        self.max_message_size = info.get("max_message_size", -1)
        self.streams = StreamSender(self.context, self.ident, self.info, self.controller_url("engine_port"))
        self.echo = threading.Thread(target=self._echo_heartbeats, args=(self._echo_socket(),),
                                     name="heartbeat-echo", daemon=True)
        self.echo.start()
        self.watchdog = TaskWatchdog(self.context, self.ident, info, self.controller_url("heartbeat_port"),
                                     self.interrupt_grace, EXIT_TASK_IGNORED_INTERRUPT)
        self.watchdog.start()
        self.register()
        self.heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self.heartbeat.start()

    def open_tunnels(self) -> None:
        """With ``Engine.ssh`` (or the connection file's ``ssh`` field): one SSH
        connection forwarding a local port to each controller port, so that
        every socket of the engine connects through it."""
        server = self.ssh or self.info["ssh"]
        if not server:
            return
        # paramiko takes ~0.4 s and ~15 MB to import: only engines that tunnel pay for it.
        from ..protocol.ssh import connect_ssh
        from ..protocol.tunnel import forward

        self.ssh_connection = connect_ssh(server, self.timeout, self.sshkey or None)
        for field in ("engine_port", "heartbeat_port"):
            tunnel = forward(self.ssh_connection, self.info["location"], self.info[field], self.timeout)
            self.urls[field] = tunnel.url
        log.info("connecting to the controller at %s through SSH server %s (engine port via %s, heartbeat "
                 "port via %s)", self.info["location"], self.ssh_connection.target.where, self.urls["engine_port"],
                 self.urls["heartbeat_port"])

    def controller_url(self, port_field: str) -> str:
        """Where the engine connects for the controller's ``port_field``: the
        local end of its SSH tunnel, or the controller itself."""
        return self.urls.get(port_field) or connection.url(self.info, port_field)

    def init_mpi(self) -> None:
        """Initialize MPI as ``Engine.mpi`` / ``mpi_init_script`` say (IPython's
        c.MPI.use and c.MPI.init_script), and learn this engine's rank."""
        if self.mpi not in ("", "mpi4py"):
            raise ClusterLauncherError(f"Engine.mpi={self.mpi!r}: the only MPI binding supported is 'mpi4py'")
        if self.mpi_init_script:
            try:
                exec(compile(self.mpi_init_script, "<Engine.mpi_init_script>", "exec"), user_namespace())
            except Exception as exc:
                raise ClusterLauncherError(f"Engine.mpi_init_script failed: {type(exc).__name__}: {exc}") from None
        elif self.mpi == "mpi4py":
            try:
                import mpi4py.MPI  # noqa: F401 - importing it initializes MPI
            except ImportError as exc:
                raise ClusterLauncherError(f"Engine.mpi='mpi4py' but mpi4py cannot be imported: {exc}") from None
        self.mpi_rank = mpi_rank_and_size()

    def registration(self) -> dict[str, Any]:
        """The fields of ``register``: who this engine is, the id it had (a
        controller restarted with --reuse gives it back) and, after a restart,
        the tasks it holds, so their results reach their clients."""
        return {"uuid": self.uuid, "hostname": _socket.gethostname(), "pid": os.getpid(),
                "domain": self.session.domain, "mpi": self.mpi_rank, "deadline": self.deadline or None,
                "draining": bool(self.drain_reason), "engine_id": self.engine_id, "held": self.held_tasks()}

    def held_tasks(self) -> list[dict[str, Any]]:
        """The headers of the task running now and of those waiting here, read
        from the heartbeat thread while the main thread may change them."""
        for _ in range(100):
            try:
                messages = [self.current, *self.pending]
                break
            except RuntimeError:  # the deque changed while it was copied: copy again
                continue
        else:
            messages = [self.current]
        return [{"header": msg.header, "started": msg is messages[0]} for msg in messages if msg is not None]

    def register(self) -> None:
        self.session.send(self.socket, "register", self.registration())
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if not self.socket.poll(100):
                continue
            msg = self.session.recv(self.socket)
            if msg is None:
                continue
            if msg.type != "register_reply":
                self.pending.append(msg)  # tasks sent right after registration
                continue
            if msg.header.get("status") != "ok":
                raise ClusterLauncherError(f"the controller refused registration: {msg.header.get('reason')}")
            self.engine_id = msg.header["engine_id"]
            self.registered_at = time.monotonic()
            self.heartbeat_period = msg.header.get("heartbeat_period", 1.0)
            log.info("registered as engine %d", self.engine_id)
            return
        through = f" through SSH server {self.ssh_connection.target.where}" if self.ssh_connection else ""
        raise ClusterLauncherError(f"no answer from the controller at {connection.url(self.info, 'engine_port')}"
                                   f"{through} within {self.timeout}s (Engine.timeout); is it running?")

    def run_startup(self) -> None:
        """Run ``startup_script`` then ``startup_command`` in the user namespace;
        a failure is a one-line ConfigError naming the option and the line."""
        if self.startup_script:
            path = os.path.expanduser(self.startup_script)
            try:
                with open(path) as f:
                    source = f.read()
            except OSError as exc:
                raise ConfigError(f"Engine.startup_script={self.startup_script!r}: cannot read it: "
                                  f"{exc.strerror}") from None
            _run_startup_code(source, path, f"Engine.startup_script {path}")
        if self.startup_command:
            _run_startup_code(self.startup_command, "<startup_command>", "Engine.startup_command")

    # --- heartbeat ----------------------------------------------------

    def _echo_socket(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.ident + b"-echo")
        sock.setsockopt(zmq.LINGER, 0)
        connection.secure(sock, self.info)
        sock.connect(self.controller_url("heartbeat_port"))
        return sock

    @staticmethod
    def _echo_heartbeats(sock: zmq.Socket) -> None:
        """Send every heartbeat the controller sends back, unchanged, until the
        context is terminated.  ``zmq.proxy`` runs in libzmq without the GIL."""
        try:
            zmq.proxy(sock, sock)
        except zmq.ZMQError:  # the context was terminated: the engine is closing
            pass
        finally:
            sock.close(0)

    def _heartbeat_loop(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.ident + b"-hb")
        sock.setsockopt(zmq.LINGER, 0)
        connection.secure(sock, self.info)
        sock.connect(self.controller_url("heartbeat_port"))
        session = Session(key=self.info["key"])  # its own: the main thread's is not shared across threads
        last_pong = time.monotonic()
        sent_at: dict[str, float] = {}  # ping id -> when it was sent
        register_sent = 0.0  # monotonic time of the last registration sent from here (0: none awaited)
        try:
            while not self.stopping:
                # "draining" from here too: the main thread tells the controller only between tasks,
                # and until then the controller would go on sending it tasks it must hand back.
                draining = bool(self.drain_reason or self.drain_due())
                sent_at[session.send(sock, "ping", {"engine_id": self.engine_id, "draining": draining}
                                     )["id"]] = time.monotonic()
                deadline = time.monotonic() + self.heartbeat_period
                # Poll at least once even when the deadline has passed: after a
                # task held the GIL for long, the answers are waiting here.
                while True:
                    left = max(0.0, deadline - time.monotonic())
                    if sock.poll(left * 1000):
                        msg = session.recv(sock)
                        if msg is not None and msg.type == "pong":
                            last_pong = time.monotonic()
                            # "Not registered" about a ping sent before the last
                            # registration completed is old news, not a reason
                            # to register again.
                            pinged = sent_at.pop(str(msg.header.get("parent")), 0.0)
                            if (not msg.header.get("registered") and pinged > self.registered_at
                                    and time.monotonic() - register_sent > self.heartbeat_period * 2):
                                # A controller restarted with --reuse.  Registered from this thread, on
                                # this socket: the main thread may be running a task for minutes, and
                                # that task is one the controller must learn about (``held``).
                                session.send(sock, "register", self.registration())
                                register_sent = time.monotonic()
                        elif msg is not None and msg.type == "register_reply":
                            register_sent = 0.0
                            self.registered_again_as(msg)
                    elif left == 0.0 or self.stopping:
                        break
                for ping in [p for p, t in sent_at.items() if t < last_pong - self.timeout]:
                    del sent_at[ping]  # never answered (a controller that went away)
                if time.monotonic() - last_pong > self.timeout and not self.stopping:
                    log.error("no heartbeat answer from the controller for %.0fs (Engine.timeout): exiting",
                              self.timeout)
                    self.controller_lost.set()
                    _thread.interrupt_main()  # stops a running task; the main loop then exits
                    return
        finally:
            sock.close(0)

    def registered_again_as(self, msg: Message) -> None:
        """The restarted controller's answer to the heartbeat thread's registration."""
        if msg.header.get("status") != "ok" or type(msg.header.get("engine_id")) is not int:
            log.error("the restarted controller refused registration: %s", msg.header.get("reason"))
            return
        if msg.header["engine_id"] != self.engine_id:
            log.warning("registered again with the restarted controller as engine %d (was %s: that id is taken)",
                        msg.header["engine_id"], self.engine_id)
        else:
            log.info("registered again with the restarted controller as engine %d", self.engine_id)
        self.engine_id = msg.header["engine_id"]
        self.registered_at = time.monotonic()
        self.registered_again.set()

    # --- the loop -----------------------------------------------------

    def run(self) -> None:
        while not self.stopping and not self.controller_lost.is_set():
            if self.registered_again.is_set():
                self.registered_again.clear()
                if self.drain_reason:  # a restarted controller knows neither that we drain nor what it had sent us
                    self.drain_acknowledged = False
                    self.send_drain()
            self.receive(timeout_ms=100 if not self.pending else 0)
            if not self.drain_reason:
                self.drain_reason = self.drain_due()
                if self.drain_reason:
                    log.info("draining: %s", self.drain_reason)
                    self.send_drain()
            elif self.leave_after_drain():
                return
            if self.pending and not self.drain_reason:
                msg = self.pending.popleft()
                if msg.header["id"] in self.aborted:
                    self.aborted.discard(msg.header["id"])
                    self.reply_aborted(msg)
                else:
                    self.current = msg
                    try:
                        self.apply(msg)
                    finally:
                        self.current = None

    # --- draining before the walltime ------------------------------------

    def drain_at(self) -> float:
        """The epoch second at which the engine drains (inf: never by the clock)."""
        if not self.deadline:
            return math.inf
        return self.deadline - self.drain_margin - self.stagger

    def drain_due(self) -> str:
        """Why the engine should drain now ("" if it should not)."""
        if self.drain_signalled:
            return "SIGUSR1"
        now = time.time()
        if now >= self.drain_at():
            return f"{max(0.0, self.deadline - now):.0f} s before the job's walltime"
        return ""

    def send_drain(self) -> None:
        """Tell the controller the engine drains, handing back the tasks it
        holds unstarted (those aborted meanwhile are answered as aborted)."""
        handed_back = []
        while self.pending:
            msg = self.pending.popleft()
            if msg.header["id"] in self.aborted:
                self.aborted.discard(msg.header["id"])
                self.reply_aborted(msg)
            else:
                # Its shared-memory files stay: the controller sends the same frames on.
                handed_back.append(msg.header["id"])
        self.session.send(self.socket, "drain", {"reason": self.drain_reason, "msg_ids": handed_back})
        self.drain_sent_at = time.monotonic()

    def on_drain_reply(self, msg: Message) -> None:
        self.drain_acknowledged = True

    def leave_after_drain(self) -> bool:
        """While draining, between tasks: hand back what arrived; True when
        the engine may go: the controller answered (so every task it sent us
        is handed back), or it did not within ``timeout`` seconds."""
        if self.pending:
            self.send_drain()
            return False
        if self.drain_acknowledged:
            return True
        if time.monotonic() - self.drain_sent_at > self.timeout:
            log.warning("the controller did not answer the engine's drain within %gs (Engine.timeout): leaving "
                        "anyway", self.timeout)
            return True
        return False

    def receive(self, timeout_ms: int) -> None:
        """Take every waiting message: control messages act now, tasks queue."""
        if not self.socket.poll(timeout_ms):
            return
        for _ in range(10_000):
            try:
                msg = self.session.recv(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg is None:
                continue
            handler = self.handlers.get(msg.type)
            if handler is None:
                log.debug("ignored %s", msg.type)
            else:
                handler(msg)

    def on_abort(self, msg: Message) -> None:
        """Abort these tasks if they have not started (they are answered as aborted).  The others
        have started (the abort comes after the task on this socket): the watchdog interrupts the one
        running."""
        queued = {task.header["id"] for task in self.pending}
        self.aborted.update(msg_id for msg_id in msg.header.get("msg_ids") or [] if msg_id in queued)

    def on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT: the watchdog's interrupt of the running task raises KeyboardInterrupt there
        (one that arrives after its task ended is dropped, never hitting the engine's own code);
        any other SIGINT does what Python's default does (a Ctrl-C stops the running task, or the
        idle engine), unless SIGINT was ignored when the engine started."""
        ours = self.watchdog.take_signal() if self.watchdog is not None else None
        if ours is False:
            return
        if ours is None and self.sigint_ignored and not (self.stopping or self.controller_lost.is_set()):
            return
        raise KeyboardInterrupt

    def on_shutdown(self, msg: Message) -> None:
        self.stopping = True

    def reply_aborted(self, msg: Message) -> None:
        self.session.send(self.socket, "apply_reply", {
            "parent": msg.header["id"], "status": "aborted", "engine_id": self.engine_id,
            "engine_uuid": self.uuid, "submitted": msg.header.get("submitted"), "started": None,
            "completed": utcnow(), "stdout": "", "stderr": "",
            "error": {"ename": "TaskAborted", "evalue": "the task was aborted before it ran",
                      "traceback": "", "engine_id": self.engine_id, "kind": "aborted"}})

    def apply(self, msg: Message) -> None:
        parent = msg.header["id"]
        out = TaskStream(self.streams, parent, "stdout")
        err = TaskStream(self.streams, parent, "stderr")
        self.streams.watch(out, err)
        saved = sys.stdout, sys.stderr
        started = utcnow()
        failure: BaseException | None = None
        interrupt: Interrupt | None = None
        buffers: list = []
        watchdog = self.watchdog
        assert watchdog is not None  # set up before any task arrives
        # The watchdog's interrupt raises one KeyboardInterrupt, anywhere from task_started until
        # task_finished: the outer handler catches one that lands after the task's own end.
        try:
            try:
                sys.stdout, sys.stderr = out, err
                watchdog.task_started(parent, time_limit_of(msg.header))
                f, args, kwargs = unpack_apply(self.session.resolve_bulk(msg), user_namespace())
                result = f(*args, **kwargs)
                buffers = serialize(result)
            except BaseException as exc:  # a task's failure, whatever it is, is the client's to see
                failure = exc
            finally:
                interrupt = watchdog.task_finished()
        except KeyboardInterrupt as exc:
            failure = exc
            interrupt = watchdog.task_finished()
        finally:
            sys.stdout, sys.stderr = saved
            self.streams.watch()
        error = self.task_error(failure, interrupt)
        if error is not None:
            buffers = []
        status = "ok" if error is None else "aborted" if error["kind"] == "aborted" else "error"
        header = {"type": "apply_reply", "id": new_id(), "parent": parent, "status": status,
                  "engine_id": self.engine_id, "engine_uuid": self.uuid, "submitted": msg.header.get("submitted"),
                  "started": started, "completed": utcnow(), "stdout": out.getvalue(), "stderr": err.getvalue(),
                  "error": error}
        # The client's shared-memory files are removed by the client itself
        # (pid in the file name) if it goes away before reading them.
        same_memory = msg.header.get("domain") is not None and msg.header.get("domain") == self.session.domain
        client_pid = msg.header.get("pid") if same_memory and isinstance(msg.header.get("pid"), int) else None
        frames = self.session.pack(header, buffers, shm_owner=client_pid)
        if 0 <= self.max_message_size < sum(memoryview(f).nbytes for f in frames):
            discard_bulk(header)
            header.pop("bulk", None)
            size = sum(memoryview(b).nbytes for b in buffers)
            header.update(status="error", error=self.remote_error(ClusterLauncherError(
                f"the task's result ({size} bytes) is larger than the controller accepts "
                f"(Controller.max_message_size = {self.max_message_size}); return less, or raise that limit")))
            frames = self.session.pack(header)
        self.socket.send_multipart(frames, copy=False)

    def task_error(self, failure: BaseException | None, interrupt: Interrupt | None) -> dict[str, Any] | None:
        """The error a task ended with (None: it succeeded).  A task the watchdog interrupted
        ends aborted or timed out even if it caught the KeyboardInterrupt and returned."""
        if interrupt is not None:
            tb = _user_traceback(failure) if failure is not None else ""
            if interrupt.cause == "timeout":
                return {"ename": "TaskTimeout", "evalue": f"the task ran longer than its time_limit of "
                        f"{interrupt.time_limit:g}s: interrupted", "traceback": tb, "engine_id": self.engine_id,
                        "kind": "timeout"}
            return {"ename": "TaskAborted", "evalue": "the task was aborted: interrupted while running",
                    "traceback": tb, "engine_id": self.engine_id, "kind": "aborted"}
        if isinstance(failure, KeyboardInterrupt):
            return {"ename": "KeyboardInterrupt", "evalue": "the engine was interrupted",
                    "traceback": _user_traceback(failure), "engine_id": self.engine_id, "kind": "remote"}
        return None if failure is None else self.remote_error(failure)

    def remote_error(self, exc: BaseException) -> dict[str, Any]:
        """The error of a failed task as the client sees it.  Never raises:
        an exception whose ``__str__`` or traceback is broken must not take the
        engine down (and, through retries, every other engine)."""
        try:
            evalue = str(exc)
        except BaseException:
            evalue = f"<unprintable {type(exc).__name__} object>"
        try:
            tb = _user_traceback(exc)
        except BaseException:
            tb = ""
        return {"ename": type(exc).__name__, "evalue": evalue, "traceback": tb,
                "engine_id": self.engine_id, "kind": "remote"}

    def close(self) -> None:
        """Unregister, close the sockets, then the SSH tunnels (if any); safe
        after a set-up that stopped half-way."""
        self.stopping = True
        if hasattr(self, "socket"):
            if not self.controller_lost.is_set():
                try:
                    self.session.send(self.socket, "unregister",
                                      {"reason": "drained" if self.drain_reason else "shutdown"})
                except zmq.ZMQError:
                    pass
            self.socket.close(linger=1000 if not self.controller_lost.is_set() else 0)
            if hasattr(self, "streams"):
                self.streams.close()
            if hasattr(self, "heartbeat"):
                self.heartbeat.join(timeout=2 * self.heartbeat_period + 1)
            if self.watchdog is not None:
                self.watchdog.stop()
            self.context.term()
        if self.ssh_connection is not None:  # after term(): the unregister above leaves through it
            self.ssh_connection.close()
            log.info("closed the SSH tunnels through %s", self.ssh_connection.target.where)


def _run_startup_code(source: str, filename: str, option: str) -> None:
    try:
        exec(compile(source, filename, "exec"), user_namespace())
    except Exception as exc:
        lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == filename]
        if isinstance(exc, SyntaxError) and exc.filename == filename:
            lines.append(exc.lineno)
        at = f" at line {lines[-1]}" if lines and lines[-1] else ""
        raise ConfigError(f"{option} failed{at}: {type(exc).__name__}: {exc}") from None


def _user_traceback(exc: BaseException) -> str:
    """The traceback without the engine's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def main(config: Config, profile_dir: str) -> int:
    """Run an engine until the controller shuts it down or goes away."""
    engine = Engine(profile_dir=profile_dir, config=config)
    engine.start_logging("engine", profile_dir, engine.cluster_id)
    import signal

    def stop(signum: int, frame: Any) -> None:
        engine.stopping = True
        raise KeyboardInterrupt

    def drain_now(signum: int, frame: Any) -> None:
        # Only a flag: the loop drains between tasks, and a running task goes on.
        engine.drain_signalled = True

    signal.signal(signal.SIGTERM, stop)
    # Installed whatever SIGINT's disposition was: the watchdog's interrupts must reach the task
    # even in an engine started as a shell's background job, which inherits SIGINT ignored.
    engine.sigint_ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    signal.signal(signal.SIGINT, engine.on_sigint)
    if hasattr(signal, "SIGUSR1"):  # batch systems send it ahead of the walltime (Slurm --signal=B:USR1@N)
        signal.signal(signal.SIGUSR1, drain_now)
    try:
        engine.setup()
        engine.run()
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
    return 1 if engine.controller_lost.is_set() else 0
