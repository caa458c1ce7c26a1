"""The client: :class:`Client`, its views and its async results (as
ipyparallel's ``Client``, ``DirectView``, ``LoadBalancedView`` and
``AsyncResult``)."""

from .asyncresult import AsyncMapResult, AsyncResult
from .client import Client
from .tunnel import open_ssh_tunnel
from .view import DirectView, LoadBalancedView

__all__ = ["AsyncMapResult", "AsyncResult", "Client", "DirectView", "LoadBalancedView", "open_ssh_tunnel"]
