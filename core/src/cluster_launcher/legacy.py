"""IPython.parallel 0.11–0.13 names, in one place: the config sections,
options and class names its users wrote, and what each means here.

Pure data, a leaf module: :mod:`cluster_launcher.plugins` resolves legacy
class names with it and :mod:`cluster_launcher.config` translates legacy
config sections and options.
"""

from __future__ import annotations

# Dotted prefixes of IPython.parallel's (and ipyparallel's) class paths: their last
# component names our plugin class.
LEGACY_PREFIXES = ("IPython.parallel.", "ipyparallel.", "IPython.kernel.")
# Launcher classes IPython 0.11 named differently.
LEGACY_CLASS_NAMES = {"MPIExecEngineSetLauncher": "MPIEngineSetLauncher",
                      "MPIExecControllerLauncher": "MPIControllerLauncher", "MPIExecLauncher": "MPILauncher",
                      "MPIExec": "MPI"}
# The config file names of IPython's ipcluster, ipcontroller and ipengine,
# read before ours by the same commands here.
LEGACY_CONFIG_FILES = {"cluster": "ipcluster_config.py", "controller": "ipcontroller_config.py",
                       "engine": "ipengine_config.py"}
# Legacy section -> our section, in increasing precedence within one target
# (IPClusterStart extends IPClusterEngines in IPython, so it wins).
LEGACY_SECTIONS = {
    "IPClusterApp": "Cluster", "IPClusterEngines": "Cluster", "IPClusterStart": "Cluster",
    "RegistrationFactory": "Controller", "HubFactory": "Controller", "IPControllerApp": "Controller",
    "EngineFactory": "Engine", "IPEngineApp": "Engine", "MPI": "Engine",
    "HeartMonitor": "Controller",
}
# (our section, legacy option) -> (our option, deprecated already in IPython)
LEGACY_OPTIONS = {
    ("Cluster", "engine_launcher"): ("engine_launcher_class", True),
    ("Cluster", "engine_set_launcher"): ("engine_launcher_class", True),
    ("Cluster", "engine_set_launcher_class"): ("engine_launcher_class", False),
    ("Cluster", "controller_launcher"): ("controller_launcher_class", True),
    ("Controller", "reuse_files"): ("reuse", False),
    ("Controller", "engine_ip"): ("ip", False),
    ("Controller", "client_ip"): ("ip", False),
    ("Controller", "ssh_server"): ("ssh", False),
    ("Controller", "engine_ssh_server"): ("enginessh", False),
    ("Controller", "period"): ("heartbeat_period", False),  # c.HeartMonitor.period, see LEGACY_UNITS
    ("Controller", "max_heartmonitor_misses"): ("heartbeat_max_misses", False),
    ("Engine", "url_file"): ("file", False),
    ("Engine", "wait_for_url_file"): ("connect_timeout", False),
    ("Engine", "sshserver"): ("ssh", False),
    ("Engine", "use"): ("mpi", False),  # c.MPI.use = 'mpi4py'
    ("Engine", "init_script"): ("mpi_init_script", False),  # c.MPI.init_script
}
# (legacy section, option) -> the factor that turns its value into our unit:
# IPython's HeartMonitor.period is in milliseconds, Controller.heartbeat_period in seconds.
LEGACY_UNITS = {("HeartMonitor", "period"): 0.001}
# Options of IPython's application classes that have no counterpart here
# (logging goes to the profile's log/ folder; there is no separate monitor
# port): accepted and ignored, with a notice.
OBSOLETE_OPTIONS = {"log_url", "clean_logs", "auto_create", "copy_config_files",
                    "overwrite", "early_shutdown", "monitor_ip", "registration_timeout", "use_threads"}
# The 0.11 launcher class names.
LEGACY_LAUNCHER_SECTIONS = {old: new for old, new in LEGACY_CLASS_NAMES.items() if old.endswith("Launcher")}
# Launcher options renamed since 0.11 (SSHControllerLauncher.program_args).
LEGACY_LAUNCHER_OPTIONS = {"program_args": {"ControllerLauncher": "controller_args",
                                            "EngineSetLauncher": "engine_args"}}
# Builtin launcher prefixes, whether installed or not, so that a section for a
# plugin installed later is recognised (and case-corrected: SLURMLauncher).
BUILTIN_LAUNCHER_PREFIXES = ("Local", "MPI", "SSH", "PBS", "SGE", "LSF", "Slurm", "WindowsHPC")
BUILTIN_DB_CLASSES = ("DictDB", "NoDB", "SQLiteDB", "MongoDB")
LAUNCHER_SUFFIXES = ("EngineSetLauncher", "ControllerLauncher")

