"""The base of batch-system launcher plugins: a job script submitted to a
scheduler (``sbatch``, ``qsub``, ``bsub``, …) instead of a process started.

Modelled on dask-jobqueue's ``Job``: what tells one batch system from another
is a handful of settings a plugin gives once (the submit, delete and status
commands, the pattern of the job id the submit command prints, the script's
directive prefix, its default templates) and one method that reads the
status command's output (:meth:`BatchSystemLauncher.parse_states`).  Every
command runs through :meth:`BatchSystemLauncher.run_command`, which reports
a failure with the command line and its output.

The job script is IPython's: ``batch_template`` (or ``batch_template_file``),
else the plugin's default template, rendered with IPython's EvalFormatter
semantics (``{n}``, ``{n//4}``, ``{queue}``, ``{profile_dir}``, ``{cluster_id}``,
and any key of ``c.<Launcher>.context``).  The default templates are built
the dask-jobqueue way, header (``{header}``: the directives) + prologue
(``{prologue}``) + command (``{command}``), and are used to start a real
system by the tests of each plugin.

No shared filesystem is needed for engines where the batch system keeps a
job's script from other users (``job_is_private``): the job script of an
engine set exports the controller's engine connection information
(:data:`cluster_launcher.protocol.connection.ENGINE_CONNECTION_ENV`), which
the engines read instead of a file, so they find the controller from any
node.  The script is written 0600 into the profile's ``batch/`` folder.
Elsewhere (``connection_in_job`` off) the engines read the profile's
connection file, as IPython's did.

The job ids are the launcher's state: a later ``stop`` or ``list`` from
another process asks the scheduler about them and cancels them.

With a ``walltime``, the engines' job script exports the moment the job
will end (:data:`DEADLINE_ENV`, computed by the script as it starts), so
the engines drain and leave before the scheduler kills them; a system that
can signal a job ahead of its walltime says how with
``walltime_signal_directive``.  A job that ends at its walltime anyway
ended, it did not fail: code 0, and its report says so.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shlex
import shutil
import string
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from traitlets import Bool, Dict, Float, Integer, List, TraitType, Unicode, default

from ..error import ClusterError, ConfigError
from ..protocol.connection import ENGINE_CONNECTION_ENV, connection_file, write_private_file
from .base import DeadEngine, EngineSetLauncher, Launcher
from .process import tail

# What a dry run shows where the engines' connection information goes: the controller that
# writes it does not run.
CONNECTION_PLACEHOLDER = "<controller-engine.json of the running controller>"
# The epoch second the engines' job ends, exported by its script (Engine.deadline reads it).
DEADLINE_ENV = "CLUSTER_LAUNCHER_ENGINE_DEADLINE"

_WALLTIME = re.compile(r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                       r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$")


def walltime_seconds(text: str, owner: str = "BatchSystemLauncher", bare_unit: int = 1) -> int | None:
    """A ``walltime`` in seconds (None for ""): Slurm's "MM:SS", "HH:MM:SS",
    "D-HH", "D-HH:MM", "D-HH:MM:SS", PBS's and Grid Engine's "HH:MM:SS" and
    "MM:SS"; a bare number is ``bare_unit`` seconds each (seconds for PBS and
    Grid Engine, minutes for Slurm).  A ConfigError naming ``<owner>.walltime``
    otherwise."""
    text = text.strip()
    if not text:
        return None
    match = _WALLTIME.match(text)
    if match is None:
        raise ConfigError(f"{owner}.walltime = {text!r}: expected HH:MM:SS, MM:SS, a number, or (Slurm) D-HH, "
                          "D-HH:MM, D-HH:MM:SS")
    parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "days" in parts:
        return parts["days"] * 86400 + parts["dh"] * 3600 + parts.get("dm", 0) * 60 + parts.get("ds", 0)
    fields = [parts[k] for k in ("a", "b", "c") if k in parts]
    if len(fields) == 1:
        return fields[0] * bare_unit
    seconds = 0
    for field_ in fields:
        seconds = seconds * 60 + field_
    return seconds


class ShellValue(str):
    """A value :meth:`BatchSystemLauncher.embed_exports` writes as it is (the
    shell expands it when the job starts), not quoted."""


class JobState(enum.Enum):
    """A job's state, whatever its batch system calls it."""

    PENDING = "pending"  # queued, held, waiting for resources
    RUNNING = "running"
    DONE = "done"  # ended with exit code 0
    FAILED = "failed"  # ended otherwise (an exit code, a node failure, out of memory)
    CANCELLED = "cancelled"  # deleted (scancel, qdel, bkill, job cancel)
    TIMEOUT = "timeout"  # killed at its walltime
    GONE = "gone"  # the scheduler no longer knows it (it ended a while ago)

    @property
    def active(self) -> bool:
        return self in (JobState.PENDING, JobState.RUNNING)


@dataclass
class JobStatus:
    """What the scheduler says of one job (all its array tasks): a state per
    task, the scheduler's own word for it and its reason, and an exit code
    when it told one."""

    job_id: str
    states: list[JobState] = field(default_factory=list)
    native: str = ""  # the scheduler's own state name ('RUNNING', 'Eqw', 'EXIT')
    reason: str = ""  # the scheduler's reason, if it gave one ('DUE TO TIME LIMIT', 'NonZeroExitCode')
    exit_code: int | None = None

    @property
    def active(self) -> bool:
        return any(state.active for state in self.states)

    @property
    def running(self) -> int:
        return sum(state is JobState.RUNNING for state in self.states)

    @property
    def state(self) -> JobState:
        """The job's overall state: running if a task runs, pending if one waits, else the worst end."""
        for candidate in (JobState.RUNNING, JobState.PENDING, JobState.TIMEOUT, JobState.CANCELLED,
                          JobState.FAILED, JobState.DONE):
            if candidate in self.states:
                return candidate
        return JobState.GONE

    def describe(self) -> str:
        """'RUNNING', 'TIMEOUT (DUE TO TIME LIMIT)', 'gone from the queue';
        for tasks in different states, how many are in each ('3 running, 1 pending')."""
        if self.state is JobState.GONE:
            return "gone from the queue"
        if len(set(self.states)) > 1:
            return ", ".join(f"{self.states.count(state)} {state.value}" for state in JobState
                             if state in self.states)
        said = self.native or self.state.value
        if self.reason and self.reason.lower() not in ("none", "-", ""):
            said += f" ({self.reason})"
        return said


