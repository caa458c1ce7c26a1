"""Fake LSF (``bsub``, ``bjobs``, ``bkill``) and Windows HPC Server (``job``) commands that run their jobs
as local processes, for testing batch-system launchers end to end where neither system can be installed.

:func:`install_fake_commands` writes the commands into ``<directory>/bin`` and returns the environment
that puts them first on PATH.  They print exactly the formats captured from the real commands in
:mod:`cluster_launcher.testing.batch_samples`; where no real sample was found (``job view``'s layout,
usage errors) they print the plain form defined below and say so, so a launcher should rely on the exit
status there.  Every process they start is recorded by PID and start time, so :func:`stop_all` can stop
what a test left behind without ever signalling a process that merely reuses a PID.

``<directory>/state`` holds ``jobs.json`` (every job and its elements, changed under ``state/lock``),
``scripts/`` (job scripts read from bsub's standard input, as LSF spools them) and ``elements/``.  An
element is one LSF job, one element of an LSF job array, or one task of an HPC job.  Each runs under a
waiter: a small Python process in its own session that starts the element's command with ``/bin/sh`` in
a process group of its own, records it (``<job>.<index>.started``), turns a stop request (SIGTERM, sent
by bkill, ``job cancel`` or stop_all) into SIGTERM to that group and SIGKILL ``kill_grace`` seconds later,
stops whatever the job left running in its group once the command exits, and writes the exit status
(``<job>.<index>.exit``).  The state of an element is read from those files and from whether its waiter
still runs.

The jobs start at once: PEND (HPC: Queued) lasts only until the waiter has started the command.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psutil

from . import batch_samples as samples

#: The commands each system gets.
SYSTEMS: dict[str, tuple[str, ...]] = {"lsf": ("bsub", "bjobs", "bkill"), "winhpc": ("job",)}
#: The first job id a new state directory hands out; ids then increase by one per job.
FIRST_JOB_ID = 1001
#: The queue a job goes to when bsub is not given -q.
LSF_DEFAULT_QUEUE = "normal"

# What the fakes print where no real sample was found (batch_samples says what is missing).  Launchers
# must not parse these: only the exit status is meant to be relied on.
USAGE_ERROR_FORMAT = "{command}: illegal option -- {option}"
LSF_EXIT_STATUS_ERROR = 255  # bsub's and bkill's status for their captured errors, used for the rest too
WINHPC_EXIT_STATUS_ERROR = 1
#: ``job view``'s only line: ``State``, non-word characters, the state, as the one public reader of that
#: output expects; the real command prints more fields around it.
WINHPC_VIEW_STATE_FORMAT = "State : {state}"

_TIME_TOLERANCE = 0.01  # seconds: the same process reports the same create time to this precision
_POLL = 0.02
_WAITER_CODE = ("import sys\n"
                "from cluster_launcher.testing.fake_batch import _waiter_main\n"
                "sys.exit(_waiter_main(sys.argv[1:]))")

# bsub's options: those that take a value, and flags (a launcher's #BSUB lines use these; any other is
# refused as an unknown option).  Values may also be attached: ``-n4``, ``-Jname``.
_BSUB_VALUE_OPTIONS = ("J", "o", "oo", "e", "eo", "i", "q", "n", "cwd", "W", "R", "M", "P", "G", "u", "m", "L",
                       "app", "gpu", "w", "E", "Ep", "g", "sla", "b", "t", "c", "C", "D", "F", "S", "v", "Jd",
                       "Lp", "U", "k")
_BSUB_FLAGS = ("x", "N", "B", "r", "rn")
_BJOBS_VALUE_OPTIONS = ("o", "u", "J", "q")
_BJOBS_FLAGS = ("a", "w", "noheader")
_BKILL_VALUE_OPTIONS = ("s",)
_BKILL_FLAGS: tuple[str, ...] = ()

# bjobs -o fields the fake knows, by canonical name (aliases: id, name).
_BJOBS_FIELDS = ("jobid", "stat", "exit_code", "exit_reason", "job_name", "queue", "user", "from_host",
                 "exec_host", "submit_time")
_BJOBS_FIELD_ALIASES = {"id": "jobid", "name": "job_name"}


class _UsageError(Exception):
    """A command line the fake refuses, with the one line to print on standard error."""


# ------------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------------

def install_fake_commands(system: str, directory: str | os.PathLike[str], *, queues: Sequence[str] | None = None,
                          kill_grace: float = 3.0) -> dict[str, str]:
    """Write the fake commands of ``system`` (``"lsf"`` or ``"winhpc"``) into ``directory/bin`` and return
    the environment additions that make them the ones found: ``{"PATH": "<directory>/bin:<PATH>"}``.

    The commands keep their state in ``directory/state`` (the path is written into them, so they need no
    environment variable).  ``queues``: the queues bsub accepts (any, by default); another is refused as
    a real cluster refuses an unknown queue.  ``kill_grace``: seconds between the SIGTERM and the SIGKILL
    that stop a job.  Installing again (either system, same directory) keeps the jobs already there."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown batch system {system!r}: expected one of {', '.join(SYSTEMS)}")
    base = Path(directory).resolve()
    state = _State(base)
    bin_dir = base / "bin"
    for folder in (bin_dir, state.root, state.elements, state.scripts):
        folder.mkdir(parents=True, exist_ok=True)
    _write_json(state.root / "config.json",
                {"queues": list(queues) if queues is not None else None, "kill_grace": float(kill_grace)})
    with state.locked():
        pass  # creates jobs.json when new
    for command in SYSTEMS[system]:
        path = bin_dir / command
        path.write_text(_command_stub(system, command, state.root))
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}


