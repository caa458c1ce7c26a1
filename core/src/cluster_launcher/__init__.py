"""cluster-launcher: parallel Python on many cores and many machines."""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__", "Client", "Cluster"]


def __getattr__(name: str) -> Any:
    # The client pulls in zmq and cloudpickle; plugins importing ``hookimpl``
    # should not pay for that.
    if name == "Client":
        from .client import Client
        return Client
    if name == "Cluster":
        from .cluster import Cluster
        return Cluster
    raise AttributeError(f"module 'cluster_launcher' has no attribute {name!r}")
