"""A whole cluster: a controller launcher and engine-set launchers started
and stopped together.  :class:`Cluster` is the Python API; :mod:`.commands`
the ``start``/``stop``/``engines``/``list`` commands; :mod:`.state` the
record that lets a later process stop what was started."""

from .cluster import Cluster
from .state import launcher_from_dict, read_state, state_file

__all__ = ["Cluster", "launcher_from_dict", "read_state", "state_file"]
