"""The real batch systems the launcher tests run against (cluster_launcher.testing.batchbeds): Slurm,
its PBS/Torque wrappers, Grid Engine and HTCondor each run a job, run four one-core jobs at once on
this two-core machine (the node declares SLOTS CPUs), and stop leaving no process behind.

The beds need root and what ``.ci/install-batch-systems`` installs: without it they are skipped,
except under ``CI``, where that is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cluster_launcher.testing.batchbeds import SLOTS, CondorBed, GridEngineBed, SlurmBed, condor_directory, require
from cluster_launcher.testing.processes import wait_for

Bed = SlurmBed | GridEngineBed | CondorBed
KINDS = ("slurm", "sge", "condor")
# How long a job may take from submission to its end, on a machine busy with other tests.
JOB_TIMEOUT = 60


def make_bed(kind: str, directory: Path) -> Bed:
    if kind == "slurm":
        return SlurmBed(directory)
    if kind == "sge":
        return GridEngineBed(directory)
    return CondorBed(directory)


@pytest.fixture(params=KINDS)
def bed(request: pytest.FixtureRequest) -> Bed:
    return request.getfixturevalue(f"{request.param}_bed")


def job_folder(bed: Bed, tmp_path: Path) -> Path:
    """Where a job's files go: the test's tmp_path, or for HTCondor a folder its submit user owns."""
    if isinstance(bed, CondorBed):
        return bed.job_dir(tmp_path.name)
    return tmp_path


def write_script(folder: Path, name: str, body: str) -> Path:
    script = folder / name
    script.write_text(f"#!/bin/sh\n{body}")
    script.chmod(0o755)
    return script


def submit(bed: Bed, script: Path, folder: Path, pbs: bool = False) -> str:
    """Submit ``script`` as a one-core job that runs in ``folder``; its job id."""
    if pbs:
        assert isinstance(bed, SlurmBed)
        return bed.run("qsub", str(script), cwd=folder, env=bed.pbs_env()).stdout.strip()
    if isinstance(bed, SlurmBed):
        out = bed.run("sbatch", "--parsable", f"--output={folder}/slurm-%j.out", str(script), cwd=folder).stdout
        return out.strip().split(";")[0]
    if isinstance(bed, GridEngineBed):
        return bed.run("qsub", "-terse", "-cwd", "-S", "/bin/sh", "-j", "y", "-o", str(folder), str(script),
                       cwd=folder).stdout.strip()
    submit_file = folder / f"{script.stem}.sub"
    submit_file.write_text(f"executable = {script}\ninitialdir = {folder}\noutput = {script.stem}.out\n"
                           f"error = {script.stem}.err\nlog = {script.stem}.log\nqueue\n")
    # -terse: "4.0 - 4.0"
    return bed.run("condor_submit", "-terse", str(submit_file), cwd=folder).stdout.split()[0]


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_queue_empty(bed: Bed) -> None:
    wait_for(lambda: bed.jobs() == [], JOB_TIMEOUT, f"the {bed.kind} queue to be empty")


def test_a_job_runs_and_leaves_the_queue(bed: Bed, tmp_path: Path) -> None:
    folder = job_folder(bed, tmp_path)
    script = write_script(folder, "hello.sh", f"echo hello from $(hostname) > {folder}/hello.txt\n")
    job_id = submit(bed, script, folder)
    assert job_id, "no job id printed"
    wait_for(lambda: (folder / "hello.txt").exists(), JOB_TIMEOUT, f"job {job_id} to write hello.txt")
    wait_queue_empty(bed)
    assert (folder / "hello.txt").read_text().startswith("hello from ")


def test_more_one_core_jobs_run_at_once_than_the_machine_has_cores(bed: Bed, tmp_path: Path) -> None:
    n = 4  # one-core jobs, on a machine of two cores: the node declares SLOTS CPUs
    assert n <= SLOTS
    folder = job_folder(bed, tmp_path)
    gate = folder / "gate"
    # Each job says it started, then holds its core until every job has started (at most 60 s).
    script = write_script(folder, "held.sh",
                          f'touch "{folder}/started.$1"\n'
                          f"i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done\n"
                          f'[ -e {gate} ] && touch "{folder}/done.$1"\n')
    for index in range(n):
        wrapper = write_script(folder, f"held{index}.sh", f"exec {script} {index}\n")
        submit(bed, wrapper, folder)
    wait_for(lambda: len(list(folder.glob("started.*"))) == n, JOB_TIMEOUT, f"{n} jobs running at once")
    gate.touch()
    wait_for(lambda: len(list(folder.glob("done.*"))) == n, JOB_TIMEOUT, f"the {n} jobs to pass the gate")
    wait_queue_empty(bed)


def test_pbs_qsub_through_slurms_wrappers_runs_a_script(slurm_bed: SlurmBed, tmp_path: Path) -> None:
    require("pbs")
    script = write_script(tmp_path, "pbs.sh", f"#PBS -N pbs-test\nenv > {tmp_path}/env.txt\n")
    job_id = submit(slurm_bed, script, tmp_path, pbs=True)
    assert job_id.isdigit(), f"qsub printed {job_id!r}, not a bare job id"
    wait_for(lambda: (tmp_path / "env.txt").exists(), JOB_TIMEOUT, f"PBS job {job_id} to run")
    wait_queue_empty(slurm_bed)
    variables = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    # The wrappers' quirk a PBS launcher must live with: Slurm's variables in the job, no PBS_* ones.
    assert variables.get("SLURM_JOB_ID") == job_id
    assert not [name for name in variables if name.startswith("PBS_")]
    # A finished job stays in qstat for a while, as C; the header is Torque's.
    qstat = slurm_bed.run("qstat", env=slurm_bed.pbs_env()).stdout.splitlines()
    assert qstat[0].split()[:3] == ["Job", "id", "Name"]
    assert any(line.split()[0] == job_id and line.split()[4] == "C" for line in qstat[2:])


def test_condor_jobs_and_the_submit_user_run_this_python(condor_bed: CondorBed, tmp_path: Path) -> None:
    folder = condor_bed.job_dir(tmp_path.name)
    code = "import sys, cluster_launcher; print(sys.prefix, cluster_launcher.__name__)"
    script = write_script(folder, "python.sh", f"exec {sys.executable} -c '{code}' > {folder}/python.txt\n")
    submit(condor_bed, script, folder)
    wait_for(lambda: (folder / "python.txt").exists() and (folder / "python.txt").read_text(), JOB_TIMEOUT,
             "the HTCondor job to run this Python")
    assert (folder / "python.txt").read_text().split() == [sys.prefix, "cluster_launcher"]
    assert (folder / "python.txt").stat().st_uid == condor_bed.submit_uid
    # A program that submits jobs itself runs as the submit user inside the chroot.
    argv = condor_bed.command([sys.executable, "-c", "import os; print(os.getuid())"], cwd=folder)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == str(condor_bed.submit_uid), done.stderr
    wait_queue_empty(condor_bed)


@pytest.mark.parametrize("kind", KINDS)
def test_stop_cancels_running_jobs_and_leaves_no_process(kind: str, tmp_path: Path) -> None:
    """A bed of its own (beside the session's), stopped with a job still running."""
    require(kind)
    directory = condor_directory() if kind == "condor" else tmp_path / "bed"
    bed = make_bed(kind, Path(directory))
    try:
        bed.start()
        folder = job_folder(bed, tmp_path)
        script = write_script(folder, "forever.sh",
                              f"echo $$ > {folder}/pid\ni=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done\n")
        job_id = submit(bed, script, folder)
        wait_for(lambda: (folder / "pid").exists() and (folder / "pid").read_text(), JOB_TIMEOUT,
                 f"job {job_id} to run")
        job_pid = int((folder / "pid").read_text())
        assert bed.jobs(), "the running job is not in the queue"
        processes = bed.processes()
        assert job_pid in [process.pid for process in processes], "the job's process is not the bed's"
        assert set(bed.daemon_pids()) <= {process.pid for process in processes}
        bed.stop()
        left = [process.pid for process in processes if alive(process)]
        assert left == [], f"processes of the {kind} bed left after stop: {left}"
        if isinstance(bed, CondorBed):
            assert bed.mounted == [], "mounts left in the HTCondor chroot"
    finally:
        bed.stop()  # a no-op once stopped
        if kind == "condor":
            shutil.rmtree(directory, ignore_errors=True)
