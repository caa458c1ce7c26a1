"""The batch plugins' golden dry runs: each plugin's tests compare what
``start --dry-run`` prints for its two launchers, under the same settings,
with a copy kept in its ``tests/golden/`` (and docs/batch.md shows those
copies).  After a deliberate change, ``CLUSTER_LAUNCHER_UPDATE_GOLDEN=1``
rewrites the copies instead of comparing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..launcher import BatchSystemLauncher

PROFILE = "/home/me/.cluster-launcher/profile_batch"


def golden_dry_run(launcher_class: type[BatchSystemLauncher], n: int, queue: str = "short",
                   **traits: Any) -> str:
    """The dry run of ``launcher_class`` for ``n`` engines (the controller:
    1) of cluster ``c1`` in :data:`PROFILE`, with ``queue``, a one-hour
    walltime and ``python3`` as the command's Python."""
    command = "engine_cmd" if launcher_class.role == "engines" else "controller_cmd"
    role = "engine" if launcher_class.role == "engines" else "controller"
    launcher = launcher_class(profile_dir=PROFILE, cluster_id="c1", queue=queue, walltime="01:00:00",
                              **{command: ["python3", "-m", "cluster_launcher", role]}, **traits)
    return "\n".join(launcher.dry_run(n)) + "\n"


def matches_golden(text: str, path: Path) -> bool:
    """Whether ``text`` is the golden copy at ``path`` (rewritten first with
    ``CLUSTER_LAUNCHER_UPDATE_GOLDEN=1``)."""
    if os.environ.get("CLUSTER_LAUNCHER_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    return path.read_text() == text
