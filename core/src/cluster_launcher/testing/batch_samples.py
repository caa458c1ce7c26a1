"""What LSF's and Windows HPC Server's commands really print, as captured on real clusters.

LSF and HPC Pack cannot be installed here, so their launchers are tested against these samples and
against the fake commands of :mod:`cluster_launcher.testing.fake_batch`, which print exactly these
formats.  Each sample names where it was captured or documented.  Nothing here is made up: a ``*_FORMAT``
constant is the captured line above it with its variable parts (job id, queue, ...) turned into fields,
and the test suite checks that formatting it with the captured values gives the captured line back.
Where no real sample could be found, a comment says so and the sample is left out.

Sources, cited below by their short names:

[gc3pie]  gc3pie/gc3pie, gc3libs/backends/lsf.py: "Examples of LSF commands output used to build this
          backend", a session on ETH Zurich's brutus cluster, Platform LSF HPC 7 Update 6 (2009).
[aiida]   aiidateam/aiida-core, tests/schedulers/test_lsf.py, and src/aiida/schedulers/plugins/lsf.py
          ("tested on the CERN lxplus cluster (LSF 9.1.3)").
[ert]     equinor/ert, tests/ert/unit_tests/scheduler/test_lsf_driver.py (bsub errors "manually obtained
          on the command line by perturbing the command arguments to bsub"; bjobs/bkill behaviour the
          authors observed) and src/ert/scheduler/lsf_driver.py.
[airavata] apache/airavata, TestLSFOutputParser.java (org.apache.airavata.helix.task.submission.parser).
[lsf6]    Platform LSF 6.0 Administrator's Guide, "Job Arrays",
          http://its2.unc.edu/dci_components/lsf.old/doc/admin_6.0/G_jobarrays.html (the same example is in
          the LSF 7.0.5 documentation).
[lsf4]    LSF 4 Batch User's Guide, chapter 7 "Tracking Batch Jobs",
          https://tin6150.github.io/psg/3rdParty/lsf4_userGuide/07-tracking.html
[ibm-hpc] terraform-ibm-modules/terraform-ibm-hpc, its README's "Submit an LSF job as the LDAP user" (an
          IBM Cloud HPC cluster running IBM Spectrum LSF 10).
[dtu]     MrCogito/Deep_learning_2023, outputs/Test_new/Markdown/Test_new_0.md: an LSF job report from
          the DTU cluster (LSF 10) for a job stopped with bkill.
[java-lsf] JaneliaSciComp/java-lsf, src/main/java/org/janelia/cluster/lsf/LsfJobsCommand.java.
[ipython] ipython/ipython, IPython/parallel/apps/winhpcjob.py (IPython 0.13, commit 006acaf3).
[didehpc] mrc-ide/didehpc, its client's client_parse_submit and the tests of it: the MRC-IDE cluster
          portal passes HPC Pack's ``job submit`` output through unchanged.
[hpc-xsd] Microsoft HPC Pack job scheduler schema, "JobState Simple Type",
          https://learn.microsoft.com/en-us/previous-versions/windows/desktop/cc897708(v=vs.85)
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------------------
# LSF: bsub
# --------------------------------------------------------------------------------------------------------

#: bsub's acceptance line for a job that went to a named queue.  [gc3pie] (``bsub -W 00:10 -n 1 -R
#: "rusage[mem=1800]" < script.sh`` on LSF 7: the site routed it to pub.1h without -q), the same form in
#: [aiida] (``Job <764254593> is submitted to queue <test>.``, LSF 9.1.3) and [airavata].
LSF_BSUB_SUBMITTED = "Job <473713> is submitted to queue <pub.1h>."
LSF_BSUB_SUBMITTED_FORMAT = "Job <{job_id}> is submitted to queue <{queue}>."

#: The acceptance line when no queue was named and the job went to the cluster's default queue; also
#: what a job array's submission prints.  [lsf6]: ``bsub -J "myArray[1-1000]" myJob``.
LSF_BSUB_SUBMITTED_DEFAULT = "Job <123> is submitted to default queue <normal>."
LSF_BSUB_SUBMITTED_DEFAULT_FORMAT = "Job <{job_id}> is submitted to default queue <{queue}>."

#: A job array submitted on a real cluster: ``bsub -J myjob[1-4] -R "rusage[mem=2G]" sleep 10``.  [ibm-hpc]
LSF_BSUB_ARRAY_SUBMITTED = "Job <1> is submitted to default queue <normal>."

#: bsub's refusals, on standard error with exit status 255.  [ert], whose parser matches them as
#: substrings: the first one lacks the queue name a real refusal starts with, as in the line below,
#: quoted from a real session in a public shell script (its repository was not named by the search
#: index; IBM's LSF connector for Kubernetes documents the same form, ``missingqueue: No such queue. Job
#: not submitted.``).
LSF_BSUB_EXIT_STATUS_REFUSED = 255
LSF_BSUB_NO_SUCH_QUEUE = "o_pri_interactive_cpu_32G: No such queue. Job not submitted."
LSF_BSUB_NO_SUCH_QUEUE_FORMAT = "{queue}: No such queue. Job not submitted."
LSF_BSUB_REFUSALS = (
    "No such queue. Job not submitted",
    "Too many processors requested. Job not submitted.",
    'Error near "select" : duplicate section. Job not submitted.',
    'Error in select section: Expected number, string, name, or "(" but found end of section. '
    "Job not submitted.",
    "Error with <select[rhel < 8 && cs & x86_64Linux] rusage[mem=50]>: '&' cannot be used in the "
    "resource requirement section. Job not submitted.",
    "Error in rusage section. Job not submitted.",
)
#: A transient refusal that ert retries: the submission host is not (yet) known to the cluster.  [ert]
LSF_BSUB_NON_LSF_HOST = "Request from non-LSF host rejected"

# Not found: bsub's output for an unknown option (the fakes print a getopt-style line, see fake_batch),
# and for an empty job script.

# --------------------------------------------------------------------------------------------------------
# LSF: bjobs, default table
# --------------------------------------------------------------------------------------------------------

#: The default table's header.  [gc3pie], identical in [airavata]; the columns start at the offsets of
#: these names (a value that does not fit its column pushes the rest of its line right).
LSF_BJOBS_HEADER = "JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME"

#: One job as it goes through its states.  [gc3pie]: ``bjobs 473713`` while pending (no EXEC_HOST yet),
#: running, and after ``bkill 473713`` ("STAT would be DONE if not killed").
LSF_BJOBS_PEND = "473713  gloessa PEND  pub.1h     brutus2                 TM-T       Oct 19 17:10"
LSF_BJOBS_RUN = "473713  gloessa RUN   pub.1h     brutus2     a6128       TM-T       Oct 19 17:10"
LSF_BJOBS_EXIT = "473713  gloessa EXIT  pub.1h     brutus2     a6128       TM-T       Oct 19 17:10"

#: A job name longer than its column is shown as ``*`` and its last characters (``bjobs -w`` shows it
#: whole); the day of the month is padded with a space.  [airavata]
LSF_BJOBS_TRUNCATED_NAME = "2636607 lg11w   RUN   long       ghpcc06     c11b02      *069656647 Mar  7 00:58"
LSF_BJOBS_TRUNCATED_NAME_FULL = "2134490944"  # a 10-character name, shown whole in the same table

#: An older LSF's table (narrower JOBID column) with a suspended job.  [lsf4]
LSF_BJOBS_TABLE_LSF4 = """\
JOBID USER     STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME
3926  user1    RUN   priority   hostF        hostC      verilog    Oct 22 13:51
605   user1    SSUSP idle       hostQ        hostC      Test4      Oct 17 18:07
1480  user1    PEND  priority   hostD                   generator  Oct 19 18:13"""

# Array elements: every element is a row of its own with the array's JOBID and the element's name,
# ``name[index]``, in JOB_NAME; LSB_BJOBS_DISPLAY_ENH=Y in lsf.conf moves the index into JOBID instead
# (https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_config_ref/lsf.conf.lsb_bjobs_display_enh.5.html).
# A captured table with array elements was not found; the fakes print the documented default.

#: What bjobs prints when it has no unfinished job to show.  [ert] (its stand-in bjobs prints it and
#: exits 0); [java-lsf] skips any line matching ``No .* found``.
LSF_BJOBS_NO_UNFINISHED = "No unfinished job found"

#: bjobs about a job id it does not know (or has forgotten: LSF keeps finished jobs for CLEAN_PERIOD),
#: on standard error.  [aiida] (``Job <864220165> is not found``, with exit status 255 when asked for
#: several jobs) and [ert]: "Actual command is seen to return zero" when that was the only job asked
#: for, and 255 when other jobs were found.
LSF_BJOBS_NOT_FOUND = "Job <864220165> is not found"
LSF_BJOBS_NOT_FOUND_FORMAT = "Job <{job_id}> is not found"

# --------------------------------------------------------------------------------------------------------
# LSF: bjobs -noheader -o "...", the output meant for scripts
# --------------------------------------------------------------------------------------------------------

# ``-o`` is documented in the IBM Spectrum LSF 10.1.0 command reference
# (https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bjobs.o.1.html) and [aiida] used it on
# LSF 9.1.3; LSF 10.1 Fix Pack 2's release notes introduce ``-json`` and ``bhosts -o`` "like the bjobs -o
# option".  The first release with ``-o`` was not established: a launcher should fall back to the default
# table when bjobs refuses ``-o``.

#: ``bjobs -noheader -o 'id stat exit_reason exec_host user slots max_req_proc exec_host queue finish_time
#: start_time %complete submit_time name delimiter="|"'`` on LSF 9.1.3 (user names anonymized).  [aiida]
LSF_BJOBS_O_FIELDS_AIIDA = (
    "id stat exit_reason exec_host user slots max_req_proc exec_host queue finish_time start_time "
    "%complete submit_time name"
)
LSF_BJOBS_O_AIIDA = """\
764213236|EXIT|TERM_RUNLIMIT: job killed after reaching LSF run time limit|b681e480bd|inewton|1|-|\
b681e480bd|test|Feb  2 00:46|Feb  2 00:45|-|Feb  2 00:44|aiida-1033269
764220165|PEND|-|-|inewton|-|-|-|8nm|-|-|-|Feb  2 01:46|aiida-1033444
764254593|RUN|-|lxbsu2710|inewton|1|-|lxbsu2710|test|Feb  2 07:40|Feb  2 07:39|-|Feb  2 07:39|test"""

#: ``bjobs -noheader -o "jobid stat exec_host delimiter='^'" <ids>``, as ert polls: one line a job, an
#: empty field shown as ``-``.  [ert] (its parser's test data, in the format its driver reads)
LSF_BJOBS_O_ERT = "1^DONE^abc-comp02\n2^RUN^-"

#: ``exit_code`` is ``-`` unless the job exited non-zero: [java-lsf] ("LSF does not give an exit code
#: unless it is non-zero") and [ert] ("bjobs will sometimes return only "-" as exit code").
LSF_BJOBS_EMPTY_FIELD = "-"

#: ``exit_reason`` of a job stopped with bkill, and its exit code (128 + SIGTERM).  [dtu]: the job report
#: reads "TERM_OWNER: job killed by owner." then "Exited with exit code 143."; the field has the same
#: form as [aiida]'s TERM_RUNLIMIT reason above.
LSF_EXIT_REASON_KILLED = "TERM_OWNER: job killed by owner"
LSF_EXIT_CODE_KILLED = 143

# --------------------------------------------------------------------------------------------------------
# LSF: job states (the STAT column and the stat field)
# --------------------------------------------------------------------------------------------------------

#: Every STAT bjobs shows, with what it means.  The bjobs(1) manual of LSF 9.1.2, "JOB STATUS"
#: (https://www-01.ibm.com/support/knowledgecenter/SSETD4_9.1.2/lsf_command_ref/bjobs.1.dita), as quoted in
#: [aiida]'s lsf.py; ert also handles PDONE (post-execution done).
LSF_STATES = {
    "PEND": "pending: not yet started",
    "PROV": "dispatched to a power-saved host that is waking up",
    "PSUSP": "suspended by its owner or the LSF administrator while pending",
    "RUN": "running",
    "USUSP": "suspended by its owner or the LSF administrator while running",
    "SSUSP": "suspended by LSF (load on the execution host, or the queue's run window closed)",
    "DONE": "finished with exit status 0",
    "EXIT": "finished with a non-zero exit status, or killed",
    "UNKWN": "mbatchd lost contact with the sbatchd on the job's host",
    "WAIT": "a member of a chunk job waiting to run",
    "ZOMBI": "killed while its host was unreachable, or requeued under a new job id",
}
LSF_FINISHED_STATES = ("DONE", "EXIT")

# --------------------------------------------------------------------------------------------------------
# LSF: bkill
# --------------------------------------------------------------------------------------------------------

#: bkill's acceptance line.  [gc3pie] (``bkill 473713``) and [aiida].
#: For one element of an array the id is written ``<id>[<index>]`` in the same line.
LSF_BKILL_TERMINATING = "Job <473713> is being terminated"
LSF_BKILL_TERMINATING_FORMAT = "Job <{job_id}> is being terminated"

#: bkill -s <signal>: ert's driver accepts this line as success of ``bkill -s SIGTERM|SIGKILL``.  [ert]
LSF_BKILL_SIGNALED_FORMAT = "Job <{job_id}> is being signaled"

#: bkill of a job that already finished, and of a job LSF does not know: on standard error, exit status
#: 255.  [ert] (test_kill: "Job <11>: Job has already finished", "Job <22>: No matching job found", both
#: with return code 255; its driver treats the first as success).
LSF_BKILL_EXIT_STATUS_FAILED = 255
LSF_BKILL_ALREADY_FINISHED = "Job <11>: Job has already finished"
LSF_BKILL_ALREADY_FINISHED_FORMAT = "Job <{job_id}>: Job has already finished"
LSF_BKILL_NO_MATCHING_JOB = "Job <22>: No matching job found"
LSF_BKILL_NO_MATCHING_JOB_FORMAT = "Job <{job_id}>: No matching job found"

# --------------------------------------------------------------------------------------------------------
# Windows HPC Server / HPC Pack: the ``job`` command
# --------------------------------------------------------------------------------------------------------

#: ``job submit``'s acceptance line.  [didehpc]: its parser's pattern is ``^Job has been submitted. ID:
#: +([0-9]+)\.$`` and its test reads ``Job has been submitted. ID: 3490639.``; a public MATLAB experiment
#: builder (its repository was not named by the search index) runs ``job submit /scheduler:...`` itself
#: and reads the same line with ``sscanf(r, 'Job has been submitted. ID: %d.')``.  IPython 0.13's
#: WindowsHPCLauncher took the job id as the first run of digits in it.
WINHPC_JOB_SUBMITTED = "Job has been submitted. ID: 3490639."
WINHPC_JOB_SUBMITTED_FORMAT = "Job has been submitted. ID: {job_id}."

#: A job's states, as the HPC Pack scheduler schema defines them.  [hpc-xsd]  A job is Failed when one of
#: its tasks failed, Canceled after ``job cancel``.
WINHPC_JOB_STATES = (
    "Configuring", "Submitted", "Validating", "ExternalValidation", "Queued", "Running", "Finishing",
    "Finished", "Failed", "Canceled", "Canceling",
)
WINHPC_FINISHED_STATES = ("Finished", "Failed", "Canceled")

# Not found: a captured ``job view <id>`` (or ``job list``) output.  The only public evidence is code that
# reads it: the MATLAB builder above looks for a line that starts with ``State`` and then, after
# non-word characters, the state (``regexp(result, 'State\W*(?=Finished)')``).  The fake prints one such
# line and nothing else; see fake_batch.  Also not found: ``job cancel``'s output, and the text of
# ``job``'s errors (unknown job id, bad option): the fake prints nothing on a successful cancel and a
# plain one-line error otherwise, and a launcher should rely on the exit status only.

#: The job description IPython 0.13 wrote for ``job submit /jobfile:<file>``: WinHPCJob.tostring() and
#: WinHPCTask.as_element() in [ipython].  Attributes in this order (ElementTree sorted attributes, so
#: IPython prefixed them with _A_, _B_, ... and stripped the prefixes afterwards); an empty string value
#: is left out, booleans are written ``true``/``false``; the namespace is written as a plain ``xmlns``
#: attribute, so every element is in it.  Each task has an EnvironmentVariables element of
#: ``<Variable><Name>..</Name><Value>..</Value></Variable>`` (empty for IPython's own tasks, whose
#: WorkDirectory IPython's launcher set to the profile directory).  This instance is what that code
#: produces for a two-engine job (the user name and the log file names, which hold a uuid1, are examples):
WINHPC_JOB_NAMESPACE = "http://schemas.microsoft.com/HPCS2008/scheduler/"
WINHPC_JOB_ATTRIBUTES = (
    "Version", "Name", "UnitType", "MinCores", "MaxCores", "MinSockets", "MaxSockets", "MinNodes",
    "MaxNodes", "RunUntilCanceled", "IsExclusive", "UserName", "JobType", "Priority", "RequestedNodes",
    "AutoCalculateMax", "AutoCalculateMin", "Project", "Owner", "xmlns",
)
WINHPC_TASK_ATTRIBUTES = (
    "Version", "Name", "MinCores", "MaxCores", "MinSockets", "MaxSockets", "MinNodes", "MaxNodes",
    "CommandLine", "WorkDirectory", "IsRerunnable", "StdOutFilePath", "StdErrFilePath", "IsParametric",
    "UnitType",
)
WINHPC_IPYTHON_JOB_XML = """\
<?xml version="1.0" encoding="utf-8"?>
<Job Version="2.000" Name="IPEngineSet" UnitType="Core" MinCores="1" MaxCores="1" MinSockets="1" \
MaxSockets="1" MinNodes="1" MaxNodes="1" RunUntilCanceled="false" IsExclusive="false" UserName="GNET\\bgranger" \
JobType="Batch" Priority="Highest" AutoCalculateMax="true" AutoCalculateMin="true" Project="IPython" \
Owner="GNET\\bgranger" xmlns="http://schemas.microsoft.com/HPCS2008/scheduler/">
  <Dependencies />
  <Tasks>
    <Task Version="2.000" Name="IPEngine" MinCores="1" MaxCores="1" MinSockets="1" MaxSockets="1" \