class EvalFormatter(string.Formatter):
    """IPython's EvalFormatter: a template field may be an expression of the
    context's names, ``{n//4}``, ``{n * 2}``, ``{queue or 'default'}``.  As in
    IPython, ``:`` still starts a format spec and ``!`` a conversion.  A whole
    number computed as a float is written as an integer (``{n/4}`` with 8
    engines gives ``2``, as it did in IPython's Python 2 days)."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Any) -> tuple[Any, str]:
        # No builtins: a template computes with its values, it does not run code.
        return eval(field_name, {"__builtins__": {}}, kwargs), field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, float) and value.is_integer() and not format_spec:
            value = int(value)
        return super().format_field(value, format_spec)


def _reached_walltime(status: JobStatus) -> bool:
    """Whether the job ended at its walltime, and nothing of it failed or was
    cancelled: an end foreseen (its engines drain before it), not a crash,
    and nothing to start again."""
    return JobState.TIMEOUT in status.states and not {JobState.FAILED, JobState.CANCELLED} & set(status.states)


def _exit_code(states: dict[str, JobStatus]) -> int | None:
    """:meth:`Launcher.poll`'s answer for jobs in ``states``: None while one
    is queued or running, else the highest exit code told (1 for a job that
    failed without one); a job that reached its walltime counts as 0."""
    if any(status.active for status in states.values()):
        return None
    ended = [s for s in states.values() if not _reached_walltime(s)]
    codes = [status.exit_code for status in ended if status.exit_code is not None]
    failed = any(s.state in (JobState.FAILED, JobState.CANCELLED) for s in ended)
    return max(codes, default=1 if failed else 0)


class CommandTimeout(ClusterError):
    """A scheduler command did not finish within ``command_timeout``."""


# When this process last submitted a job to each batch system: `submit_interval` apart.
_last_submit: dict[str, float] = {}
_submit_lock = threading.Lock()


def _pause(seconds: float) -> None:
    """The waits between submissions (its own name, so a test can see them without waiting)."""
    time.sleep(seconds)


def _shell_words(args: Sequence[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in args)


@dataclass
class _StatusAnswer:
    """One status command's answer: its output (None if it failed), and when and about which jobs it was asked."""

    output: str | None = None
    error: str = ""
    asked_at: float = 0.0
    job_ids: frozenset[str] = frozenset()


class _SharedStatus:
    """The jobs every launcher of one cluster on one batch system follows in
    this process, and the last answer about them: one status command per poll
    period for all the jobs of a cluster (its controller and all its engine
    sets), not one per launcher.  Each launcher reads its own jobs out of the
    shared output with its own :meth:`BatchSystemLauncher.parse_states`.
    (Per cluster, not per system: two clusters' jobs may come from two
    schedulers that number jobs alike.)"""

    _sources: ClassVar[dict[tuple[str, ...], _SharedStatus]] = {}
    _sources_lock = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.followed: dict[str, int] = {}  # job id -> how many launchers follow it
        self.answer = _StatusAnswer()

    @classmethod
    def of(cls, launcher: BatchSystemLauncher) -> _SharedStatus:
        key = (launcher.profile_dir, launcher.cluster_id, launcher.system, *launcher.status_command)
        with cls._sources_lock:
            return cls._sources.setdefault(key, cls())

    def follow(self, job_ids: Sequence[str]) -> None:
        with self.lock:
            for job_id in job_ids:
                self.followed[job_id] = self.followed.get(job_id, 0) + 1

    def unfollow(self, job_ids: Sequence[str]) -> None:
        with self.lock:
            for job_id in job_ids:
                if self.followed.get(job_id, 0) <= 1:
                    self.followed.pop(job_id, None)
                else:
                    self.followed[job_id] -= 1


