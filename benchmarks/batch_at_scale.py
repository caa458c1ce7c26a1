"""Batch at scale on the single-node Slurm test bed (cluster_launcher.testing.batchbeds.SlurmBed):
the ``scheduler_load`` and ``slurm_start`` workloads of run.py.

run.py (our interpreter) starts ONE bed for both sides, puts counting wrappers of ``sbatch``,
``squeue`` and ``scancel`` first on PATH (each call appends ``<epoch> <command> <args>`` to a log),
and runs each side as a subprocess of this file or of the CLIs:

- scheduler_load, ours: ``python batch_at_scale.py ours-load`` (a Cluster with a local controller
  and Slurm engines, every job held with ``--hold``): submission, a window of
  ``Cluster.wait_for_engines`` (what ``start`` does while engines queue), a window of the
  foreground supervision loop of ``cluster-launcher start`` (``commands._supervise``, ended by
  SIGALRM as Ctrl-C would end it), then its stop.  Once with arrays (default ``max_array_size``),
  once with ``max_array_size=1``.
- scheduler_load, theirs: ``ipcluster start --engines=slurm -n N`` in the foreground (its job of N
  tasks runs for real: ipyparallel has no hold option in its default template), a window, SIGTERM.
- slurm_start: ``cluster-launcher start --engines=Slurm -n 16 --daemonize`` (returns once every
  engine is registered), timed; ``ipcluster start --engines=slurm -n 16 --daemonize`` then a
  client's ``wait_for_engines(16)`` (``python batch_at_scale.py their-start``, in its venv), timed.

As a script this file imports only the standard library at the top: ``their-start`` runs in the
ipyparallel venv, which has no cluster_launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKLOADS = ("scheduler_load", "slurm_start")
WRAPPED = ("sbatch", "squeue", "scancel")
COMMAND_TIMEOUT = 600.0


@dataclass(frozen=True)
class SlurmSizes:
    load_engines: int          # engines of our scheduler_load runs (all held)
    their_load_engines: int    # tasks of ipyparallel's one job (it must fit the bed's node)
    window: float              # seconds of each measuring window (scaled to per minute)
    start_engines: int         # engines of slurm_start
    start_repeats: int         # starts per side (median)
    slots: int                 # CPUs the bed's node declares


FULL = SlurmSizes(load_engines=256, their_load_engines=16, window=30.0, start_engines=16, start_repeats=3,
                  slots=16)
QUICK = SlurmSizes(load_engines=4, their_load_engines=4, window=3.0, start_engines=4, start_repeats=1, slots=16)
VARIANTS = {"arrays": 0, "per_engine": 1}  # name -> max_array_size (0: the default)


# --- the rows run.py shows -------------------------------------------------------------------

def row_specs(sizes: SlurmSizes) -> list[tuple[str, str, str, str]]:
    """(workload, label, key, unit) of each row; lower is better for all of them."""
    n = sizes.load_engines
    rows = []
    for variant, how in (("arrays", "arrays"), ("per_engine", "one job per engine")):
        rows += [
            ("scheduler_load", f"Slurm cmds/min running, {n} engines, {how}", f"load_{variant}_running_per_min",
             "cmd/min"),
            ("scheduler_load", f"Slurm cmds/min waiting, {n} engines, {how}", f"load_{variant}_waiting_per_min",
             "cmd/min"),
            ("scheduler_load", f"sbatch to submit {n} engines, {how}", f"load_{variant}_submits", "cmds"),
            ("scheduler_load", f"time to submit {n} engines, {how}", f"load_{variant}_submit_s", "s"),
            ("scheduler_load", f"Slurm cmds to stop {n} engines, {how}", f"load_{variant}_stop_cmds", "cmds"),
        ]
    rows.append(("slurm_start", f"start --engines=Slurm -n {sizes.start_engines}, all registered",
                 f"slurm_start_{sizes.start_engines}_s", "s"))
    return rows


# --- the orchestration (our interpreter) --------------------------------------------------------

def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_wrappers(folder: Path, log: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in WRAPPED:
        real = shutil.which(name)
        if real is None:
            raise RuntimeError(f"{name} not found on PATH")
        wrapper = folder / name
        wrapper.write_text(f'#!/bin/sh\nprintf "%s %s %s\\n" "$(date +%s.%N)" {name} "$*" >> {log}\n'
                           f'exec {real} "$@"\n')
        wrapper.chmod(0o755)


def _calls(log: Path, start: float, end: float = float("inf")) -> list[tuple[float, str, str]]:
    """The wrapped calls logged between ``start`` and ``end`` (epoch seconds): (time, command, args)."""
    found = []
    if log.exists():
        for line in log.read_text().splitlines():
            stamp, _, rest = line.partition(" ")
            command, _, args = rest.partition(" ")
            if start <= float(stamp) < end:
                found.append((float(stamp), command, args))
    return found


class _Run:
    """One bed, the wrappers, and the two sides' environments."""

    def __init__(self, root: Path, bed: Any, their_python: Path | None) -> None:
        self.root, self.bed, self.their_python = root, bed, their_python
        self.log = root / "calls.log"
        self.wrappers = root / "wrappers"
        _write_wrappers(self.wrappers, self.log)

    def env(self, side: str, home: Path) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
        env.update(self.bed.env())
        path = [str(self.wrappers)]
        if side == "theirs":
            assert self.their_python is not None
            path.append(str(self.their_python.parent))  # `srun` in its job runs the venv's python by path anyway
        env["PATH"] = os.pathsep.join([*path, env.get("PATH", os.defpath)])
        env["CLUSTER_LAUNCHER_DIR"] = str(home / "cluster-launcher")
        env["IPYTHONDIR"] = str(home / "ipython")
        return env

    def home(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))

    def settle(self) -> None:
        """Between runs: the queue empty (what a run left is cancelled, and said)."""
        deadline = time.monotonic() + 60
        while self.bed.jobs():
            if time.monotonic() > deadline:
                _say(f"slurm bed: jobs {self.bed.jobs()} left in the queue: cancelling them")
                self.bed.cancel_all()
                break
            time.sleep(0.5)

    # --- scheduler_load --------------------------------------------------------------------------

    def ours_load(self, sizes: SlurmSizes, variant: str) -> dict[str, float]:
        home = self.home(f"ours-load-{variant}")
        out = home / "marks.json"
        command = [sys.executable, str(HERE / "batch_at_scale.py"), "ours-load", "--engines",
                   str(sizes.load_engines), "--max-array-size", str(VARIANTS[variant]), "--window",
                   str(sizes.window), "--out", str(out)]
        _say(f"scheduler_load ours, {sizes.load_engines} engines, {variant} ...")
        done = subprocess.run(command, env=self.env("ours", home), cwd=home, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT + 4 * sizes.window)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"ours-load exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        marks = json.loads(out.read_text())
        self.settle()
        return self._load_metrics(variant, marks)

    def _load_metrics(self, variant: str, marks: dict[str, float]) -> dict[str, float]:
        submitted = _calls(self.log, marks["submit"], marks["wait"])
        waiting = _calls(self.log, marks["wait"], marks["supervise"])
        running = _calls(self.log, marks["supervise"], marks["stop"])
        stopping = _calls(self.log, marks["stop"], marks["end"] + 1.0)
        per_min = 60.0
        return {
            f"load_{variant}_submits": float(sum(command == "sbatch" for _, command, _ in submitted)),
            f"load_{variant}_submit_other": float(sum(command != "sbatch" for _, command, _ in submitted)),
            f"load_{variant}_submit_s": marks["wait"] - marks["submit"],
            f"load_{variant}_waiting_per_min": len(waiting) * per_min / (marks["supervise"] - marks["wait"]),
            f"load_{variant}_waiting_squeue": float(len(waiting)),
            f"load_{variant}_waiting_s": marks["supervise"] - marks["wait"],
            f"load_{variant}_running_per_min": len(running) * per_min / (marks["stop"] - marks["supervise"]),
            f"load_{variant}_running_squeue": float(len(running)),
            f"load_{variant}_running_s": marks["stop"] - marks["supervise"],
            f"load_{variant}_stop_cmds": float(len(stopping)),
            f"load_{variant}_stop_scancel": float(sum(command == "scancel" for _, command, _ in stopping)),
            f"load_{variant}_stop_s": marks["end"] - marks["stop"],
        }

    def theirs_load(self, sizes: SlurmSizes) -> tuple[dict[str, float], list[str]]:
        """ipcluster in the foreground with one job of N tasks, for a window; then SIGTERM (its stop)."""
        assert self.their_python is not None
        n = sizes.their_load_engines
        home = self.home("theirs-load")
        env = self.env("theirs", home)
        ipcluster = self.their_python.parent / "ipcluster"
        _say(f"scheduler_load theirs, ipcluster start --engines=slurm -n {n} ...")
        begin = time.time()
        with open(home / "ipcluster.out", "wb") as output:
            process = subprocess.Popen([str(ipcluster), "start", "--engines=slurm", f"-n={n}"], env=env, cwd=home,
                                       stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not [c for c in _calls(self.log, begin) if c[1] == "sbatch"]:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ipcluster submitted nothing: {(home / 'ipcluster.out').read_text()[-2000:]}")
                time.sleep(0.2)
            submitted_at = [c for c in _calls(self.log, begin) if c[1] == "sbatch"][-1][0]
            window_start = time.time() + 1.0  # after its submission returned
            running_seen = self._wait_running(n, sizes.window + 1.0)
            time.sleep(max(0.0, window_start + sizes.window - time.time()))
            window_end = time.time()
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        end = time.time()
        self.settle()
        during = _calls(self.log, window_start, window_end)
        metrics = {
            "load_arrays_submits": float(len([c for c in _calls(self.log, begin, window_start) if c[1] == "sbatch"])),
            "load_arrays_submit_s": submitted_at - begin,
            "load_arrays_running_per_min": len(during) * 60.0 / (window_end - window_start),
            "load_arrays_running_squeue": float(len(during)),
            "load_arrays_running_s": window_end - window_start,
            "load_arrays_stop_cmds": float(len(_calls(self.log, window_end, end + 1.0))),
        }
        notes = [f"theirs scheduler_load: measured with ONE job of {n} tasks (`ipcluster start --engines=slurm "
                 f"-n {n}`, foreground, {sizes.window:g} s window; {running_seen} of its tasks seen running); "
                 "ipyparallel's BatchSystemLauncher.poll() returns None and never runs squeue, so the count does "
                 "not grow with n; its 'time to submit' row includes ipcluster starting its controller"]
        return metrics, notes

    def _wait_running(self, tasks: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        running = 0
        while time.monotonic() < deadline:
            lines = self.bed.run("squeue", "--noheader", "--states=RUNNING", "--format=%D %C").stdout.split("\n")
            running = sum(int(line.split()[1]) for line in lines if line.strip())
            if running >= tasks:
                break
            time.sleep(0.5)
        return running

    def refused_at_scale(self, n: int) -> str:
        """What sbatch says of one job of ``n`` tasks (ipyparallel's default template) on this bed."""
        done = self.bed.run("sbatch", f"--ntasks={n}", "--wrap=true", check=False)
        if done.returncode == 0:
            self.bed.cancel_all()
            return f"sbatch accepted one job of {n} tasks"
        return " ".join((done.stderr or done.stdout).split())

    # --- slurm_start -----------------------------------------------------------------------------

    def ours_start(self, n: int) -> float:
        home = self.home("ours-start")
        env = self.env("ours", home)
        cli = [sys.executable, "-m", "cluster_launcher"]
        begin = time.monotonic()
        done = subprocess.run([*cli, "start", "--engines=Slurm", f"-n={n}", "--daemonize"], env=env, cwd=home,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        took = time.monotonic() - begin
        stopped = subprocess.run([*cli, "stop"], env=env, cwd=home, capture_output=True, text=True,
                                 timeout=COMMAND_TIMEOUT)
        self.settle()
        if done.returncode != 0 or f"cluster ready with {n} engines" not in done.stdout:
            raise RuntimeError(f"start exited with {done.returncode}: {(done.stdout + done.stderr).strip()[-2000:]}")
        if stopped.returncode != 0:
            raise RuntimeError(f"stop exited with {stopped.returncode}: {stopped.stderr.strip()[-2000:]}")
        return took

    def theirs_start(self, n: int) -> float:
        assert self.their_python is not None
        home = self.home("theirs-start")
        out = home / "start.json"
        command = [str(self.their_python), str(HERE / "batch_at_scale.py"), "their-start", "--engines", str(n),
                   "--out", str(out)]
        done = subprocess.run(command, env=self.env("theirs", home), cwd=home, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)
        self.settle()
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"their-start exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        return float(json.loads(out.read_text())["seconds"])


def run_slurm(names: list[str], quick: bool, their_python: Path | None) -> tuple[dict, dict | None, list[str]]:
    """Run the Slurm workloads in ``names``: (our report, theirs or None, notes).  A report is
    ``{"side", "metrics", "errors"}`` as workloads.py writes it."""
    from cluster_launcher.testing.batchbeds import SlurmBed, why_unavailable

    sizes = QUICK if quick else FULL
    ours: dict[str, Any] = {"side": "ours", "metrics": {}, "errors": {}}
    theirs: dict[str, Any] | None = None if their_python is None else {"side": "theirs", "metrics": {}, "errors": {}}
    notes: list[str] = []
    why = why_unavailable("slurm")
    if why:
        line = f"skipped {', '.join(names)}: the Slurm test bed cannot start here: {why}"
        _say(line)
        ours["skipped"] = line
        return ours, theirs, [line]
    root = Path(tempfile.mkdtemp(prefix="clb-slurm-"))  # short: munge's socket path has a limit
    try:
        _say(f"starting the single-node Slurm bed ({sizes.slots} CPUs) in {root} ...")
        with SlurmBed(root / "bed", slots=sizes.slots) as bed:
            run = _Run(root, bed, their_python)
            if "scheduler_load" in names:
                _scheduler_load(run, sizes, ours, theirs, notes)
            if "slurm_start" in names:
                _slurm_start(run, sizes, ours, theirs, notes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return ours, theirs, notes


def _attempt(report: dict | None, name: str, function: Any, *args: Any) -> Any:
    if report is None:
        return None
    try:
        return function(*args)
    except Exception as exc:  # one side failing must not lose the other's numbers
        report["errors"][name] = " ".join(str(exc).split())[:1500]
        _say(f"{report['side']} {name} failed: {exc}")
        return None


def _scheduler_load(run: _Run, sizes: SlurmSizes, ours: dict, theirs: dict | None, notes: list[str]) -> None:
    for variant in VARIANTS:
        ours["metrics"].update(_attempt(ours, f"scheduler_load ({variant})", run.ours_load, sizes, variant) or {})
    notes.append(f"ours scheduler_load: {sizes.load_engines} engines submitted held (--hold), poll_interval 5 s and "
                 f"submit_interval 0.5 s (defaults); 'waiting' = {sizes.window:g} s of Cluster.wait_for_engines, "
                 f"'running' = {sizes.window:g} s of the foreground loop of `cluster-launcher start`, both scaled "
                 "to a minute; 'stop' = Ctrl-C's stop (first squeue, scancel, squeue every 0.5 s until gone)")
    if theirs is not None:
        found = _attempt(theirs, "scheduler_load", run.theirs_load, sizes)
        if found:
            theirs["metrics"].update(found[0])
            notes += found[1]
        if sizes.load_engines > sizes.slots:
            refused = run.refused_at_scale(sizes.load_engines)
            notes.append(f"theirs at {sizes.load_engines} engines: not measured (its one job of "
                         f"{sizes.load_engines} tasks can never run on the {sizes.slots}-CPU node); "
                         f"sbatch of such a job here: {refused}")
        notes.append("theirs 'waiting' and 'one job per engine' rows: ipyparallel has neither (its start "
                     "does not wait for engines; its Slurm launcher submits one job of n tasks)")


def _slurm_start(run: _Run, sizes: SlurmSizes, ours: dict, theirs: dict | None, notes: list[str]) -> None:
    n = sizes.start_engines
    key = f"slurm_start_{n}_s"
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for repeat in range(sizes.start_repeats):  # interleaved: both sides see the same machine
        for side, report, function in (("theirs", theirs, run.theirs_start), ("ours", ours, run.ours_start)):
            if report is None or report["errors"].get("slurm_start"):
                continue
            _say(f"slurm_start {side}, -n {n}, {repeat + 1} of {sizes.start_repeats} ...")
            took = _attempt(report, "slurm_start", function, n)
            if took is not None:
                times[side].append(took)
    for side, report in (("ours", ours), ("theirs", theirs)):
        if report is not None and times[side]:
            report["metrics"][key] = statistics.median(times[side])
            report["metrics"][f"{key}_all"] = times[side]
    notes.append(f"slurm_start: median of {sizes.start_repeats}, bed node of {sizes.slots} CPUs; ours = "
                 f"`cluster-launcher start --engines=Slurm -n {n} --daemonize` until it returns (it does once all "
                 f"{n} are registered); theirs = `ipcluster start --engines=slurm -n {n} --daemonize` then a Client's "
                 f"wait_for_engines({n}); each from nothing to registered, controller local")


# --- the subprocesses -------------------------------------------------------------------------

def ours_load_main(engines: int, max_array_size: int, window: float, out: Path) -> int:
    """A cluster of ``engines`` held Slurm engines: submit, wait, supervise, stop; the marks to ``out``."""
    from traitlets.config import Config

    from cluster_launcher import Cluster
    from cluster_launcher.cluster import commands
    from cluster_launcher.error import ClusterError

    config = Config()
    config.Cluster.engine_launcher_class = "Slurm"
    config.SlurmLauncher.job_extra_directives = ["--hold"]  # nothing has to run on the bed's node
    if max_array_size:
        config.SlurmLauncher.max_array_size = max_array_size
    cluster = Cluster(n=engines, config=config)
    marks: dict[str, float] = {}
    stopped = False
    try:
        cluster.start_controller()
        marks["submit"] = time.time()
        cluster.start_engines(engines)
        marks["wait"] = time.time()
        try:  # what `start` and a Cluster in Python do while the engines queue
            cluster.wait_for_engines(engines, timeout=window)
        except ClusterError:
            pass
        marks["supervise"] = time.time()

        def window_over(signum: int, frame: Any) -> None:
            marks["stop"] = time.time()
            commands._raise_signalled(signum, frame)  # as Ctrl-C ends the foreground `start`

        signal.signal(signal.SIGALRM, window_over)
        signal.setitimer(signal.ITIMER_REAL, window)
        commands._supervise(cluster)  # the foreground loop of `cluster-launcher start`, then its stop
        stopped = True
        marks["end"] = time.time()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if not stopped:
            cluster.stop()
    if "stop" not in marks:
        raise SystemExit("the supervision ended before its window: the controller exited")
    out.write_text(json.dumps(marks))
    return 0


def their_start_main(engines: int, out: Path) -> int:
    """In ipyparallel's venv: ``ipcluster start --engines=slurm -n N --daemonize``, then a client waits
    for the N engines; the seconds from the command to all registered go to ``out``."""
    import ipyparallel as ipp  # type: ignore[import-not-found]

    ipcluster = str(Path(sys.executable).parent / "ipcluster")
    connection = Path(os.environ["IPYTHONDIR"]) / "profile_default" / "security" / "ipcontroller-client.json"
    begin = time.monotonic()
    try:
        subprocess.run([ipcluster, "start", "--engines=slurm", f"-n={engines}", "--daemonize"], check=True,
                       timeout=COMMAND_TIMEOUT, capture_output=True)
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while not connection.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"no {connection}")
            time.sleep(0.05)
        client = ipp.Client(timeout=60)
        client.wait_for_engines(engines, timeout=max(1.0, deadline - time.monotonic()))
        took = time.monotonic() - begin
        client.close()
    finally:
        subprocess.run([ipcluster, "stop"], timeout=COMMAND_TIMEOUT, capture_output=True)
    out.write_text(json.dumps({"seconds": took}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    load = sub.add_parser("ours-load")
    load.add_argument("--engines", type=int, required=True)
    load.add_argument("--max-array-size", type=int, default=0)
    load.add_argument("--window", type=float, required=True)
    load.add_argument("--out", type=Path, required=True)
    start = sub.add_parser("their-start")
    start.add_argument("--engines", type=int, required=True)
    start.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.what == "ours-load":
        return ours_load_main(args.engines, args.max_array_size, args.window, args.out)
    return their_start_main(args.engines, args.out)


if __name__ == "__main__":
    sys.exit(main())
