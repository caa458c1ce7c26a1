"""The controller: hub, task queue, heartbeat monitor and task database in
one process (``cluster-launcher controller``)."""

from __future__ import annotations

from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable


class Controller(LoggingConfigurable):
    """Where the controller listens and how it keeps task history."""

    ip = Unicode("127.0.0.1", help="Interface to listen on. '*' (or '0.0.0.0') listens on every "
                 "interface: engines on other hosts need it.").tag(config=True)
    location = Unicode("", help="The host name or address that engines and clients should connect "
                       "to, written into the connection files (default: the listen ip, or this "
                       "host's name when listening on every interface).").tag(config=True)
    reuse = Bool(False, help="Reuse the ports and key of existing connection files, so engines and "
                 "clients started earlier reconnect after a controller restart.").tag(config=True)
    client_port = Integer(0, help="Port for clients (0: a random free port).").tag(config=True)
    engine_port = Integer(0, help="Port for engines (0: a random free port).").tag(config=True)
    heartbeat_port = Integer(0, help="Port for engine heartbeats (0: a random free port).").tag(config=True)
    db_class = Unicode("DictDB", help="The task database: DictDB (in memory), NoDB (none), "
                       "SQLiteDB, MongoDB, or any installed plugin's class name.").tag(config=True)
    heartbeat_period = Float(1.0, help="Seconds between heartbeats.").tag(config=True)
    heartbeat_timeout = Float(10.0, help="Seconds without a heartbeat before an engine is declared "
                              "dead and its tasks failed or retried.").tag(config=True)
    ssh = Unicode("", help="SSH server clients should tunnel through to reach the controller "
                  "(written into controller-client.json).").tag(config=True)
    enginessh = Unicode("", help="SSH server engines should tunnel through to reach the controller "
                        "(written into controller-engine.json).").tag(config=True)
    cluster_id = Unicode("", help="The id of the cluster within its profile (names its files).").tag(config=True)
