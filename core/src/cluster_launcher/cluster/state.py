"""The record of a started cluster: ``<profile>/pid/cluster-<id>.json`` (mode
0600), each launcher's state, so any later process can poll and stop what
was started, by PID or job id."""

from __future__ import annotations

import json
import os
from typing import Any

from traitlets.config import Config

from .. import plugins
from ..error import ClusterError
from ..launcher import Launcher
from ..protocol import connection


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
    return cls.from_dict(data, config=config or Config())