def live_pids(directory: str | os.PathLike[str]) -> list[int]:
    """PIDs of every process the fakes started from ``directory`` that still runs: the waiters, and the
    jobs' processes (the job script and whatever it started in its process group)."""
    state = _State(Path(directory).resolve())
    groups = _process_groups()
    pids: set[int] = set()
    for element in _all_elements(state):
        if element.waiter_alive:
            pids.add(element.record["waiter_pid"])
        pids.update(process.pid for process in _job_processes(element, groups))
    return sorted(pids)


def stop_all(directory: str | os.PathLike[str], timeout: float = 10.0) -> list[int]:
    """Stop everything the fakes started from ``directory`` (test teardown) and return the PIDs that were
    still running.  Asks each waiter to stop its job (SIGTERM, then SIGKILL after the grace period), then
    kills, by PID, whatever is left after ``timeout``; AssertionError naming any process that survives."""
    state = _State(Path(directory).resolve())
    found = live_pids(directory)
    for element in _all_elements(state):
        if element.waiter_alive:
            _signal_process(element.record["waiter_pid"], element.record["waiter_created"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live_pids(directory) and time.monotonic() < deadline:
        time.sleep(_POLL)
    groups = _process_groups()
    for element in _all_elements(state):
        if element.waiter_alive:
            _signal_process(element.record["waiter_pid"], element.record["waiter_created"], signal.SIGKILL)
        for process in _job_processes(element, groups):
            with contextlib.suppress(psutil.Error):
                process.kill()
    deadline = time.monotonic() + 5
    while (left := live_pids(directory)) and time.monotonic() < deadline:
        time.sleep(_POLL)
    assert not left, f"still running after stop_all: pids {left}"
    return found


def run_command(state_dir: str, command: str, argv: list[str]) -> int:
    """What a fake command runs: ``command`` (bsub, bjobs, bkill or job) with its arguments ``argv``,
    against the state in ``state_dir``; returns the exit status."""
    state = _State(Path(state_dir).parent)
    handlers = {"bsub": _bsub, "bjobs": _bjobs, "bkill": _bkill, "job": _job}
    try:
        return handlers[command](state, argv)
    except _UsageError as error:
        print(error, file=sys.stderr)
        return WINHPC_EXIT_STATUS_ERROR if command == "job" else LSF_EXIT_STATUS_ERROR


# ------------------------------------------------------------------------------------------------------
# The state directory
# ------------------------------------------------------------------------------------------------------

class _State:
    """``<directory>/state``: jobs.json, changed only under the lock, and the elements' files."""

    def __init__(self, base: Path):
        self.root = base / "state"
        self.elements = self.root / "elements"
        self.scripts = self.root / "scripts"
        self.jobs_file = self.root / "jobs.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """jobs.json, for changing: written back when the block ends without an exception."""
        with open(self.root / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            jobs = _read_json(self.jobs_file) if self.jobs_file.exists() else {"next_id": FIRST_JOB_ID, "jobs": {}}
            yield jobs
            _write_json(self.jobs_file, jobs)

    def jobs(self) -> dict[str, Any]:
        """jobs.json as it is now (empty before the first install)."""
        if not self.jobs_file.exists():
            return {"next_id": FIRST_JOB_ID, "jobs": {}}
        with open(self.root / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            return _read_json(self.jobs_file)

    def config(self) -> dict[str, Any]:
        return _read_json(self.root / "config.json")

    def element_file(self, job_id: int, index: int, kind: str) -> Path:
        """``kind``: spec (written at submission), started and exit (by the waiter), kill (stop request),
        log (the waiter's own errors)."""
        return self.elements / f"{job_id}.{index}.{kind}"


@dataclass
class _Element:
    """One element of a job and what is known of it now."""

    job: dict[str, Any]
    index: int
    record: dict[str, Any]  # waiter_pid, waiter_created
    started: dict[str, Any] | None  # pid, created, started, host
    exited: dict[str, Any] | None  # exit_code, killed, finished, error
    waiter_alive: bool

    @property
    def state(self) -> str:
        """pending, running, done (exit status 0, not stopped) or failed."""
        if self.exited is not None:
            return "done" if self.exited["exit_code"] == 0 and not self.exited["killed"] else "failed"
        if not self.waiter_alive:
            return "failed"  # the waiter was killed before it could record the exit status
        return "running" if self.started is not None else "pending"

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def exit_code(self) -> int | None:
        return None if self.exited is None else int(self.exited["exit_code"])

    @property
    def killed(self) -> bool:
        return bool(self.exited and self.exited["killed"])

    @property
    def name(self) -> str:
        job = self.job
        return f"{job['name']}[{self.index}]" if job.get("array") else str(job["name"])


def _elements_of(state: _State, job: dict[str, Any]) -> list[_Element]:
    found = []
    for index_text, record in sorted(job["elements"].items(), key=lambda item: int(item[0])):
        index = int(index_text)
        started_file = state.element_file(job["id"], index, "started")
        exit_file = state.element_file(job["id"], index, "exit")
        found.append(_Element(
            job=job, index=index, record=record,
            started=_read_json(started_file) if started_file.exists() else None,
            exited=_read_json(exit_file) if exit_file.exists() else None,
            waiter_alive=_alive(record["waiter_pid"], record["waiter_created"])))
    return found


def _all_elements(state: _State) -> list[_Element]:
    jobs = state.jobs()["jobs"]
    return [element for key in sorted(jobs, key=int) for element in _elements_of(state, jobs[key])]


def _read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_json(path: Path, data: Any) -> None:
    """Written whole or not at all: readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as f:
        json.dump(data, f)
    os.replace(temporary, path)


def _command_stub(system: str, command: str, state_root: Path) -> str:
    """The script on PATH: runs :func:`run_command` with this interpreter."""
    body = (f'"""Fake `{command}` ({system}), written by cluster_launcher.testing.fake_batch."""\n'
            "import sys\n\n"
            "from cluster_launcher.testing.fake_batch import run_command\n\n"
            f"sys.exit(run_command({str(state_root)!r}, {command!r}, sys.argv[1:]))\n")
    shebang = f"#!{sys.executable}\n"
    if len(shebang) > 127:  # longer than the kernel reads: let sh start the interpreter instead
        shebang = f'#!/bin/sh\n"exec" {shlex.quote(sys.executable)} "$0" "$@"\n'
    return shebang + body


# ------------------------------------------------------------------------------------------------------
# Processes: identity by PID and start time, signals to a job's process group
# ------------------------------------------------------------------------------------------------------

def _alive(pid: int, created: float) -> bool:
    """Whether the process ``pid`` that started at ``created`` still runs (a reused PID does not count)."""
    try:
        process = psutil.Process(pid)
        return (abs(process.create_time() - created) < _TIME_TOLERANCE
                and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _signal_process(pid: int, created: float, signum: int) -> bool:
    if not _alive(pid, created):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
    return True


def _process_groups() -> dict[int, list[psutil.Process]]:
    """Every live process on this host by process group (one scan serves all the jobs)."""
    groups: dict[int, list[psutil.Process]] = {}
    for process in psutil.process_iter(["create_time", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            groups.setdefault(os.getpgid(process.pid), []).append(process)
        except OSError:
            continue
    return groups


def _job_processes(element: _Element, groups: dict[int, list[psutil.Process]]) -> list[psutil.Process]:
    """The live processes of the process group that the element's command leads: started with it or
    after it.  None when the command's PID now names another process, whose group is not ours."""
    if element.started is None:
        return []
    leader, created = element.started["pid"], element.started["created"]
    with contextlib.suppress(psutil.Error):
        if abs(psutil.Process(leader).create_time() - created) >= _TIME_TOLERANCE:
            return []
    return [process for process in groups.get(leader, [])
            if process.info["create_time"] >= created - _TIME_TOLERANCE]


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _group_exists(pgid: int) -> bool:
    return _signal_group(pgid, 0)


def _spawn_waiter(state: _State, job_id: int, index: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Start the waiter of one element, detached (a session of its own), and record it."""
    _write_json(state.element_file(job_id, index, "spec"), spec)
    with open(state.element_file(job_id, index, "log"), "w") as log:
        waiter = subprocess.Popen([sys.executable, "-c", _WAITER_CODE, str(state.root), str(job_id), str(index)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    return {"waiter_pid": waiter.pid, "waiter_created": psutil.Process(waiter.pid).create_time()}


def _waiter_main(argv: list[str]) -> int:
    """The waiter of one element (see the module docstring): ``argv`` is the state root, job id, index."""
    state = _State(Path(argv[0]).parent)
    job_id, index = int(argv[1]), int(argv[2])
    spec = _read_json(state.element_file(job_id, index, "spec"))
    grace = float(spec["kill_grace"])
    stop_requested: list[float] = []
    # A handler, not SIG_IGN: the job's command must get SIGTERM's default action back when it starts.
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.append(time.monotonic()))
    exit_file = state.element_file(job_id, index, "exit")
    try:
        with contextlib.ExitStack() as files:
            stdout = _output_file(files, spec["cwd"], spec["stdout"])
            stderr = subprocess.STDOUT if spec["stderr"] == "stdout" else _output_file(files, spec["cwd"],
                                                                                       spec["stderr"])
            command = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=spec["env"], stdin=subprocess.DEVNULL,
                                       stdout=stdout, stderr=stderr, start_new_session=True)
    except OSError as error:
        _write_json(exit_file, {"exit_code": 127, "killed": False, "finished": time.time(), "error": str(error)})
        return 0
    _write_json(state.element_file(job_id, index, "started"),
                {"pid": command.pid, "created": psutil.Process(command.pid).create_time(), "started": time.time(),
                 "host": _short_hostname()})
    term_sent: float | None = None
    while (returncode := command.poll()) is None:
        if stop_requested and term_sent is None:
            _signal_group(command.pid, signal.SIGTERM)
            term_sent = time.monotonic()
        elif term_sent is not None and time.monotonic() - term_sent > grace:
            _signal_group(command.pid, signal.SIGKILL)
        time.sleep(_POLL)
    _stop_group(command.pid, grace)  # what the job left running
    exit_code = returncode if returncode >= 0 else 128 - returncode
    killed = bool(stop_requested) or state.element_file(job_id, index, "kill").exists()
    _write_json(exit_file, {"exit_code": exit_code, "killed": killed, "finished": time.time(), "error": None})
    return 0


def _output_file(files: contextlib.ExitStack, cwd: str, target: list[str] | None) -> IO[bytes] | int:
    """An output file of the job, ``[path, mode]`` (mode a: append, w: overwrite), or /dev/null."""
    if target is None:
        return subprocess.DEVNULL
    path, mode = target
    return files.enter_context(open(os.path.join(cwd, path), mode + "b"))


def _stop_group(pgid: int, grace: float) -> None:
    """SIGTERM to the group, SIGKILL to whatever is still in it after ``grace`` seconds."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while _group_exists(pgid) and time.monotonic() < deadline:
        time.sleep(_POLL)
    _signal_group(pgid, signal.SIGKILL)


def _request_stop(state: _State, element: _Element) -> None:
    """Record that the element was stopped on request, and ask its waiter to stop it."""
    state.element_file(element.job["id"], element.index, "kill").touch()
    _signal_process(element.record["waiter_pid"], element.record["waiter_created"], signal.SIGTERM)


# ------------------------------------------------------------------------------------------------------
# Command lines
# ------------------------------------------------------------------------------------------------------

def _split_options(command: str, argv: Sequence[str], value_options: Sequence[str], flags: Sequence[str],
                   stop_at_operand: bool) -> tuple[list[tuple[str, str | None]], list[str]]:
    """LSF-style options (``-q normal``, ``-n4``, ``-noheader``) and the operands.  ``stop_at_operand``:
    everything from the first operand on is an operand (bsub's command and its arguments)."""
    options: list[tuple[str, str | None]] = []
    operands: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            if stop_at_operand:
                operands += args
                break
            continue
        name = arg[1:]
        if name in flags:
            options.append((name, None))
        elif name in value_options:
            if not args:
                raise _UsageError(f"{command}: option requires an argument -- {name}")
            options.append((name, args.pop(0)))
        else:
            attached = next((o for o in sorted(value_options, key=len, reverse=True) if name.startswith(o)), None)
            if attached is None:
                raise _UsageError(USAGE_ERROR_FORMAT.format(command=command, option=name))
            options.append((attached, name[len(attached):]))
    return options, operands


def _last(options: list[tuple[str, str | None]], name: str) -> str | None:
    values = [value for option, value in options if option == name]
    return values[-1] if values else None


def _has(options: list[tuple[str, str | None]], name: str) -> bool:
    return any(option == name for option, _ in options)


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _lsf_time(epoch: float) -> str:
    """``Oct 19 17:10``, ``Mar  7 00:58``: bjobs' SUBMIT_TIME."""
    moment = datetime.fromtimestamp(epoch)
    return f"{moment:%b} {moment.day:2d} {moment:%H:%M}"


# ------------------------------------------------------------------------------------------------------
# LSF: bsub
# ------------------------------------------------------------------------------------------------------

def _bsub_directives(script: str) -> list[str]:
    """The arguments of the script's ``#BSUB`` lines, which LSF reads up to the first command."""
    args: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if stripped.startswith("#BSUB"):
            try:
                args += shlex.split(stripped[len("#BSUB"):], comments=True)
            except ValueError as error:
                raise _UsageError(f"bsub: cannot read the directive {stripped!r}: {error}") from None
        elif stripped and not stripped.startswith("#"):
            break
    return args


def _array_indices(spec: str) -> list[int]:
    """``1-4``, ``1,3,5-7``, ``1-10:2`` (an ``%limit`` suffix is removed before): the element indices."""
    indices: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if match is None:
            raise _UsageError(f"bsub: bad job array index list: {spec}")
        start = int(match[1])
        end = int(match[2]) if match[2] else start
        step = int(match[3]) if match[3] else 1
        if start < 1 or end < start or step < 1:
            raise _UsageError(f"bsub: bad job array index list: {spec}")
        indices.update(range(start, end + 1, step))
    return sorted(indices)


def _bsub(state: _State, argv: list[str]) -> int:
    options, command = _split_options("bsub", argv, _BSUB_VALUE_OPTIONS, _BSUB_FLAGS, stop_at_operand=True)
    script: str | None = None
    if not command:
        if sys.stdin is None or sys.stdin.isatty():
            raise _UsageError("bsub: no command and no job script on standard input")
        script = sys.stdin.read()
        if not script.strip():
            raise _UsageError("bsub: the job script on standard input is empty")
        directives, rest = _split_options("bsub", _bsub_directives(script), _BSUB_VALUE_OPTIONS, _BSUB_FLAGS,
                                          stop_at_operand=True)
        if rest:
            raise _UsageError(f"bsub: unexpected words in a #BSUB line: {' '.join(rest)}")
        options = directives + options  # the command line's options win
    config = state.config()
    queue = _last(options, "q")
    if queue is not None and config["queues"] is not None and queue not in config["queues"]:
        print(samples.LSF_BSUB_NO_SUCH_QUEUE_FORMAT.format(queue=queue), file=sys.stderr)
        return samples.LSF_BSUB_EXIT_STATUS_REFUSED
    command_text = " ".join(command) if script is None else ";".join(line for line in script.splitlines() if line)
    name = _last(options, "J") or command_text
    indices = [0]
    array = re.fullmatch(r"(.*)\[([^\]]*)\](?:%\d+)?", name)
    if array is not None:
        name, indices = array[1], _array_indices(array[2])
    submit_cwd = os.getcwd()
    with state.locked() as jobs:
        job_id = jobs["next_id"]
        jobs["next_id"] = job_id + 1
        if script is not None:
            script_path = state.scripts / f"{job_id}.sh"
            script_path.write_text(script)
            job_argv = ["/bin/sh", str(script_path)]
        else:
            job_argv = ["/bin/sh", "-c", command_text]
        job = {"id": job_id, "system": "lsf", "name": name, "array": array is not None,
               "queue": queue or LSF_DEFAULT_QUEUE, "user": _user(), "from_host": _short_hostname(),
               "submit_time": time.time(), "options": options, "elements": {}}
        for index in indices:
            spec = _bsub_element_spec(options, job_argv, submit_cwd, job_id, index, array is not None,
                                      config["kill_grace"])
            job["elements"][str(index)] = _spawn_waiter(state, job_id, index, spec)
        jobs["jobs"][str(job_id)] = job
    if queue is None:
        print(samples.LSF_BSUB_SUBMITTED_DEFAULT_FORMAT.format(job_id=job_id, queue=LSF_DEFAULT_QUEUE))
    else:
        print(samples.LSF_BSUB_SUBMITTED_FORMAT.format(job_id=job_id, queue=queue))
    return 0


def _bsub_element_spec(options: list[tuple[str, str | None]], job_argv: list[str], submit_cwd: str, job_id: int,
                       index: int, is_array: bool, kill_grace: float) -> dict[str, Any]:
    """How the waiter runs one element: its command, directory, environment and output files, with %J
    (the job id) and %I (the array index, 0 outside arrays) in the file names replaced."""

    def substitute(text: str) -> str:
        return text.replace("%J", str(job_id)).replace("%I", str(index))

    cwd = os.path.join(submit_cwd, substitute(_last(options, "cwd") or "."))
    env = {**os.environ, "LSB_JOBID": str(job_id)}
    if is_array:
        env["LSB_JOBINDEX"] = str(index)

    def output(append_option: str, overwrite_option: str) -> list[str] | None:
        for option, value in reversed(options):
            if option in (append_option, overwrite_option) and value is not None:
                return [substitute(value), "a" if option == append_option else "w"]
        return None

    stdout = output("o", "oo")
    stderr: list[str] | str | None = output("e", "eo")
    if stderr is None and stdout is not None:
        stderr = "stdout"  # LSF: with -o and no -e, the job's standard error goes to the output file too
    return {"argv": job_argv, "cwd": os.path.normpath(cwd), "env": env, "stdout": stdout, "stderr": stderr,
            "kill_grace": kill_grace}


# ------------------------------------------------------------------------------------------------------
# LSF: bjobs
# ------------------------------------------------------------------------------------------------------

_LSF_STAT = {"pending": "PEND", "running": "RUN", "done": "DONE", "failed": "EXIT"}


def _table_columns(header: str) -> list[tuple[str, int]]:
    """The default table's columns, ``(name, offset)``, read off the captured header."""
    return [(match[0], match.start()) for match in re.finditer(r"\S+", header)]


def _table_row(values: Sequence[str], offsets: Sequence[int]) -> str:
    """Values placed at the columns' offsets; one that does not fit pushes the rest right by a space."""
    line = ""
    for value, offset in zip(values, offsets, strict=True):
        if offset:
            line = line.ljust(offset) if len(line) < offset else line + " "
        line += value
    return line


def _lsf_field(element: _Element, field: str) -> str:
    """One bjobs -o field of ``element``; ``-`` where there is no value."""
    empty = samples.LSF_BJOBS_EMPTY_FIELD
    job = element.job
    if field == "jobid":
        return str(job["id"])
    if field == "stat":
        return _LSF_STAT[element.state]
    if field == "exit_code":
        code = element.exit_code
        return str(code) if code not in (None, 0) else empty
    if field == "exit_reason":
        return samples.LSF_EXIT_REASON_KILLED if element.killed else empty
    if field == "job_name":
        return element.name
    if field in ("queue", "user", "from_host"):
        return str(job[field])
    if field == "exec_host":
        return str(element.started["host"]) if element.started is not None else empty
    return _lsf_time(job["submit_time"])  # submit_time


def _parse_output_format(text: str) -> tuple[list[tuple[str, int | None]], str | None]:
    """``-o "jobid stat:5 exit_code delimiter='^'"``: the fields with their widths, and the delimiter."""
    delimiter = None
    match = re.search(r"""delimiter=(['"])(.*?)\1""", text)
    if match is not None:
        delimiter = match[2]
        text = text[:match.start()] + text[match.end():]
    fields: list[tuple[str, int | None]] = []
    for token in text.split():
        name, _, rest = token.partition(":")
        name = _BJOBS_FIELD_ALIASES.get(name.lower(), name.lower())
        if name not in _BJOBS_FIELDS:
            raise _UsageError(f"bjobs: the fake does not know the output field {name!r}")
        width = rest.split(":")[0].lstrip("-")
        fields.append((name, int(width) if width.isdigit() else None))
    if not fields:
        raise _UsageError("bjobs: -o names no field")
    return fields, delimiter


def _fit(value: str, width: int | None, field: str) -> str:
    """A value cut to ``width``: a job name loses its head (shown as ``*``), other fields their tail."""
    if width is None or len(value) <= width:
        return value
    return "*" + value[len(value) - width + 1:] if field == "job_name" else value[:width]


def _lsf_operand(state: _State, jobs: dict[str, Any], operand: str) -> list[_Element]:
    """The elements a bjobs/bkill operand names: a job id ('12', all its elements) or one element ('12[3]')."""
    match = re.fullmatch(r"(\d+)(?:\[(\d+)\])?", operand)
    if match is None:
        raise _UsageError(f"{operand}: Illegal job ID.")
    job = jobs.get(match[1])
    elements = _elements_of(state, job) if job is not None else []
    if match[2] is not None:
        elements = [e for e in elements if e.index == int(match[2]) and job is not None and job["array"]]
    return elements


def _bjobs(state: _State, argv: list[str]) -> int:
    options, operands = _split_options("bjobs", argv, _BJOBS_VALUE_OPTIONS, _BJOBS_FLAGS, stop_at_operand=False)
    jobs = state.jobs()["jobs"]
    selected: list[_Element] = []
    not_found: list[str] = []
    for operand in operands:
        elements = _lsf_operand(state, jobs, operand)
        if not elements:
            not_found.append(samples.LSF_BJOBS_NOT_FOUND_FORMAT.format(job_id=operand))
        selected += [e for e in elements if e not in selected]
    if not operands:
        selected = [e for key in sorted(jobs, key=int) for e in _elements_of(state, jobs[key])]
        if not _has(options, "a"):
            selected = [e for e in selected if not e.finished]
    name = _last(options, "J")
    if name is not None:
        selected = [e for e in selected if name in (e.job["name"], e.name)]
    queue = _last(options, "q")
    if queue is not None:
        selected = [e for e in selected if e.job["queue"] == queue]
    output_format = _last(options, "o")
    lines = (_bjobs_custom(selected, output_format, header=not _has(options, "noheader"))
             if output_format is not None else
             _bjobs_table(selected, header=not _has(options, "noheader"), wide=_has(options, "w")))
    for line in lines:
        print(line)
    for line in not_found:
        print(line, file=sys.stderr)
    if not operands and not selected:
        # The -a form ("No job found") is the same message for all states; not captured either way.
        print(samples.LSF_BJOBS_NO_UNFINISHED if not _has(options, "a") else "No job found", file=sys.stderr)
    # As observed by ert: 255 when some asked-for jobs were found and some not, 0 when none was found.
    return LSF_EXIT_STATUS_ERROR if not_found and selected else 0


def _bjobs_table(selected: list[_Element], header: bool, wide: bool) -> list[str]:
    columns = _table_columns(samples.LSF_BJOBS_HEADER)
    offsets = [offset for _, offset in columns]
    names = [name for name, _ in columns]
    name_width = offsets[names.index("SUBMIT_TIME")] - offsets[names.index("JOB_NAME")] - 1
    lines = [samples.LSF_BJOBS_HEADER] if header and selected else []
    for element in selected:
        exec_host = element.started["host"] if element.started is not None else ""
        job_name = element.name if wide else _fit(element.name, name_width, "job_name")
        values = [str(element.job["id"]), element.job["user"], _LSF_STAT[element.state], element.job["queue"],
                  element.job["from_host"], exec_host, job_name, _lsf_time(element.job["submit_time"])]
        lines.append(_table_row(values, offsets))
    return lines


def _bjobs_custom(selected: list[_Element], output_format: str, header: bool) -> list[str]:
    fields, delimiter = _parse_output_format(output_format)
    separator = delimiter if delimiter is not None else " "
    lines = [separator.join(name.upper() for name, _ in fields)] if header and selected else []
    for element in selected:
        lines.append(separator.join(_fit(_lsf_field(element, name), width, name) for name, width in fields))
    return lines


# ------------------------------------------------------------------------------------------------------
# LSF: bkill
# ------------------------------------------------------------------------------------------------------

def _bkill(state: _State, argv: list[str]) -> int:
    options, operands = _split_options("bkill", argv, _BKILL_VALUE_OPTIONS, _BKILL_FLAGS, stop_at_operand=False)
    if not operands:
        raise _UsageError("bkill: name the job to kill")
    signal_name = _last(options, "s")
    signum = _signal_number(signal_name) if signal_name is not None else None
    jobs = state.jobs()["jobs"]
    failed = False
    for operand in operands:
        elements = _lsf_operand(state, jobs, operand)
        if not elements:
            print(samples.LSF_BKILL_NO_MATCHING_JOB_FORMAT.format(job_id=operand), file=sys.stderr)
            failed = True
            continue
        unfinished = [e for e in elements if not e.finished]
        if not unfinished:
            print(samples.LSF_BKILL_ALREADY_FINISHED_FORMAT.format(job_id=operand), file=sys.stderr)
            failed = True
            continue
        for element in unfinished:
            if signum is None:
                _request_stop(state, element)
            elif element.started is not None and _alive(element.started["pid"], element.started["created"]):
                _signal_group(element.started["pid"], signum)
        message = samples.LSF_BKILL_TERMINATING_FORMAT if signum is None else samples.LSF_BKILL_SIGNALED_FORMAT
        print(message.format(job_id=operand))
    return samples.LSF_BKILL_EXIT_STATUS_FAILED if failed else 0


def _signal_number(name: str) -> int:
    """``SIGTERM``, ``TERM`` or ``15``."""
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals["SIG" + name.upper().removeprefix("SIG")])
    except KeyError:
        raise _UsageError(f"bkill: unknown signal {name}") from None


# ------------------------------------------------------------------------------------------------------
# Windows HPC: job submit | view | cancel
# ------------------------------------------------------------------------------------------------------

def _job(state: _State, argv: list[str]) -> int:
    if not argv:
        raise _UsageError("job: name a subcommand: submit, view or cancel")
    subcommand = argv[0].lower()
    options: dict[str, str] = {}
    operands: list[str] = []
    for arg in argv[1:]:
        if arg.startswith("/"):
            name, _, value = arg[1:].partition(":")
            options[name.lower()] = value
        else:
            operands.append(arg)
    allowed = {"submit": {"jobfile", "scheduler"}, "view": {"scheduler"}, "cancel": {"scheduler"}}
    if subcommand not in allowed:
        raise _UsageError(f"job: the fake knows no subcommand {argv[0]!r}")
    unknown = sorted(set(options) - allowed[subcommand])
    if unknown:
        raise _UsageError(USAGE_ERROR_FORMAT.format(command=f"job {subcommand}", option="/" + unknown[0]))
    if subcommand == "submit":
        if operands or not options.get("jobfile"):
            raise _UsageError("job submit: the fake submits only /jobfile:<file>")
        return _job_submit(state, options["jobfile"], options.get("scheduler"))
    if len(operands) != 1 or not operands[0].isdigit():
        raise _UsageError(f"job {subcommand}: name one job id")
    jobs = state.jobs()["jobs"]
    job = jobs.get(operands[0])
    if job is None or job["system"] != "winhpc":
        raise _UsageError(f"job {subcommand}: no job {operands[0]}")
    if subcommand == "view":
        print(WINHPC_VIEW_STATE_FORMAT.format(state=_winhpc_state(job, _elements_of(state, job))))
        return 0
    elements = [e for e in _elements_of(state, job) if not e.finished]
    if not elements:
        raise _UsageError(f"job cancel: job {operands[0]} has already finished")
    with state.locked() as current:
        current["jobs"][operands[0]]["canceled"] = True
    for element in elements:
        _request_stop(state, element)
    return 0


def _winhpc_state(job: dict[str, Any], elements: list[_Element]) -> str:
    """The job's state from its tasks': Queued until a task runs, Running while one does, then Finished,
    Failed (a task failed) or Canceled (``job cancel``; Canceling until its tasks are gone)."""
    if job.get("canceled"):
        return "Canceled" if all(e.finished for e in elements) else "Canceling"
    if any(not e.finished for e in elements):
        return "Running" if any(e.started is not None for e in elements) else "Queued"
    return "Failed" if any(e.state == "failed" for e in elements) else "Finished"


def _job_submit(state: _State, job_file: str, scheduler: str | None) -> int:
    try:
        root = ET.parse(job_file).getroot()
    except (OSError, ET.ParseError) as error:
        raise _UsageError(f"job submit: cannot read the job file {job_file}: {error}") from None
    if _local_name(root.tag) != "Job":
        raise _UsageError(f"job submit: {job_file} is not a job description")
    tasks = [task for child in root if _local_name(child.tag) == "Tasks"
             for task in child if _local_name(task.tag) == "Task"]
    if not tasks or any(not task.get("CommandLine") for task in tasks):
        raise _UsageError(f"job submit: {job_file} has no task, or a task without a CommandLine")
    config = state.config()
    submit_cwd = os.getcwd()
    with state.locked() as jobs:
        job_id = jobs["next_id"]
        jobs["next_id"] = job_id + 1
        job = {"id": job_id, "system": "winhpc", "name": root.get("Name", ""), "array": False,
               "scheduler": scheduler, "queue": "", "user": _user(), "from_host": _short_hostname(),
               "submit_time": time.time(), "elements": {}}
        for task_id, task in enumerate(tasks, start=1):
            spec = _task_spec(task, submit_cwd, job_id, task_id, config["kill_grace"])
            job["elements"][str(task_id)] = _spawn_waiter(state, job_id, task_id, spec)
        jobs["jobs"][str(job_id)] = job
    print(samples.WINHPC_JOB_SUBMITTED_FORMAT.format(job_id=job_id))
    return 0


def _local_name(tag: str) -> str:
    """An element's name without its namespace (IPython's job files put every element in one)."""
    return tag.rpartition("}")[2]


def _task_spec(task: ET.Element, submit_cwd: str, job_id: int, task_id: int, kill_grace: float) -> dict[str, Any]:
    """How the waiter runs one task: its CommandLine under /bin/sh -c, in its WorkDirectory (relative to
    where ``job submit`` ran), output files relative to that, its environment variables and CCP_JOBID,
    CCP_TASKID (tasks counted from 1)."""
    cwd = os.path.normpath(os.path.join(submit_cwd, task.get("WorkDirectory") or "."))
    env = dict(os.environ)
    for child in task:
        if _local_name(child.tag) == "EnvironmentVariables":
            for variable in child:
                values = {_local_name(part.tag): part.text or "" for part in variable}
                if values.get("Name"):
                    env[values["Name"]] = values.get("Value", "")
    env.update(CCP_JOBID=str(job_id), CCP_TASKID=str(task_id))
    stdout, stderr = task.get("StdOutFilePath"), task.get("StdErrFilePath")
    return {"argv": ["/bin/sh", "-c", task.get("CommandLine", "")], "cwd": cwd, "env": env,
            "stdout": [stdout, "w"] if stdout else None, "stderr": [stderr, "w"] if stderr else None,
            "kill_grace": kill_grace}