class BatchSystemLauncher(Launcher):
    """Submits one job that runs the controller, or ``n`` engines, and records
    its job id.  A batch-system plugin subclasses it (with
    :class:`~cluster_launcher.launcher.ControllerLauncher` or
    :class:`~cluster_launcher.launcher.EngineSetLauncher` for the role), sets
    the commands and ``job_id_regexp``, the class attributes below, the
    default templates, and implements :meth:`parse_states`."""

    # --- what a plugin gives for its batch system ------------------------------------------------
    system: ClassVar[str] = ""  # 'Slurm': how messages name it
    directive: ClassVar[str] = ""  # '#SBATCH': the prefix of the script's directive lines
    # The directive a default template gets for `queue` when it names one (IPython's queue_template).
    queue_directive: ClassVar[str] = ""
    # The directive for `walltime`, when set.
    walltime_directive: ClassVar[str] = ""
    # Seconds a walltime given as a bare number means: 1 (PBS, Grid Engine), 60 (Slurm's minutes).
    walltime_bare_unit: ClassVar[int] = 1
    # The directive that makes the system send the engines' job SIGUSR1 `walltime_signal` seconds before
    # its walltime, when a walltime is set; the engines then drain.  Its keys: {seconds}, {minutes} (rounded
    # up), {soft_limit} (the walltime less those seconds, H:MM:SS).  Slurm "#SBATCH --signal=B:USR1@{seconds}",
    # Grid Engine "#$ -l s_rt={soft_limit}", LSF "#BSUB -wa USR1 -wt {minutes}".  "": the engines go by
    # the deadline their job script exports only.
    walltime_signal_directive: ClassVar[str] = ""
    # The directives that make an engine job run {n} engines (an array, or {n} tasks), and those of
    # the controller's job.
    engines_directives: ClassVar[tuple[str, ...]] = ()
    controller_directives: ClassVar[tuple[str, ...]] = ()
    # The job's name and output file, as directives: {job_name}, {output}.
    name_directives: ClassVar[tuple[str, ...]] = ()
    # The script goes to the submit command on its stdin (LSF's `bsub < script`) rather than as a path.
    submit_on_stdin: ClassVar[bool] = False
    # The default templates: header, prologue (its lines end with a newline) and command, the
    # dask-jobqueue way.
    # The command is exec'd: the engine (or controller) is the job's shell, so a signal the system sends the
    # job ahead of its walltime reaches it (a plain shell would die of SIGUSR1 and end the job).
    default_template: ClassVar[str] = "#!/bin/sh\n{header}\n{prologue}exec {command}\n"
    script_suffix: ClassVar[str] = ".sh"
    # How the job's output file is named; {job_name} and the system's own job id/task escapes.
    output_pattern: ClassVar[str] = "{job_name}.out"
    # Whether the status command tells each engine's state (an array: one element per engine), or
    # only the job's (Slurm's srun job, a Windows HPC job): then all engines run while the job does.
    status_per_engine: ClassVar[bool] = True
    # The status command tells one job at a time (Windows HPC's `job view ID`).
    status_per_job: ClassVar[bool] = False
    # What a status command that fails prints when it fails only because it does not know (any more)
    # a job asked about (squeue's "Invalid job id specified"): an answer, those jobs are gone.  Any
    # other failure is no answer at all, and ends no job.
    unknown_job_markers: ClassVar[tuple[str, ...]] = ()
    # Whether the system keeps a job's script (or description) from other users, so the key can go in
    # it: Slurm, PBS and LSF do; Grid Engine's execution hosts spool scripts world-readable, and Windows
    # HPC shows a task's environment to every user.  The default of `connection_in_job`.
    job_is_private: ClassVar[bool] = True
    # Whether an engine job is an array, one engine per task: `max_array_size` splits bigger sets into
    # several jobs.  (A Windows HPC job's tasks are not an array: one job whatever n.)
    has_arrays: ClassVar[bool] = True
    # How `array_throttle` is written: appended to the array's range ({throttle} in a directive: Slurm's and
    # LSF's '%k'), or as directives of its own (Grid Engine's '-tc k').
    throttle_suffix: ClassVar[str] = ""
    throttle_directives: ClassVar[tuple[str, ...]] = ()
    # What a submit command prints when it failed for now only (the scheduler busy or unreachable), so the
    # submission is tried again after a pause; any other failure (a refused script) is reported at once.
    transient_submit_markers: ClassVar[tuple[str, ...]] = ()

    # --- IPython's settings ---------------------------------------------------------------------
    submit_command = List(Unicode(), help="The command that submits the job script (its path, or its "
                          "content on stdin, is added).").tag(config=True)
    delete_command = List(Unicode(), help="The command that deletes jobs (their ids are added).").tag(config=True)
    status_command = List(Unicode(), help="The command that tells the jobs' states (their ids are "
                          "added).").tag(config=True)
    job_id_regexp = Unicode(r"\d+", help="A regular expression matching the job id in the submit command's "
                            "output (its first group, or the whole match).").tag(config=True)
    batch_template = Unicode("", help="The job script template itself (IPython's): {n}, {n//4}, {queue}, "
                             "{profile_dir}, {cluster_id}, {job_name}, {output}, {command}, {header}, "
                             "{prologue} and the keys of `context`.  Empty: batch_template_file, else the "
                             "default template.").tag(config=True)
    batch_template_file = Unicode("", help="A file holding the job script template (relative: to the "
                                  "profile folder, else to the current folder).").tag(config=True)
    queue = Unicode("", help="The queue (partition) to submit to; the default template names it, and a "
                    "template of yours can use {queue}.").tag(config=True)
    walltime = Unicode("", help="The job's time limit in the system's own form (Slurm and PBS '01:00:00'); "
                       "empty: the queue's default.  Engines know it: they drain and leave before it "
                       "(Engine.drain_margin).").tag(config=True)
    walltime_signal = Integer(60, min=0, help="Seconds before the walltime at which the system signals the "
                              "engines' job (SIGUSR1) to drain, where it can (Slurm's --signal); 0: no "
                              "signal.").tag(config=True)
    job_name = Unicode("", help="The job's name (default: cluster-launcher-<role>-<cluster id>).").tag(config=True)
    job_extra_directives = List(Unicode(), help="More lines for the default template's header, each a "
                                "directive without its prefix, e.g. ['--account=abc123'] for "
                                "Slurm.").tag(config=True)
    output_dir = Unicode("", help="The folder of the jobs' output files, as the compute nodes see it: it must "
                         "exist there (the scheduler writes the file there).  Default: the profile's log "
                         "folder, on a filesystem the nodes share with this host.").tag(config=True)
    job_script_prologue = List(Unicode(), help="Shell lines the default template runs before the command, "
                               "e.g. ['module load python', 'source ~/venv/bin/activate'].").tag(config=True)
    context = Dict(help="More keys for the template: c.SlurmLauncher.context = {'account': 'abc123'} makes "
                   "{account} usable.").tag(config=True)
    command_timeout = Float(60.0, min=1.0, help="Seconds a submit, delete or status command may take.").tag(
        config=True)
    poll_interval = Float(5.0, min=0.0, help="Seconds between two asks of the scheduler for the jobs' states: "
                          "one status command for all the jobs of the cluster each time.").tag(config=True)
    max_array_size = Integer(1000, min=1, help="The most engines one array job runs: more go out as several "
                             "array jobs (keep it within the system's limit, Slurm's MaxArraySize, LSF's "
                             "MAX_JOB_ARRAY_SIZE, Grid Engine's max_aj_tasks).").tag(config=True)
    array_throttle = Integer(0, min=0, help="The most engines of one array job running at once (Slurm "
                             "--array=1-N%k, LSF name[1-N]%k, Torque -t 1-N%k, Grid Engine -tc k); 0: no "
                             "limit.").tag(config=True)
    max_queued_jobs = Integer(0, min=0, help="The most jobs of this cluster waiting in the queue at once: "
                              "`start` refuses more, adaptive scaling submits no more; 0: no cap.").tag(config=True)
    submit_interval = Float(0.5, min=0.0, help="Seconds at least between two submissions from this process, "
                            "so a big cluster does not flood the scheduler.").tag(config=True)
    submit_retries = Integer(3, min=0, help="How many times a submission is tried again when the submit "
                             "command times out or says the scheduler is busy or unreachable.").tag(config=True)
    submit_backoff = Float(2.0, min=0.0, help="Seconds before the first new try of a submission; doubled at "
                           "each further try.").tag(config=True)

    connection_in_job = Bool(help="Put the engines' connection information (its key too) in the job itself, "
                             "so the nodes need not see the profile folder.  Default: where the batch system "
                             "keeps jobs from other users (Slurm, PBS, LSF); elsewhere the engines read the "
                             "profile's connection file, on a filesystem the nodes share.").tag(config=True)

    @default("connection_in_job")
    def _connection_in_job_default(self) -> bool:
        return self.job_is_private

    # --- what start learns and a later stop needs --------------------------------------------------
    job_ids = List(Unicode(), help="The ids of the jobs submitted.").tag(config=False, state=True)
    job_sizes = List(Integer(), help="How many engines each job of job_ids runs.").tag(config=False, state=True)
    job_script = Unicode("", help="The job script written.").tag(config=False, state=True)
    output_file = Unicode("", help="Where the job's output goes (as the scheduler names it, with its "
                          "escapes).").tag(config=False, state=True)

    args: list[str]

    @classmethod
    def state_traits(cls) -> dict[str, TraitType[Any, Any]]:
        """The state traits, and the commands a later ``stop`` or ``list`` runs:
        recorded with the job ids, so it runs the same ones even where they were
        given on the start command line only (and whatever tags a plugin's
        redefinition of them has)."""
        traits = super().state_traits()
        return {**{name: cls.class_traits()[name] for name in ("delete_command", "status_command")}, **traits}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._states: dict[str, JobStatus] = {}
        self._states_at = 0.0
        self._status_failing = False
        self._followed: list[str] = []  # the job ids this launcher follows in the shared status

    # --- the job script ---------------------------------------------------------------------------

    @property
    def role_name(self) -> str:
        return "controller" if self.role == "controller" else "engines"

    def default_job_name(self) -> str:
        return self.job_name or f"cluster-launcher-{self.role_name}-{self.cluster_id or 'default'}"

    def template_values(self, n: int) -> dict[str, Any]:
        """The keys a template (the header's directives too) can use, but the
        header, the prologue and ``context``'s: a plugin adds its own here."""
        throttle = self.throttle_suffix.format(array_throttle=self.array_throttle) if self.array_throttle else ""
        values: dict[str, Any] = {"n": n, "queue": self.queue, "walltime": self.walltime,
                                  "array_throttle": self.array_throttle, "throttle": throttle,
                                  "profile_dir": self.profile_dir, "cluster_id": self.cluster_id,
                                  "job_name": self.default_job_name(), "output": self.output_location()}
        # The process's output is the job's output file: it writes no log file of its own.
        values["command"] = _shell_words([*self.args, *self.captured_output_args()])
        values["program_and_args"] = values["command"]  # ipyparallel's name for it
        return values

    def template_context(self, n: int) -> dict[str, Any]:
        """Every key a template can use: :meth:`template_values`, the default
        template's header and prologue, and ``context``'s keys."""
        values = self.template_values(n)
        values["header"] = self.render(self.header_template(), values, "the default template's header")
        values["prologue"] = "".join(f"{line}\n" for line in self.job_script_prologue)
        values.update(self.context)
        return values

    def output_location(self) -> str:
        """Where the job's output goes, as its script names it (with the system's escapes, ``%j``)."""
        name = self.output_pattern.format(job_name=self.default_job_name())
        return os.path.join(self.output_dir or os.path.join(self.profile_dir or ".", "log"), name)

    def header_template(self) -> str:
        """The default template's directives: name and output, the engines,
        the queue and walltime when set, then ``job_extra_directives``."""
        lines = list(self.name_directives)
        lines += self.engines_directives if self.role == "engines" else self.controller_directives
        if self.role == "engines" and self.array_throttle:
            lines += self.throttle_directives
        if self.queue and self.queue_directive:
            lines.append(self.queue_directive)
        if self.walltime and self.walltime_directive:
            lines.append(self.walltime_directive)
        limit = self.walltime_limit()
        # (Not for a walltime shorter than the warning: the signal would come as the job starts.)
        if limit and self.walltime_signal_directive and 0 < self.walltime_signal < limit and self.role == "engines":
            ahead, soft = self.walltime_signal, limit - self.walltime_signal
            lines.append(self.walltime_signal_directive.format(
                seconds=ahead, minutes=max(1, -(-ahead // 60)),
                soft_limit=f"{soft // 3600}:{soft % 3600 // 60:02d}:{soft % 60:02d}"))
        lines += [f"{self.directive} {extra}" for extra in self.job_extra_directives]
        return "\n".join(lines)

    def template(self) -> tuple[str, str]:
        """The template to render and where it came from (for error messages)."""
        cls = type(self).__name__
        if self.batch_template:
            return self.batch_template, f"{cls}.batch_template"
        if self.batch_template_file:
            candidates = [self.batch_template_file] if os.path.isabs(self.batch_template_file) else \
                [os.path.join(self.profile_dir, self.batch_template_file), self.batch_template_file]
            for path in candidates:
                if os.path.isfile(path):
                    with open(path) as f:
                        return f.read(), path
            raise ConfigError(f"{cls}.batch_template_file = {self.batch_template_file!r}: no such file (looked in "
                              f"{' and '.join(os.path.abspath(p) for p in candidates)})")
        return self.default_template, f"{cls}'s default template"

    def render(self, template: str, values: dict[str, Any], source: str) -> str:
        try:
            return EvalFormatter().format(template, **values)
        except NameError as exc:
            keys = ", ".join(sorted(values))
            raise ConfigError(f"{source}: {exc} (the keys a template can use: {keys}; add yours with "
                              f"c.{type(self).__name__}.context)") from None
        except (SyntaxError, ValueError, TypeError, ArithmeticError, AttributeError, IndexError, KeyError) as exc:
            raise ConfigError(f"{source}: cannot render it: {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())}") from None

    def job_script_text(self, n: int, dry_run: bool = False) -> str:
        """The job script for ``n`` engines (or the controller), rendered."""
        connection = self.engine_connection(dry_run)
        template, source = self.template()
        script = self.render(template, self.template_context(n), source)
        if self.script_suffix == ".sh" and not script.startswith("#!"):
            # IPython's templates have none; sbatch (and so Slurm's PBS wrappers) refuses a script without.
            script = "#!/bin/sh\n" + script
        exports = dict(self.environment)
        if connection is not None:
            exports[ENGINE_CONNECTION_ENV] = connection
        walltime = self.walltime_limit()
        if walltime is not None and self.role == "engines" and self.script_suffix == ".sh":
            # When the job starts, not when it is submitted: it may wait in the queue for days.
            exports[DEADLINE_ENV] = ShellValue(f"$(( $(date +%s) + {walltime} ))")
        return self.embed_exports(script, exports) if exports else script

    def walltime_limit(self) -> int | None:
        """``walltime`` in seconds (None when unset); a plugin whose system
        writes it otherwise (LSF's "HH:MM") reads it here."""
        return walltime_seconds(self.walltime, type(self).__name__, self.walltime_bare_unit)

    def engine_connection(self, dry_run: bool) -> str | None:
        """The engines' connection information to put in the job, as JSON text
        (None for a controller job)."""
        if self.role != "engines" or not self.connection_in_job:
            return None
        if dry_run:
            return CONNECTION_PLACEHOLDER
        path = connection_file(self.profile_dir, "engine", self.cluster_id)
        try:
            with open(path) as f:
                return json.dumps(json.load(f), separators=(",", ":"), sort_keys=True)
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot put the engines' connection information in the job script: {path}: "
                               f"{exc}") from None

    def embed_exports(self, script: str, exports: dict[str, str]) -> str:
        """``script`` with ``exports`` (``environment``, and the engines'
        connection information) exported right after its directives: a
        template of yours need not say anything for them."""
        lines = script.split("\n")
        at = 0
        while at < len(lines) and (lines[at].startswith("#") or not lines[at].strip()):
            at += 1
        added = [f"export {name}={value if isinstance(value, ShellValue) else shlex.quote(value)}"
                 for name, value in exports.items()]
        return "\n".join([*lines[:at], *added, *lines[at:]])

    def job_script_path(self) -> str:
        """``<profile>/batch/<system>-<role>-<cluster id><suffix>``."""
        return os.path.join(self.profile_dir or ".", "batch", f"{self.system.lower()}-{self.role_name}-"
                            f"{self.cluster_id or 'default'}{self.script_suffix}")

    def write_job_script(self, script: str) -> str:
        """Write ``script`` 0600 (it holds the key) to :meth:`job_script_path`."""
        path = self.job_script_path()
        write_private_file(path, script.encode())
        return path

    # --- commands ---------------------------------------------------------------------------------

    def run_command(self, argv: Sequence[str], stdin: str | None = None, check: bool = True,
                    ) -> subprocess.CompletedProcess[str]:
        """Run a scheduler command; a ClusterError of one line with the command
        and what it printed if it cannot run or (with ``check``) fails."""
        words = _shell_words(argv)
        try:
            done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                                  timeout=self.command_timeout, stdin=None if stdin is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            raise ClusterError(f"{argv[0]} not found: is {self.system or 'the batch system'}'s client installed "
                               f"and on PATH? (set c.{type(self).__name__} commands to its full path "
                               "otherwise)") from None
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"`{words}` did not finish within {self.command_timeout:g}s "
                               f"({type(self).__name__}.command_timeout)") from None
        if check and done.returncode != 0:
            said = " ".join((done.stderr.strip() or done.stdout.strip()).split()) or "no output"
            raise ClusterError(f"`{words}` failed with code {done.returncode}: {said}")
        return done

    def parse_job_id(self, output: str) -> str:
        match = re.search(self.job_id_regexp, output)
        if match is None:
            said = " ".join(output.split()) or "nothing"
            raise ClusterError(f"{self.submit_command[0]} printed no job id ({type(self).__name__}.job_id_regexp "
                               f"= {self.job_id_regexp!r}): {said}")
        return match.group(1) if match.groups() else match.group(0)

    def submit_argv(self, script_path: str, script: str) -> list[str]:
        """The submit command for the job script at ``script_path`` (whose text is ``script``)."""
        return list(self.submit_command) if self.submit_on_stdin else [*self.submit_command, script_path]

    def submit(self, script_path: str, script: str) -> str:
        """Submit the job script; its job id.  Submissions from this process
        are ``submit_interval`` apart; one that times out or that the
        scheduler turns down for now (``transient_submit_markers``) is tried
        again ``submit_retries`` times, after ``submit_backoff`` seconds,
        doubled each time."""
        argv = self.submit_argv(script_path, script)
        pause = self.submit_backoff
        for attempt in range(self.submit_retries + 1):
            self._wait_submit_turn()
            try:
                done = self.run_command(argv, stdin=script if self.submit_on_stdin else None, check=False)
            except CommandTimeout as exc:
                # The scheduler may have taken the job before the command hung: a job of ours it lists
                # that no launcher follows is that one, rather than a second submission.
                adopted = [job_id for job_id in self.submitted_jobs_named(self.default_job_name())
                           if job_id not in _SharedStatus.of(self).followed]
                if adopted:
                    return adopted[0]
                failure = str(exc)
            else:
                said = done.stdout + done.stderr
                if done.returncode == 0:
                    return self.parse_job_id(said)
                failure = (f"`{_shell_words(argv)}` failed with code {done.returncode}: "
                           f"{' '.join(said.split()) or 'no output'}")
                if not any(marker in said for marker in self.transient_submit_markers):
                    raise ClusterError(failure)
            if attempt == self.submit_retries:
                break
            self.log.warning("%s; trying again in %gs (%d of %s.submit_retries=%d)", failure, pause, attempt + 1,
                             type(self).__name__, self.submit_retries)
            _pause(pause)
            pause *= 2
        raise ClusterError(f"{failure} (tried {self.submit_retries + 1} times; {type(self).__name__}.submit_retries)")

    def _wait_submit_turn(self) -> None:
        with _submit_lock:
            wait = _last_submit.get(self.system, -1e9) + self.submit_interval - time.monotonic()
            if wait > 0:
                _pause(wait)
            _last_submit[self.system] = time.monotonic()

    def submitted_jobs_named(self, job_name: str) -> list[str]:
        """The ids of this user's queued or running jobs named ``job_name``,
        where the system can list them by name: how a submission whose
        command timed out is found instead of submitted twice.  [] where it
        cannot (then it is submitted again)."""
        return []

    def parse_states(self, output: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The status of each of ``job_ids`` from the status command's output;
        a job the output does not mention is left out (it is gone)."""
        raise NotImplementedError

    def ended_status(self, job_id: str) -> JobStatus | None:
        """How a job that left the queue ended, from the system's records
        (SGE's qacct, HTCondor's condor_history); None where it keeps none
        (the job is then GONE).  Asked once per job."""
        return None

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """The status command for ``job_ids`` (their ids added, one each)."""
        return [*self.status_command, *job_ids]

    def delete_argvs(self, job_ids: Sequence[str]) -> list[list[str]]:
        """The delete command(s) for ``job_ids``: one for all of them, unless the system takes one id a time."""
        return [[*self.delete_command, *job_ids]]

    # --- the Launcher interface -------------------------------------------------------------------

    def job_split(self, n: int) -> list[int]:
        """How many engines each job for ``n`` engines runs: one array job of
        at most ``max_array_size`` engines each (one job where the system has
        no arrays, and for the controller)."""
        if self.role != "engines" or not self.has_arrays:
            return [n]
        full, rest = divmod(n, self.max_array_size)
        return [self.max_array_size] * full + ([rest] if rest else [])

    def check(self, n: int = 1) -> None:
        """The job script renders, the jobs fit ``max_queued_jobs``, and the
        submit command is installed: refused before the controller starts
        rather than after."""
        self.job_script_text(n, dry_run=True)
        jobs = len(self.job_split(n))
        if self.max_queued_jobs and jobs > self.max_queued_jobs:
            cls = type(self).__name__
            raise ConfigError(f"{n} engines need {jobs} jobs of at most {cls}.max_array_size={self.max_array_size}, "
                              f"more than {cls}.max_queued_jobs={self.max_queued_jobs}: raise one of them")
        program = self.submit_argv(self.job_script_path(), "")[0]
        if shutil.which(program) is None:
            raise ClusterError(f"{program} not found: is {self.system or 'the batch system'}'s client installed and "
                               f"on PATH? (set c.{type(self).__name__}.submit_command to its full path otherwise)")

    def start(self, n: int = 1) -> None:
        """Submit the jobs of :meth:`job_split`, each recorded as soon as it
        is submitted (a later failure leaves the earlier ones known, to stop)."""
        for size in self.job_split(n):
            script = self.job_script_text(size)
            self.job_script = self.write_job_script(script)
            self.output_file = self.output_location()
            job_id = self.submit(self.job_script, script)
            self.job_ids = [*self.job_ids, job_id]
            self.job_sizes = [*self.job_sizes, size]
            self._follow([job_id])
            if self.has_trait("n"):
                self.set_trait("n", sum(self.job_sizes))
            self.log.debug("submitted %s job %s (%d): %s", self.system, job_id, size, self.job_script)

    def dry_run(self, n: int = 1) -> list[str]:
        """What ``start`` would submit, submitting nothing: for each job, the command, then the job script."""
        path = self.job_script_path()
        lines = []
        for size in dict.fromkeys(self.job_split(n)):  # jobs of one size have one script
            script = self.job_script_text(size, dry_run=True)
            command = _shell_words(self.submit_argv(path, script))
            command += f" < {shlex.quote(path)}" if self.submit_on_stdin else ""
            times = self.job_split(n).count(size)
            lines += [f"$ {command}" + (f"    # {times} jobs of {size} engines" if times > 1 else ""),
                      f"--- {path}", *script.rstrip("\n").split("\n"), "---"]
        return lines

    def job_states(self, fresh: bool = False) -> dict[str, JobStatus]:
        """The status of each submitted job, asked of the scheduler at most
        every ``poll_interval`` seconds (``fresh``: now), in one status
        command for every job this process follows on this system
        (:class:`_SharedStatus`).  A job the scheduler does not list is
        GONE; a status command that fails (but for ``unknown_job_markers``)
        leaves the last answer: a scheduler that does not answer ends no job."""
        if not self.job_ids:
            return {}
        if self.status_per_job and not fresh and self._states and \
                time.monotonic() - self._states_at < self.poll_interval:
            return self._states  # (the others read the shared answer, which another launcher may have renewed)
        if not self._open_jobs() and set(self._states) == set(self.job_ids):
            return self._states  # every job has ended: nothing more to ask
        self._follow(self._open_jobs())
        try:
            listed = self._listed_states(fresh)
            asked = True
        except (ClusterError, ValueError) as exc:
            # Once until it answers again: a scheduler down for a while would fill the log at every poll.
            log = self.log.debug if self._status_failing else self.log.warning
            log("cannot ask %s for the state of job(s) %s: %s", self.system, ", ".join(self.job_ids), exc)
            listed, asked = {}, False
        self._status_failing = not asked
        states = {}
        for job_id in self.job_ids:
            previous = self._states.get(job_id)
            if job_id in listed:
                states[job_id] = listed[job_id]
            elif previous is not None and (not previous.active or not asked):
                states[job_id] = previous  # an end already seen stays; no answer changes nothing
            elif asked:  # it left the queue: how it ended, if the system keeps a record of that
                states[job_id] = self.ended_status(job_id) or JobStatus(job_id, [JobState.GONE])
            else:  # never answered: not known to have ended
                states[job_id] = JobStatus(job_id, [JobState.PENDING], native="unknown")
        self._states, self._states_at = states, time.monotonic()
        self._unfollow([job_id for job_id, status in states.items() if not status.active])
        return states

    def _listed_states(self, fresh: bool) -> dict[str, JobStatus]:
        """What the status command says of this launcher's jobs: the shared
        answer if it is recent and covers them, else a new one (for every job
        followed)."""
        if self.status_per_job:  # one command per job whatever: nothing to share
            listed: dict[str, JobStatus] = {}
            for job_id in self.job_ids:
                listed.update(self.parse_states(self._status_output([job_id]), [job_id]))
            return listed
        shared = _SharedStatus.of(self)
        with shared.lock:
            answer = shared.answer
            if fresh or not set(self._open_jobs()) <= answer.job_ids or \
                    time.monotonic() - answer.asked_at >= self.poll_interval:
                ids = list(dict.fromkeys([*self._open_jobs(), *shared.followed]))
                answer = _StatusAnswer(asked_at=time.monotonic(), job_ids=frozenset(ids))
                try:
                    answer.output = self._status_output(ids)
                except ClusterError as exc:
                    answer.error = str(exc)
                shared.answer = answer
        if answer.output is None:
            raise ClusterError(answer.error)
        return self.parse_states(answer.output, self.job_ids)

    def _status_output(self, job_ids: Sequence[str]) -> str:
        """The status command's output about ``job_ids``; a ClusterError if it
        fails for another reason than not knowing one of them."""
        argv = self.status_argv(job_ids)
        done = self.run_command(argv, check=False)
        said = done.stdout + done.stderr
        if done.returncode != 0 and not any(marker in said for marker in self.unknown_job_markers):
            raise ClusterError(f"`{_shell_words(argv)}` failed with code {done.returncode}: "
                               f"{' '.join(said.split()) or 'no output'}")
        return done.stdout

    def _open_jobs(self) -> list[str]:
        """The jobs not seen ended yet."""
        return [job_id for job_id in self.job_ids if job_id not in self._states or self._states[job_id].active]

    def _follow(self, job_ids: Sequence[str]) -> None:
        new = [job_id for job_id in job_ids if job_id not in self._followed]
        if new and not self.status_per_job:
            _SharedStatus.of(self).follow(new)
            self._followed += new

    def _unfollow(self, job_ids: Sequence[str]) -> None:
        gone = [job_id for job_id in job_ids if job_id in self._followed]
        if gone:
            _SharedStatus.of(self).unfollow(gone)
            self._followed = [job_id for job_id in self._followed if job_id not in gone]

    def job_size(self, job_id: str) -> int:
        """How many engines ``job_id`` runs (a record written before job sizes were recorded: all of them)."""
        if len(self.job_sizes) == len(self.job_ids):
            return self.job_sizes[self.job_ids.index(job_id)]
        return max(getattr(self, "n", 1), 1)

    def active_engines(self) -> int:
        """The engines of this set queued or running: asked for and not ended."""
        states = self.job_states()
        if not self.status_per_engine:
            return sum(self.job_size(job_id) for job_id, status in states.items() if status.active)
        return sum(sum(state.active for state in status.states) for status in states.values())

    def cancel_queued(self, engines: int) -> int:
        """Delete whole jobs still waiting in the queue, newest first, for at
        most ``engines`` engines; how many engines they would have run."""
        cancelled = 0
        for job_id, status in reversed(list(self.job_states(fresh=True).items())):
            size = self.job_size(job_id)
            if cancelled + size > engines or not status.states or \
                    any(state is not JobState.PENDING for state in status.states):
                continue
            for argv in self.delete_argvs([job_id]):
                self.run_command(argv, check=False)
            cancelled += size
        if cancelled:
            self.job_states(fresh=True)
        return cancelled

    def queued_jobs(self) -> int:
        """This set's jobs of which nothing runs yet."""
        return sum(1 for status in self.job_states().values()
                   if status.states and all(state is JobState.PENDING for state in status.states))

    def poll(self) -> int | None:
        return _exit_code(self.job_states())

    def exited(self) -> list[tuple[int, str, list[str]]]:
        reports = []
        for job_id, status in self.job_states().items():
            if status.active:
                continue
            code = status.exit_code if status.exit_code is not None else \
                (0 if status.state in (JobState.DONE, JobState.GONE) else 1)
            said = f"{self.system} job {job_id}: {status.describe()}"
            if _reached_walltime(status):
                code, said = 0, f"{said}: it reached its walltime ({self.walltime or 'the queue default'}); ended, " \
                    "not failed"
            output = self.output_path(job_id)
            reports.append((code, output, [said, *tail(output)]))
        return reports

    def output_path(self, job_id: str) -> str:
        """The output file of ``job_id`` (its first task), where the scheduler's escapes are known."""
        return self.output_file

    def running_engines(self) -> int:
        states = self.job_states()
        if not self.status_per_engine:
            return sum(self.job_size(job_id) for job_id, status in states.items() if status.state is JobState.RUNNING)
        return sum(status.running for status in states.values())

    def exit_label(self, role: str) -> str:
        """'Slurm job 12 of the engines (TIMEOUT (DUE TO TIME LIMIT))': which job, and how it ended."""
        states = self.job_states()
        ended = "; ".join(f"{status.describe()}" for status in states.values() if not status.active)
        return f"{self.system} job {', '.join(self.job_ids)} of the {role}{'s' if role == 'engine' else ''}" + \
            (f" ({ended})" if ended else "")

    def wait(self, timeout: float) -> int | None:
        """:meth:`poll` until the jobs end or ``timeout`` seconds pass, asking
        the scheduler afresh every half second (someone waits for the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            code = _exit_code(self.job_states(fresh=True))
            if code is not None or time.monotonic() >= deadline:
                return code
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    # --- self-healing engine sets -------------------------------------------------------------------
    # One slot per job submitted (its place in job_ids).  A job that ended failed (an exit code, a node
    # failure; not at its walltime, not deleted) is resubmitted in its slot with as many engines as its
    # failed tasks.  Not seen: a failed task of an array job whose other tasks still run (only once the
    # whole array has ended), and a job the scheduler forgot before a watcher saw it fail.

    def dead_engines(self) -> list[DeadEngine]:
        if not isinstance(self, EngineSetLauncher):  # the controller's job: not restarted
            return []
        states = self.job_states()
        dead = []
        for slot, job_id in enumerate(self.job_ids):
            status = states.get(job_id)
            if status is None or status.active or str(slot) in self.given_up:
                continue
            ended = set(status.states)
            if JobState.FAILED in ended and not {JobState.CANCELLED, JobState.TIMEOUT} & ended:
                dead.append(DeadEngine(slot, status.exit_code or 1, self.output_path(job_id),
                                       f"{self.system} job {job_id} (engine slot {slot})"))
        return dead

    def restart_engine(self, slot: int) -> None:
        if not isinstance(self, EngineSetLauncher):
            raise NotImplementedError(f"{type(self).__name__} restarts no controller")
        old = self.job_ids[slot]
        status = self.job_states().get(old)
        size = (status.states.count(JobState.FAILED) if status else 0) or self.job_size(old)
        script = self.job_script_text(size)
        self.job_script = self.write_job_script(script)
        job_id = self.submit(self.job_script, script)
        self._unfollow([old])
        self.job_ids = [*self.job_ids[:slot], job_id, *self.job_ids[slot + 1:]]
        self.job_sizes = [*self.job_sizes[:slot], size, *self.job_sizes[slot + 1:]]
        self._follow([job_id])
        self.n = sum(self.job_sizes)
        self.count_restart(slot)

    def describe(self) -> str:
        jobs = ", ".join(self.job_ids) or "none"
        output = self.output_path(self.job_ids[0]) if self.job_ids else self.output_file
        return f"{self.system} job {jobs}, script {self.job_script}, output {output}"

    def status_line(self) -> str:
        states = self.job_states()
        return "; ".join(f"{self.system} job {job_id} {status.describe()}" for job_id, status in states.items())

    def stop(self) -> None:
        """Delete every job submitted (one the scheduler says ended may still
        be held in its queue; one it did not answer about may run), then wait
        (bounded) until the scheduler says none is queued or running; a line
        in :attr:`killed` for one it still lists after that."""
        self.killed = ()
        if not self.job_ids:
            return
        states = self.job_states(fresh=True)
        active = [job_id for job_id, status in states.items() if status.active]
        for argv in self.delete_argvs(list(self.job_ids)):
            try:
                done = self.run_command(argv, check=False)
            except ClusterError as exc:  # the delete command is missing or hangs: what is left shows below
                self.log.warning("%s", exc)
                continue
            if done.returncode != 0:  # a job that ended meanwhile; what is left shows below
                self.log.debug("%s: %s", _shell_words(argv), done.stderr.strip() or done.stdout.strip())
        if not active or self.wait(max(self.stop_timeout, 1.0) * 6) is not None:
            return
        left = self._states  # the answer wait() just had
        self.killed = tuple(f"{self.system} job {job_id} still {left[job_id].describe()} after "
                            f"{_shell_words(self.delete_argvs([job_id])[0])}" for job_id in active
                            if left[job_id].active)
