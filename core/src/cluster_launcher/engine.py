"""The engine: runs tasks in a persistent namespace (``cluster-launcher engine``)."""

from __future__ import annotations

from traitlets import Float, List, Unicode
from traitlets.config import LoggingConfigurable


class Engine(LoggingConfigurable):
    file = Unicode("", help="The controller-engine.json connection file to use (default: the "
                   "one in the profile's security/ folder).").tag(config=True)
    ssh = Unicode("", help="SSH server to tunnel through to the controller.").tag(config=True)
    startup_script = Unicode("", help="A Python file run in the engine's namespace at start.").tag(config=True)
    startup_command = Unicode("", help="Python code run in the engine's namespace at start.").tag(config=True)
    work_dir = Unicode("", help="Directory the engine changes to before it runs anything.").tag(config=True)
    timeout = Float(10.0, help="Seconds to wait for the controller, at start and after it goes "
                    "away, before the engine gives up and exits.").tag(config=True)
    connect_timeout = Float(30.0, help="Seconds to wait for the connection file to appear.").tag(config=True)
    extra_paths = List(Unicode(), help="Directories prepended to sys.path.").tag(config=True)
    cluster_id = Unicode("", help="The id of the cluster within its profile.").tag(config=True)
