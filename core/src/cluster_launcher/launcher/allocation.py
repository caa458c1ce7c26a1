"""What a batch allocation that ``cluster-launcher start`` runs inside holds.

A plugin that knows a batch system answers the
:func:`~cluster_launcher.hookspecs.cluster_launcher_allocation` hook with an
:class:`Allocation` read from the environment of a job (Slurm's
``SLURM_JOB_ID``, PBS's ``PBS_NODEFILE``); ``start`` then starts the
engines across it with the launcher it names, as many as it has slots,
unless the engine launcher is configured.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Allocation:
    """A batch job's allocation, as the job's own environment tells it."""

    system: str  #: the batch system: 'Slurm', 'PBS'
    job_id: str  #: the job's id, as the system prints it ('42', '42.server')
    engine_launcher: str  #: the short name of the launcher that starts engines across it ('Srun', 'MPI')
    slots: int  #: how many engines fit (Slurm's tasks, the lines of PBS's node file)
    nodes: tuple[str, ...] = ()  #: its host names, each once, in the system's order

    def __str__(self) -> str:
        """'Slurm job 42 (2 nodes, 8 tasks)'."""
        nodes = f"{len(self.nodes)} node{'s' if len(self.nodes) != 1 else ''}, " if self.nodes else ""
        return f"{self.system} job {self.job_id} ({nodes}{self.slots} task{'s' if self.slots != 1 else ''})"
