"""A whole cluster: one controller launcher and engine-set launchers, started
and stopped together (``cluster-launcher start/stop``, :class:`Cluster`)."""

from __future__ import annotations

from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable


class Cluster(LoggingConfigurable):
    n = Integer(None, allow_none=True, help="Number of engines to start (default: the number of "
                "CPUs).").tag(config=True)
    engine_launcher_class = Unicode("Local", help="How engines start: Local, MPI, SSH, PBS, SGE, "
                                    "LSF, Slurm, WindowsHPC, a launcher class name or a dotted "
                                    "path.").tag(config=True)
    controller_launcher_class = Unicode("Local", help="How the controller starts: Local, SSH, "
                                        "MPI, PBS, … (as engine_launcher_class).").tag(config=True)
    transport = Unicode("file", help="How connection files reach engine and client hosts.").tag(config=True)
    delay = Float(0.0, help="Seconds to wait after starting the controller before starting "
                  "engines.").tag(config=True)
    daemonize = Bool(False, help="Detach `start` from the terminal and return once the cluster "
                     "runs.").tag(config=True)
    cluster_id = Unicode("", help="The id of the cluster within its profile.").tag(config=True)
    start_timeout = Float(60.0, help="Seconds `start` waits for the controller and engines to be "
                          "ready.").tag(config=True)
