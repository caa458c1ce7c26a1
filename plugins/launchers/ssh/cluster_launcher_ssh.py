"""Start engines and the controller on other hosts over SSH: IPython's SSH mode.

``SSHEngineSetLauncher`` starts the engines IPython's ``engines`` dict names,
per host (``{'host1': 2, 'host3': (1, ['--profile-dir=/elsewhere'])}``);
``SSHControllerLauncher`` starts the controller on ``hostname``.  Logins are
paramiko's (:mod:`cluster_launcher.protocol.ssh`: ``~/.ssh/config``,
ssh-agent, known_hosts, ProxyJump), so no ``ssh`` program is needed here.

Nothing needs a shared filesystem.  Before the engines of a host start, its
``controller-engine.json`` is sent to its profile there (``to_send``);
after a remote controller starts, its connection files are fetched back
here (``to_fetch``), by the connection-file transport ``transport`` names
(``sftp``).  Both lists are IPython's: left unset they hold those defaults,
set they replace them, ``[]`` moves nothing (a shared filesystem).

On each host the work is done by this same module run as an agent,
``<remote_python> -m cluster_launcher_ssh``: a JSON request on its stdin, a
JSON reply on its stdout.  It resolves and creates the remote profile
folder, starts each process detached in its own session with its output in
the remote profile's ``log/`` (under a ``sh`` that notes its exit code
there), and reports, signals and stops processes by the PID and start time
it recorded, never by name.  A later ``stop`` from another process finds
them from the cluster's record: host, PID, start token and log of each.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import posixpath
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from traitlets import Dict, Float, Instance, Integer, List, Tuple, Unicode, default

from cluster_launcher import hookimpl, plugins
from cluster_launcher.error import ClusterError, ClusterLauncherError, ConfigError, SSHError, UnknownNameError
from cluster_launcher.launcher import ControllerLauncher, DeadEngine, EngineSetLauncher, Launcher
from cluster_launcher.launcher.process import pid_alive, process_start_token, tail
from cluster_launcher.paths import ensure_profile_dir, profile_dir_for
from cluster_launcher.protocol.connection import connection_file

# cluster_launcher.protocol.ssh (paramiko: 0.4 s to import) is imported where a login is made, so the
# agent this module also is on each host starts without it.
if TYPE_CHECKING:
    from cluster_launcher.protocol.ssh import SSHConnection
    from cluster_launcher.transport import Transport

log = logging.getLogger("cluster_launcher")

AGENT_MODULE = "cluster_launcher_ssh"
AGENT_PROTOCOL = 1
# The wrapper each remote process runs under, as the leader of its process group: it waits for the
# process and notes its exit code in the log, which is how a later `status` tells a crash (and its
# code) from a process still running.  Its traps keep it waiting when SIGTERM or SIGINT reaches the
# group (they run once the process is done); the process itself gets the signals' default handling.
EXIT_LINE = "--- exited with code "
_WRAPPER = f'trap : TERM INT; "$@"; echo "{EXIT_LINE}$?"'
_EXIT_PATTERN = re.compile(rf"^{re.escape(EXIT_LINE)}(\d+)$")
# A host's processes are stopped in one agent call; it waits this long beyond stop_timeout twice.
_STOP_MARGIN = 30.0

T = TypeVar("T")


# ================================================================================================
# The remote side: ``<remote_python> -m cluster_launcher_ssh``, one request per run.
# ================================================================================================


def _agent_prepare(request: dict[str, Any]) -> dict[str, Any]:
    """Resolve (relative to $HOME) and create each profile folder asked for."""
    dirs = [ensure_profile_dir(profile_dir_for(spec.get("profile"), spec.get("profile_dir")))
            for spec in request["profiles"]]
    return {"home": os.path.expanduser("~"), "profile_dirs": dirs}


def _remove_files(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _agent_spawn(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Remove ``remove`` (stale files the processes will write afresh), then
    start each process detached, its output appended to its log.  All or
    none: if one cannot start, those started before it are stopped (the
    caller, told of the failure, would never know their PIDs)."""
    _remove_files(request.get("remove", []))
    started: list[dict[str, Any]] = []
    try:
        for process in request["processes"]:
            # A program given as ~/venv/bin/python (remote_python) is the remote home's, as in a shell.
            argv = [os.path.expanduser(process["argv"][0]), *process["argv"][1:]]
            with open(process["log"], "ab") as out:
                command = " ".join(shlex.quote(arg) for arg in argv)
                out.write(f"--- {datetime.now().isoformat(timespec='seconds')} {command}\n".encode())
                out.flush()
                offset = out.tell()
                child = subprocess.Popen(["/bin/sh", "-c", _WRAPPER, "sh", *argv], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **process.get("env", {})}, cwd=os.path.expanduser("~"))
            started.append({"pid": child.pid, "token": process_start_token(child.pid), "log": process["log"],
                            "offset": offset})
    except BaseException:
        _agent_stop({"processes": started, "wait": 5})
        raise
    return started


def _exit_code(log_path: str, offset: int) -> int | None:
    """The exit code the wrapper noted in the log after ``offset`` (None: none noted)."""
    for line in reversed(tail(log_path, lines=5, offset=offset)):
        match = _EXIT_PATTERN.match(line)
        if match:
            return int(match.group(1))
    return None