MinNodes="1" MaxNodes="1" CommandLine="ipengine.exe --log-to-file --log-level=40" \
WorkDirectory="C:\\Users\\bgranger\\.ipython\\profile_default" IsRerunnable="true" \
StdOutFilePath="log\\ipengine-0b8a4c1e-1d2f-11e2-9c3a-001c42a1b2c3.out" \
StdErrFilePath="log\\ipengine-0b8a4c1e-1d2f-11e2-9c3a-001c42a1b2c3.err" IsParametric="false" UnitType="Core">
      <EnvironmentVariables />
    </Task>
    <Task Version="2.000" Name="IPEngine" MinCores="1" MaxCores="1" MinSockets="1" MaxSockets="1" \
MinNodes="1" MaxNodes="1" CommandLine="ipengine.exe --log-to-file --log-level=40" \
WorkDirectory="C:\\Users\\bgranger\\.ipython\\profile_default" IsRerunnable="true" \
StdOutFilePath="log\\ipengine-0b8a4c1f-1d2f-11e2-9c3a-001c42a1b2c3.out" \
StdErrFilePath="log\\ipengine-0b8a4c1f-1d2f-11e2-9c3a-001c42a1b2c3.err" IsParametric="false" UnitType="Core">
      <EnvironmentVariables />
    </Task>
  </Tasks>
</Job>
"""
