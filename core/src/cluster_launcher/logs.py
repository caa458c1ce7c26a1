"""Logging of the controller and engine processes.  A leaf module: it
imports nothing internal but the errors."""

from __future__ import annotations

import logging
import os

from .error import ConfigError


def start_logging(role: str, profile_dir: str, cluster_id: str = "", to_file: bool = False,
                  level: str = "INFO") -> None:
    """Log the ``role`` process (controller or engine) to stderr, which a
    launcher captures into the profile's ``log/`` folder; with ``to_file``
    (started by hand: ``--log-to-file``) also to ``log/<role>[-<id>]-<pid>.log``."""
    fmt = f"%(asctime)s {role} %(levelname)s %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if to_file:
        log_dir = os.path.join(profile_dir, "log")
        os.makedirs(log_dir, exist_ok=True)
        name = f"{role}{'-' + cluster_id if cluster_id else ''}-{os.getpid()}.log"
        handlers.append(logging.FileHandler(os.path.join(log_dir, name)))
    numeric = int(level) if str(level).isdigit() else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"log level {level!r}: use DEBUG, INFO, WARNING, ERROR or a number")
    logging.basicConfig(level=numeric, format=fmt, handlers=handlers, force=True)
