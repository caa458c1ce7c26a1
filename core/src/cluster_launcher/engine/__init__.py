"""The engine process (``cluster-launcher engine``): runs tasks in a
persistent user namespace."""

from .engine import Engine, main

__all__ = ["Engine", "main"]
