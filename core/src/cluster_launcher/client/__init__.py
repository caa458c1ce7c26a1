"""The client: :class:`Client`, its views and its async results (as
ipyparallel's ``Client``, ``DirectView``, ``LoadBalancedView`` and
``AsyncResult``).  SSH tunnels (``Client(sshserver=...)``) are in
:mod:`cluster_launcher.protocol.tunnel`, shared with engines."""

from .asyncresult import AsyncMapResult, AsyncResult
from .client import Client
from .view import DirectView, LoadBalancedView

__all__ = ["AsyncMapResult", "AsyncResult", "Client", "DirectView", "LoadBalancedView"]
