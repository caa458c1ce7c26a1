"""Base class of task-scheduler plugins.

The controller keeps the task queue, dependencies, retries, timeouts and the
high-water mark itself; a scheduler plugin answers one question, fast: which
of these engines gets the next load-balanced task?
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from traitlets import Integer, Unicode
from traitlets.config import Configurable


class Scheduler:
    """Pick an engine for a task.

    ``choose(loads)`` gets the current load (tasks in flight) of every engine
    able to take the task, ordered least-recently-used first, and returns the
    index of the one to use.  It is called on the controller's hot path for
    every load-balanced task: keep it O(number of engines) or better.
    """

    name: ClassVar[str] = ""

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()

    def choose(self, loads: Sequence[int]) -> int:
        raise NotImplementedError


class TaskScheduler(Configurable):
    """How the controller hands out load-balanced tasks (IPython's section name)."""

    scheme_name = Unicode("leastload", help="The scheduler plugin that picks an engine for each "
                          "load-balanced task: leastload, lru, twobin, weighted, plainrandom, or any "
                          "installed plugin's name.").tag(config=True)
    hwm = Integer(0, min=0, help="High-water mark: the most load-balanced tasks outstanding on one engine "
                  "(0 = no limit).  1 keeps tasks queued in the controller until an engine is "
                  "free, best for tasks of very uneven length.").tag(config=True)
