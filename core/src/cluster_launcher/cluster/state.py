"""The record of a started cluster: ``<profile>/pid/cluster-<id>.json`` (mode
0600), each launcher's state, so any later process can poll and stop what
was started, by PID or job id."""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

from traitlets.config import Config

from .. import plugins
from ..error import ClusterError
from ..launcher import Launcher
from ..protocol import connection

LauncherT = TypeVar("LauncherT", bound=Launcher)


def state_file(profile_dir: str, cluster_id: str = "") -> str:
    """``<profile_dir>/pid/cluster-<cluster_id or 'default'>.json``."""
    return os.path.join(profile_dir, "pid", f"cluster-{cluster_id or 'default'}.json")


def read_state(path: str) -> dict[str, Any] | None:
    """The recorded cluster in ``path``; None when there is none."""
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClusterError(f"{path}: unreadable cluster record ({exc}); delete it if no cluster runs") from None
    if not isinstance(state, dict) or not isinstance(state.get("controller"), dict):
        raise ClusterError(f"{path}: not a cluster record (no 'controller' entry); delete it if no cluster runs")
    return state


write_state = connection.write_private_json


def launcher_from_dict(data: dict[str, Any], config: Config | None = None) -> Launcher:
    """Rebuild a launcher recorded by :meth:`Launcher.to_dict` (its class by dotted path)."""
    cls = plugins.resolve("launcher", data["class"])
    if not (isinstance(cls, type) and issubclass(cls, Launcher)):
        raise ClusterError(f"the recorded launcher {data['class']!r} is not a Launcher")
    return cls.from_dict(data, config=config or Config())


def recorded_launcher(data: dict[str, Any], base: type[LauncherT], config: Config | None = None) -> LauncherT:
    """:func:`launcher_from_dict` for one role: ``base`` is ControllerLauncher
    or EngineSetLauncher, which the recorded class must subclass."""
    launcher = launcher_from_dict(data, config)
    if not isinstance(launcher, base):
        raise ClusterError(f"the recorded launcher {data['class']!r} is not a {base.__name__}")
    return launcher