def _alive(process: dict[str, Any]) -> bool:
    """Whether the recorded process runs: only a record with a start token can
    say so (without one, its PID may be another process's by now)."""
    return bool(process.get("token")) and pid_alive(process["pid"], process["token"])


def _agent_status(request: dict[str, Any]) -> list[dict[str, Any]]:
    """For each process: whether it runs; if not, its exit code and last log lines."""
    answers = []
    for process in request["processes"]:
        running = _alive(process)
        answer: dict[str, Any] = {"running": running}
        if not running:
            lines = tail(process["log"], lines=12, offset=process["offset"])
            answer["code"] = _exit_code(process["log"], process["offset"])
            answer["tail"] = [line for line in lines if not _EXIT_PATTERN.match(line)]
        answers.append(answer)
    return answers


def _signal_group(pid: int, sig: int) -> None:
    """``sig`` to the process group ``pid`` leads (the wrapper and its process), else to ``pid``."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _agent_signal(request: dict[str, Any]) -> list[bool]:
    sent = []
    for process in request["processes"]:
        alive = _alive(process)
        if alive:
            _signal_group(process["pid"], request["signal"])
        sent.append(alive)
    return sent


def _agent_stop(request: dict[str, Any]) -> list[dict[str, Any]]:
    """SIGTERM to each running process, one shared wait of ``wait`` seconds,
    then SIGKILL to what is left; returns once all are gone (or a second
    ``wait`` after SIGKILL), having removed ``remove`` (connection files
    sent for them)."""
    processes = request["processes"]
    timeout = float(request["wait"])
    running = [_alive(p) for p in processes]
    for process, alive in zip(processes, running, strict=True):
        if alive:
            _signal_group(process["pid"], signal.SIGTERM)

    def wait(deadline: float) -> list[bool]:
        while True:
            alive = [_alive(p) for p in processes]
            if not any(alive) or time.monotonic() > deadline:
                return alive
            time.sleep(0.05)

    left = wait(time.monotonic() + timeout)
    for process, alive in zip(processes, left, strict=True):
        if alive:
            _signal_group(process["pid"], signal.SIGKILL)
    gone = [not alive for alive in (wait(time.monotonic() + timeout) if any(left) else left)]
    _remove_files(request.get("remove", []))
    return [{"was_running": was, "killed": killed, "gone": is_gone}
            for was, killed, is_gone in zip(running, left, gone, strict=True)]


AGENT_OPERATIONS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "prepare": _agent_prepare, "spawn": _agent_spawn, "status": _agent_status, "signal": _agent_signal,
    "stop": _agent_stop}


def agent_main(stdin: Any = None, stdout: Any = None) -> int:
    """Answer one JSON request from ``stdin`` with one JSON line on ``stdout``:
    ``{"result": ...}``, or ``{"error": "<one line>"}`` for a request that
    cannot be carried out."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        # Relative paths are the remote home's, as in an interactive login (sshd starts us in the
        # account's home, which $HOME may override).
        os.chdir(os.path.expanduser("~"))
        request = json.loads(stdin.read())
        if request.get("protocol") != AGENT_PROTOCOL:
            raise ClusterLauncherError(f"this host's cluster-launcher-ssh speaks agent protocol {AGENT_PROTOCOL}, "
                                       f"not {request.get('protocol')}: install the same version as on the "
                                       "host that starts the cluster")
        operation = AGENT_OPERATIONS[request["op"]]
        reply: dict[str, Any] = {"result": operation(request)}
    except (ClusterLauncherError, OSError, KeyError, ValueError, TypeError) as exc:
        reply = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())}
    stdout.write(json.dumps(reply) + "\n")
    stdout.flush()
    return 0


# ================================================================================================
# The local side: launchers, and the hosts they reach.
# ================================================================================================


def _profile_option(args: Sequence[str]) -> dict[str, str] | None:
    """The last ``--profile-dir``/``--profile`` in a command line (both
    ``--opt=value`` and ``--opt value``), as the agent's profile spec."""
    found = None
    for i, arg in enumerate(args):
        for option, key in (("--profile-dir", "profile_dir"), ("--profile", "profile")):
            if arg.startswith(option + "="):
                found = {key: arg.split("=", 1)[1]}
            elif arg == option and i + 1 < len(args):
                found = {key: args[i + 1]}
    return found


def _reuses_files(args: Sequence[str]) -> bool:
    """Whether a controller command line asks it to reuse its connection files."""
    return any(arg == "--reuse" or re.match(r"--\w+\.reuse(_files)?=(1|[Tt]rue)$", arg) for arg in args)


def _one_line(exc: BaseException) -> str:
    said = " ".join(str(exc).split())
    if isinstance(exc, ClusterLauncherError):
        return said or type(exc).__name__
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


