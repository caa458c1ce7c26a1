"""cluster-launcher: parallel Python on many cores and many machines."""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__", "Client", "Cluster", "Reference", "require", "depend", "dependent", "interactive"]

_REMOTE_HELPERS = ("Reference", "require", "depend", "dependent", "interactive")


def __getattr__(name: str) -> Any:
    # The client pulls in zmq and cloudpickle; plugins importing ``hookimpl``
    # should not pay for that.
    if name == "Client":
        from .client import Client
        return Client
    if name == "Cluster":
        from .cluster import Cluster
        return Cluster
    if name in _REMOTE_HELPERS:  # ipyparallel's names; they live where engines can unpickle them
        from .protocol import remote
        return getattr(remote, name)
    raise AttributeError(f"module 'cluster_launcher' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext cluster_launcher``: register %px, %%px, %autopx, %pxresult and %pxconfig, bound to the
    most recently activated view (``view.activate()``).  Connects nothing by itself (docs/magics.md)."""
    from .client.magics import load_ipython_extension as load_magics
    load_magics(ipython)
