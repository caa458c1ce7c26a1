"""The controller process (``cluster-launcher controller``): hub, task queue,
heartbeat monitor and task database in one process.

:mod:`.hub` owns the sockets and the handler tables of the protocol;
:mod:`.taskqueue` is the task queue as a state machine with no sockets.
"""

from .hub import Controller, main

__all__ = ["Controller", "main"]