class RemoteHost:
    """One host an SSH launcher works on: its SSH connection (opened on first
    use, kept for the polls that follow) and the agent requests made over it.
    Its errors say what failed there; the launcher names the host."""

    def __init__(self, launcher: SSHLauncher, destination: str):
        self.launcher = launcher
        self.destination = destination
        self._connection: SSHConnection | None = None
        self._lock = threading.Lock()
        self._status_cache: dict[tuple[int, str], tuple[float, dict[str, Any]]] = {}
        self.home = ""

    def connection(self) -> SSHConnection:
        with self._lock:
            if self._connection is None or self._connection.closed:
                from cluster_launcher.protocol.ssh import connect_ssh, parse_ssh_args

                if self._connection is not None:
                    self._connection.close()  # dropped by the server or the network: log in again
                    self._connection = None

                options = parse_ssh_args(self.launcher.ssh_args, f"{type(self.launcher).__name__}.ssh_args")
                self._connection = connect_ssh(self.destination, self.launcher.ssh_timeout, options=options)
            return self._connection

    def call(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        """Run the agent for one request; SSHError naming this host if it fails."""
        python = shlex.split(self.launcher.remote_python)
        request = json.dumps({"protocol": AGENT_PROTOCOL, "op": op, **fields}).encode()
        result = self.connection().run([*python, "-m", AGENT_MODULE], stdin=request,
                                       timeout=timeout or self.launcher.ssh_timeout)
        lines = result.stdout.decode(errors="replace").strip().splitlines()
        if result.status != 0 or not lines:
            raise SSHError(self._agent_failure(result.status, result.stderr_lines()))
        try:
            reply = json.loads(lines[-1])
        except ValueError:
            raise SSHError(f"the cluster-launcher agent answered {lines[-1][:200]!r}, not JSON "
                           f"(does the login print something?)") from None
        if "error" in reply:
            raise SSHError(f"the cluster-launcher agent there: {reply['error']}")
        return reply["result"]

    def _agent_failure(self, status: int, stderr: list[str]) -> str:
        python = self.launcher.remote_python
        last = next((line.strip() for line in reversed(stderr) if line.strip()), "no output")
        setting = "c.SSHLauncher.remote_python"
        if status == 127:
            return (f"{python!r} not found there ({last}); set {setting} to the Python that has "
                    "cluster-launcher installed there")
        if any("No module named" in line for line in stderr):
            return (f"cluster-launcher is not installed for {python!r} there ({last}); install "
                    f"it there (pip install cluster-launcher) or set {setting} to the Python that has it")
        return f"the cluster-launcher agent ({python} -m {AGENT_MODULE}) failed with code " \
               f"{status}: {last}"

    def resolve(self, path: str) -> str:
        """A path of this host as its agent sees it: relative ones under its $HOME."""
        path = path.replace("~/", "", 1) if path.startswith("~/") else path
        return path if posixpath.isabs(path) else posixpath.join(self.home, path)

    def prepare(self, profiles: list[dict[str, str]]) -> list[str]:
        """Create the profile folders ``profiles`` name; their absolute paths there."""
        answer = self.call("prepare", profiles=profiles)
        self.home = answer["home"]
        return answer["profile_dirs"]

    def stale(self, processes: Sequence[SSHProcessLauncher]) -> list[SSHProcessLauncher]:
        """Those of ``processes`` whose status is older than ``poll_interval``
        (an answer that one exited is kept for good)."""
        now, interval = time.monotonic(), self.launcher.poll_interval
        cache = self._status_cache
        return [p for p in processes if (key := (p.pid, p.start_token)) not in cache
                or (cache[key][1]["running"] and now - cache[key][0] >= interval)]

    def status(self, processes: Sequence[SSHProcessLauncher]) -> list[dict[str, Any]]:
        """Each process's status, asked of the host only if :meth:`stale`.  A
        host that cannot be asked counts its processes as running: the
        controller's heartbeats tell whether engines are gone, and a network
        hiccup must not."""
        stale = self.stale(processes)
        if stale:
            now = time.monotonic()
            try:
                answers = self.call("status", processes=[p.agent_record() for p in stale])
            except Exception as exc:  # whatever failed there, a poll goes on (the supervisor polls in a loop)
                log.warning("cannot ask %s whether its processes run: %s", self.destination, _one_line(exc))
                answers = [{"running": True}] * len(stale)
            for process, answer in zip(stale, answers, strict=True):
                self._status_cache[(process.pid, process.start_token)] = (now, answer)
        return [self._status_cache[(p.pid, p.start_token)][1] for p in processes]

    def forget_status(self) -> None:
        self._status_cache.clear()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def _in_parallel(work: dict[str, Callable[[], T]], delay: float = 0.0) -> dict[str, T | BaseException]:
    """Run each of ``work`` in its own thread (one after the other, ``delay``
    seconds apart, if ``delay``; here if there is one); its result, or the
    exception it raised, by key."""
    results: dict[str, T | BaseException] = {}
    if delay or len(work) == 1:
        for i, (key, job) in enumerate(work.items()):
            if i:
                time.sleep(delay)
            try:
                results[key] = job()
            except Exception as exc:
                results[key] = exc
        return results
    if not work:
        return results
    with ThreadPoolExecutor(max_workers=min(32, len(work)), thread_name_prefix="ssh-launcher") as pool:
        futures = {key: pool.submit(job) for key, job in work.items()}
        for key, future in futures.items():
            try:
                results[key] = future.result()
            except Exception as exc:
                results[key] = exc
    return results


class SSHLauncher(Launcher):
    """What the SSH launchers share: how to log in to a host, the remote
    Python, the remote profile folder and the files to move.  Set for all
    of them as ``c.SSHLauncher.<option>``."""

    hostname = Unicode("", help="The host to start on ([user@]host[:port] or a ~/.ssh/config Host alias); "
                       "for engines, SSHEngineSetLauncher.engines names the hosts instead.").tag(config=True)
    user = Unicode("", help="The user to log in as, unless the host says (user@host); default: User in "
                   "~/.ssh/config, else your own name.").tag(config=True)
    port = Integer(0, min=0, max=65535, help="The SSH port, unless the host says (host:port); 0: Port in "
                   "~/.ssh/config, else 22.").tag(config=True)
    ssh_args = List(Unicode(), help="OpenSSH command-line options for the logins: -p PORT, -l USER, -i KEY, "
                    "-J JUMPHOST, -F CONFIG, -o Key=Value (HostName, Port, User, IdentityFile, IdentitiesOnly, "
                    "ProxyJump, ProxyCommand, UserKnownHostsFile, StrictHostKeyChecking, ConnectTimeout, "
                    "ServerAliveInterval, Compression); -tt and similar flags are accepted and have no "
                    "effect.").tag(config=True, state=True)
    remote_python = Unicode("python3", help="The Python on the remote hosts that has cluster-launcher "
                            "installed (a command, e.g. '/opt/venv/bin/python'): it runs the agent and, by "
                            "default, the engines and controller.").tag(config=True, state=True)
    remote_profile_dir = Unicode("", help="The profile folder on the remote hosts (relative: to the remote "
                                 "home).  Default: this host's profile folder, relative to your home if it is "
                                 "under it (as IPython).  A --profile-dir in the engine or controller "
                                 "arguments wins.").tag(config=True)
    to_send = List(Tuple(Unicode(), Unicode()), default_value=None, allow_none=True,
                   help="(local path, remote path) of each file to send to a host before starting there "
                   "(relative remote paths: to the remote home).  Unset: the engines' connection file, to "
                   "the remote profile's security folder; [] sends nothing (a shared filesystem).").tag(config=True)
    to_fetch = List(Tuple(Unicode(), Unicode()), default_value=None, allow_none=True,
                    help="(remote path, local path) of each file to fetch once the controller started. Unset: "
                    "its two connection files, into this profile's security folder; [] fetches nothing "
                    "(a shared filesystem).").tag(config=True)
    transport = Unicode("sftp", help="The connection-file transport that moves to_send and to_fetch: 'sftp' "
                        "(over the launcher's own SSH connection), 'file' (a copy made on this host, for remote paths "
                        "that are the same here: a filesystem both mount at the same path), or another installed "
                        "one.").tag(config=True)
    ssh_timeout = Float(30.0, min=1.0, help="Seconds a login, or one command run over SSH, may take.").tag(
        config=True, state=True)
    poll_interval = Float(2.0, min=0.0, help="Seconds between two asks of a host whether its processes still "
                          "run (each is one SSH command).").tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._hosts: dict[str, RemoteHost] = {}
        self._lock = threading.Lock()  # for _hosts, and what start's threads add to (launched, sent)
        self._transport: Transport | None = None

    # --- hosts -------------------------------------------------------------------

    def destination(self, host: str) -> str:
        """``host`` with this launcher's ``user`` and ``port`` added where it names none."""
        from cluster_launcher.protocol.ssh import split_destination

        user, name, port = split_destination(host)
        user, port = user or self.user, port or self.port
        name = f"[{name}]" if ":" in name else name
        return f"{user + '@' if user else ''}{name}{f':{port}' if port else ''}"

    def remote_host(self, destination: str) -> RemoteHost:
        """The host ``destination`` (one connection per host, shared by this launcher and its children)."""
        owner = self.parent if isinstance(self.parent, SSHLauncher) else self
        with owner._lock:
            if destination not in owner._hosts:
                owner._hosts[destination] = RemoteHost(owner, destination)
            return owner._hosts[destination]

    def close(self) -> None:
        """Close the SSH connections this launcher opened (a later call opens them again)."""
        for host in list(self._hosts.values()):
            host.close()
        self._hosts.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def check(self, n: int = 1) -> None:
        from cluster_launcher.protocol.ssh import parse_ssh_args

        parse_ssh_args(self.ssh_args, f"{type(self).__name__}.ssh_args")
        try:
            plugins.resolve("transport", self.transport)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{type(self).__name__}.transport: {exc}") from None

    # --- what runs there ---------------------------------------------------------

    def remote_command(self, role: str) -> list[str]:
        """``cluster-launcher <role>`` run by the remote Python (the default engine_cmd/controller_cmd)."""
        return [*shlex.split(self.remote_python), "-m", "cluster_launcher", role]

    # --- profiles and files ------------------------------------------------------

    def remote_profile(self, args: Sequence[str]) -> dict[str, str]:
        """Which profile folder a remote command line uses, for the agent to resolve:
        its own --profile-dir/--profile, else ``remote_profile_dir``, else ours
        relative to our home (IPython's rule)."""
        named = _profile_option(args)
        if named:
            return named
        if self.remote_profile_dir:
            return {"profile_dir": self.remote_profile_dir}
        home = os.path.expanduser("~").rstrip("/") + "/"
        path = self.profile_dir
        return {"profile_dir": path[len(home):] if path.startswith(home) else path}

    @staticmethod
    def shown_profile(spec: dict[str, str]) -> str:
        """A remote profile spec as a dry run shows it (the agent resolves it at start)."""
        if "profile" in spec:
            return f"<the remote profile {spec['profile']!r}>"
        path = spec["profile_dir"]
        return path if posixpath.isabs(path) or path.startswith("~") else f"~/{path}"

    def file_transport(self) -> Transport:
        if self._transport is None:
            cls = plugins.resolve("transport", self.transport)
            self._transport = cls(parent=self)
        return self._transport

    def send_files(self, host: RemoteHost, files: Iterable[tuple[str, str]]) -> None:
        for local, remote in files:
            if not os.path.exists(local):
                raise ClusterError(f"{type(self).__name__}.to_send: {local} does not exist, so it cannot be sent to "
                                   f"{host.destination}")
            self.file_transport().send(local, host.resolve(remote), host.connection())
            log.debug("sent %s to %s:%s", local, host.destination, host.resolve(remote))


class SSHProcessLauncher(SSHLauncher):
    """One process on one host, started through the agent there and recorded
    by host, PID and start token (the building block of the SSH launchers)."""

    log_name: str = "process"
    host = Unicode("", help="The host it runs on, as logged in to.").tag(config=False, state=True)
    pid = Integer(0, help="Its PID on that host.").tag(config=False, state=True)
    start_token = Unicode("", help="When it started there (see process_start_token).").tag(config=False, state=True)
    log_path = Unicode("", help="Its log file on that host.").tag(config=False, state="log")
    log_offset = Integer(0, help="Where this run's output starts in the log file.").tag(config=False, state=True)
    remote_profile_path = Unicode("", help="The profile folder it uses there.").tag(config=False, state=True)

    args: list[str]

    def agent_record(self) -> dict[str, Any]:
        return {"pid": self.pid, "token": self.start_token, "log": self.log_path, "offset": self.log_offset}

    def spawn_request(self, argv: list[str]) -> dict[str, Any]:
        """What the agent needs to start this process, its log in the remote profile."""
        self.log_path = posixpath.join(self.remote_profile_path, "log",
                                       f"{self.log_name}-{self.cluster_id or 'default'}.log")
        return {"argv": argv, "log": self.log_path, "env": dict(self.environment)}

    def started(self, answer: dict[str, Any]) -> None:
        self.pid, self.start_token, self.log_offset = answer["pid"], answer["token"], answer["offset"]

    @property
    def cluster_args(self) -> list[str]:
        # The remote profile folder, unless the role's arguments name their own (it was resolved from those).
        profile = [] if _profile_option(self.role_args) else [f"--profile-dir={self.remote_profile_path}"]
        return profile + ([f"--cluster-id={self.cluster_id}"] if self.cluster_id else [])

    @property
    def role_args(self) -> list[str]:
        """The role's own arguments (engine_args, controller_args), where a --profile-dir may be."""
        return []

    def status(self) -> dict[str, Any]:
        if not self.pid:
            return {"running": False, "code": 0, "tail": []}
        return self.remote_host(self.host).status([self])[0]

    def poll(self) -> int | None:
        answer = self.status()
        return None if answer["running"] else _code(answer)

    def exited(self) -> list[tuple[int, str, list[str]]]:
        answer = self.status()
        if answer["running"]:
            return []
        return [(_code(answer), f"{self.host}:{self.log_path}", answer.get("tail", []))]

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, log {self.host}:{self.log_path}"

    def display_name(self) -> str:
        """'engine 3 on node1', 'controller on node1'."""
        return f"{self.name_from_log(self.log_path, self.log_name)} on {self.host}"

    def signal(self, sig: int) -> None:
        if self.pid:
            self.remote_host(self.host).call("signal", processes=[self.agent_record()], signal=int(sig))

    def stop(self) -> None:
        self.killed = ()
        if not self.pid:
            return
        host = self.remote_host(self.host)
        try:
            self.killed = tuple(_stop_on_host(host, [self], self.stop_timeout))
        finally:
            self.close()


def _code(answer: dict[str, Any]) -> int:
    """A stopped process's exit code; -1 when none was noted (the wrapper itself was killed)."""
    code = answer.get("code")
    return -1 if code is None else int(code)


def _stop_on_host(host: RemoteHost, processes: Sequence[SSHProcessLauncher], timeout: float,
                  remove: Sequence[str] = ()) -> list[str]:
    """Stop ``processes`` of one host in one agent call, then remove the files
    ``remove``; a line for each process that had to be killed (or could not
    be stopped)."""
    try:
        answers = host.call("stop", timeout=2 * timeout + _STOP_MARGIN, wait=timeout,
                            processes=[p.agent_record() for p in processes], remove=list(remove))
    except Exception as exc:  # a stop must reach every other host whatever failed on this one
        if not processes:
            return [f"{host.destination}: cannot remove {', '.join(remove)}: {_one_line(exc)}"]
        pids = ", ".join(str(p.pid) for p in processes)
        return [f"{host.destination}: cannot stop {len(processes)} process(es) (pids {pids}); they may still run "
                f"there: {_one_line(exc)}"]
    host.forget_status()
    lines = []
    for process, answer in zip(processes, answers, strict=True):
        if answer["killed"]:
            outcome = "killed" if answer["gone"] else f"still running {timeout:g}s after SIGKILL"
            lines.append(f"{process.display_name()} (pid {process.pid}) ignored SIGTERM for {timeout:g}s: {outcome}")
    return lines


class SSHControllerLauncher(SSHProcessLauncher, ControllerLauncher):
    """The controller on ``hostname`` (IPython's SSHControllerLauncher), its
    connection files fetched back here (``to_fetch``)."""

    log_name = "controller"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._fetched: set[str] = set()  # the local paths of fetch_list() already here

    @default("controller_cmd")
    def _remote_controller_cmd(self) -> list[str]:
        return self.remote_command("controller")

    @property
    def args(self) -> list[str]:
        return [*ControllerLauncher.args.fget(self), *self.captured_output_args()]  # type: ignore[attr-defined]

    @property
    def role_args(self) -> list[str]:
        return list(self.controller_args)

    def fetch_list(self) -> list[tuple[str, str]]:
        """``to_fetch``, or its default: both connection files into this profile."""
        if self.to_fetch is not None:
            return [tuple(pair) for pair in self.to_fetch]  # type: ignore[misc]
        locals_ = [connection_file(self.profile_dir, role, self.cluster_id) for role in ("client", "engine")]
        return [(posixpath.join(self.remote_profile_path, "security", os.path.basename(local)), local)
                for local in locals_]

    def check(self, n: int = 1) -> None:
        super().check(n)
        if not self.hostname:
            raise ClusterError("SSHControllerLauncher.hostname is empty: say where the controller runs, e.g. "
                               "c.SSHControllerLauncher.hostname = 'controller.example.com'")

    def start(self, n: int = 1) -> None:
        self.check()
        self.host = self.destination(self.hostname)
        host = self.remote_host(self.host)
        try:
            (self.remote_profile_path,) = host.prepare([self.remote_profile(self.controller_args)])
            self.send_files(host, self.to_send or [])
            # The connection files of a controller that died are stale: removed first, so only the new
            # controller's are fetched (unless it is to reuse them).
            own_files = [posixpath.join(self.remote_profile_path, "security", os.path.basename(
                connection_file(self.profile_dir, role, self.cluster_id))) for role in ("client", "engine")]
            reuse = _reuses_files(self.args) or bool((self.config.get("Controller") or {}).get("reuse"))
            (answer,) = host.call("spawn", processes=[self.spawn_request(self.args)], remove=[] if reuse else own_files)
        except ClusterLauncherError as exc:
            raise ClusterError(f"controller not started on {self.host}: {_one_line(exc)}") from None
        self.started(answer)
        self._fetched.clear()

    def dry_run(self, n: int = 1) -> list[str]:
        self.check()
        host = self.destination(self.hostname)
        self.remote_profile_path = self.shown_profile(self.remote_profile(self.controller_args))
        lines = [f"on {host}: $ {shlex.join(self.args)}"]
        lines += [f"  after sending {local} to {host}:{remote}" for local, remote in self.to_send or []]
        lines += [f"  then fetching {host}:{remote} to {local}" for remote, local in self.fetch_list()]
        return lines

    def fetch_connection_files(self) -> None:
        host = self.remote_host(self.host)
        for remote, local in self.fetch_list():
            if local in self._fetched:
                continue
            try:
                self.file_transport().fetch(host.resolve(remote), local, host.connection())
            except FileNotFoundError:
                continue  # not written yet
            self._fetched.add(local)
            log.debug("fetched %s:%s to %s", self.host, host.resolve(remote), local)


class SSHEngineLauncher(SSHProcessLauncher, EngineSetLauncher):
    """One engine on one host (a building block of SSHEngineSetLauncher, IPython's SSHEngineLauncher)."""

    log_name = "engine"

    @default("engine_cmd")
    def _remote_engine_cmd(self) -> list[str]:
        return self.remote_command("engine")

    @property
    def args(self) -> list[str]:
        return [*EngineSetLauncher.args.fget(self), *self.captured_output_args()]  # type: ignore[attr-defined]

    @property
    def role_args(self) -> list[str]:
        return list(self.engine_args)


class SSHEngineSetLauncher(SSHLauncher, EngineSetLauncher):
    """Engines on the hosts of IPython's ``engines`` dict, ``{host: n}`` or
    ``{host: (n, [engine args])}``, the connection file sent to each host
    first (``to_send``); the hosts start in parallel, and one that fails
    (unreachable, key refused, no cluster-launcher there) is reported while
    the others start."""

    engines = Dict(help="The engines to start, by host: {'host1.example.com': 2, 'host3.example.com': "
                   "(1, ['--profile-dir=/home/different/location'])}; a host is [user@]host[:port] or a "
                   "~/.ssh/config Host alias, a tuple's arguments replace engine_args for its host.  Empty: n "
                   "engines on SSHLauncher.hostname.").tag(config=True)
    delay = Float(0.0, min=0.0, help="Seconds between starting two hosts' engines (IPython's delay); 0 starts "
                  "the hosts all at once.").tag(config=True)
    first_index = Integer(0, help="Number of the first engine's log file, so engines added to a running "
                          "cluster do not share logs with the first ones.").tag(config=False, state=True)
    launched = List(Instance(SSHEngineLauncher), help="One record per engine started: host, PID, start token "
                    "and log.").tag(config=False, state=True)
    sent = List(List(Unicode()), help="[host, path] of each connection file sent by default (removed at stop, "
                "unless the controller reuses its files).").tag(config=False, state=True)

    @default("engine_cmd")
    def _remote_engine_cmd(self) -> list[str]:
        return self.remote_command("engine")

    def plan(self, n: int) -> dict[str, tuple[int, list[str]]]:
        """``{destination: (count, engine args)}`` from ``engines`` (or ``n`` on ``hostname``)."""
        engines = self.engines or ({self.hostname: n} if self.hostname else {})
        if not engines:
            raise ClusterError("SSHEngineSetLauncher.engines is empty: say where engines run, e.g. "
                               "c.SSHEngineSetLauncher.engines = {'node1.example.com': 4, 'node2.example.com': 4}")
        planned: dict[str, tuple[int, list[str]]] = {}
        for host, value in engines.items():
            where = f"SSHEngineSetLauncher.engines[{host!r}]"
            count, args = (value[0], value[1]) if isinstance(value, (tuple, list)) and len(value) == 2 \
                else (value, self.engine_args)
            if not isinstance(host, str) or not host:
                raise ConfigError(f"SSHEngineSetLauncher.engines: {host!r} is not a host name")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ConfigError(f"{where} = {value!r}: expected a number of engines, or (number, [engine args])")
            if not (isinstance(args, (list, tuple)) and all(isinstance(a, str) for a in args)):
                raise ConfigError(f"{where} = {value!r}: the engine arguments must be a list of strings")
            if count:
                planned[self.destination(host)] = (count, list(args))
        return planned

    def check(self, n: int = 1) -> None:
        super().check(n)
        self.plan(n)

    def start(self, n: int = 1) -> None:
        self.check(n)
        plan = self.plan(n)
        self._warn_if_unreachable(plan)
        first = self.first_index + len(self.launched)
        indexes, next_index = {}, first
        for host, (count, _) in plan.items():
            indexes[host] = list(range(next_index, next_index + count))
            next_index += count
        results = _in_parallel({host: lambda h=host: self._start_host(h, *plan[h], indexes[h]) for host in plan},
                               delay=self.delay)
        failures = []
        for host, result in results.items():
            if isinstance(result, BaseException):
                if not isinstance(result, ClusterLauncherError):  # not one we foresaw: its traceback for a report
                    log.debug("starting engines on %s failed", host, exc_info=result)
                count = plan[host][0]
                failures.append(f"{host}: {count} engine{'s' if count != 1 else ''} not started: {_one_line(result)}")
        order = {host: i for i, host in enumerate(plan)}  # hosts finish in any order: list them as planned
        self.launched.sort(key=lambda engine: order.get(engine.host, len(order)))
        self.n = len(self.launched)
        self.start_failures = tuple(failures)
        if not any(not isinstance(result, BaseException) for result in results.values()):
            raise ClusterError("no engine started: " + "; ".join(failures))

    def dry_run(self, n: int = 1) -> list[str]:
        """Per host: the engine command, and the files sent there first."""
        self.check(n)
        plan = self.plan(n)
        self.n = sum(count for count, _ in plan.values())
        lines = []
        for host, (count, args) in plan.items():
            engine = self.child_launcher(SSHEngineLauncher, n=1, host=host, engine_args=args)
            engine.remote_profile_path = self.shown_profile(self.remote_profile(args))
            lines.append(f"on {host}: {count} engine{'s' if count != 1 else ''}: $ {shlex.join(engine.args)}")
            if self.to_send is None:
                local = connection_file(self.profile_dir, "engine", self.cluster_id)
                target = posixpath.join(engine.remote_profile_path, "security", os.path.basename(local))
                lines.append(f"  after sending {local} to {host}:{target}")
            else:
                lines += [f"  after sending {local} to {host}:{remote}" for local, remote in self.to_send]
        return lines

    def _warn_if_unreachable(self, plan: dict[str, tuple[int, list[str]]]) -> None:
        """Say so when the controller listens on loopback only and engines of
        another host do not tunnel: they would wait for it in vain."""
        try:
            with open(connection_file(self.profile_dir, "engine", self.cluster_id)) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return
        location = str(info.get("location", ""))
        if info.get("ssh") or not _is_loopback(location) or (self.config.get("Engine") or {}).get("ssh"):
            return
        from cluster_launcher.protocol.ssh import parse_ssh_args, resolve_target

        for host, (_, args) in plan.items():
            if any(arg.startswith(("--ssh", "--Engine.ssh=", "--EngineFactory.sshserver=")) for arg in args):
                continue
            try:
                hostname = resolve_target(host, options=parse_ssh_args(self.ssh_args)).hostname
            except ClusterLauncherError:
                continue  # its start will say what is wrong
            if not _is_loopback(hostname):
                log.warning("%s: the controller listens on %s, which engines there cannot reach: make it listen "
                            "where they can (--ip=* --location=ADDRESS, c.Controller.ip) or let them tunnel "
                            "through SSH (--enginessh=HOST, c.Controller.enginessh)", host, location)

    def _start_host(self, host: str, count: int, args: list[str], indexes: list[int]) -> list[SSHEngineLauncher]:
        """Prepare ``host``, send its files, start ``count`` engines there."""
        remote = self.remote_host(host)
        engines = [self.child_launcher(SSHEngineLauncher, n=1, host=host, engine_args=args) for _ in indexes]
        for engine, index in zip(engines, indexes, strict=True):
            engine.log_name = f"engine-{index}"
        (profile_path,) = remote.prepare([self.remote_profile(args)])
        if self.to_send is None:
            local = connection_file(self.profile_dir, "engine", self.cluster_id)
            target = posixpath.join(profile_path, "security", os.path.basename(local))
            self.send_files(remote, [(local, target)])
            with self._lock:
                self.sent.append([host, target])
        else:
            self.send_files(remote, [tuple(pair) for pair in self.to_send])  # type: ignore[misc]
        for engine in engines:
            engine.remote_profile_path = profile_path
        answers = remote.call("spawn", processes=[engine.spawn_request(engine.args) for engine in engines])
        for engine, answer in zip(engines, answers, strict=True):
            engine.started(answer)
        # Recorded at once (not when every host is done): a start cut short (Ctrl-C) must still be able
        # to stop them.
        with self._lock:
            self.launched.extend(engines)
        return engines

    def by_host(self) -> dict[str, list[SSHEngineLauncher]]:
        grouped: dict[str, list[SSHEngineLauncher]] = {}
        for engine in self.launched:
            grouped.setdefault(engine.host, []).append(engine)
        return grouped

    def statuses(self) -> list[tuple[SSHEngineLauncher, dict[str, Any]]]:
        """Each engine with its status: one agent call per host whose answer
        is older than ``poll_interval``, the hosts asked in parallel."""
        grouped = self.by_host()
        stale = [host for host in grouped if self.remote_host(host).stale(grouped[host])]
        asked = _in_parallel({host: lambda h=host: self.remote_host(h).status(grouped[h]) for host in stale})
        pairs = []
        for host, engines in grouped.items():
            answers = asked[host] if host in asked else self.remote_host(host).status(engines)  # cached
            if isinstance(answers, BaseException):
                raise answers
            pairs += zip(engines, answers, strict=True)
        return pairs

    def poll(self) -> int | None:
        statuses = self.statuses()
        if any(status["running"] for _, status in statuses):
            return None
        return max((_code(status) for _, status in statuses), default=0)

    def running_engines(self) -> int:
        return sum(status["running"] for _, status in self.statuses())

    def exited(self) -> list[tuple[int, str, list[str]]]:
        return [(_code(status), f"{engine.host}:{engine.log_path}", status.get("tail", []))
                for engine, status in self.statuses() if not status["running"]]

    # One slot per engine started (first_index + its place in `launched`, the number of its log file); the
    # agent's wrapper notes each one's exit code in its log, so any later process tells a crash from a shutdown.
    def dead_engines(self) -> list[DeadEngine]:
        order = {id(engine): i for i, engine in enumerate(self.launched)}
        dead = []
        for engine, status in self.statuses():
            slot = self.first_index + order[id(engine)]
            if not status["running"] and _code(status) != 0 and str(slot) not in self.given_up:
                dead.append(DeadEngine(slot, _code(status), f"{engine.host}:{engine.log_path}",
                                       f"engine slot {slot} on {engine.host}"))
        return dead

    def restart_engine(self, slot: int) -> None:
        i = slot - self.first_index
        old = self.launched[i]
        engine = self.child_launcher(SSHEngineLauncher, n=1, host=old.host, engine_args=old.engine_args)
        engine.log_name = f"engine-{slot}"  # the same log file there, appended to
        engine.remote_profile_path = old.remote_profile_path  # prepared, its connection file sent, at start
        remote = self.remote_host(old.host)
        (answer,) = remote.call("spawn", processes=[engine.spawn_request(engine.args)])
        engine.started(answer)
        remote.forget_status()
        self.launched = [*self.launched[:i], engine, *self.launched[i + 1:]]
        self.count_restart(slot)

    def describe(self) -> str:
        grouped = self.by_host()
        parts = [f"{len(engines)} on {host} (pid{'s' if len(engines) > 1 else ''} "
                 f"{', '.join(str(e.pid) for e in engines)})" for host, engines in grouped.items()]
        logs = dict.fromkeys(f"{e.host}:{posixpath.dirname(e.log_path)}" for e in self.launched)
        return f"{', '.join(parts) or 'none'}; logs in {', '.join(logs) or '-'}"

    def signal(self, sig: int) -> None:
        grouped = self.by_host()
        results = _in_parallel({host: lambda h=host: self.remote_host(h).call(
            "signal", processes=[e.agent_record() for e in grouped[h]], signal=int(sig)) for host in grouped})
        failed = [f"{host}: {_one_line(result)}" for host, result in results.items()
                  if isinstance(result, BaseException)]
        if failed:
            raise ClusterError(f"cannot send signal {int(sig)} to the engines of {len(failed)} host(s): "
                               + "; ".join(failed))

    def stop(self) -> None:
        # Every host at once, each in one agent call: n engines on m hosts stop within one stop_timeout.
        grouped = self.by_host()
        reuse = bool((self.config.get("Controller") or {}).get("reuse"))
        sent: dict[str, list[str]] = {}
        for host, path in ([] if reuse else self.sent):
            sent.setdefault(host, []).append(path)
        hosts = list(dict.fromkeys([*grouped, *sent]))  # a host whose engines did not start still had the file
        try:
            results = _in_parallel({host: lambda h=host: _stop_on_host(
                self.remote_host(h), grouped.get(h, []), self.stop_timeout, sent.get(h, [])) for host in hosts})
        finally:
            self.close()
        self.killed = tuple(line for host in hosts for line in _lines(results[host], host))


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this host's loopback only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def _lines(result: list[str] | BaseException, host: str) -> list[str]:
    if isinstance(result, BaseException):
        return [f"{host}: cannot stop its engines: {_one_line(result)}"]
    return result


@hookimpl
def cluster_launcher_register_launchers():
    return [SSHControllerLauncher, SSHEngineSetLauncher]


if __name__ == "__main__":
    sys.exit(agent_main())
